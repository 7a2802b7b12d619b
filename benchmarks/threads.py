"""Training img/s by thread count, alone and beside a busy process (a shared CPU).

    python benchmarks/threads.py               # tiny net, 28 px, 80 steps x 16 per case
    python benchmarks/threads.py --net small --steps 40

Each case runs `colddiff train` in a pipe with --threads 1, 2, ... (up to the cores) and with no
--threads (colddiff's default: the cores other processes are not using), first alone, then with
one Python process spinning on a core. img/s is the rate of the run's last progress line.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rate(data: Path, out: Path, net: str, steps: int, threads) -> float:
    cmd = [sys.executable, "-m", "colddiff", "train", str(data), "-o", str(out), "--net", net, "--steps", str(steps), "--batch", "16",
           "--accumulate", "1", "--no-augment", "--force", "--sample-every", str(steps), "--save-every", str(steps)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    err = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stderr
    found = re.findall(r"([\d,.]+) img/s", err)
    return float(found[-1].replace(",", "")) if found else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="tiny")
    ap.add_argument("--steps", type=int, default=80)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    choices = sorted({1, 2, cores}) + [None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(ROOT / "tests" / "data" / "fmnist", data)
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            time.sleep(1.0 if busy else 0)
            try:
                for threads in choices:
                    rows.append((busy, threads, rate(data, Path(tmp) / "m.safetensors", a.net, a.steps, threads)))
            finally:
                if spinner:
                    spinner.kill()
    print(f"\ntraining img/s, net {a.net}, 28 px, batch 16, {a.steps} steps, {cores} CPUs")
    print("| neighbour | " + " | ".join("default" if t is None else f"{t} thread{'s' if t > 1 else ''}" for t in choices) + " |")
    print("|---|" + "---|" * len(choices))
    for busy in (False, True):
        cells = [f"{r:,.1f}" for b, _, r in rows if b == busy]
        print(f"| {'one busy process' if busy else 'none'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
