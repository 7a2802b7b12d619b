"""First contact with a GPU in one command: the CUDA tests, then every speed target of issue #12.

    python benchmarks/gpu.py --json $OUT/gpu.json --deadline 540   # on the lent GPU: one call (below)
    python benchmarks/gpu.py --tiny --json /tmp/gpu.json           # dry run on the CPU: tiny network and sizes
    python benchmarks/gpu.py --only train,sample --json ...        # parts: ceilings, tests, train, sample, large

In this order: the device's two ceilings (a bf16 8192^3 matrix product, a device-to-device copy);
`python -m pytest -m cuda` (JUnit XML beside the JSON, one test at most --test-timeout s); then,
with the `paper` network in bf16, compiled (CUDA graphs for sampling): training at 128 px (celeba
blur, T=200) with its peak memory at batch 128, generation of 64 x 128 px (T=300, Algorithm 2),
restoration of 64 x 128 px (celeba, T=200) and 64 x 32 px (mnist, T=20), training at 32 px (mnist
blur, T=20), generation as `colddiff generate` runs it (step noise drawn on the host), and the
rates that size the later GPU runs (the bundled model's recipe, compiled; reproduce.py's, eager),
training at 128 px again with cudnn.benchmark on (an A/B: colddiff leaves it off), and, last,
one R call on a 12 MP photo whole and in 512 px tiles (restore's large-image path, seconds and peak memory). Training
rows give model FLOP utilisation against the datasheet's 989 TFLOP/s and against the measured
matrix product; sampling rows give the first (compiling) call's time. Each row is set against the
released code's figure on the H100 and the target; a missed target is profiled (torch.profiler)
and its top kernels kept.

A lent GPU comes for minutes, so nothing here may lose what was measured: the JSON is rewritten
after every row, an exception in one row is recorded there and the next row runs, and a row still
running when --deadline (seconds from the start) is near is stopped (SIGALRM) and says so. The
device call (its run tool, timeout_s 600; five files come back):

    export PYTHONUNBUFFERED=1; set -o pipefail; nvidia-smi > $OUT/nvidia-smi.txt;
    python3 benchmarks/gpu.py --json $OUT/gpu.json --deadline 540 2>&1 | tee $OUT/gpu.log
"""
import argparse
import json
import signal
import subprocess
import sys
import time
import traceback
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
    "generate generation, step noise": (None, 4.0),
    # no target: the rates that size the next sessions' runs (bundled.py probes again; reproduce.py --steps)
    "train bundled, small, compiled": (None, None),
    "train reproduce, small, eager": (None, None),
    "train celeba, cudnn.benchmark": (213, 1600),  # an A/B against "train celeba": colddiff leaves cuDNN's heuristics on
    # restore's large-image path on the GPU: one R call on a 12 MP photo, whole and in 512 px tiles
    "R call 12 MP, whole": (None, None),
    "R call 12 MP, 512 px tiles": (None, None),
}
DATASHEET_TFLOPS = 989.0  # H100/H200 SXM dense bf16
STEP_NOISE = 0.0125  # the bundled model's


class OutOfTime(Exception):
    pass


class Clock:
    """Seconds left before --deadline; `limit(reserve)` arms SIGALRM to stop a row that runs into it."""

    def __init__(self, deadline: float):
        self.start, self.deadline = time.monotonic(), deadline

    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.start)

    def limit(self, reserve: float):
        seconds = int(self.left() - reserve)
        if seconds < 1:
            raise OutOfTime(f"skipped: {self.left():.0f} s left of --deadline")

        def ring(*_):
            raise OutOfTime(f"stopped after {seconds} s: --deadline reached")

        signal.signal(signal.SIGALRM, ring)
        signal.alarm(seconds)

    @staticmethod
    def disarm():
        signal.alarm(0)


def ceilings(device, tiny: bool) -> dict:
    """The two numbers every figure is read against: bf16 matrix rate and copy bandwidth (read + write)."""
    if device.type != "cuda":
        return {"matmul_tflops": None, "copy_tb_s": None}
    n = 2048 if tiny else 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    x = torch.randn(2**28, device=device)  # 1 GiB
    y = torch.empty_like(x)

    def timed(fn, reps):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    mm = timed(lambda: a @ b, 10)
    cp = timed(lambda: y.copy_(x), 10)
    return {"matmul_tflops": 2 * n**3 / mm / 1e12, "copy_tb_s": 2 * x.numel() * 4 / cp / 1e12}


