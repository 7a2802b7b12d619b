"""Retrain the bundled model on a GPU inside a fixed time (issue #12, item 3): one device call.

    python3 benchmarks/bundled.py --data runs/data/train --budget 540 --out $OUT   # on the lent GPU
    python benchmarks/bundled.py --data tests/data/fmnist --budget 60 --out /tmp/b --tiny   # dry run, CPU

The recipe is the README's for `models/fmnist-blur-gen.safetensors` (blur generation preset, the
`small` network, cosine lr, EMA, step noise 0.0125, 50 sampling steps), at a GPU's batch. The
cosine schedule must know where it ends, so the run is sized before it starts rather than cut off:

1. probe: that training step (benchmarks/train.py's bench: train.make_step, compiled, bf16, and
   the EMA update) for --probe-steps steps, timed after the compiling ones;
2. size: --steps = what the probed rate fits into the rest of --budget, less the run's own start
   (loading the data, compiling again from the warm cache, the last save);
3. train: `colddiff train` with those steps, stopped with SIGTERM (which saves) if it runs over.

--out gets the model, its metrics.jsonl and last sample grid, and bundled.json (the exact command,
the probed rate, the steps, the seconds): four files, where a device call brings back eight of at
most 16 MB; the training state (43 MB) stays behind. Scoring is benchmarks/generation.py's, on any machine.
Why `small`: the file must come back through a device call (16 MB: `small` is 14.5) and
`colddiff generate --n 64` must stay under a minute on a CPU with it (17 s at 50 steps).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from gpu import train_bench  # noqa: E402  (benchmarks/train.py, loaded beside the top-level train.py)

RECIPE = ["--op", "blur", "--preset", "generation", "--accumulate", "1", "--lr-schedule", "cosine", "--ema-decay", "0.995",
          "--ema-every", "10", "--ema-start", "2000", "--no-augment", "--seed", "0", "--sampling-steps", "50", "--step-noise", "0.0125"]
START_SECONDS = 45  # the run's own start: data (6 s for 60,000 PNGs), prior, compiling from the warm cache, the last save


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the Fashion-MNIST train split (shared/tools/fashion_mnist.py --split train)")
    ap.add_argument("--out", required=True, help="folder for the model, its run folder and bundled.json")
    ap.add_argument("--budget", type=float, default=540, help="seconds for everything (probe, sizing, training)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--net", default="small")
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--tiny", action="store_true", help="dry run on the CPU: tiny network, small batch, few probe steps")
    a = ap.parse_args()
    if not Path(a.data).is_dir():
        sys.exit(f"bundled.py: error: {a.data}: no such folder (the train split: shared/tools/fashion_mnist.py --split train)")
    t0 = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, batch, probe_steps = ("tiny", 8, 5) if a.tiny else (a.net, a.batch, a.probe_steps)
    probed = train_bench.bench("bundled", argparse.Namespace(net=net, batch=batch, steps=probe_steps, warmup=3, augment=False,
                                                             no_compile=False, peak_tflops=989.0), device)
    rate, compiled = probed["rate"], probed["first"]
    left = a.budget - (time.monotonic() - t0) - START_SECONDS
    steps = max(1, int(0.95 * left * rate / batch))
    print(f"probe: {rate:,.0f} img/s at batch {batch} ({compiled:.0f} s to compile); {left:.0f} s left: {steps:,} steps", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bundled-"))
    model = work / "fmnist-blur-gen.safetensors"
    args = ["train", a.data, "-o", str(model), "--net", net, "--steps", str(steps), "--batch", str(batch), "--lr", f"{a.lr:g}", *RECIPE,
            "--save-every", str(max(1, steps // 4)), "--sample-every", str(max(1, steps // 8)), "--device", device.type]
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "colddiff", *args], cwd=ROOT)
    try:
        code = proc.wait(timeout=max(10.0, a.budget - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the step finishes, the model is saved
        code = proc.wait()
    seconds = time.monotonic() - start
    if model.exists():
        shutil.copy(model, out / model.name)
    run = model.with_suffix("").with_name(model.stem + ".run")
    grids = sorted(run.glob("step_*.png"))
    for f in [run / "metrics.jsonl", *grids[-1:]]:  # a device call brings back 8 files at most
        if f.exists():
            shutil.copy(f, out / f.name)
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "command": "colddiff " + " ".join(args).replace(str(model), model.name).replace(a.data, "fmnist-train"),
              "probe_img_per_s": rate, "probe_compile_s": compiled, "steps": steps, "train_seconds": seconds, "exit": code,
              "last": json.loads(lines[-1]) if lines else None, "total_seconds": time.monotonic() - t0}
    (out / "bundled.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    sys.exit(0 if code == 0 else 1)


if __name__ == "__main__":
    main()
