#!/usr/bin/env python3
"""Runs bench/gpu_baseline.py (PyTorch eager) and `imcap bench --json` with each configuration
given, alternately (the order reversed every other round), ROUNDS times on the same device, and
prints a Markdown table of each figure's median over the rounds with imcap's speed-up over eager
PyTorch (above 1: imcap is faster; eager / imcap for milliseconds, imcap / eager for images/s)
against the GPU goals: the bfloat16 encoder at 1.3x, batched greedy decoding and the training
step at 1.5x. The JSON of every run is kept in OUT_DIR.

  python3 bench/gpu_side_by_side.py --imcap /tmp/b/imcap [--baseline bench/gpu_baseline.py]
      [--device cuda|cpu] [--rounds 2] [--quick] [--out-dir DIR] [--imcap-config "..." ...]
      [--arch resnet152] [--image-size 224] [--encoder-batch 256] [--decode-batch 128]
      [--train-batch 128] [--vocab 10000] [--embed 256] [--hidden 512] [--seed 0]

The shape arguments go to both programs (SHARED_ARGS maps them to each one's flags).

--self-check runs each program once (the baseline, and imcap when --imcap is given) and checks
that its JSON has every key of the shared format (TOP_KEYS, CONFIG_KEYS and each figure's median,
min and max); it exits 1 when one is missing. CPU smoke test:

  /usr/bin/python3 bench/gpu_side_by_side.py --self-check --device cpu --quick --arch resnet18 \\
      --image-size 64 --encoder-batch 2 --decode-batch 4 --train-batch 8 --vocab 500
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (argparse dest, type, default, gpu_baseline.py flag, imcap bench flag); None: not passed.
# A store_true flag has type bool and is passed without a value when set.
SHARED_ARGS = [
    ("arch", str, "resnet152", "--arch", "--encoder"),
    ("image_size", int, 224, "--image-size", "--image-size"),
    ("encoder_batch", int, 256, "--encoder-batch", "--encoder-batch"),
    ("decode_batch", int, 128, "--decode-batch", "--decode-batch"),
    ("train_batch", int, 128, "--train-batch", "--train-batch"),
    ("vocab", int, 10000, "--vocab", "--vocab"),
    ("embed", int, 256, "--embed", "--embed"),
    ("hidden", int, 512, "--hidden", "--hidden"),
    ("seed", int, 0, "--seed", "--seed"),
    ("quick", bool, False, "--quick", "--quick"),
]
# On the CPU, `imcap bench` measures the CPU figure set unless asked for the device figures.
IMCAP_CPU_ARGS = ["--device-figures"]

# Keys both programs' JSON must have; the shape-dependent ones are filled in by figures().
TOP_KEYS = ["device", "gpu", "torch_version", "config"]
CONFIG_KEYS = ["arch", "image_size", "encoder_batch", "decode_batch", "train_batch",
               "caption_len", "vocab", "embed", "hidden", "max_steps", "reps"]
STAT_KEYS = ["median", "min", "max"]


def figures(a):
    """(path in the JSON, unit, higher is better, goal for imcap's speed-up or None)."""
    n, m = a.encoder_batch, a.decode_batch
    rows = [
        (("encoder_images_per_s", "float32_batch%d" % n), "images/s", True, None),
        (("encoder_images_per_s", "bfloat16_batch%d" % n), "images/s", True, 1.3),
        (("greedy_decode_ms", "batch1"), "ms", False, None),
    ]
    if m != 1:
        rows.append((("greedy_decode_ms", "batch%d" % m), "ms", False, 1.5))
    rows.append((("decoder_train_step_ms",), "ms", False, 1.5))
    return rows


def program_args(a, column):
    """The shared arguments as flags of one program (column 3: baseline, 4: imcap)."""
    out = ["--device", a.device]
    if column == 4 and a.device == "cpu":
        out += IMCAP_CPU_ARGS
    for row in SHARED_ARGS:
        dest, kind, flag = row[0], row[1], row[column]
        value = getattr(a, dest)
        if flag is None:
            continue
        if kind is bool:
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out


def lookup(result, path):
    node = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def missing_keys(result, a):
    """The keys of the shared format that `result` lacks, as dotted paths."""
    missing = [k for k in TOP_KEYS if k not in result]
    missing += ["config." + k for k in CONFIG_KEYS if lookup(result, ("config", k)) is None]
    for path, _, _, _ in figures(a):
        node = lookup(result, path)
        for k in STAT_KEYS:
            if not isinstance(node, dict) or not isinstance(node.get(k), (int, float)):
                missing.append(".".join(path + (k,)))
    return missing


def log(msg):
    print("# " + msg, file=sys.stderr, flush=True)


def run(name, cmd, out_path, timeout):
    """Runs cmd, keeps its JSON in out_path; returns (result or None, stderr)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        return None, "%s\ntimed out after %d s: %s" % (err or "", timeout, shlex.join(cmd))
    except OSError as e:
        return None, "cannot run %s: %s" % (shlex.join(cmd), e)
    with open(out_path + ".stderr", "w") as f:
        f.write(p.stderr)
    log("%-24s %6.1f s, rc %d: %s" % (name, time.time() - t0, p.returncode, shlex.join(cmd)))
    start = p.stdout.find("{")
    try:
        result, _ = json.JSONDecoder().raw_decode(p.stdout[max(start, 0):])
    except ValueError as e:
        if p.returncode != 0:
            return None, p.stderr
        return None, "%s\nno JSON object on stdout (%s):\n%s" % (p.stderr, e, p.stdout[-2000:])
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    if p.returncode != 0:
        # `imcap bench --device` prints the figures it got, {"error": ...} for the others, and
        # then fails: keep what was measured, and fail at the end.
        PARTIAL.append((name, cmd, p.stderr))
        log("%s failed (rc %d) but printed its figures: kept" % (name, p.returncode))
    return result, p.stderr


PARTIAL = []  # (name, cmd, stderr) of runs that failed after printing their JSON


def fail(name, cmd, stderr):
    print("%s failed: %s\n%s" % (name, shlex.join(cmd), stderr[-6000:]), file=sys.stderr)


def self_check(a, configs):
    ok = True
    for i, (name, cmd) in enumerate(configs):
        result, err = run(name, cmd, os.path.join(a.out_dir, "check_c%d.json" % i),
                          a.run_timeout)
        if result is None:
            fail(name, cmd, err)
            ok = False
            continue
        missing = missing_keys(result, a)
        print("%s: %s" % (name, "all keys present" if not missing
                          else "missing " + ", ".join(missing)))
        ok = ok and not missing
    return 0 if ok else 1


def config_differences(results):
    """Lines naming the config values in which the programs' JSON disagree."""
    lines = []
    first_name, first = next(iter(results.items()))
    for name, runs in results.items():
        if name == first_name or not runs or not first:
            continue
        for key in CONFIG_KEYS:
            if key == "reps":
                continue
            x, y = lookup(first[0], ("config", key)), lookup(runs[0], ("config", key))
            if x is not None and y is not None and x != y:
                lines.append("config.%s: %s %s, %s %s" % (key, first_name, x, name, y))
    return lines


def print_tables(a, names, results):
    def per_round(name, path):
        return [lookup(r, path + ("median",)) for r in results[name]]

    def med(name, path):
        vals = [v for v in per_round(name, path) if v is not None]
        return statistics.median(vals) if vals else None

    def fmt(v):
        return "–" if v is None else ("%.1f" % v if abs(v) >= 10 else "%.3g" % v)

    rows = figures(a)
    if max(len(results[n]) for n in names) > 1:
        print("Medians by round:\n")
        print("| figure | " + " | ".join(names) + " |")
        print("| --- |" + " --- |" * len(names))
        for path, _, _, _ in rows:
            cells = ["/".join(fmt(v) for v in per_round(n, path)) for n in names]
            print("| %s | %s |" % (".".join(path), " | ".join(cells)))
        print()
    eager, imcaps = names[0], names[1:]
    print("| figure | unit | " + " | ".join(names) + " | speed-up | goal | met |")
    print("| --- | --- |" + " --- |" * (len(names) + 3))
    met_count = goal_count = 0
    for path, unit, higher_better, goal in rows:
        vals = [med(n, path) for n in names]
        speedups = []
        for n, v in zip(imcaps, vals[1:]):
            if v and vals[0]:
                speedups.append(((v / vals[0]) if higher_better else (vals[0] / v), n))
        cell = "–"
        if speedups:
            best, best_name = max(speedups, key=lambda s: s[0])
            cell = "%.2f" % best + (" (%s)" % best_name if len(imcaps) > 1 else "")
        met = ""
        if goal is not None:
            goal_count += 1
            ok = bool(speedups) and max(s for s, _ in speedups) >= goal
            met_count += ok
            met = "✓" if ok else ("✗" if speedups else "–")
        print("| %s | %s | %s | %s | %s | %s |" % (
            ".".join(path), unit, " | ".join(fmt(v) for v in vals), cell,
            "≥ %.1f" % goal if goal else "", met))
    rounds = len(results[eager])
    print("\n%s (%s, %d round%s%s)" % (
        "goals met: %d of %d" % (met_count, goal_count) if imcaps else "imcap: no figures",
        lookup(results[eager][0], ("gpu",)) or a.device, rounds, "" if rounds == 1 else "s",
        ", --quick" if a.quick else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imcap", help="the imcap program (required unless --self-check)")
    ap.add_argument("--baseline", default=os.path.join(HERE, "gpu_baseline.py"))
    ap.add_argument("--python", default=sys.executable, help="runs the baseline")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--imcap-config", action="append", default=[],
                    help="extra imcap bench arguments, one configuration per flag")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out-dir", default="/tmp/imcap-gpu-side-by-side")
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds per program run")
    ap.add_argument("--budget-s", type=float, default=0,
                    help="seconds for all rounds: no round starts that would not fit, judged by "
                         "the previous one, and no run outlasts the budget (0: no limit)")
    ap.add_argument("--self-check", action="store_true",
                    help="run each program once and check its JSON's keys")
    for dest, kind, default, flag, _ in SHARED_ARGS:
        if kind is bool:
            ap.add_argument(flag, dest=dest, action="store_true")
        else:
            ap.add_argument(flag, dest=dest, type=kind, default=default)
    a = ap.parse_args()
    if a.imcap is None and not a.self_check:
        ap.error("--imcap is required")
    os.makedirs(a.out_dir, exist_ok=True)

    configs = [("eager", [a.python, a.baseline] + program_args(a, 3))]
    if a.imcap is not None:
        for c in a.imcap_config or [""]:
            configs.append(("imcap" + (" " + c if c else ""),
                            [a.imcap, "bench", "--json"] + program_args(a, 4) + shlex.split(c)))
    if a.self_check:
        return self_check(a, configs)

    names = [n for n, _ in configs]
    results = {n: [] for n in names}
    failed = None
    t_start = time.time()
    round_s = 0.0
    for r in range(a.rounds):
        left = a.budget_s - (time.time() - t_start)
        if a.budget_s and r > 0 and left < round_s:
            log("stopping after %d rounds: %.0f s of the budget left, a round took %.0f s"
                % (r, left, round_s))
            break
        t_round = time.time()
        order = list(enumerate(configs))
        for i, (name, cmd) in order if r % 2 == 0 else reversed(order):
            timeout = a.run_timeout
            if a.budget_s:
                timeout = max(10, min(timeout, a.budget_s - (time.time() - t_start)))
            result, err = run(name, cmd, os.path.join(a.out_dir, "r%d_c%d.json" % (r, i)),
                              timeout)
            if result is None:
                failed = (name, cmd, err)
                break
            missing = missing_keys(result, a)
            if missing:
                log("%s: missing keys %s" % (name, ", ".join(missing)))
            results[name].append(result)
        if failed:
            break
        round_s = time.time() - t_round
    for line in config_differences(results):
        log("WARNING: the programs ran different shapes: " + line)
    if failed:
        fail(*failed)
    if all(results[n] for n in names):
        print_tables(a, names, results)
    elif results[names[0]]:  # imcap never finished: still show the eager figures
        print_tables(a, [names[0]], results)
    for partial in PARTIAL:
        fail(*partial)
    return 1 if failed or PARTIAL else 0


if __name__ == "__main__":
    sys.exit(main())
