#!/usr/bin/env python3
"""Which facts of `imcap synth --kind counts` captions a model gets right: for each group of
identical shapes in an image ("two red circles and one blue square": two groups), whether the
predicted caption names its shape, and, where it does, whether it gives that group's count and
colour. CIDEr says how close a caption is; this says what it gets wrong.

  /usr/bin/python3 bench/count_facts.py --annotations DATA/captions_val.json \
      --results pooled=results-pooled.json --results attention=results-attention.json

DATA is `imcap synth --kind counts` output (its references all state the same facts); each
results file is `imcap predict` output for DATA's images. Prints, per results file: the share of
images whose facts are all right, of groups whose shape is named, and, of those, the share whose
count and whose colour are right (chance for the count: 1 in 4).

  /usr/bin/python3 bench/count_facts.py --self-check --imcap build/imcap

checks the parser against `imcap synth --kind counts` (a test runs it): every reference of an
image must give the same facts, each with a count and a colour; the references scored as
results must be all right; and a caption with one count changed must lose exactly that count.
"""
import argparse
import json
import subprocess
import sys
import tempfile

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"}
SHAPES = {"circle", "square", "triangle", "diamond", "cross"}


def shape_of(word):
    """The shape a word names ("crosses" -> "cross"), or None."""
    for base in (word, word[:-1], word[:-2]):
        if base in SHAPES and word in (base, base + "s", base + "es"):
            return base
    return None


def facts(caption):
    """The (shape, count, colour) of each group a caption names, sorted by shape; the count or
    colour is None where the caption gives none. Understands the phrasings imcap synth writes:
    "three red circles", "a red circle", "three circles in red"."""
    words = caption.replace(",", " ").split()
    groups = []
    for i, word in enumerate(words):
        shape = shape_of(word)
        if shape is None:
            continue
        count = colour = None
        j = i - 1
        if j >= 0 and words[j] in COLOURS:
            colour = words[j]
            j -= 1
        if j >= 0 and words[j] in NUMBERS:
            count = NUMBERS[words[j]]
        elif j >= 0 and words[j] in ("a", "an"):
            count = 1
        if i + 2 < len(words) and words[i + 1] == "in" and words[i + 2] in COLOURS:
            colour = words[i + 2]
        groups.append((shape, count, colour))
    return sorted(groups)


def score(truth_by_image, results):
    images = exact = groups = named = counted = coloured = 0
    for r in results:
        truth = truth_by_image[r["image_id"]]
        pred = facts(r["caption"])
        images += 1
        exact += pred == truth
        for shape, count, colour in truth:  # synth gives an image's groups distinct shapes
            groups += 1
            same = [p for p in pred if p[0] == shape]
            if same:
                named += 1
                counted += same[0][1] == count
                coloured += same[0][2] == colour
    return {"images": images, "all_right": exact / images, "shape_named": named / groups,
            "count_right": counted / max(named, 1), "colour_right": coloured / max(named, 1)}


def self_check(imcap):
    """Exits 1 naming the first caption the parser gets wrong; see the module's text."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([imcap, "synth", "--kind", "counts", "--out", d, "--train", "1",
                        "--val", "200", "--size", "16", "--seed", "7"],
                       check=True, stdout=subprocess.DEVNULL)
        annotations = json.load(open(f"{d}/captions_val.json"))["annotations"]
    truth, first = {}, {}
    for ann in annotations:
        f = facts(ann["caption"])
        if not f or any(count is None or colour is None for _, count, colour in f):
            sys.exit(f"count_facts: no count or colour for a group in {ann['caption']!r}: {f}")
        if truth.setdefault(ann["image_id"], f) != f:
            sys.exit(f"count_facts: {ann['caption']!r} gives {f}, another reference of the same "
                     f"image {truth[ann['image_id']]}")
        first.setdefault(ann["image_id"], ann["caption"])
    same = score(truth, [{"image_id": i, "caption": c} for i, c in first.items()])
    if same["all_right"] != 1.0 or same["count_right"] != 1.0 or same["colour_right"] != 1.0:
        sys.exit(f"count_facts: the references scored as results are not all right: {same}")
    swap = {"one": "two", "two": "three", "three": "four", "four": "one"}
    changed = []
    for i, c in first.items():
        words = c.split()
        k = next((j for j, w in enumerate(words) if w in swap), None)
        if k is not None:
            words[k] = swap[words[k]]
            changed.append({"image_id": i, "caption": " ".join(words)})
    groups = sum(len(truth[r["image_id"]]) for r in changed)
    wrong = score(truth, changed)
    expected = 1 - len(changed) / groups
    if not changed or abs(wrong["count_right"] - expected) > 1e-9 or wrong["colour_right"] != 1.0:
        sys.exit(f"count_facts: one count changed in each of {len(changed)} captions "
                 f"({groups} groups) scored {wrong}")
    print(f"count_facts: self-check passed ({len(annotations)} references of {len(truth)} images)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", help="imcap synth --kind counts captions file")
    ap.add_argument("--results", action="append", help="NAME=FILE, imcap predict output")
    ap.add_argument("--json", help="write the scores here too")
    ap.add_argument("--self-check", action="store_true", help="check the parser against imcap synth")
    ap.add_argument("--imcap", default="imcap", help="the imcap binary, for --self-check")
    a = ap.parse_args()
    if a.self_check:
        return self_check(a.imcap)
    if not a.annotations or not a.results:
        ap.error("--annotations and at least one --results are required")
    truth = {}
    for ann in json.load(open(a.annotations))["annotations"]:
        truth.setdefault(ann["image_id"], facts(ann["caption"]))
    rows = {}
    print("| model | images all right | groups whose shape is named | of those, count right | colour right |")
    print("| --- | --- | --- | --- | --- |")
    for spec in a.results:
        name, _, path = spec.partition("=")
        s = rows[name] = score(truth, json.load(open(path)))
        print(f"| {name} | {s['all_right']:.3f} | {s['shape_named']:.3f} | {s['count_right']:.3f} | "
              f"{s['colour_right']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
