#!/usr/bin/env python3
"""GPU baseline benchmark: the PyTorch "Show and Tell" captioner in eager mode.

The figures `imcap bench --device cuda --json` reports, measured on PyTorch eager with the same
shapes, so that bench/gpu_side_by_side.py can compare the two in the same run:

  a) encoder_images_per_s: the encoder (torchvision ARCH without its fc, weights=None, then the
     Linear(features, embed) + BatchNorm1d(embed) head), eval(), no_grad, channels_last model
     and input, at batch ENCODER_BATCH and IMAGE_SIZE px; once in float32 and once with the
     model and input converted to bfloat16.
  b) greedy_decode_ms at batch 1 and DECODE_BATCH: the notebook's sample(), MAX_STEPS steps of
     argmax in Python, no early stop, from random features.
  c) decoder_train_step_ms: Adam (lr 1e-3) on the decoder + the encoder head, TRAIN_BATCH
     captions of CAPTION_LEN tokens on precomputed 2048-d features (the baseline's step).

Eager defaults, except one: on CUDA cudnn.benchmark is turned on, as imcap's `--device cuda` does,
so that autotuning is no advantage of either side. TF32 is left as PyTorch sets it. The settings
are recorded under "env". Inference runs under torch.inference_mode(). Each figure is timed after warm-up, with torch.cuda.synchronize()
before and after every repetition on CUDA; median, min and max are over repetitions (for
images/s, of each repetition's rate: max is the best). Weights are random; timings do not
depend on them.

  python3 bench/gpu_baseline.py [--device cuda|cpu] [--quick] [--arch resnet152]
      [--image-size 224] [--encoder-batch 256] [--decode-batch 128] [--train-batch 128]
      [--caption-len 14] [--vocab 10000] [--embed 256] [--hidden 512] [--max-steps 20]
      [--seed 0]

CPU smoke test (a few seconds):

  /usr/bin/python3 bench/gpu_baseline.py --device cpu --quick --arch resnet18 --image-size 64 \\
      --encoder-batch 2 --decode-batch 4 --train-batch 8 --vocab 500

Prints one JSON object on stdout; log lines go to stderr, prefixed "# ".
"""
import argparse
import json
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torchvision
from torch.nn.utils.rnn import pack_padded_sequence

PAD, START, END, UNK = 0, 1, 2, 3


# --------------------------------------------------------------------------
# Model: EncoderCNN and DecoderRNN as in ../shared/bench/python_baseline.py (from the usual
# PyTorch captioning notebooks), with the CNN's architecture a parameter.
# --------------------------------------------------------------------------
class EncoderCNN(nn.Module):
    def __init__(self, embed_size, arch="resnet152", use_bn=True):
        super().__init__()
        resnet = getattr(torchvision.models, arch)(weights=None)
        self.resnet = nn.Sequential(*list(resnet.children())[:-1])  # drop fc
        for p in self.resnet.parameters():  # frozen CNN
            p.requires_grad_(False)
        self.linear = nn.Linear(resnet.fc.in_features, embed_size)
        self.bn = nn.BatchNorm1d(embed_size, momentum=0.01) if use_bn else nn.Identity()

    def head(self, feats2048):
        return self.bn(self.linear(feats2048))

    def forward(self, images):
        with torch.no_grad():
            f = self.resnet(images)
        f = f.reshape(f.size(0), -1)
        return self.head(f)


class DecoderRNN(nn.Module):
    def __init__(self, embed_size, hidden_size, vocab_size, num_layers=1, max_seq_length=20):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)
        self.max_seq_length = max_seq_length

    def forward(self, features, captions, lengths):
        emb = self.embed(captions)
        x = torch.cat((features.unsqueeze(1), emb), 1)
        packed = pack_padded_sequence(x, lengths, batch_first=True)
        hiddens, _ = self.lstm(packed)
        return self.linear(hiddens[0])

    def sample(self, features, states=None):
        """Greedy decoding, one step at a time in Python."""
        sampled = []
        inputs = features.unsqueeze(1)
        for _ in range(self.max_seq_length):
            hiddens, states = self.lstm(inputs, states)
            outputs = self.linear(hiddens.squeeze(1))
            _, predicted = outputs.max(1)
            sampled.append(predicted)
            inputs = self.embed(predicted).unsqueeze(1)
        return torch.stack(sampled, 1)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def log(msg):
    print("# " + msg, file=sys.stderr, flush=True)


def timeit(fn, warmup, reps, sync):
    """Milliseconds of each of `reps` calls of fn, after `warmup` calls; sync() around each."""
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def summary(values, digits=3):
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def _setting(obj, name):
    """obj.name, or None where this PyTorch lacks it or refuses to read it."""
    try:
        with warnings.catch_warnings():  # PyTorch 2.9+ warns about the old TF32 switches
            warnings.simplefilter("ignore")
            value = getattr(obj, name, None)
            return value() if callable(value) else value
    except Exception:  # noqa: BLE001 - a record, not a requirement
        return None


