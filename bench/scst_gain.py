#!/usr/bin/env python3
"""Does self-critical training pay for its time? For each synthetic kind, at one total budget:
cross-entropy alone against cross-entropy followed by SCST, scored on a held-out test set that
neither run saw (another `imcap synth` seed; the validation set that picks best.imcap is separate).

Per kind: cross-entropy for (1 - share) of the budget (xe1), and
  xe-only:   cross-entropy for the whole budget, one run from scratch with the same seed (since
             2026-12-08; before, xe1 resumed for the rest: with the end-of-budget cut of the
             rate on by default, a resumed run would cut twice);
  scst-...:  `imcap train --objective scst --init-from xe1/best.imcap` for the rest, one run per
             variant (baseline mean or greedy, <end> in the reward or not, learning rate), and
             per seed with --seeds; the xe-lr2e-4 variant is the control, cross-entropy from the
             same model at SCST's learning rate.
With --scst-steps N every arm after xe1 runs N steps instead of the rest of the budget (variants
compared on equal work); with --anneal-steps N they start from xe1's model trained N more steps
with cross-entropy at 2e-4, one that a smaller step no longer lifts much.
Every model is scored by `imcap predict` (its default search, beam 3) and `imcap eval` on the test
set. The model configuration is the demo's (ResNet-18 from scratch, 32-px input, E 128, H 256,
par inject, batch 100, lr 2e-3). Prints a Markdown table and writes the numbers as JSON.

  /usr/bin/python3 bench/scst_gain.py --imcap build/imcap [--kinds shapes,counts,relations,glyphs,textures]
      [--seconds 200] [--share 0.25] [--variants mean,greedy,mean-noend,xe-lr2e-4] [--out-dir DIR]
      [--seeds 1,2] [--scst-steps N] [--anneal-steps N]
      [--json bench/results/scst-gain.json]
"""
import argparse
import json
import os
import shutil
import sys
import time

from bench_common import run, same_blas_kernels

