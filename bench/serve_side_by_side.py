#!/usr/bin/env python3
"""`imcap serve` against a PyTorch server (bench/serve_baseline.py, as IBM's MAX caption server:
Python's http.server, torchvision transforms, one image per request) with the same weights, on
the same machine, in one run. Both get the same JPEGs at concurrency 1, 8 and 32; prints
images/s and p50/p99 latency per server and concurrency, and whether the captions agree.

  /usr/bin/python3 bench/serve_side_by_side.py --imcap build/imcap [--requests 300]
      [--concurrency 1,8,32] [--threads 2] [--out results.json]

The model is the demo's shape (ResNet-18 at 32 px, embed 128, hidden 256) from a seeded random
initialisation: the notebooks' files written by serve_baseline.py, converted by
`imcap import-pytorch`. Greedy search on both (the notebook's sample()).
"""
import argparse
import glob
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def start(cmd, pattern, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    for line in proc.stdout:
        m = re.search(pattern, line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"{cmd[0]} did not start; see {log_path}")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load(port, bodies, requests, concurrency):
    """Sends `requests` POSTs from `concurrency` threads (one keep-alive connection each);
    returns (images/s, latencies in ms, {image index: caption text}, failures)."""
    latencies, texts, failures = [], {}, [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/caption", body, {"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ok = False
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if ok:
                    latencies.append(ms)
                    texts[i % len(bodies)] = json.loads(data)["captions"][0]["text"]
                else:
                    failures[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return len(latencies) / wall, latencies, texts, failures[0]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--imcap", default="build/imcap")
    p.add_argument("--python", default="/usr/bin/python3")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--imcap-args", default="", help="more options for imcap serve")
    p.add_argument("--out")
    a = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_common import same_blas_kernels
    same_blas_kernels()
    levels = [int(c) for c in a.concurrency.split(",")]
    work = tempfile.mkdtemp(prefix="imcap-serve-bench-")
    subprocess.run([a.imcap, "synth", "--out", os.path.join(work, "data"), "--train", "64",
                    "--val", "0", "--size", "64"], check=True, stdout=subprocess.DEVNULL)
    bodies = [open(f, "rb").read()
              for f in sorted(glob.glob(os.path.join(work, "data", "train", "*.jpg")))]
    model_dir = os.path.join(work, "model")
    subprocess.run([a.python, os.path.join(HERE, "serve_baseline.py"), "--make-model", model_dir],
                   check=True)
    model = os.path.join(model_dir, "model.imcap")
    subprocess.run([a.imcap, "import-pytorch", "--encoder", os.path.join(model_dir, "encoder-1.pkl"),
                    "--decoder", os.path.join(model_dir, "decoder-1.pkl"), "--vocab",
                    os.path.join(model_dir, "vocab.pkl"), "--encoder-arch", "resnet18",
                    "--image-resize", "32", "--image-size", "32", "--out", model],
                   check=True, stdout=subprocess.DEVNULL)
    servers = {}
    imcap_cmd = [a.imcap, "serve", "--model", model, "--port", "0", "--beam", "1", "--threads",
                 str(a.threads)] + a.imcap_args.split()
    servers["imcap"] = start(imcap_cmd, r"listening on http://127\.0\.0\.1:(\d+)",
                             os.path.join(work, "imcap.log"))
    servers["pytorch"] = start(
        [a.python, os.path.join(HERE, "serve_baseline.py"), "--serve", model_dir, "--port",
         str(free_port()), "--threads", str(a.threads)],
        r"listening on http://127\.0\.0\.1:(\d+)", os.path.join(work, "pytorch.log"))
    results = {"requests": a.requests, "threads": a.threads, "imcap_command": " ".join(imcap_cmd),
               "images": len(bodies), "runs": {}}
    texts = {}
    try:
        for name, (_, port) in servers.items():
            load(port, bodies, 2 * len(bodies), 4)  # warm-up: every image once or twice
        for c in levels:
            for name, (_, port) in servers.items():
                rate, lat, seen, failed = load(port, bodies, a.requests, c)
                texts.setdefault(name, {}).update(seen)
                results["runs"][f"{name}/c{c}"] = {
                    "images_per_s": rate, "p50_ms": percentile(lat, 50),
                    "p99_ms": percentile(lat, 99), "failed": failed}
                print(f"{name:8s} concurrency {c:3d}: {rate:7.1f} images/s, p50 "
                      f"{percentile(lat, 50):7.1f} ms, p99 {percentile(lat, 99):7.1f} ms"
                      + (f", {failed} failed" if failed else ""), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    same = sum(texts["imcap"].get(i) == texts["pytorch"].get(i) for i in texts["imcap"])
    results["captions_agree"] = f"{same}/{len(texts['imcap'])}"
    runs = results["runs"]
    print("\n| concurrency | imcap images/s | p50 / p99 ms | PyTorch images/s | p50 / p99 ms | "
          "imcap / PyTorch |\n| --- | --- | --- | --- | --- | --- |")
    for c in levels:
        i, t = runs[f"imcap/c{c}"], runs[f"pytorch/c{c}"]
        print(f"| {c} | {i['images_per_s']:.1f} | {i['p50_ms']:.1f} / {i['p99_ms']:.1f} | "
              f"{t['images_per_s']:.1f} | {t['p50_ms']:.1f} / {t['p99_ms']:.1f} | "
              f"{i['images_per_s'] / t['images_per_s']:.2f}x |")
    if 1 in levels and 8 in levels:
        results["imcap_c8_over_c1"] = runs["imcap/c8"]["images_per_s"] / runs["imcap/c1"]["images_per_s"]
        print(f"\nimcap at concurrency 8 / serial: {results['imcap_c8_over_c1']:.2f}x")
    print(f"captions agree on {results['captions_agree']} images")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
