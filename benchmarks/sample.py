"""Time to restore a batch with Algorithm 2 (tacos): the paper network, T network calls.

    python benchmarks/sample.py                          # CUDA: 64 x 128 px celeba blur (T=200), 64 x 32 px mnist (T=20)
    python benchmarks/sample.py --device cpu --net tiny --n 8

Uses the same path as `colddiff restore`: sampling.make_restorer (bf16 autocast, channels_last,
torch.compile with CUDA graphs unless --no-compile) and samplers.tacos. Untrained weights: the
time does not depend on them. Reports the median of --repeat runs after a warm-up run.
--step-noise DELTA adds `colddiff generate`'s noise after every step, drawn on the host from each
image's own generator (the default way generation breaks the symmetry of a flat x_T).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import operators  # noqa: E402
import samplers  # noqa: E402
import sampling  # noqa: E402
import unet  # noqa: E402

CASES = {"celeba": ("blur", "celeba", 128, 3), "mnist": ("blur", "mnist", 32, 1), "generation": ("blur", "generation", 128, 3)}


def bench(case, a, device):
    op_name, preset, size, channels = CASES[case]
    op = operators.make_operator(op_name, preset)
    net = unet.build(channels, a.net).to(device).eval()
    restore = sampling.make_restorer(net, device, compile=device.type == "cuda" and not a.no_compile)
    x0 = torch.rand(a.n, channels, size, size, device=device) * 2 - 1
    x_t = op.apply(x0, op.T)
    delta = getattr(a, "step_noise", 0.0)
    hidden = {"seed": torch.arange(a.n)} if delta else None  # each image's noise stream, as generate draws it

    def run():
        out = samplers.tacos(restore, op, x_t, op.T, hidden, steps=a.steps, step_noise=delta)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    start = time.perf_counter()
    run()  # warm-up: compilation, graph capture, operator tables
    first = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    noise = f", step noise {delta:g}" if delta else ""
    return dict(case=f"{case} {op_name} T={op.T}{noise}", n=a.n, size=size, steps=a.steps or op.T, time=sorted(times)[len(times) // 2], peak=peak,
                first_call=first, run=run)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--net", default="paper")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default T)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="celeba,mnist")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--step-noise", type=float, default=0.0, help="noise after every step, as colddiff generate adds it")
    a = ap.parse_args()
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [bench(c, a, device) for c in a.cases.split(",")]
    print(f"\ntacos sampling, net={a.net}, {name}, torch {torch.__version__}, compile={device.type == 'cuda' and not a.no_compile}")
    print("| case | images | px | network calls | seconds | first call s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "n/a" if r["peak"] != r["peak"] else f"{r['peak']:.1f}"
        print(f"| {r['case']} | {r['n']} | {r['size']} | {r['steps']} | {r['time']:.2f} | {r['first_call']:.1f} | {peak} |")


if __name__ == "__main__":
    main()
