#!/usr/bin/env python3
"""Writes the data-pipeline benchmark JPEGs: N photo-like 640x480 JPEGs at quality 90, generated
as ../shared/bench/python_baseline.py's make_jpegs() does (same seed, same files), and optionally
times PIL + torchvision's train transform on them the way the baseline does.

  /usr/bin/python3 bench/make_jpegs.py DIR [--n 64] [--seed 0] [--time-pil PASSES]
"""
import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_jpegs(outdir, n, w=640, h=480, seed=0):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = os.path.join(outdir, "img_%03d.jpg" % i)
        paths.append(path)
        if os.path.exists(path):
            continue
        low = rng.uniform(0, 255, size=(6 + i % 5, 8 + i % 7, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(20, 250)), y0 + int(rng.integers(20, 200))
            col = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                d.ellipse([x0, y0, x1, y1], fill=col)
            elif kind == 1:
                d.rectangle([x0, y0, x1, y1], fill=col)
            else:
                d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(2, 12)))
        img = img.filter(ImageFilter.GaussianBlur(1.5))
        arr = np.asarray(img).astype(np.int16)
        arr += rng.normal(0, 6, size=arr.shape).astype(np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return paths


def time_pil(paths, passes):
    import torch
    from torchvision import transforms
    torch.set_num_threads(1)
    tf = transforms.Compose([
        transforms.Resize(256), transforms.RandomCrop(224), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def load_rgb(p):
        with open(p, "rb") as f:
            return Image.open(f).convert("RGB")

    ips, cps = [], []
    for k in range(passes + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            tf(load_rgb(p))
        if k:  # the first pass is the warm-up
            ips.append(len(paths) / (time.perf_counter() - t0))
            cps.append(len(paths) / (time.process_time() - c0))
    print("PIL+torchvision train pipeline, 1 thread; images per wall-clock second and per CPU "
          "second (median, min, max):")
    print("  %-36s wall %7.1f %7.1f %7.1f   cpu %7.1f %7.1f %7.1f" % (
        "PIL decode, 1 thread", statistics.median(ips), min(ips), max(ips),
        statistics.median(cps), min(cps), max(cps)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-pil", type=int, default=0, metavar="PASSES")
    a = ap.parse_args()
    paths = make_jpegs(a.dir, a.n, seed=a.seed)
    if a.time_pil:
        time_pil(paths, a.time_pil)