def backend_settings(device):
    """What eager PyTorch runs with (left at its defaults here), for the record."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return {
        "cudnn_enabled": cudnn.enabled,
        "cudnn_benchmark": cudnn.benchmark,
        "cudnn_allow_tf32": _setting(cudnn, "allow_tf32"),
        "matmul_allow_tf32": _setting(matmul, "allow_tf32"),
        "float32_matmul_precision": _setting(torch, "get_float32_matmul_precision"),
        "cudnn_conv_fp32_precision": _setting(getattr(cudnn, "conv", None), "fp32_precision"),
        "matmul_fp32_precision": _setting(matmul, "fp32_precision"),
        "cudnn_version": cudnn.version() if device.type == "cuda" else None,
        "cuda_version": torch.version.cuda,
        "torchvision_version": torchvision.__version__,
        "torch_num_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--arch", default="resnet152", help="torchvision model name")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--encoder-batch", type=int, default=256)
    ap.add_argument("--decode-batch", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--caption-len", type=int, default=14)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--max-steps", type=int, default=20, help="greedy decoding steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("gpu_baseline.py: --device cuda, but torch.cuda.is_available() is False")
        device = torch.device("cuda", torch.cuda.current_device())
        gpu = torch.cuda.get_device_name(device)
        sync = torch.cuda.synchronize
    else:
        device = torch.device("cpu")
        gpu = "cpu"

        def sync():
            pass

    torch.manual_seed(args.seed)
    q = args.quick
    # (warm-up, repetitions) per measurement
    reps = {
        "encoder": (2, 5) if q else (5, 20),
        "greedy": (5, 20) if q else (20, 100),
        "train": (5, 20) if q else (10, 50),
    }
    V, E, H = args.vocab, args.embed, args.hidden
    L, B = args.caption_len, args.train_batch
    log(
        "torch %s torchvision %s on %s (%s)"
        % (torch.__version__, torchvision.__version__, device, gpu)
    )
    t_start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as imcap's --device cuda

    encoder = EncoderCNN(E, arch=args.arch).to(device).eval()
    decoder = DecoderRNN(E, H, V, max_seq_length=args.max_steps).to(device).eval()
    res = {
        "device": str(device),
        "gpu": gpu,
        "torch_version": torch.__version__,
        "config": {
            "arch": args.arch,
            "image_size": args.image_size,
            "encoder_batch": args.encoder_batch,
            "decode_batch": args.decode_batch,
            "train_batch": B,
            "caption_len": L,
            "vocab": V,
            "embed": E,
            "hidden": H,
            "max_steps": args.max_steps,
            "reps": {k: {"warmup": w, "reps": r} for k, (w, r) in reps.items()},
        },
    }

    # b) greedy decode (before the encoder's bfloat16 conversion; independent of it) ---------
    greedy = {}
    with torch.inference_mode():
        for bs in sorted({1, args.decode_batch}):
            feats = torch.randn(bs, E, device=device)
            ts = timeit(lambda: decoder.sample(feats), *reps["greedy"], sync)
            greedy["batch%d" % bs] = summary(ts)
            log("greedy decode batch %d: %.3f ms" % (bs, greedy["batch%d" % bs]["median"]))

    # c) decoder train step -----------------------------------------------------------------
    decoder.train()
    encoder.train()  # only the Linear/BN head is used (features precomputed)
    params = (
        list(decoder.parameters())
        + list(encoder.linear.parameters())
        + list(encoder.bn.parameters())
    )
    opt = torch.optim.Adam(params, lr=1e-3)
    crit = nn.CrossEntropyLoss()
    feats2048 = torch.randn(B, encoder.linear.in_features, device=device)
    caps = torch.randint(4, V, (B, L), device=device)
    caps[:, 0] = START
    caps[:, -1] = END
    lengths = [L] * B
    targets = pack_padded_sequence(caps, lengths, batch_first=True)[0]

    def train_step():
        f = encoder.head(feats2048)
        out = decoder(f, caps, lengths)
        loss = crit(out, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    train = summary(timeit(train_step, *reps["train"], sync))
    log("train step batch %d: %.3f ms" % (B, train["median"]))
    decoder.eval()
    encoder.eval()

    # a) encoder, float32 then bfloat16 -----------------------------------------------------
    enc = {}
    n = args.encoder_batch
    x32 = torch.randn(n, 3, args.image_size, args.image_size, device=device)
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
        encoder = encoder.to(dtype).to(memory_format=torch.channels_last)
        x = x32.to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ts = timeit(lambda: encoder(x), *reps["encoder"], sync)
        key = "%s_batch%d" % (name, n)
        enc[key] = summary([n / (t / 1e3) for t in ts], digits=2)
        log("encoder %s batch %d: %.1f images/s" % (name, n, enc[key]["median"]))

    res["encoder_images_per_s"] = enc
    res["greedy_decode_ms"] = greedy
    res["decoder_train_step_ms"] = train
    res["env"] = backend_settings(device)
    res["benchmark_wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
