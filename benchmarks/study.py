"""Generators at one equal CPU budget: which method and network learns fastest on 2 CPU cores (issue #42).

    python benchmarks/study.py --train runs/data/train --test runs/data/test --out runs/study --minutes 15

Every run gets the same budget of one CPU thread's time (--minutes), two runs side by side on the
2-core machine. A run's step count is that budget times the img/s its own training step measured
on one thread at the start (calibrate), so a cosine lr ends where the budget does and a run that
another job slowed down still trains the same amount. Each run keeps a snapshot of its model at
every quarter of the budget (the FCD-vs-minutes curve). Scoring is benchmarks/generation.py's
protocol: FCD and diversity of n generated images against the first n test images, in the
features of its classifier; the final models at --n on two generation seeds, the snapshots before
them at --n-curve on seed 0 (a curve's points at fewer images, to keep its cost down).
Every network samples with 50 network calls (its method's default sampler).

--no-augment trains every run without the papers' augmentation (resize 1.12x, random crop, flip),
which on Fashion-MNIST moves the training images themselves to FCD 76-78 from the test split
(benchmarks/generation.py's second reference row). --methods and --nets choose the runs of the
plan that this call trains and scores, in that order (the plan itself is made once, for the
first call's choice).

Phases run in order and skip what is done, so the same command continues an interrupted study:
calibrate (plan.json), train (RUN/model.safetensors, RUN/step-K.safetensors), score
(RUN/score.json), report (the table in Markdown, and --curve PNG).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))  # after ROOT: benchmarks/train.py is not train.py
import checkpoint  # noqa: E402
import operators  # noqa: E402
import train as T  # noqa: E402
import unet  # noqa: E402

# method: (operator, preset, the sampling options of generation.py's MODEL:... spec: 50 network calls each)
METHODS = {
    "blurdiff": ("blurdiff", "quartic", ""),
    "ddpm": ("blurdiff", "ddpm", ""),
    "noise": ("noise", "default", ":estimated:steps=50"),
    "blur": ("blur", "generation", ":steps=50"),
}
LABELS = {"blurdiff": "blurdiff quartic", "ddpm": "DDPM (blurdiff, f = 0)", "noise": "noise, estimated z",
          "blur": "cold blur, GMM prior + step noise"}
LR = {"tiny": 2e-3, "small": 1e-3, "adm-small": 1e-3}  # Adam, decayed to 0 by a cosine over the run
BATCH, SIZE, SNAPSHOTS = 32, 28, 4


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU"


def run_name(method: str, net: str) -> str:
    op, preset, _ = METHODS[method]
    return f"{op}-{preset}-{net}"


def calibrate(method: str, net_name: str, seconds: float, augment: bool = True) -> float:
    """img/s of this run's own training step (degrade, augment, forward, backward, Adam, EMA) on one thread."""
    op_name, preset, _ = METHODS[method]
    op = operators.make_operator(op_name, preset)
    net, ema = unet.build(1, net_name), unet.build(1, net_name).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    cfg = T.TrainConfig(batch=BATCH, accumulate=1, ema_every=1, ema_start=0, ema_decay=0.999, augment=augment)
    step = T.make_step(net, opt, op, cfg, torch.device("cpu"))
    data = torch.randint(0, 256, (1024, 1, SIZE, SIZE), dtype=torch.uint8)
    rng = torch.Generator().manual_seed(0)
    for _ in range(3):
        step(data, rng)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(data, rng)
        T.update_ema(ema, net, n + 1, cfg)
        n += 1
    return n * BATCH / (time.perf_counter() - start)


