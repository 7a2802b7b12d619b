"""First contact with a GPU in one command: the CUDA tests, then every speed target of issue #12.

    python benchmarks/gpu.py --json $OUT/gpu.json            # on the lent H100: fits one 10-minute call
    python benchmarks/gpu.py --tiny --json /tmp/gpu.json     # dry run on the CPU: tiny network and sizes
    python benchmarks/gpu.py --only train,sample --json ...  # parts: tests, train, sample

Runs `python -m pytest -m cuda` (skip with --no-tests), then times, with the `paper` network in bf16,
compiled (CUDA graphs for sampling): training at 128 px (celeba blur, T=200) and 32 px (mnist blur,
T=20) with model FLOP utilisation; generation of 64 x 128 px (blur generation preset, T=300,
Algorithm 2) and restoration of 64 x 128 px (celeba, T=200) and 64 x 32 px (mnist, T=20), with the
first (compiling) call's time beside each; peak memory of training at batch 128, 128 px. Each row is
set against the released code's figure on the same H100 and the target. A missed target is
profiled (torch.profiler, a few steps) and its top kernels are printed and kept in the JSON.
"""
import argparse
import json
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _benchmark(name):
    """benchmarks/NAME.py as a module (benchmarks/train.py would shadow the top-level train.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sample, train_bench = _benchmark("sample"), _benchmark("train")

# (workload, released code on the H100, target); times in seconds, rates in img/s
TARGETS = {
    "train celeba": (213, 1600),
    "train mnist": (463, 10000),
    "generate generation": (94.0, 4.0),
    "restore celeba": (28.4, 2.5),
    "restore mnist": (2.81, 0.1),
    "peak GiB train celeba": (None, 40.0),
}


def run_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(HERE.parent / "tests")]
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(r.stdout[-4000:], r.stderr[-2000:], sep="\n", flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": r.returncode, "summary": last, "seconds": time.time() - start}


def profile(fn, steps: int = 3) -> list:
    """The top kernels of a few calls of `fn`, by device time (CPU time without a GPU)."""
    from torch.profiler import ProfilerActivity

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:12]
    return [{"name": e.key[:90], "ms_per_call": getattr(e, key, 0) / 1e3 / steps, "calls": e.count // steps} for e in events]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny network, 2 images, few steps (for the CPU)")
    ap.add_argument("--only", default="tests,train,sample", help="which parts to run (comma-separated), to split the work over calls")
    ap.add_argument("--mnist-batch", type=int, default=1024, help="training batch of the 32 px case")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {"device": name, "torch": torch.__version__, "command": " ".join(sys.argv), "rows": []}
    parts = set(a.only.split(","))
    if "tests" in parts:
        result["tests"] = run_tests()
    net = "tiny" if a.tiny else "paper"
    rows = result["rows"]

    def add(workload, value, unit, extra, run, profile_calls=3):
        released, target = TARGETS[workload]
        met = value >= target if unit == "img/s" else value <= target
        row = {"workload": workload, "value": value, "unit": unit, "released": released, "target": target, "met": met, **extra}
        if not met and run is not None:
            row["profile"] = profile(run, profile_calls)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)

    for case, batch in (("celeba", 128), ("mnist", a.mnist_batch)) if "train" in parts else ():
        args = Namespace(net=net, batch=4 if a.tiny else batch, steps=2 if a.tiny else 20, warmup=1 if a.tiny else 5, no_compile=False, peak_tflops=989.0)
        r = train_bench.bench(case, args, device)
        add(f"train {case}", r["rate"], "img/s", {"batch": args.batch, "mfu": r["mfu"], "tflops": r["tflops"]}, r["run"])
        if case == "celeba":
            add("peak GiB train celeba", r["peak"] if r["peak"] == r["peak"] else 0.0, "GiB", {"batch": args.batch}, None)
        del r
        torch.cuda.empty_cache() if device.type == "cuda" else None
    for case, workload in (("generation", "generate generation"), ("celeba", "restore celeba"), ("mnist", "restore mnist")) if "sample" in parts else ():
        args = Namespace(net=net, no_compile=False, n=2 if a.tiny else 64, steps=None, repeat=1 if a.tiny else 3)
        r = sample.bench(case, args, device)
        add(workload, r["time"], "s", {"images": args.n, "px": r["size"], "network_calls": r["steps"], "first_call_s": r["first_call"]}, r["run"], 1)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{name}, torch {torch.__version__}, net={net}, bf16, compiled")
    if "tests" in result:
        print(f"pytest -m cuda: {result['tests']['summary']} (exit {result['tests']['returncode']})")
    print("| workload | colddiff | released code (H100) | target | met | notes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k not in ("workload", "value", "unit", "released", "target", "met", "profile"))
        print(f"| {r['workload']} | {r['value']:,.3g} {r['unit']} | {r['released'] or '-'} | {r['target']} | {'yes' if r['met'] else 'NO'} | {notes} |")
    for r in rows:
        if "profile" in r:
            print(f"\n{r['workload']}: top kernels")
            for e in r["profile"][:6]:
                print(f"  {e['ms_per_call']:9.3f} ms  x{e['calls']:<5} {e['name']}")


if __name__ == "__main__":
    main()
