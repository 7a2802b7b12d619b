"""kill -9 soak: a training run with --save-every 1, killed at random moments, resumed each time.

    python benchmarks/soak.py                 # 20 kills (about 2 minutes on 2 CPU cores)
    python benchmarks/soak.py --kills 50 --seed 3

Each round starts `colddiff train ... --save-every 1 --resume`, sends SIGKILL after a random
delay (start-up, data loading, training steps and checkpoint writes are all hit), then checks
that the model and the training state on disk both load, that their steps agree within one save
(the state is written first), and that the next round resumes from the state's step. A last run
finishes cleanly. Prints one line per kill and a summary; exits 1 on the first failure.
"""
import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import checkpoint  # noqa: E402
import unet  # noqa: E402

ARGS = ["--net", "tiny", "--batch", "8", "--accumulate", "1", "--no-augment", "--save-every", "1", "--sample-every", "1000000", "--seed", "0"]


def saved_steps(out: Path):
    """(model step, state step) of what is on disk (None where absent); raises if either is unloadable."""
    model = checkpoint.load_model(out)[2]["step"] if out.exists() else None
    state = None
    if checkpoint.state_path(out).exists():
        net, ema = unet.build(1, "tiny"), unet.build(1, "tiny")
        opt = torch.optim.Adam(net.parameters())
        state = checkpoint.load_training_state(out, net, ema, opt, torch.Generator())
    return model, state


def soak(kills: int, seed: int, low: float, high: float, log=print) -> list[dict]:
    rng = random.Random(seed)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(ROOT / "tests" / "data" / "fmnist", data)
        out = Path(tmp) / "m.safetensors"
        cmd = [sys.executable, "-m", "colddiff", "train", str(data), "-o", str(out), *ARGS, "--steps"]
        last_state = 0
        for i in range(kills):
            proc = subprocess.Popen(cmd + ["100000"] + (["--resume"] if out.exists() else []), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            delay = rng.uniform(low, high)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            model, state = saved_steps(out)
            ok = (model is None) == (state is None) or (model is None and state == 1)
            ok = ok and (state is None or state >= last_state) and (model is None or state - model in (0, 1))
            rounds.append({"kill": i + 1, "after_s": round(delay, 2), "model_step": model, "state_step": state, "ok": ok})
            log(f"kill {i + 1:3d} after {delay:5.2f} s: model at step {model}, state at step {state}" + ("" if ok else "  FAILED"))
            if not ok:
                return rounds
            last_state = state or 0
        final = subprocess.run(cmd + [str(last_state + 3), "--resume"], cwd=ROOT, capture_output=True)
        model, state = saved_steps(out)
        done = final.returncode == 0 and model == state == last_state + 3 and not list(Path(tmp).glob(".*.tmp"))
        rounds.append({"kill": None, "model_step": model, "state_step": state, "ok": done, "stderr": final.stderr.decode()[-300:]})
        log(f"final run to step {last_state + 3}: exit {final.returncode}, model at {model}, state at {state}" + ("" if done else "  FAILED"))
    return rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--low", type=float, default=1.0, help="shortest delay before the kill, seconds")
    ap.add_argument("--high", type=float, default=10.0, help="longest delay before the kill, seconds")
    a = ap.parse_args()
    rounds = soak(a.kills, a.seed, a.low, a.high)
    ok = all(r["ok"] for r in rounds)
    trained = sum(1 for r in rounds if r.get("kill") and r["state_step"])
    print(f"\n{len(rounds) - 1} kills, {trained} with a checkpoint on disk, every file loaded and resumed: {'yes' if ok else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
