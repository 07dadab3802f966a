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
