"""Speed of the operators D(x0, t): throughput on model-sized batches, and cost per photo size.

    python benchmarks/degrade.py                  # blur throughput: CPU, and CUDA when there is one
    python benchmarks/degrade.py --device cpu --seq-batch 4
    python benchmarks/degrade.py --sweep          # every operator, 256 px to 4096 px, old vs new
    python benchmarks/degrade.py --sweep --sizes 512x683,2048x2730 --old eb65bc2
    python benchmarks/degrade.py --sweep --fit --t-frac 0.5 --old ac2181f   # as `colddiff degrade` runs on photos
    python benchmarks/degrade.py --crossover      # dense matmul vs FFT per axis length (DENSE_MAX)

Throughput: batch 64 at 128x128, t = T, celeba (T=200, k=15, reflect) and generation (T=300,
k=27, circular) presets. The sequential reference is slow on a CPU, so it may run on a smaller
batch (--seq-batch); its images/s is per image either way, so the speed-up stays comparable.

Sweep: one RGB image per size, every operator at its largest preset T and t = T, each case in
a fresh process as a user's `colddiff degrade` would run it: seconds of `op.degrade` (set-up
tables included, start-up, decoding and encoding excluded) and the process's peak memory
(resident set on the CPU, which includes ~0.4 GB of torch itself; allocated memory on CUDA). The
old implementation is the operators module of another commit (--old, default the one before the
size work), loaded from git into a temporary folder and run the same way, under a memory limit
(--limit-gb) so that its T x area tables fail instead of swapping. --fit fits each operator to the
image's size first, as `colddiff degrade` does (blur's kernels, the mask's widths grow with it);
--t-frac F degrades to t = round(F T) instead of T (the colour mask's work is at small t).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __name__ == "__main__" and sys.argv[1:2] == ["--one"]:
    sys.path.insert(0, sys.argv[2])  # the code under test, before this checkout
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
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


ROOT = Path(__file__).resolve().parent.parent
SWEEP_OPS = [("blur", "celeba"), ("blur", "generation"), ("mask", "celeba"), ("colour", "generation"), ("pixelate", "celeba"),
             ("snow", "celeba"), ("desaturate", "default"), ("noise", "default"), ("blurdiff", "quartic")]
SWEEP_SIZES = "256x256,512x683,1024x1365,2048x2730,4000x3000,4096x4096"
OLD = "eb65bc2"  # the last commit before FFT blur and the table-free mask


def one_case(code: str, name: str, preset: str, H: int, W: int, device: str, limit_gb: float, fit: bool, t_frac: float) -> None:
    """Child process: degrade one image, print {"s": seconds, "mb": peak MB} or {"error": ...} as JSON."""
    if device == "cpu" and limit_gb:
        lim = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    sys.path.insert(0, code)
    import operators as ops  # noqa: F811 (the module of `code`, old or new)

    dev = torch.device(device)
    op = ops.make_operator(name, preset)
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
    if fit:
        op = op.fit_to(3, H, W)[0]  # an operator's fit is its set-up: timed with the rest
    t = torch.full((1,), round(t_frac * op.T), device=dev)
    try:
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        y = op.degrade(x, t, torch.Generator().manual_seed(1))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert torch.isfinite(y).all()
    except (MemoryError, RuntimeError) as e:  # RLIMIT_AS or CUDA out of memory
        print(json.dumps({"error": "out of memory" if "memory" in str(e).lower() or isinstance(e, MemoryError) else str(e)[:80]}))
        return
    mb = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s": seconds, "mb": mb}))


def run_case(code, name, preset, H, W, device, limit_gb, timeout, fit=False, t_frac=1.0):
    cmd = [sys.executable, __file__, "--one", code, name, preset, str(H), str(W), device, str(limit_gb), str(int(fit)), str(t_frac)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"> {timeout} s"
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return "crashed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:60]
    r = json.loads(lines[-1])
    return r["error"] if "error" in r else f"{r['s']:.2f} s, {r['mb'] / 1024:.2f} GB"


def sweep(a, devices):
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as old_dir:
        codes = {"new": str(ROOT)}
        if a.old != "none":
            for f in ("operators.py", "operator_base.py", "cold.py", "common.py", "errors.py", "seeding.py", "machine.py", "blurdiff.py",
                      "spectral.py"):
                blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{a.old}:{f}"], capture_output=True)
                if blob.returncode == 0:
                    Path(old_dir, f).write_bytes(blob.stdout)
            codes = {"old": old_dir, **codes}
        header = " | ".join(f"{H}x{W}" for H, W in sizes)
        print(f"\nD(x0, t) of one RGB image, t = {a.t_frac:g} T{', fitted to its size' if a.fit else ''}; seconds of op.degrade "
              f"and peak memory; torch {torch.__version__}, {os.cpu_count()} CPUs; old = {a.old}")
        print(f"| device | operator | code | {header} |")
        print("|---|---|---|" + "---|" * len(sizes))
        for device in devices:
            for name, preset in SWEEP_OPS:
                for label, code in codes.items():
                    cells = []
                    for H, W in sizes:
                        cells.append(run_case(code, name, preset, H, W, device, a.limit_gb, a.timeout, a.fit, a.t_frac))
                    print(f"| {device} | {name} {preset} | {label} | " + " | ".join(cells) + " |", flush=True)


def crossover(devices):
    """Dense matmul vs FFT along one axis, for the blur (reflect and circular) and the DCT-II."""
    import spectral

    print("\nms per call on (1, 3, n, n), dense vs FFT; DENSE_MAX =", spectral.DENSE_MAX)
    print("| device | n | blur reflect dense | blur reflect FFT | DCT-II dense | DCT-II FFT |")
    print("|---|---|---|---|---|---|")
    for dev_name in devices:
        device = torch.device(dev_name)
        for n in (32, 64, 128, 192, 256, 384, 512, 1024):
            x = torch.rand(1, 3, n, n, device=device)
            t = torch.full((1,), 200, device=device)
            cells = []
            for make in ("blur", "dct"):
                for limit in (10**9, 0):
                    spectral.DENSE_MAX = limit
                    if make == "blur":
                        ax = spectral.AxisBlur(operators.make_operator("blur", "celeba").kernels, n, "reflect", device)
                        cells.append(timed(lambda: ax(x, t), device, repeat=5))  # noqa: B023 (timed calls it at once)
                    else:
                        cells.append(timed(lambda: spectral.dct(x, -1), device, repeat=5))  # noqa: B023 (timed calls it at once)
            print(f"| {dev_name} | {n} | " + " | ".join(f"{c * 1e3:.2f}" for c in cells) + " |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        code, name, preset, H, W, device, limit, fit, t_frac = sys.argv[2:11]
        return one_case(code, name, preset, int(H), int(W), device, float(limit), fit == "1", float(t_frac))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="cost per image size, every operator, old vs new")
    ap.add_argument("--sizes", default=SWEEP_SIZES, help=f"HxW list for --sweep (default {SWEEP_SIZES})")
    ap.add_argument("--old", default=OLD, help=f"commit of the old implementation, or none (default {OLD})")
    ap.add_argument("--limit-gb", type=float, default=12.0, help="address-space limit of each CPU case (default 12)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per case (default 300)")
    ap.add_argument("--fit", action="store_true", help="--sweep: fit each operator to the image's size, as colddiff degrade does")
    ap.add_argument("--t-frac", type=float, default=1.0, help="--sweep: degrade to t = round(F T) (default 1: t = T)")
    ap.add_argument("--crossover", action="store_true", help="dense matmul vs FFT per axis length")
    ap.add_argument("--device", action="append", help="cpu, cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seq-batch", type=int, default=None, help="batch of the sequential reference (default: --batch on CUDA, 4 on CPU)")
    ap.add_argument("--presets", default="celeba,generation")
    a = ap.parse_args()
    devices = a.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if a.sweep:
        return sweep(a, devices)
    if a.crossover:
        return crossover(devices)
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for preset in a.presets.split(","):
            op = operators.make_operator("blur", preset)
            x = torch.rand(a.batch, 3, a.size, a.size, device=device) * 2 - 1
            t = torch.full((a.batch,), op.T, device=device)
            fast = timed(lambda: op.apply(x, t), device, repeat=10)  # noqa: B023 (timed calls it at once)
            nseq = a.seq_batch or (a.batch if device.type == "cuda" else 4)
            xs = x[:nseq]
            seq = timed(lambda: sequential_blur(op, xs, op.T), device, repeat=3 if device.type == "cuda" else 1)  # noqa: B023
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
