#!/usr/bin/env python3
"""Training from scratch in a fixed time, side by side: `imcap train` at its default options against
../shared/bench/train_expert.py (a skilled PyTorch script: image-major batches, par-inject, images
preloaded before its clock starts), on the same `imcap synth` data (or, for the kind `positions`,
the data of bench/positions_proxy.py, drawn by PIL), one after the other on the same
machine. For each synthetic kind it prints captions/s and the held-out BLEU-4 and CIDEr of each,
and the ratios, as a Markdown table; every run's output is kept in OUT_DIR.

  /usr/bin/python3 bench/train_side_by_side.py --imcap build/imcap \
      --expert ../shared/bench/train_expert.py [--kinds counts,relations,glyphs,textures]
      [--seconds 300] [--size 128] [--image-size 64] [--train 4000] [--val 400]
      [--imcap-args "--nproc 2"] [--skip-expert] [--out-dir DIR]

imcap's captions/s counts its data loading (decoding, transforms) and excludes its validations;
the script's excludes its image loading, as it prints. imcap's scores are those of best.imcap,
captioned by `imcap predict` with its default search; the script's are its greedy captions.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time


def run(cmd, log_path, env=None):
    t0 = time.time()
    with open(log_path, "w") as log:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        log.write(p.stdout)
    if p.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stdout[-3000:]))
    print("# %-70s %6.1f s" % (" ".join(cmd)[-70:], time.time() - t0), file=sys.stderr)
    return p.stdout


def score(imcap, annotations, results, log_path):
    out = run([imcap, "eval", "--annotations", annotations, "--results", results, "--json"], log_path)
    j = json.loads(out[out.index("{"):])
    return j["Bleu_4"], j["CIDEr"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", required=True)
    ap.add_argument("--expert", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                     "bench", "train_expert.py"))
    ap.add_argument("--kinds", default="counts,relations,glyphs,textures")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--size", type=int, default=128, help="side of the generated images")
    ap.add_argument("--image-size", type=int, default=64, help="side the CNN sees")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--imcap-args", default="", help="extra `imcap train` options")
    ap.add_argument("--skip-expert", action="store_true")
    ap.add_argument("--out-dir", default="train-side-by-side")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_common import same_blas_kernels
    same_blas_kernels()
    imcap = os.path.abspath(a.imcap)
    os.makedirs(a.out_dir, exist_ok=True)
    rows = []
    for kind in a.kinds.split(","):
        d = os.path.join(a.out_dir, kind)
        data = os.path.join(d, "data")
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(data, "captions_val.json")) and kind == "positions":
            run(["/usr/bin/python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "positions_proxy.py"),
                 data, "--train", str(a.train), "--val", str(a.val), "--size", str(a.size)],
                os.path.join(d, "synth.log"))
        elif not os.path.exists(os.path.join(data, "captions_val.json")):
            run([imcap, "synth", "--kind", kind, "--out", data, "--train", str(a.train), "--val",
                 str(a.val), "--size", str(a.size), "--seed", str(a.seed)], os.path.join(d, "synth.log"))
        val = os.path.join(data, "captions_val.json")
        row = {"kind": kind}
        if not a.skip_expert:
            res = os.path.join(d, "expert_results.json")
            out = run(["/usr/bin/python3", a.expert, data, "--seconds", str(a.seconds), "--size",
                       str(a.image_size), "--inject", "every", "--out", res], os.path.join(d, "expert.log"))
            j = json.loads(out[out.rindex("{"):])
            row["expert_rate"] = j["captions_seen"] / j["train_seconds"]
            row["expert_bleu4"], row["expert_cider"] = score(imcap, val, res, os.path.join(d, "expert_eval.log"))
        run_dir = os.path.join(d, "imcap")
        out = run([imcap, "train", "--annotations", os.path.join(data, "captions_train.json"),
                   "--images", os.path.join(data, "train"), "--val-annotations", val,
                   "--val-images", os.path.join(data, "val"), "--out", run_dir, "--encoder", "resnet18",
                   "--image-size", str(a.image_size), "--max-seconds", str(a.seconds), "--seed",
                   str(a.seed)] + shlex.split(a.imcap_args), os.path.join(d, "imcap_train.log"))
        m = re.search(r"\(([0-9]+) captions, ([0-9.]+) captions/s", out)
        row["imcap_rate"] = float(m.group(2)) if m else float("nan")
        res = os.path.join(d, "imcap_results.json")
        run([imcap, "predict", "--model", os.path.join(run_dir, "best.imcap"), "--annotations", val,
             "--images", os.path.join(data, "val"), "--out", res], os.path.join(d, "imcap_predict.log"))
        row["imcap_bleu4"], row["imcap_cider"] = score(imcap, val, res, os.path.join(d, "imcap_eval.log"))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    with open(os.path.join(a.out_dir, "results.json"), "w") as f:
        json.dump({"seconds": a.seconds, "size": a.size, "image_size": a.image_size,
                   "imcap_args": a.imcap_args, "rows": rows}, f, indent=1)
    print("| kind | imcap captions/s | PyTorch captions/s | ratio | imcap BLEU-4 / CIDEr | PyTorch BLEU-4 / CIDEr |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        e = "expert_rate" in r
        print("| %s | %.0f | %s | %s | %.3f / %.3f | %s |" % (
            r["kind"], r["imcap_rate"], "%.0f" % r["expert_rate"] if e else "-",
            "%.2fx" % (r["imcap_rate"] / r["expert_rate"]) if e else "-", r["imcap_bleu4"], r["imcap_cider"],
            "%.3f / %.3f" % (r["expert_bleu4"], r["expert_cider"]) if e else "-"))


if __name__ == "__main__":
    main()
