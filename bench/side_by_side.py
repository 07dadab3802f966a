#!/usr/bin/env python3
"""Runs ../shared/bench/python_baseline.py (its default threads and --threads N) and
`imcap bench --json` with the thread configurations given, alternately, ROUNDS times, and prints
a Markdown table of the medians of each figure with imcap / PyTorch ratios against the better
baseline configuration. The JSON of every run is kept in OUT_DIR.

  /usr/bin/python3 bench/side_by_side.py --imcap build/imcap \
      --baseline ../shared/bench/python_baseline.py [--rounds 1] [--quick] [--out-dir DIR]
      [--imcap-config "--threads 2" --imcap-config "--threads 1 --blas-threads 2" ...]
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

FIGURES = [
    ("encoder_ms_per_image", "batch1", "ms/image", False),
    ("encoder_ms_per_image", "batch8", "ms/image", False),
    ("greedy_decode_ms", None, "ms", False),
    ("decoder_train_step_ms", None, "ms", False),
    ("data_pipeline_images_per_s", None, "images/s", True),
    ("data_pipeline_images_per_s_all_threads", None, "images/s", True),
    ("full_caption_ms", None, "ms", False),
    ("full_caption_over_encoder", None, "x encoder", False),
    ("coco_annotations_load_ms", None, "ms", False),
    ("vocabulary_build_ms", None, "ms", False),
]


def figure(result, key, sub):
    node = result.get(key)
    if node is not None and sub is not None:
        node = node.get(sub)
    return None if node is None else node["median"]


def run(cmd, out_path):
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), p.stderr))
    text = p.stdout[p.stdout.index("{"):]
    with open(out_path, "w") as f:
        f.write(text)
    print("# %-60s %6.1f s  (load %s)" % (" ".join(cmd)[-60:], time.time() - t0,
                                          os.getloadavg()[0]), file=sys.stderr)
    return json.loads(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--threads", type=int, default=2, help="the baseline's --threads run")
    ap.add_argument("--imcap-config", action="append", default=[],
                    help="extra imcap bench arguments, one configuration per flag")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", default="/tmp/imcap-side-by-side")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_common import same_blas_kernels
    same_blas_kernels()
    os.makedirs(a.out_dir, exist_ok=True)
    quick = ["--quick"] if a.quick else []
    configs = [("PyTorch default", [sys.executable, a.baseline] + quick),
               ("PyTorch --threads %d" % a.threads,
                [sys.executable, a.baseline, "--threads", str(a.threads)] + quick)]
    for c in a.imcap_config or [""]:
        configs.append(("imcap " + (c or "default"),
                        [a.imcap, "bench", "--json"] + quick + shlex.split(c)))
    results = {name: [] for name, _ in configs}
    for r in range(a.rounds):
        for i, (name, cmd) in enumerate(configs):
            results[name].append(run(cmd, os.path.join(a.out_dir, "r%d_c%d.json" % (r, i))))

    def med(name, key, sub):
        vals = [figure(res, key, sub) for res in results[name]]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    names = [n for n, _ in configs]
    print("| figure | unit | " + " | ".join(names) + " | best imcap / best PyTorch |")
    print("| --- | --- |" + " --- |" * (len(names) + 1))
    for key, sub, unit, higher_better in FIGURES:
        vals = [med(n, key, sub) for n in names]
        py = [v for n, v in zip(names, vals) if n.startswith("PyTorch") and v is not None]
        im = [v for n, v in zip(names, vals) if n.startswith("imcap") and v is not None]
        ratio = ""
        if py and im:
            best_py = max(py) if higher_better else min(py)
            best_im = max(im) if higher_better else min(im)
            ratio = "%.2f" % (best_im / best_py)
        cells = ["%.1f" % v if v is not None else "–" for v in vals]
        print("| %s%s | %s | %s | %s |" % (key, "." + sub if sub else "", unit, " | ".join(cells),
                                         ratio))


if __name__ == "__main__":
    main()