# "mean" is imcap's defaults (mean baseline, --xe-weight 1, lr 2e-4, --max-length 20, relative
# advantages since 2026-12-07; "mean-raw" without them); "alone" is
# SCST without the references' cross-entropy at self-critical.pytorch's lr 5e-5, sampling at most
# 16 tokens as the former default did (the defaults before 2026-12-07, when the other variants'
# runs were made: those without --lr ran at 5e-5, without --xe-weight at 0, and all at
# --max-length 16; "mean-len16" is today's defaults at the former length).
VARIANTS = {
    "mean": [],
    "alone": ["--xe-weight", "0", "--lr", "5e-5", "--max-length", "16"],
    "greedy": ["--baseline", "greedy"],
    "mean-noend": ["--no-reward-end"],
    "greedy-noend": ["--baseline", "greedy", "--no-reward-end"],
    "mean-lr2e-4": ["--lr", "2e-4"],
    "mean-lr1e-5": ["--lr", "1e-5"],
    "mean-lr1e-4": ["--lr", "1e-4"],
    "mean-s10": ["--samples", "10"],
    "mean-lr1e-4-s10": ["--lr", "1e-4", "--samples", "10"],
    "mean-xe0.2": ["--xe-weight", "0.2"],
    "mean-xe1": ["--xe-weight", "1"],
    "mean-xe1-lr2e-4": ["--xe-weight", "1", "--lr", "2e-4"],
    "mean-xe0.2-lr2e-4": ["--xe-weight", "0.2", "--lr", "2e-4"],
    "mean-xe0.5-lr2e-4": ["--xe-weight", "0.5", "--lr", "2e-4"],
    "mean-xe1-lr5e-4": ["--xe-weight", "1", "--lr", "5e-4"],
    "mean-xe1-lr3e-4": ["--xe-weight", "1", "--lr", "3e-4"],
    "mean-len16": ["--max-length", "16"],
    "mean-len20": ["--max-length", "20"],
    "mean-xe2": ["--xe-weight", "2"],
    "mean-xe2.5": ["--xe-weight", "2.5"],
    "mean-xe5": ["--xe-weight", "5"],
    "mean-xe3": ["--xe-weight", "3"],
    "mean-raw": ["--no-relative-advantage"],
    "scst-only": ["--xe-weight", "0", "--lr", "5e-5"],
    "mean-xe0.5": ["--xe-weight", "0.5"],
    "mean-xe2-raw": ["--xe-weight", "2", "--no-relative-advantage"],
    "mean-xe5-raw": ["--xe-weight", "5", "--no-relative-advantage"],
    # Not SCST: cross-entropy from the same start at SCST's learning rate (a fine-tuning control:
    # how much of SCST's gain a smaller step alone gives).
    "xe-lr2e-4": ["--lr", "2e-4"],
}
# Variants that train with cross-entropy, not SCST.
XE_VARIANTS = {"xe-lr2e-4"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", required=True)
    ap.add_argument("--kinds", default="shapes,counts,relations,glyphs,textures")
    ap.add_argument("--seconds", type=float, default=200, help="total training budget per arm")
    ap.add_argument("--share", type=float, default=0.25, help="share of the budget after xe1")
    ap.add_argument("--variants", default="mean,greedy")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=100, help="validation images (choose best.imcap)")
    ap.add_argument("--test", type=int, default=300, help="held-out test images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default="scst-gain")
    ap.add_argument("--json", default="")
    ap.add_argument("--scst-steps", type=int, default=0,
                    help="run each SCST arm for this many steps instead of the rest of the budget "
                         "(the same work for every variant: compares variants without the noise "
                         "of how many steps fit in the time)")
    ap.add_argument("--seeds", default="1",
                    help="SCST arms run once per seed (comma-separated); the row gives each "
                         "seed's scores and their mean")
    ap.add_argument("--anneal-steps", type=int, default=0,
                    help="start the arms after xe1 from xe1's best model trained this many more "
                         "steps with cross-entropy at lr 2e-4 (seed 1; kept in DIR/anneal-N), "
                         "so that SCST starts from a model that a smaller step no longer lifts, "
                         "as it starts from a converged one on COCO")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the xe1 and xe-only runs of an earlier call with the same --out-dir "
                         "(to add variants)")
    a = ap.parse_args()
    same_blas_kernels()
    imcap = os.path.abspath(a.imcap)
    os.makedirs(a.out_dir, exist_ok=True)
    rest = a.seconds * a.share
    first = a.seconds - rest
    rows = []
    for kind in a.kinds.split(","):
        d = os.path.join(a.out_dir, kind)
        os.makedirs(d, exist_ok=True)
        data, test = os.path.join(d, "data"), os.path.join(d, "test")
        if not os.path.exists(os.path.join(data, "captions_val.json")):
            run([imcap, "synth", "--kind", kind, "--out", data, "--train", str(a.train), "--val",
                 str(a.val), "--seed", "1"], os.path.join(d, "synth.log"))
        if not os.path.exists(os.path.join(test, "captions_val.json")):
            run([imcap, "synth", "--kind", kind, "--out", test, "--train", "1", "--val", str(a.test),
                 "--seed", "1001"], os.path.join(d, "synth-test.log"))
        data_args = ["--annotations", os.path.join(data, "captions_train.json"), "--images",
                     os.path.join(data, "train"), "--val-annotations",
                     os.path.join(data, "captions_val.json"), "--val-images", os.path.join(data, "val"),
                     "--batch-size", "100", "--val-max-images", str(a.val), "--flip-probability", "0",
                     "--log-interval", "25", "--threads", str(a.threads)]
        model_args = ["--encoder", "resnet18", "--embed-size", "128", "--hidden-size", "256",
                      "--inject", "par", "--image-size", "32", "--vocab-threshold", "1"]

        def score(model, name):
            res = os.path.join(d, name + "-results.json")
            run([imcap, "predict", "--model", model, "--annotations",
                 os.path.join(test, "captions_val.json"), "--images", os.path.join(test, "val"),
                 "--out", res, "--threads", str(a.threads)], os.path.join(d, name + "-predict.log"))
            out = run([imcap, "eval", "--annotations", os.path.join(test, "captions_val.json"),
                       "--results", res, "--json"], os.path.join(d, name + "-eval.log"))
            j = json.loads(out[out.index("{"):])
            return {"bleu4": j["Bleu_4"], "cider": j["CIDEr"]}

        def best(out):
            b = os.path.join(out, "best.imcap")
            return b if os.path.exists(b) else os.path.join(out, "last.imcap")

        xe1 = os.path.join(d, "xe1")
        xe_only = os.path.join(d, "xe-only")
        row = {"kind": kind, "budget_s": a.seconds, "xe1_s": first, "rest_s": rest}
        if not (a.reuse and os.path.exists(os.path.join(xe_only, "last.imcap"))):
            shutil.rmtree(xe1, ignore_errors=True)
            run([imcap, "train"] + data_args + model_args +
                ["--seed", "1", "--lr", "2e-3", "--max-seconds", str(first), "--out", xe1], os.path.join(d, "xe1.log"))
            # One run of the whole budget, not xe1 resumed: the end-of-budget cut of the rate
            # (on by default) comes near the end of each run's own --max-seconds.
            shutil.rmtree(xe_only, ignore_errors=True)
            run([imcap, "train"] + data_args + model_args +
                ["--seed", "1", "--lr", "2e-3", "--max-seconds", str(a.seconds), "--out", xe_only],
                os.path.join(d, "xe-only.log"))
        row["xe1"] = score(best(xe1), "xe1")
        row["xe_only"] = score(best(xe_only), "xe-only")
        start = best(xe1)
        prefix = "scst-"
        if a.anneal_steps > 0:
            anneal = os.path.join(d, "anneal-%d" % a.anneal_steps)
            if not (a.reuse and os.path.exists(os.path.join(anneal, "last.imcap"))):
                shutil.rmtree(anneal, ignore_errors=True)
                run([imcap, "train"] + data_args + ["--seed", "1", "--objective", "xe",
                                                    "--init-from", start, "--out", anneal,
                                                    "--max-steps", str(a.anneal_steps)] +
                    VARIANTS["xe-lr2e-4"], os.path.join(d, "anneal-%d.log" % a.anneal_steps))
            start = best(anneal)
            row["anneal_steps"] = a.anneal_steps
            row["anneal"] = score(start, "anneal-%d" % a.anneal_steps)
            prefix = "anneal-%d-then-" % a.anneal_steps
        seeds = a.seeds.split(",")
        stop = ["--max-steps", str(a.scst_steps)] if a.scst_steps > 0 else ["--max-seconds", str(rest)]
        for v in a.variants.split(","):
            per_seed = {}
            for seed in seeds:
                name = prefix + v + ("" if seeds == ["1"] else "-s" + seed)
                out = os.path.join(d, name)
                shutil.rmtree(out, ignore_errors=True)
                objective = "xe" if v in XE_VARIANTS else "scst"
                run([imcap, "train"] + data_args + ["--seed", seed, "--objective", objective,
                                                    "--init-from", start, "--out", out] +
                    stop + VARIANTS[v], os.path.join(d, name + ".log"))
                per_seed[seed] = score(best(out), name)
            if seeds == ["1"]:
                row["scst_" + v] = per_seed["1"]
            else:
                row["scst_" + v] = {k: sum(s[k] for s in per_seed.values()) / len(seeds)
                                    for k in ("bleu4", "cider")}
                row["scst_" + v]["seeds"] = per_seed
        rows.append(row)
        print(json.dumps(row), flush=True)
    variants = a.variants.split(",")
    print("\n| kind | xe %.0f s | xe %.0f s (CIDEr / BLEU-4) | %s |" %
          (first, a.seconds, " | ".join("xe %.0f + scst %.0f s, %s" % (first, rest, v) for v in variants)))
    print("|" + " --- |" * (3 + len(variants)))
    for r in rows:
        cells = ["%.3f / %.3f" % (r["xe1"]["cider"], r["xe1"]["bleu4"]),
                 "%.3f / %.3f" % (r["xe_only"]["cider"], r["xe_only"]["bleu4"])]
        for v in variants:
            s = r["scst_" + v]
            cells.append("%.3f / %.3f (%+.1f %%)" % (s["cider"], s["bleu4"],
                                                     100 * (s["cider"] / r["xe_only"]["cider"] - 1)))
        print("| %s | %s |" % (r["kind"], " | ".join(cells)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
