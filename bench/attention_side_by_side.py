#!/usr/bin/env python3
"""The attention decoder side by side: bench/attention_baseline.py (PyTorch, sgrvinod's
DecoderWithAttention) and `imcap bench --only attention --json`, alternately, ROUNDS times, with
the same threads and shapes (P = 49 cells of 2048 channels, E = H = A = 512, V = 10000). Prints a
Markdown table of the medians with the PyTorch / imcap speed-ups, and imcap's attention step
against its Show and Tell step at the same H and V. The JSON of every run is kept in OUT_DIR.

  /usr/bin/python3 bench/attention_side_by_side.py --imcap build/imcap [--threads 2]
      [--rounds 1] [--quick] [--out-dir DIR]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import run, same_blas_kernels  # noqa: E402

FIGURES = [("attention_greedy_ms", "batch1"), ("attention_greedy_ms", "batch128"),
           ("attention_train_step_ms", None)]


def median_of(results, key, sub):
    vals = []
    for r in results:
        node = r.get(key)
        if node is not None and sub is not None:
            node = node.get(sub)
        if node is not None:
            vals.append(node["median"])
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", default="/tmp/imcap-attention-side-by-side")
    a = ap.parse_args()
    same_blas_kernels()
    os.makedirs(a.out_dir, exist_ok=True)
    quick = ["--quick"] if a.quick else []
    here = os.path.dirname(os.path.abspath(__file__))
    configs = {
        "PyTorch": [sys.executable, os.path.join(here, "attention_baseline.py"), "--threads",
                    str(a.threads)] + quick,
        "imcap": [a.imcap, "bench", "--only", "attention", "--json", "--threads",
                  str(a.threads)] + quick,
    }
    results = {name: [] for name in configs}
    for r in range(a.rounds):
        for name, cmd in configs.items():
            log = os.path.join(a.out_dir, "r%d_%s.json" % (r, name))
            out = run(cmd, log)
            results[name].append(json.loads(out[out.index("{"):out.rindex("}") + 1]))
    print("| figure | PyTorch ms | imcap ms | PyTorch / imcap |")
    print("| --- | --- | --- | --- |")
    for key, sub in FIGURES:
        py, im = median_of(results["PyTorch"], key, sub), median_of(results["imcap"], key, sub)
        ratio = "%.2f" % (py / im) if py and im else "–"
        print("| %s%s | %s | %s | %s |" % (key, "." + sub if sub else "",
                                           "%.1f" % py if py else "–",
                                           "%.1f" % im if im else "–", ratio))
    for sub in ("batch1", "batch128"):
        att = median_of(results["imcap"], "attention_greedy_ms", sub)
        st = median_of(results["imcap"], "show_tell_greedy_ms", sub)
        if att and st:
            print("| imcap attention step / Show and Tell step, %s | | | %.2f |" % (sub, att / st))


if __name__ == "__main__":
    main()