def set_steps(runs: dict, minutes: float) -> None:
    """Each run's steps: the budget at the median img/s of its network's runs. The network is nearly
    all of a step's cost, and one run's 20 s of timing varies by up to a third on this machine;
    cpu_seconds.json then records what each run really spent."""
    for p in runs.values():
        rates = sorted(q["img_per_s"] for q in runs.values() if q["net"] == p["net"])
        p["steps"] = int(minutes * 60 * rates[len(rates) // 2] / BATCH)


def ema_args(steps: int) -> list[str]:
    """The study's EMA, fit for a short run: 0.999 every step, from a fifth of the run."""
    return ["--ema-decay", "0.999", "--ema-every", "1", "--ema-start", str(steps // 5)]


def train_command(a, method: str, net: str, steps: int, out: Path, augment: bool = True) -> list[str]:
    op, preset, _ = METHODS[method]
    return [sys.executable, str(ROOT / "colddiff.py"), "train", a.train, "-o", str(out), "--op", op, "--preset", preset,
            "--net", net, "--size", str(SIZE), "--steps", str(steps), "--batch", str(BATCH), "--accumulate", "1",
            "--lr", str(LR[net]), "--lr-schedule", "cosine", *ema_args(steps), "--save-every", str(max(1, steps // SNAPSHOTS)), "--sample-every", str(steps),
            "--threads", "1", "--seed", "0", "--quiet", *([] if augment else ["--no-augment"])]


def augmented(plan: dict) -> bool:
    """Whether the plan's runs train with the papers' augmentation (plans made before --no-augment did)."""
    return plan.get("augment", True)


def keep_snapshot(model: Path, run: Path) -> None:
    """Copy the model file to RUN/step-K.safetensors when it holds a step not kept yet (it is written atomically)."""
    if model.exists():
        try:
            step = checkpoint.model_meta(str(model))["step"]
        except Exception:  # replaced while being read: the next poll sees it
            return
        snap = run / f"step-{step}.safetensors"
        if not snap.exists():
            shutil.copyfile(model, snap.with_suffix(".tmp"))
            os.replace(snap.with_suffix(".tmp"), snap)


def run_jobs(jobs: list, parallel: int, poll=None, cpu_log: Path | None = None) -> None:
    """Run (name, argv, log path) jobs, `parallel` at a time; poll(name) every 5 s while each runs;
    each job's CPU seconds added to cpu_log (JSON)."""
    waiting, running = list(jobs), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            name, argv, log = waiting.pop(0)
            print(f"{time.strftime('%H:%M:%S')} start {name}", flush=True)
            running[name] = subprocess.Popen(argv, stdout=open(log, "a"), stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(5)
        for name, proc in list(running.items()):
            if poll:
                poll(name)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:  # its CPU time, to show what each run really spent
                code = os.waitstatus_to_exitcode(status)
                print(f"{time.strftime('%H:%M:%S')} {name} exited {code}, {usage.ru_utime + usage.ru_stime:.0f} CPU s", flush=True)
                if cpu_log:
                    cpu = json.loads(cpu_log.read_text()) if cpu_log.exists() else {}
                    cpu[name] = cpu.get(name, 0) + usage.ru_utime + usage.ru_stime  # a resumed run adds up
                    cpu_log.write_text(json.dumps(cpu, indent=1))
                del running[name]


def score(a, run: Path, spec_opts: str) -> None:
    """RUN/score.json: FCD and diversity of every snapshot (seed 0) and of the final model (seeds 0 and 1)."""
    import fcntl

    import generation as G

    import metrics

    torch.set_num_threads(1)
    lock = open(run / "score.lock", "w")  # held until the process ends
    fcntl.flock(lock, fcntl.LOCK_EX)  # one scorer per run: a second waits, then finds the work done
    out = run / "score.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    done = {k + (f":n={v['n']}" if v.get("n", a.n) != a.n and ":n=" not in k else ""): v for k, v in done.items()}  # older keys
    size = SIZE
    te_x, _ = G.load_labelled(a.test, a.n, size)
    clf = G.Classifier(size)
    clf.load_state_dict(safetensors.torch.load_file(a.classifier))
    clf.eval()
    ref = G.features(clf, te_x[: a.n])
    snaps = sorted(run.glob("step-*.safetensors"), key=lambda p: int(p.stem[5:]))
    # the final model at n on two seeds; the snapshots before it (the curve) at n_curve, seed 0
    # the table's first; the curve's points all at n_curve (FCD grows as n falls: one n along a curve)
    wanted = [(snaps[-1], 0, a.n), (snaps[-1], 1, a.n)] + [(p, 0, a.n_curve) for p in snaps]
    for path, seed, n in wanted:
        key = f"{path.stem}:seed={seed}" + (f":n={n}" if n != a.n else "")
        if key in done:
            continue
        t0 = time.time()
        images, _ = G.generate(f"{path}{spec_opts}:seed={seed}", n, torch.device("cpu"))
        fcd = metrics.frechet_distance(G.features(clf, images.float()), ref[:n])
        div, shape = G.diversity(images)
        done[key] = {"step": int(path.stem[5:]), "seed": seed, "n": n, "fcd": fcd, "diversity": div, "shape_diversity": shape,
                     "seconds": time.time() - t0}
        if path == snaps[-1] and seed == 0:
            from image_io import encode_image, grid_image, to_pixels

            (run / "grid.png").write_bytes(encode_image(to_pixels(grid_image(images[:64] * 2 - 1, ncol=8))))
        out.write_text(json.dumps(done, indent=1))
        print(f"{run.name} {key}: FCD {fcd:.2f}", flush=True)


def report(a, plan: dict) -> None:
    """The study's table (Markdown, to stdout) and, with --curve, FCD vs training minutes as a PNG."""
    cpu_file = a.out / "cpu_seconds.json"
    cpu = json.loads(cpu_file.read_text()) if cpu_file.exists() else {}
    rows, curves = [], {}
    for name, p in plan["runs"].items():
        s = json.loads((a.out / name / "score.json").read_text()) if (a.out / name / "score.json").exists() else {}
        final = [v for v in s.values() if v["step"] == p["steps"] and v.get("n", a.n) == a.n]
        if len(final) < 2:
            continue
        f0, f1 = sorted(final, key=lambda v: v["seed"])
        mean = (f0["fcd"] + f1["fcd"]) / 2
        rows.append((mean, p, f0, f1, cpu.get(name)))
        curves[f"{LABELS[p['method']]}, {p['net']}"] = sorted((v["step"] / p["steps"] * plan["minutes"], v["fcd"]) for v in s.values()
                                                              if v["seed"] == 0 and v.get("n") == a.n_curve)
    how = "with the papers' augmentation" if augmented(plan) else "without augmentation (--no-augment)"
    print(f"Budget per run: {plan['minutes']:g} minutes of one CPU thread; {plan['machine']}; trained {how}; n = {a.n}, FCD seeds 0 / 1.\n")
    print("| method | network | params | img/s (1 thread) | steps x 32 | epochs | CPU min (whole run) | FCD seed 0 / 1 | mean | diversity |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mean, p, f0, f1, seconds in sorted(rows, key=lambda r: r[0]):
        print(f"| {LABELS[p['method']]} | `{p['net']}` | {p['params'] / 1e6:.2f} M | {p['img_per_s']:.0f} | {p['steps']:,} | "
              f"{p['steps'] * BATCH / 60000:.1f} | {'' if seconds is None else f'{seconds / 60:.1f}'} | {f0['fcd']:.1f} / {f1['fcd']:.1f} | "
              f"**{mean:.1f}** | {f0['diversity']:.3f} |")
    missing = [name for name in plan["runs"] if name not in {f"{r[1]['method']}" for r in rows} and not any(
        run_name(r[1]["method"], r[1]["net"]) == name for r in rows)]
    if missing:
        print(f"\nNot scored yet: {', '.join(missing)}.")
    if a.curve and curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in sorted(curves.items()):
            ax.plot(*zip(*pts), marker="o", label=label, linestyle="--" if "tiny" in label else "-")
        ax.set(xlabel="training minutes (one CPU thread)", ylabel=f"FCD (n = {a.n_curve}, seed 0; lower is better)", yscale="log",
               title="Fashion-MNIST generators at an equal CPU budget" + ("" if augmented(plan) else ", --no-augment"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.curve, dpi=110)


def make_plan(a) -> dict:
    """Each run's img/s on one thread (calibrate) and its steps for the budget."""
    torch.set_num_threads(1)
    runs = {}
    for method in a.methods.split(","):
        for net in a.nets.split(","):
            rate = calibrate(method, net, a.calibrate_seconds, not a.no_augment)
            runs[run_name(method, net)] = {"method": method, "net": net, "img_per_s": rate,
                                           "params": unet.count_parameters(unet.build(1, net))}
            print(f"{run_name(method, net)}: {rate:.0f} img/s", flush=True)
    set_steps(runs, a.minutes)
    return {"minutes": a.minutes, "augment": not a.no_augment, "runs": runs, "machine": f"{cpu_name()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=15.0, help="each run's budget of one CPU thread")
    ap.add_argument("--nets", default="tiny,adm-small", help="comma-separated networks")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated names of METHODS")
    ap.add_argument("--no-augment", action="store_true", help="train without the papers' augmentation (resize 1.12x, crop, flip)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--n", type=int, default=500, help="images per FCD of a final model (two seeds)")
    ap.add_argument("--n-curve", type=int, default=250, help="images per FCD of the snapshots before it (the curve, one seed)")
    ap.add_argument("--calibrate-seconds", type=float, default=20.0)
    ap.add_argument("--curve", type=Path, help="write FCD vs training minutes here (PNG)")
    ap.add_argument("--report", action="store_true", help="only print the table (and --curve) of what is scored so far")
    ap.add_argument("--score", help=argparse.SUPPRESS)  # internal: score one run in this process
    a = ap.parse_args()
    for what, names, known in (("method", a.methods, METHODS), ("network", a.nets, unet.PRESETS)):
        if unknown := [n for n in names.split(",") if n not in known]:
            sys.exit(f"study.py: error: unknown {what} {unknown[0]!r}; choose from {', '.join(known)}")
    a.out.mkdir(parents=True, exist_ok=True)
    a.classifier = str(a.out / "classifier.safetensors")
    if a.score:
        name = a.score
        plan = json.loads((a.out / "plan.json").read_text())
        return score(a, a.out / name, METHODS[plan["runs"][name]["method"]][2])
    if a.report:
        return report(a, json.loads((a.out / "plan.json").read_text()))
    plan_file = a.out / "plan.json"
    if not plan_file.exists():  # calibrate, with the machine otherwise idle
        plan_file.write_text(json.dumps(make_plan(a), indent=1))
    plan = json.loads(plan_file.read_text())
    if augmented(plan) == a.no_augment:
        sys.exit(f"study.py: error: {plan_file} was planned {'with' if augmented(plan) else 'without'} the augmentation; "
                 f"{'drop' if a.no_augment else 'add'} --no-augment, or start another --out")
    chosen = [name for m in a.methods.split(",") for n in a.nets.split(",") if (name := run_name(m, n)) in plan["runs"]]
    if not chosen:
        sys.exit(f"study.py: error: {plan_file} has no run of --methods {a.methods} on --nets {a.nets}; it has {', '.join(plan['runs'])}")
    if not Path(a.classifier).exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks/generation.py"), "--train", a.train, "--test", a.test, "--n", str(a.n),
                        "--classifier", a.classifier], check=True)
    jobs = []
    for name in chosen:
        p, run, model = plan["runs"][name], a.out / name, a.out / name / "model.safetensors"
        run.mkdir(exist_ok=True)
        if (run / f"step-{p['steps']}.safetensors").exists():
            continue
        argv = train_command(a, p["method"], p["net"], p["steps"], model, augmented(plan))
        jobs.append((name, argv + (["--resume"] if checkpoint.state_path(str(model)).exists() else []), run / "train.log"))
    run_jobs(jobs, a.parallel, poll=lambda name: keep_snapshot(a.out / name / "model.safetensors", a.out / name),
             cpu_log=a.out / "cpu_seconds.json")
    for name in chosen:
        keep_snapshot(a.out / name / "model.safetensors", a.out / name)
    jobs = [(f"score {name}", [sys.executable, __file__, "--train", a.train, "--test", a.test, "--out", str(a.out), "--n", str(a.n),
                               "--score", name], a.out / name / "score.log") for name in chosen]
    run_jobs(jobs, a.parallel)
    report(a, plan)


if __name__ == "__main__":
    main()
