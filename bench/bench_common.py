"""Helpers shared by the bench/ scripts that drive the imcap command line."""
import subprocess
import sys
import time


def run(cmd, log_path):
    """Runs cmd, writes its output to log_path, exits with its tail if it fails; returns stdout."""
    t0 = time.time()
    with open(log_path, "w") as log:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(p.stdout)
    if p.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stdout[-3000:]))
    print("# %-72s %6.1f s" % (" ".join(cmd)[-72:], time.time() - t0), file=sys.stderr, flush=True)
    return p.stdout


def same_blas_kernels():
    """Where OpenBLAS would fall back to its SSE3 (Prescott) kernels on a CPU with AVX2 and FMA,
    as Debian 12's does on Xeons newer than it, sets OPENBLAS_CORETYPE for this process and its
    children as imcap's CLI does for itself (docs/performance.md#openblas-kernels), so that the
    PyTorch side of a comparison runs the same kernels as imcap. Returns the value in force."""
    import os
    if "OPENBLAS_CORETYPE" in os.environ:
        return os.environ["OPENBLAS_CORETYPE"]
    probe = ("import ctypes\nl = ctypes.CDLL('libopenblas.so.0')\n"
             "l.openblas_get_corename.restype = ctypes.c_char_p\n"
             "print(l.openblas_get_corename().decode())")
    try:
        core = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if core.lower() != "prescott":
        return None
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not {"avx2", "fma"} <= flags:
        return None
    chosen = "SkylakeX" if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags else "Haswell"
    os.environ["OPENBLAS_CORETYPE"] = chosen
    print("# OpenBLAS falls back to Prescott here: OPENBLAS_CORETYPE=%s for both sides" % chosen,
          file=sys.stderr)
    return chosen
