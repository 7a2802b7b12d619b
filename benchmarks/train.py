"""Training throughput of the restoration network: images/s, model FLOP utilisation, peak memory.

    python benchmarks/train.py                         # on CUDA: paper net, 128 px celeba + 32 px mnist blur
    python benchmarks/train.py --device cpu --net tiny --batch 16 --cases mnist
    python benchmarks/train.py --device cpu --net tiny --batch 32 --cases noise --threads 1 --variants before,after
    python benchmarks/train.py --device cpu --net adm-small --net-param dim=64 --batch 32 --cases noise --threads 1
    python benchmarks/train.py --device cpu --net tiny,adm-small --batch 32 --cases blurdiff --threads 1 --rounds 2
    python benchmarks/train.py --device cpu --net adm-small --precision fp32,bf16 --batch 32 --cases blurdiff --rounds 2

Times the same step `colddiff train` runs (train.make_step: degrade, augment, bf16 autocast,
channels_last, fused Adam, torch.compile on CUDA), with the EMA update as the loop makes it
after --ema-start (every 10 steps). FLOPs of one forward come from
unet.forward_flops (torch.utils.flop_counter on the meta device), times 3 for forward and backward;
MFU divides the achieved rate by --peak-tflops (H100 SXM dense bf16: 989). On the CPU the rate is
read against this machine's own 1024^2 fp32 matmul, measured right after each row on the same threads:
a shared host's speed drifts by tens of percent within minutes, and a row's share is only meaningful
against the machine as it was while that row ran; a bf16 row (--precision bf16, colddiff train's) is
read against the bf16 matmul too. --variants before,after
times the step with and without the CPU speed-ups (unet.DepthwiseConv2d in channels_last), alternately.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import machine  # noqa: E402
import operators  # noqa: E402
import train as T  # noqa: E402
import unet  # noqa: E402

# case: (operator, preset, px, channels); bundled: the first bundled model's recipe; noise: fmnist-noise-gen's;
# blurdiff: the default generator's (fmnist-blurdiff-gen)
CASES = {"celeba": ("blur", "celeba", 128, 3), "mnist": ("blur", "mnist", 32, 1), "bundled": ("blur", "generation", 28, 1),
         "noise": ("noise", "default", 28, 1), "blurdiff": ("blurdiff", "quartic", 28, 1)}
VARIANTS = {"before": False, "after": True}  # unet.DepthwiseConv2d.channels_last
# what bench() reads beyond the options every caller passes (gpu.py and bundled.py pass those alone)
OPTIONAL = dict(net_param=None, variants="after", precision="auto", augment=True)


def bench(case, args, device, variant="after", net_name=None, precision="auto"):
    name, preset, size, channels = CASES[case]
    args = argparse.Namespace(**{**OPTIONAL, **vars(args)})
    unet.DepthwiseConv2d.channels_last = VARIANTS[variant]
    cuda = device.type == "cuda"
    op = operators.make_operator(name, preset)
    net_name = net_name or args.net
    overrides = unet.parse_overrides(net_name, args.net_param or [])
    net = unet.build(channels, net_name, **overrides).to(device)
    ema = unet.build(channels, net_name, **overrides).to(device).requires_grad_(False)
    flops = 3 * unet.forward_flops(net.config, size, size)  # forward + backward (twice the forward's work)
    if cuda:
        net, ema = net.to(memory_format=torch.channels_last), ema.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=2e-5, **({"fused": True} if cuda else {}))
    model = torch.compile(net) if cuda and not args.no_compile else net
    cfg = T.TrainConfig(batch=args.batch, accumulate=1, augment=args.augment, precision=precision)
    step = T.make_step(model, opt, op, cfg, device)
    data = torch.randint(0, 256, (4096, channels, size, size), dtype=torch.uint8, device=device)
    rng = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step(data, rng)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        step(data, rng)  # float(loss) inside synchronises every step, as training does
        T.update_ema(ema, net, cfg.ema_start + 1 + i, cfg)
    elapsed = time.perf_counter() - start
    rate = args.steps * args.batch / elapsed
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    mfu = rate * flops / (args.peak_tflops * 1e12) if cuda else float("nan")
    label = (f"{case} {name} T={op.T}" + (f", {net_name}" if "," in args.net else "")
             + (f", {variant}" if len(args.variants.split(",")) > 1 else "") + (f", {precision}" if "," in args.precision else ""))
    bf16 = machine.uses_bf16(device, precision)
    return dict(case=label, size=size, batch=args.batch, rate=rate, tflops=rate * flops / 1e12, mfu=mfu, peak=peak,
                gflop=flops / 1e9, first=first, run=lambda: step(data, rng), matmul=matmul_gflops(device, seconds=1.0),
                matmul_bf16=matmul_gflops(device, seconds=1.0, dtype=torch.bfloat16) if bf16 else None)


def matmul_gflops(device, n: int = 1024, seconds: float = 2.0, dtype=torch.float32) -> float:
    """This machine's own fp32 rate on an n x n matmul, on the threads the training step uses: the
    ceiling a training step's GFLOP/s is read against (issue #42: 101 GFLOP/s on one thread here)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return calls * 2 * n**3 / (time.perf_counter() - start) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--net", default="paper", help="a network preset, or several (adm-small,adm-cpu) timed alternately in one run")
    ap.add_argument("--net-param", action="append", metavar="KEY=VALUE", help="an override of --net's preset, as colddiff train takes it")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cases", default="celeba,mnist")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--variants", default="after", help="before,after: without and with the CPU speed-ups, alternately")
    ap.add_argument("--rounds", type=int, default=1, help="times each case is measured (alternating the variants)")
    ap.add_argument("--precision", default="auto", help="colddiff train --precision: auto, fp32, bf16, or several (fp32,bf16) alternately")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    if "," in a.net and a.net_param:
        ap.error("--net-param overrides one --net preset, not several")
    rows = [bench(c, a, device, v, n, p) for c in a.cases.split(",") for _ in range(a.rounds) for n in a.net.split(",")
            for v in a.variants.split(",") for p in a.precision.split(",")]
    net = " ".join([a.net, *(a.net_param or [])])
    print(f"\ntraining step, net={net}, {name}, torch {torch.__version__}, compile={device.type == 'cuda' and not a.no_compile}; "
          "1024^2 fp32 matmul measured right after each row")
    print("| case | px | batch | img/s | GFLOP/img (fwd+bwd) | GFLOP/s | fp32 matmul GFLOP/s | of it | bf16 matmul GFLOP/s | of it | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu, peak = ("n/a", "n/a") if r["mfu"] != r["mfu"] else (f"{r['mfu']:.1%}", f"{r['peak']:.1f}")
        gflops = r["tflops"] * 1e3
        bf16 = f"{r['matmul_bf16']:,.1f} | {gflops / r['matmul_bf16']:.0%}" if r["matmul_bf16"] else "n/a | n/a"
        print(f"| {r['case']} | {r['size']} | {r['batch']} | {r['rate']:,.1f} | {r['gflop']:.2f} | {gflops:,.1f} | "
              f"{r['matmul']:,.1f} | {gflops / r['matmul']:.0%} | {bf16} | {mfu} | {peak} |")


if __name__ == "__main__":
    main()