def run_tests(json_path: Path, timeout: float, per_test: int) -> dict:
    """`pytest -m cuda`, JUnit XML and durations kept; a test that hangs stops at --test-timeout."""
    import importlib.util

    xml = json_path.with_name(json_path.stem + "-cuda-tests.xml")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-rA", "--durations=0", "-p", "no:cacheprovider", f"--junitxml={xml}",
           str(HERE.parent / "tests")]
    if importlib.util.find_spec("pytest_timeout"):
        cmd[5:5] = [f"--timeout={per_test}"]
    if timeout < 20:
        raise OutOfTime(f"skipped: {timeout:.0f} s for the tests")
    start = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, timeout=timeout)
        out, code = r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out, code = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    json_path.with_name(json_path.stem + "-cuda-tests.log").write_text(out)
    lines = out.strip().splitlines() or ["(no output)"]
    print("\n".join(lines[-40:]), flush=True)
    counts = [line for line in lines if " in " in line and any(w in line for w in (" passed", " failed", " skipped", " error"))]
    return {"command": " ".join(cmd[1:]), "returncode": code, "summary": (counts or lines)[-1].strip("= "), "seconds": time.time() - start}


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


class Session:
    """One run of this script: its results (rewritten to --json after every row) and the rows it measures,
    each under the clock, an exception or the deadline recorded rather than raised."""

    def __init__(self, a):
        self.a, self.clock = a, Clock(a.deadline)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        self.path = Path(a.json)
        self.result = {"device": self.name, "torch": torch.__version__, "command": " ".join(sys.argv), "rows": [], "errors": []}
        try:  # before anything is measured: a --json that cannot be written would lose it all
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.result) + "\n")
        except OSError as e:
            sys.exit(f"gpu.py: error: {self.path}: cannot write there ({e.strerror or e})")
        self.net = "tiny" if a.tiny else "paper"
        self.rows, self.measured = self.result["rows"], None

    def save(self):
        self.path.write_text(json.dumps(self.result, indent=2, default=str) + "\n")

    def attempt(self, label, fn, reserve=15.0):
        """fn() under the clock; an exception or the deadline is recorded, not raised."""
        try:
            self.clock.limit(reserve)
            return fn()
        except Exception as e:  # noqa: BLE001 (a row's failure must not cost the rows after it)
            Clock.disarm()
            message = f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            self.result["errors"].append({"row": label, "error": message, "traceback": traceback.format_exc()[-3000:]})
            print(f"ERROR {message}", flush=True)
            return None
        finally:
            Clock.disarm()
            self.save()

    def add(self, workload, value, unit, extra, run, profile_calls=3):
        released, target = TARGETS[workload]
        met = None if target is None else value >= target if unit == "img/s" else value <= target
        row = {"workload": workload, "value": value, "unit": unit, "released": released, "target": target, "met": met, **extra}
        self.rows.append(row)
        self.save()
        print(json.dumps(row), flush=True)
        if met is False and run is not None and self.clock.left() > 60:
            row["profile"] = self.attempt(f"profile {workload}", lambda: profile(run, profile_calls))

    def train_row(self, case, batch, workload=None, network=None, compile=True, cudnn_benchmark=False, augment=True):
        a = self.a
        args = Namespace(net=network or self.net, batch=4 if a.tiny else batch, steps=2 if a.tiny else 20, warmup=1 if a.tiny else 5,
                         no_compile=not compile, peak_tflops=DATASHEET_TFLOPS, augment=augment)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        try:
            r = train_bench.bench(case, args, self.device)
        finally:
            torch.backends.cudnn.benchmark = False
        mfu_measured = r["tflops"] / self.measured if self.measured else None
        self.add(workload or f"train {case}", r["rate"], "img/s", {"batch": args.batch, "mfu": r["mfu"], "mfu_of_measured_matmul": mfu_measured,
                                                                  "tflops": r["tflops"], "first_steps_s": r["first"]}, r["run"])
        if case == "celeba" and workload is None:
            self.add("peak GiB train celeba", r["peak"] if r["peak"] == r["peak"] else 0.0, "GiB", {"batch": args.batch}, None)
        del r
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def sample_row(self, case, workload, step_noise=0.0):
        a = self.a
        args = Namespace(net=self.net, no_compile=False, n=2 if a.tiny else 64, steps=None, repeat=1 if a.tiny else 3, step_noise=step_noise)
        r = sample.bench(case, args, self.device)
        self.add(workload, r["time"], "s", {"images": args.n, "px": r["size"], "network_calls": r["steps"], "first_call_s": r["first_call"],
                                            "peak_gib": r["peak"]}, r["run"], 1)

    def large_row(self, tile):
        """One R call (eager bf16, `net`) on a 4000 x 3000 image (512 x 384 with --tiny), whole or tiled."""
        import sampling
        import tiles
        import unet

        device, cuda = self.device, self.device.type == "cuda"
        w, h, px = (512, 384, 128) if self.a.tiny else (4000, 3000, 512)
        restore = sampling.make_restorer(unet.build(3, self.net).to(device).eval(), device)
        restore = tiles.tiled(restore, px) if tile else restore
        x = (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)

        def once():
            out = restore(x, 10)
            if cuda:
                torch.cuda.synchronize()
            return out

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        once()
        first = time.perf_counter() - start
        start = time.perf_counter()
        once()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        self.add(f"R call 12 MP, {'512 px tiles' if tile else 'whole'}", seconds, "s",
                 {"px": f"{w}x{h}", "tiles": tiles.tile_count(h, w, px) if tile else 1, "first_call_s": first, "peak_gib": peak}, None)
        if cuda:
            torch.cuda.empty_cache()

    def plan(self, parts: set) -> list:
        """(label, row) in the order of what matters most when time runs short; generation and restore
        celeba share one compiled graph."""
        plan = []
        if "train" in parts:
            plan.append(("train celeba", lambda: self.train_row("celeba", 128)))
        if "sample" in parts:
            plan += [("generate generation", lambda: self.sample_row("generation", "generate generation")),
                     ("restore celeba", lambda: self.sample_row("celeba", "restore celeba")),
                     ("restore mnist", lambda: self.sample_row("mnist", "restore mnist"))]
        if "train" in parts:
            plan.append(("train mnist", lambda: self.train_row("mnist", self.a.mnist_batch)))
        if "sample" in parts:
            plan.append(("generate generation, step noise", lambda: self.sample_row("generation", "generate generation, step noise", STEP_NOISE)))
        if "train" in parts:
            small = "tiny" if self.a.tiny else "small"
            plan += [("train bundled, small, compiled", lambda: self.train_row("bundled", 128, "train bundled, small, compiled", small, augment=False)),
                     ("train reproduce, small, eager", lambda: self.train_row("mnist", 128, "train reproduce, small, eager", small, compile=False)),
                     ("train celeba, cudnn.benchmark", lambda: self.train_row("celeba", 128, "train celeba, cudnn.benchmark", cudnn_benchmark=True))]
        if "large" in parts:  # last: the whole image may not fit (an OutOfMemoryError is recorded, and the tiles still run)
            plan += [("R call 12 MP, whole", lambda: self.large_row(False)), ("R call 12 MP, 512 px tiles", lambda: self.large_row(True))]
        return plan

    def report(self) -> None:
        result = self.result
        print(f"\n{self.name}, torch {torch.__version__}, net={self.net}, bf16, compiled; {time.monotonic() - self.clock.start:.0f} s")
        c = result.get("ceilings") or {}
        if c.get("matmul_tflops"):
            print(f"ceilings: bf16 matmul {c['matmul_tflops']:.0f} TFLOP/s, copy {c['copy_tb_s']:.2f} TB/s")
        if result.get("tests"):
            print(f"pytest -m cuda: {result['tests']['summary']} (exit {result['tests']['returncode']}, {result['tests']['seconds']:.0f} s)")
        print("| workload | colddiff | released code (H100) | target | met | notes |")
        print("|---|---|---|---|---|---|")
        for r in self.rows:
            notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                              if k not in ("workload", "value", "unit", "released", "target", "met", "profile"))
            met = {True: "yes", False: "NO", None: "-"}[r["met"]]
            print(f"| {r['workload']} | {r['value']:,.3g} {r['unit']} | {r['released'] or '-'} | {r['target'] or '-'} | {met} | {notes} |")
        for r in self.rows:
            if r.get("profile"):
                print(f"\n{r['workload']}: top kernels")
                for e in r["profile"][:6]:
                    print(f"  {e['ms_per_call']:9.3f} ms  x{e['calls']:<5} {e['name']}")
        for e in result["errors"]:
            print(f"ERROR {e['error']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the results (rewritten after every row)")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny network, 2 images, few steps (for the CPU)")
    ap.add_argument("--only", default="ceilings,tests,train,sample,large", help="which parts to run (comma-separated)")
    ap.add_argument("--deadline", type=float, default=540, help="seconds from the start by which everything has stopped")
    ap.add_argument("--tests-max", type=float, default=240, help="seconds the CUDA tests may take in all")
    ap.add_argument("--test-timeout", type=int, default=150, help="seconds one CUDA test may take (pytest-timeout, where installed)")
    ap.add_argument("--mnist-batch", type=int, default=1024, help="training batch of the 32 px case")
    a = ap.parse_args()
    run, parts = Session(a), set(a.only.split(","))
    if "ceilings" in parts:
        run.result["ceilings"] = run.attempt("ceilings", lambda: ceilings(run.device, a.tiny)) or {}
        print(json.dumps({"ceilings": run.result["ceilings"]}), flush=True)
    run.measured = (run.result.get("ceilings") or {}).get("matmul_tflops")
    if "tests" in parts:
        run.result["tests"] = run.attempt("tests", lambda: run_tests(run.path, min(a.tests_max, run.clock.left() - 30), a.test_timeout), reserve=5)
    for label, fn in run.plan(parts):
        run.attempt(label, fn)
    run.save()
    run.report()


if __name__ == "__main__":
    main()
