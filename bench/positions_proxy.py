#!/usr/bin/env python3
"""A captioning data set in COCO format that imcap's own generator does not make, for checking
training defaults on data they were not shaped on: 128-px scenes of one or two objects drawn with
PIL (anti-aliased, on a noisy tinted background, jittered in size and place), each with five
templated captions that name the objects' colours, kinds and left/right positions.

  /usr/bin/python3 bench/positions_proxy.py OUT_DIR [--train 4000] [--val 400] [--size 128] [--seed 7]

Writes OUT_DIR/captions_train.json, OUT_DIR/captions_val.json, OUT_DIR/train/*.jpg and
OUT_DIR/val/*.jpg, the layout `imcap synth` writes, so bench/train_side_by_side.py and
`imcap train` read it the same way.
"""
import argparse
import json
import math
import os
import random

from PIL import Image, ImageDraw, ImageFilter

COLOURS = {
    "red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "yellow": (230, 210, 40),
    "purple": (140, 50, 170), "orange": (240, 140, 30), "pink": (240, 130, 180),
    "brown": (130, 80, 40), "gray": (128, 128, 128),
}
KINDS = ["ball", "box", "star", "heart", "ring", "arrow", "moon", "bar"]


def polygon_star(cx, cy, r):
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_object(d, kind, cx, cy, r, fill, rng):
    if kind == "ball":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "box":
        d.rectangle([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=fill)
    elif kind == "star":
        d.polygon(polygon_star(cx, cy, r * 1.15), fill=fill)
    elif kind == "heart":
        d.ellipse([cx - r, cy - r * 0.8, cx, cy + r * 0.1], fill=fill)
        d.ellipse([cx, cy - r * 0.8, cx + r, cy + r * 0.1], fill=fill)
        d.polygon([(cx - r * 0.97, cy - r * 0.2), (cx + r * 0.97, cy - r * 0.2), (cx, cy + r)], fill=fill)
    elif kind == "ring":
        w = max(3, int(r * 0.35))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=w)
    elif kind == "arrow":
        d.rectangle([cx - r, cy - r * 0.2, cx + r * 0.2, cy + r * 0.2], fill=fill)
        d.polygon([(cx + r * 0.1, cy - r * 0.7), (cx + r, cy), (cx + r * 0.1, cy + r * 0.7)], fill=fill)
    elif kind == "moon":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return "moon"
    elif kind == "bar":
        d.rectangle([cx - r * 0.3, cy - r, cx + r * 0.3, cy + r], fill=fill)
    return None


def captions(objs):
    def np(o):
        return "a %s %s" % (o["colour"], o["kind"])
    if len(objs) == 1:
        o = objs[0]
        side = "left" if o["x"] < 0.5 else "right"
        return [
            "%s on the %s" % (np(o), side),
            "there is %s on the %s side" % (np(o), side),
            "a picture of %s on the %s" % (np(o), side),
            "%s is on the %s of the image" % (np(o), side),
            "one %s %s on the %s" % (o["colour"], o["kind"], side),
        ]
    a, b = sorted(objs, key=lambda o: o["x"])
    return [
        "%s on the left and %s on the right" % (np(a), np(b)),
        "%s on the right and %s on the left" % (np(b), np(a)),
        "%s to the left of %s" % (np(a), np(b)),
        "%s to the right of %s" % (np(b), np(a)),
        "there is %s next to %s" % (np(a), np(b)),
    ]


def scene(rng, size):
    bg = tuple(rng.randint(170, 250) for _ in range(3))
    img = Image.new("RGB", (size * 2, size * 2), bg)
    d = ImageDraw.Draw(img)
    n = rng.choice([1, 2])
    objs = []
    slots = [rng.uniform(0.12, 0.38), rng.uniform(0.62, 0.88)]
    if n == 1:
        slots = [rng.choice(slots)]
    for x in slots:
        colour = rng.choice(list(COLOURS))
        kind = rng.choice(KINDS)
        r = rng.uniform(0.09, 0.15) * size * 2
        cy = rng.uniform(0.3, 0.7) * size * 2
        cx = x * size * 2
        fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
        if draw_object(d, kind, cx, cy, r, fill, rng) == "moon":
            off = r * 0.5
            d.ellipse([cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3], fill=bg)
        objs.append({"colour": colour, "kind": kind, "x": x})
    img = img.resize((size, size), Image.LANCZOS)
    # Sensor-like noise, then a slight blur.
    px = img.load()
    for _ in range(size * size // 6):
        i, j = rng.randrange(size), rng.randrange(size)
        p = px[i, j]
        k = rng.randint(-35, 35)
        px[i, j] = tuple(max(0, min(255, c + k)) for c in p)
    img = img.filter(ImageFilter.GaussianBlur(0.5))
    return img, captions(objs)


def split(out, name, count, rng, size, first_id):
    os.makedirs(os.path.join(out, name), exist_ok=True)
    images, anns = [], []
    for k in range(count):
        iid = first_id + k
        img, caps = scene(rng, size)
        fn = "%s_%06d.jpg" % (name, iid)
        img.save(os.path.join(out, name, fn), quality=90)
        images.append({"id": iid, "file_name": fn, "width": size, "height": size})
        for c in caps:
            anns.append({"id": len(anns) + 1 + first_id * 10, "image_id": iid, "caption": c})
    with open(os.path.join(out, "captions_%s.json" % name), "w") as f:
        json.dump({"images": images, "annotations": anns}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    split(a.out, "train", a.train, rng, a.size, 1)
    split(a.out, "val", a.val, rng, a.size, 1000001)


if __name__ == "__main__":
    main()
