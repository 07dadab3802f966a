#!/usr/bin/env python3
"""Reference data for tests/test_image.cpp, from PIL and torchvision (Debian's python3-torch).

  image_reference.py fixtures DIR    writes images of every supported format and mode to DIR,
                                     each with NAME.rgb (the RGB pixels PIL decodes, raw bytes)
                                     and DIR/manifest.json {name: {width, height, lossless}}
  image_reference.py transforms DIR  writes photo-like PNGs of several sizes to DIR, with
                                     NAME.resize.rgb (torchvision Resize(256) on the PIL image)
                                     and NAME.eval.f32 (Resize(256), CenterCrop(224), ToTensor,
                                     Normalize: float32 [3, 224, 224], native byte order), and
                                     DIR/manifest.json {name: {width, height, resized: [w, h]}}
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from torchvision import transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def photo(w, h, seed):
    """Smooth colour field, sharp shapes and grain: exercises both smooth and edge regions."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(5, 7, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(1, max(2, w // 2))), y0 + int(rng.integers(1, max(2, h // 2)))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.integers(0, 2) else d.rectangle)([x0, y0, x1, y1], fill=col)
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 12, size=(h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path, arr):
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    color_type = 2 if arr.ndim == 3 else 0
    rows = arr.astype(">u2").reshape(h, -1).tobytes()
    stride = len(rows) // h
    raw = b"".join(b"\x00" + rows[y * stride:(y + 1) * stride] for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)))
        f.write(png_chunk(b"IDAT", zlib.compress(raw)))
        f.write(png_chunk(b"IEND", b""))


def fixtures(out):
    manifest = {}

    def add(name, rgb, lossless):
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        rgb.tofile(os.path.join(out, name + ".rgb"))
        manifest[name] = {"width": rgb.shape[1], "height": rgb.shape[0], "lossless": lossless}

    def add_pil(name, lossless):
        with Image.open(os.path.join(out, name)) as im:
            add(name, np.asarray(im.convert("RGB")), lossless)

    base = photo(37, 23, seed=1)
    rgba = base.copy()
    rgba.putalpha(Image.fromarray(np.random.default_rng(2).integers(0, 256, (23, 37), np.uint8)))
    base.save(os.path.join(out, "rgb.png"))
    base.convert("L").save(os.path.join(out, "gray.png"))
    rgba.save(os.path.join(out, "rgba.png"))
    rgba.convert("LA").save(os.path.join(out, "gray_alpha.png"))
    base.quantize(colors=16).save(os.path.join(out, "palette.png"))
    base.save(os.path.join(out, "rgb.bmp"))
    base.convert("L").save(os.path.join(out, "gray.bmp"))
    Image.new("RGB", (1, 1), (200, 17, 99)).save(os.path.join(out, "one.png"))
    for name in ("rgb.png", "gray.png", "rgba.png", "gray_alpha.png", "palette.png", "rgb.bmp",
                 "gray.bmp", "one.png"):
        add_pil(name, True)

    # 16-bit: the expected 8-bit value is the high byte of each sample.
    a16 = np.random.default_rng(3).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    write_png16(os.path.join(out, "rgb16.png"), a16)
    add("rgb16.png", a16 >> 8, True)
    g16 = np.random.default_rng(4).integers(0, 65536, (9, 11), dtype=np.uint16)
    write_png16(os.path.join(out, "gray16.png"), g16)
    add("gray16.png", np.repeat((g16 >> 8)[:, :, None], 3, axis=2), True)

    # Animated GIF: two frames, the first one is expected.
    f1, f2 = base.quantize(colors=32), photo(37, 23, seed=9).quantize(colors=32)
    f1.save(os.path.join(out, "anim.gif"), save_all=True, append_images=[f2], duration=100, loop=0)
    with Image.open(os.path.join(out, "anim.gif")) as im:
        assert im.n_frames == 2
        im.seek(0)
        add("anim.gif", np.asarray(im.convert("RGB")), True)

    # JPEGs, compared with PIL's decoding (the same libjpeg-turbo underneath).
    big = photo(160, 120, seed=5)
    big.save(os.path.join(out, "baseline.jpg"), quality=90)
    big.save(os.path.join(out, "baseline444.jpg"), quality=95, subsampling=0)
    big.save(os.path.join(out, "progressive.jpg"), quality=90, progressive=True)
    big.convert("L").save(os.path.join(out, "gray.jpg"), quality=90)
    big.convert("CMYK").save(os.path.join(out, "cmyk.jpg"), quality=95)
    photo(33, 17, seed=6).save(os.path.join(out, "odd.jpg"), quality=85)
    for name in ("baseline.jpg", "baseline444.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg",
                 "odd.jpg"):
        add_pil(name, False)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def transforms_ref(out):
    resize = transforms.Resize(256)
    evaluate = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    sizes = [(640, 480), (480, 640), (500, 375), (333, 500), (300, 256), (256, 300), (427, 640),
             (200, 150), (1024, 277), (257, 1001)]
    manifest = {}
    for i, (w, h) in enumerate(sizes):
        name = "photo_%dx%d.png" % (w, h)
        photo(w, h, seed=100 + i).save(os.path.join(out, name))
        with Image.open(os.path.join(out, name)) as im:
            im = im.convert("RGB")
            r = resize(im)
            np.asarray(r).tofile(os.path.join(out, name + ".resize.rgb"))
            evaluate(im).numpy().astype(np.float32).tofile(os.path.join(out, name + ".eval.f32"))
            manifest[name] = {"width": w, "height": h, "resized": list(r.size)}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("fixtures", "transforms"):
        sys.exit(__doc__)
    os.makedirs(sys.argv[2], exist_ok=True)
    (fixtures if sys.argv[1] == "fixtures" else transforms_ref)(sys.argv[2])
