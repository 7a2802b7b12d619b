"""Throughput of one-shot blur D(x0, T) against the released code's T sequential convolutions.

    python benchmarks/degrade.py                  # CPU, and CUDA when there is one
    python benchmarks/degrade.py --device cpu --seq-batch 4

Batch 64 at 128x128, t = T, celeba (T=200, k=15, reflect) and generation (T=300, k=27, circular)
presets. The sequential reference is slow on a CPU, so it may run on a smaller batch
(--seq-batch); its images/s is per image either way, so the speed-up stays comparable.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import operators  # noqa: E402


def sequential_blur(op, x, t):
    """What the released code does: t padded k x k depthwise convolutions, one after another."""
    C = x.shape[1]
    weights = [torch.outer(g, g).float().to(x.device).expand(C, 1, -1, -1) for g in op.kernels[:t]]
    p = op.kernel_size // 2
    for w in weights:
        x = F.conv2d(F.pad(x, (p, p, p, p), mode=op.padding), w, groups=C)
    if op.flat_last and t == op.T:
        x = x.mean((-2, -1), keepdim=True).expand_as(x)
    return x


def timed(fn, device, repeat):
    fn()  # warm-up: FFT plans, cuDNN algorithms, the operator's response tables
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", action="append", help="cpu, cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seq-batch", type=int, default=None, help="batch of the sequential reference (default: --batch on CUDA, 4 on CPU)")
    ap.add_argument("--presets", default="celeba,generation")
    a = ap.parse_args()
    devices = a.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for preset in a.presets.split(","):
            op = operators.make_operator("blur", preset)
            x = torch.rand(a.batch, 3, a.size, a.size, device=device) * 2 - 1
            t = torch.full((a.batch,), op.T, device=device)
            fast = timed(lambda: op.apply(x, t), device, repeat=10)
            nseq = a.seq_batch or (a.batch if device.type == "cuda" else 4)
            xs = x[:nseq]
            seq = timed(lambda: sequential_blur(op, xs, op.T), device, repeat=3 if device.type == "cuda" else 1)
            err = float((op.apply(xs, t[:nseq]) - sequential_blur(op, xs, op.T)).abs().max())
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
            rows.append((name, preset, op.T, op.kernel_size, a.batch / fast, nseq / seq, (a.batch / fast) / (nseq / seq), err))
    print(f"\nblur D(x0, T), {a.size}x{a.size} RGB, batch {a.batch} one-shot; torch {torch.__version__}")
    print("| device | preset | T | k | one-shot img/s | sequential img/s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, preset, T, k, f, s, sp, err in rows:
        print(f"| {name} | {preset} | {T} | {k} | {f:,.0f} | {s:,.1f} | {sp:,.0f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
