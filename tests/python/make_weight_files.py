"""Writes the weight files that tests/test_weights.cpp reads, with the expected values.

usage: make_weight_files.py OUT_DIR [--resnet18]

For every file F it writes, F.expected.json maps each tensor name to its dtype, shape, strides,
storage offset and the [begin, end) byte range of its contiguous values in F.expected.bin.
"""
import json
import os
import pickle
import struct
import sys

import torch

OUT = sys.argv[1]
torch.manual_seed(1234)


def path(name):
    return os.path.join(OUT, name)


def raw_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def dump_expected(name, tensors):
    index, blob = {}, b""
    for key, t in tensors.items():
        b = raw_bytes(t)
        index[key] = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "strides": list(t.stride()),
            "offset": t.storage_offset(),
            "range": [len(blob), len(blob) + len(b)],
        }
        blob += b
    with open(path(name + ".expected.json"), "w") as f:
        json.dump(index, f)
    with open(path(name + ".expected.bin"), "wb") as f:
        f.write(blob)


class Net(torch.nn.Module):
    """Mirrors the module of test_weights.cpp: conv, bn, fc."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)


net = Net()
with torch.no_grad():
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    net.bn.weight.uniform_(0.5, 1.5)
    net.bn.bias.uniform_(-1, 1)
    net.bn.num_batches_tracked.fill_(7)
sd = net.state_dict()  # an OrderedDict with _metadata
assert hasattr(sd, "_metadata")
torch.save(sd, path("net.pt"))
dump_expected("net.pt", sd)
for protocol in (2, 4, 5):
    torch.save(sd, path(f"net_p{protocol}.pt"), pickle_protocol=protocol)
torch.save(sd, path("net_legacy.pt"), _use_new_zipfile_serialization=False)
torch.save({"epoch": 3, "best": 0.5, "state_dict": sd, "optimizer": {"lr": 0.1}},
           path("checkpoint.pt"))
torch.save({"module." + k: v for k, v in sd.items()}, path("net_prefixed.pt"))

plain = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.tensor(2.5)}
torch.save(plain, path("plain.pt"))
dump_expected("plain.pt", plain)

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
views = {
    "base": base,
    "transposed": base.t(),
    "slice": base[1:3, 2:5],
    "flat_window": base.view(-1)[5:17],
    "strided": base[::2, ::3],
    "empty": base[4:, :],
}
torch.save(views, path("views.pt"))
torch.save(views, path("views_legacy.pt"), _use_new_zipfile_serialization=False)
dump_expected("views.pt", views)

g = torch.Generator().manual_seed(7)
dtypes = {
    "float32": torch.randn(2, 3, generator=g),
    "float16": torch.randn(2, 3, generator=g).half(),
    "bfloat16": torch.randn(2, 3, generator=g).bfloat16(),
    "float64": torch.randn(2, 3, generator=g).double(),
    "int64": torch.randint(-2**40, 2**40, (4,), generator=g),
    "int32": torch.randint(-2**30, 2**30, (4,), generator=g, dtype=torch.int32),
    "int16": torch.randint(-2**14, 2**14, (4,), generator=g, dtype=torch.int16),
    "int8": torch.randint(-100, 100, (4,), generator=g, dtype=torch.int8),
    "uint8": torch.randint(0, 255, (4,), generator=g, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "complex64": torch.randn(3, dtype=torch.complex64, generator=g),
    "scalar": torch.tensor(3.25),
}
torch.save(dtypes, path("dtypes.pt"))
torch.save(dtypes, path("dtypes_legacy.pt"), _use_new_zipfile_serialization=False)
dump_expected("dtypes.pt", dtypes)

# safetensors by hand, per the specification (the Python package is not installed): keys in
# the JSON in another order than the data, the header padded with spaces.
st = {"weight": torch.randn(3, 4, generator=g), "ids": torch.arange(5), "half": torch.randn(2).bfloat16()}
header, blob = {}, b""
for key in ["ids", "weight", "half"]:
    b = raw_bytes(st[key])
    header[key] = {"dtype": {"int64": "I64", "float32": "F32", "bfloat16": "BF16"}[
        str(st[key].dtype).replace("torch.", "")], "shape": list(st[key].shape),
        "data_offsets": [len(blob), len(blob) + len(b)]}
    blob += b
header["__metadata__"] = {"format": "pt", "source": "make_weight_files.py"}
text = json.dumps({k: header[k] for k in ["weight", "__metadata__", "half", "ids"]}).encode()
text += b" " * ((8 - len(text) % 8) % 8)
with open(path("hand.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + blob)
dump_expected("hand.safetensors", {k: st[k] for k in ["ids", "weight", "half"]})  # data order

# Malicious pickles: loading them with Python's pickle would create the marker file.
marker = path("PWNED")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch %s')" % marker,))


for protocol in (2, 4):
    with open(path(f"evil_p{protocol}.pkl"), "wb") as f:
        pickle.dump({"word2idx": Evil()}, f, protocol=protocol)
with open(path("evil_eval.pkl"), "wb") as f:
    pickle.dump([EvilEval()], f, protocol=4)
torch.save({"weight": torch.zeros(2), "payload": Evil()}, path("evil.pt"))

# vocab.pkl as the notebooks write it: an instance of vocabulary.Vocabulary.
module_dir = path("pymodule")
os.makedirs(module_dir, exist_ok=True)
with open(os.path.join(module_dir, "vocabulary.py"), "w") as f:
    f.write('''
class Vocabulary(object):
    def __init__(self, words, specials, threshold=5):
        self.vocab_threshold = threshold
        self.vocab_file = "./vocab.pkl"
        self.start_word = "<start>"
        self.end_word = "<end>"
        self.unk_word = "<unk>"
        self.annotations_file = "captions_train2014.json"
        self.word2idx = {}
        self.idx2word = {}
        self.idx = 0
        for w in specials + words:
            self.add_word(w)

    def add_word(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = self.idx
            self.idx2word[self.idx] = word
            self.idx += 1
''')
sys.path.insert(0, module_dir)
import vocabulary  # noqa: E402

words = ["a", "man", "riding", "horse", "caf\u00e9", "."]
notebook = vocabulary.Vocabulary(words, ["<start>", "<end>", "<unk>"])
with open(path("vocab.pkl"), "wb") as f:
    pickle.dump(notebook, f)
tutorial = vocabulary.Vocabulary(words, ["<pad>", "<start>", "<end>", "<unk>"])
with open(path("vocab_tutorial.pkl"), "wb") as f:
    pickle.dump(tutorial, f, protocol=2)
broken = vocabulary.Vocabulary(words, ["<start>", "<end>", "<unk>"])
broken.word2idx["man"] = 5
with open(path("vocab_inconsistent.pkl"), "wb") as f:
    pickle.dump(broken, f)
with open(path("vocab_ids.json"), "w") as f:
    json.dump({"notebook": notebook.idx2word, "tutorial": tutorial.idx2word}, f)

if "--resnet18" in sys.argv:
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), path("resnet18.pth"))
    torch.save(resnet.state_dict(), path("resnet18_legacy.pth"),
               _use_new_zipfile_serialization=False)
    dump_expected("resnet18.pth", resnet.state_dict())
print("ok")
