#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/) with Debian's python3-torch,
PIL and numpy. The committed corpus was made with it; rerun it only to change the seeds.

usage: fuzz/make_corpus.py [OUT_DIR]    (default: fuzz/corpus next to this script)

Every seed is small (a few KB at most) so that libFuzzer mutates it quickly. Inputs that crashed
a target once are added by hand as crash-<what>; this script never deletes files.
"""
import io
import json
import os
import pickle
import struct
import sys
import types
import zlib

import numpy as np
import torch
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(w, h, color_type, channels):
    rows = np.arange(w * h * channels, dtype=">u2").reshape(h, -1) * 997
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def images():
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(128)

    def save(img, fmt, **kw):
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    put("image", "rgb.png", save(rgb, "PNG"))
    put("image", "gray.png", save(rgb.convert("L"), "PNG"))
    put("image", "rgba.png", save(rgba, "PNG"))
    put("image", "palette.png", save(rgb.quantize(colors=4), "PNG"))
    put("image", "interlaced.png", save(rgb, "PNG", interlace=1))
    put("image", "rgb16.png", png16(4, 3, 2, 3))
    put("image", "gray16.png", png16(4, 3, 0, 1))
    put("image", "one.png", save(Image.new("RGB", (1, 1), (200, 17, 99)), "PNG"))
    put("image", "baseline.jpg", save(rgb, "JPEG", quality=80))
    put("image", "progressive.jpg", save(rgb, "JPEG", quality=80, progressive=True))
    put("image", "gray.jpg", save(rgb.convert("L"), "JPEG", quality=80))
    put("image", "cmyk.jpg", save(rgb.convert("CMYK"), "JPEG", quality=80))
    put("image", "rgb.bmp", save(rgb, "BMP"))
    frames = [rgb.quantize(colors=4), rgb.transpose(Image.FLIP_LEFT_RIGHT).quantize(colors=4)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    put("image", "anim.gif", b.getvalue())


def coco():
    valid = {
        "info": {}, "licenses": [],
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 6},
                   {"id": 2, "file_name": "sub/b.png"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A red square."},
                        {"id": 11, "image_id": 2, "caption": "un caf\u00e9 \U0001f436 \"quoted\"\tx"}],
    }
    put("coco", "valid.json", json.dumps(valid))
    put("coco", "ascii.json", json.dumps(valid, ensure_ascii=True, indent=1))
    put("coco", "empty.json", '{"images": [], "annotations": []}')
    put("coco", "numbers.json", '{"images": [{"id": -0, "file_name": "x", "w": [1e308, -1.5E-3, 0.0]}],'
                                ' "annotations": [{"id": 9223372036854775807, "image_id": 0, "caption": ""}]}')
    put("coco", "escapes.json", r'{"images": [{"id": 1, "file_name": "a\u00e9\/b\ud83d\udc36.png"}],'
                                r' "annotations": [{"id": 1, "image_id": 1, "caption": "\b\f\n\r\t\\"}]}')
    put("coco", "bad_path.json", '{"images": [{"id": 1, "file_name": "../x.png"}], "annotations": []}')
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0, "split": "test",
         "cocoid": 391895, "sentids": [1, 2],
         "sentences": [{"tokens": ["a", "man", "on", "a", "moped"], "raw": "A man on a moped.", "imgid": 0,
                        "sentid": 1},
                       {"tokens": ["man", "riding"], "raw": "Man riding.", "imgid": 0, "sentid": 2}]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000522418.jpg", "imgid": 1,
         "split": "restval", "cocoid": 522418, "sentids": [3],
         "sentences": [{"tokens": ["a", "cake"], "raw": "A cake.", "imgid": 1, "sentid": 3}]},
        {"filename": "flickr.jpg", "imgid": 2, "split": "train",
         "sentences": [{"tokens": ["dog"], "raw": "Dog."}]}]}
    put("coco", "karpathy.json", json.dumps(karpathy))


def vocabulary():
    put("vocabulary", "small.vocab",
        "# imcap vocabulary v1\n<pad>\t0\n<start>\t0\n<end>\t0\n<unk>\t0\na\t9\ndog\t3\ncaf\u00e9\t2\n")
    put("vocabulary", "notebook.vocab", "# imcap vocabulary v1\r\n<start>\t0\r\n<end>\t0\r\n<unk>\t0\r\n\r\nx\ty\t1\r\n")


class Vocabulary:  # the notebooks' vocab.pkl class, recorded by reference (never called)
    pass


Vocabulary.__module__ = "vocabulary"
sys.modules["vocabulary"] = types.ModuleType("vocabulary")
sys.modules["vocabulary"].Vocabulary = Vocabulary


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def pickles():
    v = Vocabulary()
    v.word2idx = {"<start>": 0, "<end>": 1, "<unk>": 2, "a": 3}
    v.idx2word = {i: w for w, i in v.word2idx.items()}
    v.idx = 4
    for protocol in (0, 2, 4):
        put("pickle", f"vocab_p{protocol}.pkl", pickle.dumps(v, protocol=protocol))
        put("pickle", f"values_p{protocol}.pkl", pickle.dumps(
            {"i": [1, -2, 2 ** 70, 3.5, True, None], "s": ("caf\u00e9", b"\x00\xff"), "n": {1: {}}},
            protocol=protocol))
    put("pickle", "evil_p2.pkl", pickle.dumps({"word2idx": Evil()}, protocol=2))
    shared = [1, 2]
    put("pickle", "memo_p2.pkl", pickle.dumps([shared, shared, (shared,)], protocol=2))


def state_dicts():
    torch.manual_seed(1)
    sd = {"conv.weight": torch.randn(2, 1, 2, 2), "conv.bias": torch.zeros(2),
          "bn.num_batches_tracked": torch.tensor(3), "half": torch.ones(3, dtype=torch.float16)}
    base = torch.arange(6.0)
    views = {"x": base, "view": base[1:4], "t": base.view(2, 3).t()}
    for name, obj, kw in [("zip.pt", sd, {}), ("legacy.pt", sd, {"_use_new_zipfile_serialization": False}),
                          ("views.pt", views, {}), ("views_legacy.pt", views, {"_use_new_zipfile_serialization": False}),
                          ("checkpoint.pt", {"epoch": 1, "state_dict": sd}, {})]:
        b = io.BytesIO()
        torch.save(obj, b, **kw)
        put("weights", name, b.getvalue())
    b = io.BytesIO()
    torch.save({"w": torch.zeros(1), "payload": Evil()}, b)
    put("weights", "evil.pt", b.getvalue())
    put("weights", "small.safetensors", safetensors_bytes({"a": torch.arange(4, dtype=torch.float32)}))


DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16", torch.uint8: "U8",
          torch.bool: "BOOL", torch.float64: "F64", torch.int32: "I32", torch.bfloat16: "BF16"}


def safetensors_bytes(tensors, metadata=None):
    header, blob = {}, b""
    for k, t in tensors.items():
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes()
        header[k] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors():
    put("safetensors", "dtypes.safetensors", safetensors_bytes(
        {DTYPES[k].lower(): torch.ones(2, dtype=k) for k in DTYPES}, {"note": "every dtype"}))
    put("safetensors", "empty.safetensors", safetensors_bytes({"e": torch.zeros(0, 3)}))
    put("safetensors", "scalar.safetensors", safetensors_bytes({"s": torch.tensor(1.5)}))


def model():
    vocab = "# imcap vocabulary v1\n<pad>\t0\n<start>\t0\n<end>\t0\n<unk>\t0\na\t2\nb\t1\n"
    config = {
        "decoder": {"dropout": 0.0, "embed_size": 1, "hidden_size": 1, "image_inject": "par",
                    "num_layers": 1, "vocab_size": 6},
        "encoder": {"arch": "resnet18", "embed_size": 1, "head_batch_norm": False,
                    "head_batch_norm_momentum": 0.01, "trainable_stages": 0},
        "image": {"crop": 32, "mean": [0.485, 0.456, 0.406], "resize": 32, "std": [0.229, 0.224, 0.225]},
    }
    meta = {"format": "imcap-model", "format_version": "1", "config": json.dumps(config),
            "vocabulary": vocab, "training": json.dumps({"epoch": 0, "global_step": 1})}
    decoder = {"decoder.embed.weight": torch.zeros(6, 1), "decoder.lstm.weight_ih_l0": torch.zeros(4, 2),
               "decoder.lstm.weight_hh_l0": torch.zeros(4, 1), "decoder.lstm.bias_ih_l0": torch.zeros(4),
               "decoder.lstm.bias_hh_l0": torch.zeros(4), "decoder.linear.weight": torch.zeros(6, 1),
               "decoder.linear.bias": torch.zeros(6)}
    put("model", "decoder_only.imcap", safetensors_bytes(decoder, meta))
    put("model", "with_head.imcap", safetensors_bytes(
        {"encoder.embed.weight": torch.zeros(1, 512), "encoder.embed.bias": torch.zeros(1), **decoder}, meta))
    put("model", "metadata_only.imcap", safetensors_bytes({}, meta))


images()
coco()
vocabulary()
pickles()
state_dicts()
safetensors()
model()
