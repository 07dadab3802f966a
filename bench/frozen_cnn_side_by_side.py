#!/usr/bin/env python3
"""Attention against pooled features with a frozen CNN, side by side, on the same `imcap synth`
data (or, for the kind `positions`, bench/positions_proxy.py's), one after the other on the same
machine: the seed's setup (and the COCO recipe's), where the CNN is not trained and only the
decoder learns.

For each kind the script makes one CNN (torchvision's ResNet at its random initialisation, seeded,
saved with torch.save: no pretrained weights can be downloaded here, so this stands in for a
frozen pretrained one), caches its features once with `imcap features` (the pooled vector, and
with `--spatial` the whole last map: 7 x 7 positions at 224 px), then trains each decoder on its
cache for the same number of seconds (`imcap train --features`, imcap's defaults otherwise) and
scores best.imcap on the held-out images (`imcap predict`, its default search, and `imcap eval`).
The feature caching time is printed beside: both decoders pay it once, before their clocks.

  /usr/bin/python3 bench/frozen_cnn_side_by_side.py --imcap build/imcap
      [--kinds relations,positions,counts,glyphs,textures] [--seconds 300] [--image-size 224]
      [--encoder resnet18] [--train 4000] [--val 400] [--size 128] [--grid S]
      [--pooled-args=...] [--attention-args=--grid-positions] [--decoders pooled,attention]
      [--out-dir DIR] [--json FILE]
(Give option strings that start with "--" after "=", as argparse requires.)
Prints a Markdown table: per kind, each decoder's held-out BLEU-4 / CIDEr, captions/s and steps.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

from bench_common import run, same_blas_kernels


def score(imcap, annotations, results, log_path):
    out = run([imcap, "eval", "--annotations", annotations, "--results", results, "--json"], log_path)
    j = json.loads(out[out.index("{"):])
    return j["Bleu_4"], j["CIDEr"]


def make_cnn(path, encoder, seed):
    code = ("import sys, torch, torchvision\n"
            "torch.manual_seed(int(sys.argv[3]))\n"
            "m = getattr(torchvision.models, sys.argv[2])()\n"
            "torch.save(m.state_dict(), sys.argv[1])\n")
    subprocess.run(["/usr/bin/python3", "-c", code, path, encoder, str(seed)], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", required=True)
    ap.add_argument("--kinds", default="relations,positions,counts,glyphs,textures")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--size", type=int, default=128, help="side of the generated images")
    ap.add_argument("--image-size", type=int, default=224, help="side the CNN sees")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--grid", type=int, default=0, help="pool the map to S x S (0: keep it)")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pooled-args", default="", help="extra `imcap train` options for the pooled model")
    ap.add_argument("--attention-args", default="", help="extra `imcap train` options for attention")
    ap.add_argument("--decoders", default="pooled,attention")
    ap.add_argument("--out-dir", default="frozen-cnn-side-by-side")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args()
    same_blas_kernels()
    imcap = os.path.abspath(a.imcap)
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(a.out_dir, exist_ok=True)
    cnn = os.path.join(a.out_dir, "%s-seed%d.pth" % (a.encoder, a.seed))
    if not os.path.exists(cnn):
        make_cnn(cnn, a.encoder, a.seed)
    common = ["--encoder", a.encoder, "--weights", cnn, "--image-size", str(a.image_size)]
    grid = ["--grid", str(a.grid)] if a.grid else []
    rows = []
    for kind in a.kinds.split(","):
        d = os.path.join(a.out_dir, kind)
        data = os.path.join(d, "data")
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(data, "captions_val.json")):
            if kind == "positions":
                run(["/usr/bin/python3", os.path.join(here, "positions_proxy.py"), data, "--train",
                     str(a.train), "--val", str(a.val), "--size", str(a.size)], os.path.join(d, "synth.log"))
            else:
                run([imcap, "synth", "--kind", kind, "--out", data, "--train", str(a.train), "--val",
                     str(a.val), "--size", str(a.size), "--seed", str(a.seed)], os.path.join(d, "synth.log"))
        train_ann = os.path.join(data, "captions_train.json")
        val_ann = os.path.join(data, "captions_val.json")
        row = {"kind": kind, "feature_seconds": {}}
        for decoder in a.decoders.split(","):
            spatial = decoder == "attention"
            feats = {}
            for split, ann in (("train", train_ann), ("val", val_ann)):
                f = os.path.join(d, "%s-%s.safetensors" % (split, "grid" if spatial else "pooled"))
                feats[split] = f
                if not os.path.exists(f):
                    t0 = time.time()
                    run([imcap, "features", "--annotations", ann, "--images", os.path.join(data, split),
                         "--out", f] + common + (["--spatial"] + grid if spatial else []),
                        os.path.join(d, "features-%s-%s.log" % (split, decoder)))
                    row["feature_seconds"][decoder] = row["feature_seconds"].get(decoder, 0) + time.time() - t0
            run_dir = os.path.join(d, decoder)
            extra = shlex.split(a.attention_args if spatial else a.pooled_args)
            out = run([imcap, "train", "--annotations", train_ann, "--features", feats["train"],
                       "--val-annotations", val_ann, "--val-features", feats["val"], "--out", run_dir,
                       "--max-seconds", str(a.seconds), "--seed", str(a.seed)] + common +
                      (["--decoder", "attention"] + grid if spatial else []) + extra,
                      os.path.join(d, "train-%s.log" % decoder))
            m = re.search(r"\(([0-9]+) captions, ([0-9.]+) captions/s", out)
            row[decoder + "_rate"] = float(m.group(2)) if m else float("nan")
            m = re.search(r"^([0-9]+) steps \(", out, re.M)
            row[decoder + "_steps"] = int(m.group(1)) if m else 0
            res = os.path.join(d, "results-%s.json" % decoder)
            run([imcap, "predict", "--model", os.path.join(run_dir, "best.imcap"), "--annotations", val_ann,
                 "--images", os.path.join(data, "val"), "--out", res], os.path.join(d, "predict-%s.log" % decoder))
            row[decoder + "_bleu4"], row[decoder + "_cider"] = score(imcap, val_ann, res,
                                                                     os.path.join(d, "eval-%s.log" % decoder))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    doc = {"seconds": a.seconds, "size": a.size, "image_size": a.image_size, "encoder": a.encoder,
           "grid": a.grid, "pooled_args": a.pooled_args, "attention_args": a.attention_args, "rows": rows}
    with open(os.path.join(a.out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    decoders = a.decoders.split(",")
    print("| kind | " + " | ".join("%s BLEU-4 / CIDEr | captions/s | steps" % k for k in decoders) + " |")
    print("| --- |" + " --- | --- | --- |" * len(decoders))
    for r in rows:
        cells = ["%.3f / %.3f | %.0f | %d" % (r[k + "_bleu4"], r[k + "_cider"], r[k + "_rate"], r[k + "_steps"])
                 for k in decoders]
        print("| %s | %s |" % (r["kind"], " | ".join(cells)))


if __name__ == "__main__":
    main()
