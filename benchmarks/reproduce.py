"""Reproduce the papers' experiments on Fashion-MNIST and write the tables into RESULTS.md.

    python benchmarks/reproduce.py                     # the stated GPU budget: paper network
    python benchmarks/reproduce.py --net tiny --steps 1000 --batch 32 --lr 2e-3 \\
        --n 500 --gen-n 500 --blurdiff-n 200 --gen-steps 50    # what fits a 2-core CPU
    python benchmarks/reproduce.py --section generation --only blur-gen,noise,colour,blurdiff,ddpm \\
        --net adm-small --size 28 --steps 2000 --batch 32 --lr 1e-3 --lr-schedule cosine --ema study --no-augment \\
        --gen-n 500 --blurdiff-n 200 --gen-steps 50 --parallel 2   # generation with the study's recipe (issue #42)

1. data: the full train/test splits, written by shared/tools/fashion_mnist.py (or --data DIR
   holding train/ and test/ folders of NNNNN_LABEL.png);
2. train: one model per experiment through `colddiff train`, all at the same budget, resized to
   32 px as the papers did for MNIST: restoration with blur (mnist preset), mask (random centre),
   pixelate and snow; generation with blur (generation preset), noise, colour, blurdiff (quartic)
   and DDPM (blurdiff's f = 0 preset);
3. eval: `colddiff eval` on the first --n test images (degraded / Algorithm 2 / direct);
4. generation: --gen-n images per variant, scored by the classifier-feature Frechet distance
   (FCD) of benchmarks/generation.py against the test split, plus diversity;
5. RESULTS.md: the generated section between its markers is replaced, the prose around it kept;
   the grids go to results/.

Every stage skips what already exists under --out, so an interrupted run continues where it
stopped (a model trained for fewer steps is resumed up to --steps). --deadline S starts no stage
after S seconds and reports what finished; --no-compile skips torch.compile (CUDA), whose minutes
per model do not pay at a short budget. On a lent GPU, one device call (runs/data: the two splits,
carried), with --steps sized from benchmarks/gpu.py's "train reproduce" rate so that the nine
models' training takes about 300 s (9 x steps x batch / rate), the rest going to eval and generation:

    python3 benchmarks/reproduce.py --data runs/data --net small --steps 2000 --batch 128 --lr 2e-3 \
        --lr-schedule cosine --no-compile --deadline 480 --n 2000 --gen-n 2000 --blurdiff-n 500 --gen-steps 50 \
        --section gpu; tar czf $OUT/reproduce.tgz RESULTS.md results runs/reproduce/results.json
"""
import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
import generation as G  # noqa: E402
import study  # noqa: E402

import checkpoint  # noqa: E402
import metrics  # noqa: E402
import operators  # noqa: E402
import train as T  # noqa: E402
import unet  # noqa: E402
from image_io import encode_image, grid_image, to_pixels  # noqa: E402
from samplers import SAMPLERS  # noqa: E402
from train_config import LR_SCHEDULES  # noqa: E402

# The report seed's App. C, MNIST rows (degraded / sampled / direct x FID, SSIM, RMSE). The report
# has no MNIST snow row; its CIFAR-10 snow table is garbled past the degraded columns.
PAPER_RESTORATION = {
    "blur": [438.59, 0.287, 0.287, 4.69, 0.718, 0.154, 5.10, 0.757, 0.142],
    "mask": [108.48, 0.490, 0.262, 1.61, 0.941, 0.068, 2.24, 0.948, 0.060],
    "pixelate": [368.56, 0.178, 0.231, 4.33, 0.820, 0.115, 4.05, 0.823, 0.114],
    "snow": None,
}
FCD_SAME = 0.06  # two seeds of one model scored FCDs up to 5.6 % apart (RESULTS.md, "The bundled model")
RESTORATION = {"blur": ("blur", "mnist"), "mask": ("mask", "mnist"), "pixelate": ("pixelate", "mnist"), "snow": ("snow", "cifar10")}
GENERATION = {"blur-gen": ("blur", "generation"), "noise": ("noise", "default"), "colour": ("colour", "generation"),
              "blurdiff": ("blurdiff", "quartic"), "ddpm": ("blurdiff", "ddpm")}
# (variant, model, generation option, the papers' FID for the same method: SPEC sections 4 and 5)
VARIANTS = [
    ("blur, broken symmetry", "blur-gen", "", "49.45 / 54.68 (CelebA / AFHQ)"),
    ("blur, released nudge of x_T", "blur-gen", "nudge", "49.45 / 54.68 (their broken symmetry)"),
    ("blur, perfect symmetry", "blur-gen", "perfect", "97.00 / 93.05"),
    ("noise, estimated z", "noise", "estimated", "23.11 / 20.59"),
    ("noise, fixed z", "noise", "fixed", "59.91 / 25.62"),
    ("colour", "colour", "", "(figures only)"),
    ("pixelate", "pixelate", "", "(figures only)"),
    ("blurdiff quartic f_N=0.14", "blurdiff", "", "7.86 (LSUN bedroom 64 px, FID-10K)"),
    ("DDPM (blurdiff, f = 0)", "ddpm", "", "9.24"),
    # colddiff's default sampler for both (DPM-Solver++(2M), eta 1) at the bundled generator's 20 steps
    ("blurdiff quartic, DPM-Solver++(2M)", "blurdiff", "steps=20", "(colddiff's sampler)"),
    ("DDPM, DPM-Solver++(2M)", "ddpm", "steps=20", "(colddiff's sampler)"),
]


def markers(section=""):
    """The lines around a generated section of RESULTS.md; each --section has its own pair."""
    name = f"reproduce.py{' ' + section if section else ''}"
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def colddiff(*args):
    """Run the CLI exactly as a user would; returns (command line as shown, seconds)."""
    args = [str(a) for a in args]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "colddiff", *args], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return "colddiff " + " ".join(args), time.time() - t0


def prepare_data(a, out):
    if a.data:
        missing = [d for d in (Path(a.data) / "train", Path(a.data) / "test") if not d.is_dir()]
        if missing:
            sys.exit(f"reproduce.py: error: {missing[0]}: no such folder (--data needs train/ and test/)")
        return Path(a.data) / "train", Path(a.data) / "test"
    data = out / "data"
    for split in ("train", "test"):
        if not (data / split).is_dir():
            tmp = data / f".{split}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run([sys.executable, str(a.fashion_mnist_tool), "--split", split, "--out", str(tmp)], check=True)
            tmp.rename(data / split)
    return data / "train", data / "test"


def ema_args(a) -> list:
    """One EMA for every model: blurdiff's own (0.9999 every step from step 0) would leave a short
    run's model mostly its untrained network (train.ema_warning). --ema study: the generator study's."""
    c = T.TrainConfig
    if a.ema == "study":
        return study.ema_args(a.steps)
    return ["--ema-decay", c.ema_decay, "--ema-every", c.ema_every, "--ema-start", c.ema_start]


def train_args(a):
    """One budget for every model, the EMA included."""
    return ["--net", a.net, "--size", a.size, "--steps", a.steps, "--batch", a.batch, "--accumulate", a.accumulate,
            "--lr", a.lr, "--lr-schedule", a.lr_schedule, *ema_args(a), "--seed", 0, "--save-every", max(a.steps // 4, 1), "--sample-every", a.steps,
            *([] if getattr(a, "compile", True) else ["--no-compile"]), *([] if getattr(a, "augment", True) else ["--no-augment"])]


def out_of_time(a, what: str) -> bool:
    """Past --deadline: say which stage is left out (the report holds what finished)."""
    if time.monotonic() < getattr(a, "stop_at", float("inf")):
        return False
    print(f"reproduce.py: --deadline reached, {what} left out", file=sys.stderr, flush=True)
    return True


def train_all(a, out, train_dir, log):
    """Every experiment's model, at one budget; wall time is summed over resumed runs. --parallel N
    trains N at a time on one thread each (two runs side by side use a 2-core CPU fully)."""
    todo = []
    for name, (op, preset) in {**RESTORATION, **GENERATION}.items():
        model = out / "models" / f"{name}.safetensors"
        if name in a.only and steps_trained(model) < a.steps:
            args = ["train", train_dir, "--op", op, "--preset", preset, *train_args(a), "-o", model, *(["--resume"] if model.exists() else [])]
            todo.append((name, model, args))
    if getattr(a, "parallel", 1) > 1 and todo and not out_of_time(a, "training"):
        return train_side_by_side(a, out, log, todo)
    for name, model, args in todo:
        if out_of_time(a, f"training {name}"):
            break
        model.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        try:
            colddiff(*args)
        finally:  # an interrupted run's time counts too: the next call resumes it
            trained(out, log, name, args, time.time() - t0)


def steps_trained(model: Path) -> int:
    """The step a model file was saved at (its metadata alone), 0 before it exists."""
    return checkpoint.model_meta(str(model))["step"] if model.exists() else 0


def train_side_by_side(a, out, log, todo):
    """--parallel: the runs a.parallel at a time, each on one thread; its seconds are its CPU seconds."""
    (out / "models").mkdir(parents=True, exist_ok=True)
    cpu_log = out / "models" / "cpu_seconds.json"
    before = json.loads(cpu_log.read_text()) if cpu_log.exists() else {}
    try:
        study.run_jobs([(name, [sys.executable, str(ROOT / "colddiff.py"), *map(str, args), "--threads", "1"], model.with_suffix(".log"))
                        for name, model, args in todo], a.parallel, cpu_log=cpu_log)
    finally:
        spent = json.loads(cpu_log.read_text()) if cpu_log.exists() else {}
        for name, _, args in todo:
            trained(out, log, name, args, spent.get(name, 0) - before.get(name, 0))
    short = [name for name, model, _ in todo if steps_trained(model) < a.steps]
    if short:
        sys.exit(f"reproduce.py: error: training {', '.join(short)} stopped short of {a.steps} steps; its log is beside the model in {out / 'models'}")


def trained(out, log, name, args, seconds):
    """Record a (resumed) training run: its command as shown, its seconds added; its results go stale."""
    model, train_dir = Path(args[args.index("-o") + 1]), args[1]
    shown = " ".join(["colddiff", *map(str, [x for x in args if x != "--resume"])])
    shown = shown.replace(str(model), f"{name}.safetensors").replace(str(train_dir), "fmnist-train")
    log["train"][name] = {"command": shown, "seconds": log["train"].get(name, {"seconds": 0.0})["seconds"] + seconds}
    log["eval"].pop(name, None)  # the model changed: its results are stale
    for variant, model_name, *_ in VARIANTS:
        if model_name == name:
            log["generation"].pop(variant, None)
    save_log(out, log)


def eval_all(a, out, test_dir, log):
    for name in RESTORATION:
        model = out / "models" / f"{name}.safetensors"
        if name not in a.only or name in log["eval"] or not model.exists():
            continue
        if out_of_time(a, f"evaluating {name}"):
            break
        folder = out / "eval" / name
        cmd, secs = colddiff("eval", test_dir, "--model", model, "--n", a.n, "-o", folder, "--force",
                             *([] if getattr(a, "compile", True) else ["--no-compile"]))
        table = json.loads((folder / "eval.json").read_text())
        log["eval"][name] = {"table": table, "seconds": secs, "command": cmd}
        shutil.copy(folder / "grid.png", a.results / f"restore_{name}.png")
        save_log(out, log)


def generation_all(a, out, train_dir, test_dir, log):
    trained = {name for name in {**RESTORATION, **GENERATION} if (out / "models" / f"{name}.safetensors").exists()}  # (--deadline)
    todo = [v for v in VARIANTS if v[1] in a.only and v[1] in trained and v[0] not in log["generation"]]
    if not todo:  # the floor is written before any variant
        return
    device = torch.device(a.device)
    t0 = time.time()
    te_x, te_y = G.load_labelled(test_dir, None, a.size)
    # every variant, resumed or not, is scored by the one classifier that scored the floor
    clf_path = out / "classifier.safetensors"
    if clf_path.exists() and "floor" in log["generation"]:
        clf = G.Classifier(a.size)
        clf.load_state_dict(safetensors.torch.load_file(str(clf_path)))
        clf.eval()
    else:
        tr_x, tr_y = G.load_labelled(train_dir, None, a.size)  # only the classifier and the floor need them
        clf = G.train_classifier(tr_x, tr_y, a.classifier_epochs)
        with torch.no_grad():
            acc = float((clf(te_x).argmax(1) == te_y).float().mean())
        log["generation"] = {"floor": {
            "fcd": metrics.frechet_distance(G.features(clf, tr_x[: a.gen_n]), G.features(clf, te_x[: a.gen_n])),
            "diversity": float(te_x[: a.gen_n].std(0).mean()),
            "classifier": f"{a.classifier_epochs} epochs on {len(tr_x)} train images, test accuracy {acc:.3f}", "seconds": time.time() - t0}}
        safetensors.torch.save_file(clf.state_dict(), str(clf_path))
        save_log(out, log)
        todo = [v for v in VARIANTS if v[1] in a.only and v[1] in trained]
    ref = G.features(clf, te_x[: a.gen_n])
    for variant, name, option, _ in todo:
        if out_of_time(a, f"generating {variant}"):
            break
        op_name, preset = {**RESTORATION, **GENERATION}[name]
        n, steps, spec = sampling(a, operators.make_operator(op_name, preset), option)
        spec = ":".join([str(out / "models" / f"{name}.safetensors"), *spec])
        t1 = time.time()
        images, _ = G.generate(spec, n, device)
        fcd = metrics.frechet_distance(G.features(clf, images.float()), ref[:n])
        grid = a.results / f"generate_{name}{'_' + option.replace('=', '') if option else ''}.png"
        grid.write_bytes(encode_image(to_pixels(grid_image(images[:64] * 2 - 1, ncol=8))))
        log["generation"][variant] = {"fcd": fcd, "diversity": float(images.std(0).mean()), "n": n, "seconds": time.time() - t1,
                                      "steps": steps, "grid": grid.name}
        save_log(out, log)


def sampling(a, op, option: str):
    """(n, steps, spec options) of a variant: Lee et al.'s released sampler runs all T steps on
    --blurdiff-n images; cold samplers jump --gen-steps; `steps=K` is colddiff's default sampler at K."""
    if option.startswith("steps="):
        return a.gen_n, int(option.removeprefix("steps=")), [option]
    if not SAMPLERS[op.released_sampler].steps:
        return a.blurdiff_n, op.T, [*filter(None, [option]), f"sampler={op.released_sampler}"]
    steps = min(a.gen_steps, op.T) if a.gen_steps else None
    return a.gen_n, steps, [*filter(None, [option]), *([f"steps={steps}"] if steps else [])]


def save_log(out, log):
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(log, indent=2) + "\n")
    tmp.replace(out / "results.json")


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    n = torch.get_num_threads()
    return f"CPU: {cpu}, {n} thread{'s' * (n != 1)}"


def generation_report(a, log, grids: str) -> list[str]:
    """The generation table and its findings, where results.json has them."""
    lines: list[str] = []
    if "floor" not in log["generation"]:
        return lines
    fl = log["generation"]["floor"]
    lines += ["", "### Generation (Fashion-MNIST, same budget per model)", "",
              f"Quality: FCD, the Frechet distance in the 128-d features of a small CNN ({fl['classifier']}) between "
              "generated images and the test split; lower is better. Diversity: mean per-pixel std across the images.", "",
              "| images | n | sampling steps | FCD | diversity | seconds | paper FID (their data) | grid |", "|---|---|---|---|---|---|---|---|",
              f"| train split vs test split (floor) | {a.gen_n} | | {fl['fcd']:.2f} | {fl['diversity']:.3f} | | | |"]
    for variant, _name, _, paper in VARIANTS:
        g = log["generation"].get(variant)
        if g:
            lines.append(f"| {variant} | {g['n']} | {g['steps'] or 'T'} | {g['fcd']:.2f} | {g['diversity']:.3f} | {g['seconds']:.0f} | {paper} | "
                         f"[grid]({grids}/{g['grid']}) |")
    pairs = [("blur, broken symmetry", "blur, perfect symmetry", "breaking symmetry"),
             ("blur, released nudge of x_T", "blur, perfect symmetry", "the released nudge"), ("noise, estimated z", "noise, fixed z", "estimated z"),
             ("blurdiff quartic f_N=0.14", "DDPM (blurdiff, f = 0)", "blur diffusion"),
             ("blurdiff quartic, DPM-Solver++(2M)", "DDPM, DPM-Solver++(2M)", "blur diffusion, at colddiff's sampler"),
             ("blur, broken symmetry", "noise, estimated z", "cold (blur) generation")]
    lines += ["", f"Findings, computed from the table above (FCDs within {FCD_SAME:.0%} of each other are called the same: "
              "two seeds of one model scored up to 5.6 % apart, RESULTS.md, \"The bundled model\"):", ""]
    for x, y, what in pairs:
        gx, gy = log["generation"].get(x), log["generation"].get(y)
        if gx and gy:
            same = abs(gx["fcd"] - gy["fcd"]) <= FCD_SAME * max(gx["fcd"], gy["fcd"])
            verdict = "no difference measured" if same else "helps here" if gx["fcd"] < gy["fcd"] else "does not help here"
            lines.append(f"- {what}: FCD {gx['fcd']:.2f} ({x}) vs {gy['fcd']:.2f} ({y}): {verdict}; "
                         f"diversity {gx['diversity']:.3f} vs {gy['diversity']:.3f}.")
    return lines


def restoration_report(log, grids: str) -> list[str]:
    """The restoration table and its findings, where results.json has them."""
    f3 = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    if not log["eval"]:
        return []
    lines = ["", "### Restoration (Fashion-MNIST test split; the papers: MNIST, App. C of the report)", "",
             "| operator | n | source | degraded FID | SSIM | RMSE | Algorithm 2 FID | SSIM | RMSE | direct FID | SSIM | RMSE "
             "| direct/degraded SSIM | train s | eval s | grid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in RESTORATION:
        if name not in log["eval"]:
            continue
        e, t = log["eval"][name], log["eval"][name]["table"]
        vals = [t[c][k] for c in ("degraded", "sampled", "direct") for k in ("fid", "ssim", "rmse")]
        op = f"{name} ({RESTORATION[name][1]}, T={t['T']})"
        lines.append(f"| {op} | {t['n']} | colddiff | " + " | ".join(f3(v) for v in vals)
                     + f" | {t['direct']['ssim'] / t['degraded']['ssim']:.2f}× | {log['train'].get(name, {}).get('seconds', 0):.0f} | {e['seconds']:.0f} | "
                     f"[degraded, direct, Alg. 2, original]({grids}/restore_{name}.png) |")
        p = PAPER_RESTORATION[name]
        if p:
            lines.append("| | | paper (MNIST) | " + " | ".join(f"{v:.2f}" if v > 1 else f"{v:.3f}" for v in p) + f" | {p[7] / p[1]:.2f}× | | | |")
    lines += ["", "Findings, computed from the table above:", ""]
    for name in RESTORATION:
        if name in log["eval"]:
            t = log["eval"][name]["table"]
            d = t["sampled"]["ssim"] - t["direct"]["ssim"]
            se = t.get("sampled_minus_direct", {}).get("ssim_se")  # results.json of before it was recorded: none
            verdict = {"higher": "beats", "lower": "trails", "no difference measured": "ties with"}[metrics.paired_verdict(d, se)] \
                if se is not None else "beats" if d > 0 else "trails"
            margin = "no standard error recorded" if se is None else f"2 standard errors {2 * se:.3f}"
            lines.append(f"- {name}: Algorithm 2 {verdict} direct restoration: {d:+.3f} SSIM ({margin}; "
                         f"RMSE {t['sampled']['rmse']:.3f} vs {t['direct']['rmse']:.3f}); both beat the degraded input: "
                         f"{'yes' if min(t['sampled']['ssim'], t['direct']['ssim']) > t['degraded']['ssim'] else 'no'}.")
    return lines


def report(a, log):
    """The generated section of RESULTS.md: every number below comes from results.json."""
    grids = Path(os.path.relpath(a.results, a.results_md.parent)).as_posix()
    lines = [f"Run: `python benchmarks/reproduce.py {shlex.join(log['argv'])}`  ",
             f"Device: {log['device']}; torch {log['torch']}; {log['date']}.  ",
             f"Budget per model: {a.steps} steps × batch {a.batch} × {a.accumulate} accumulation, `{a.net}` network "
             f"({unet.count_parameters(unet.build(1, a.net)) / 1e6:.2f} M parameters), lr {a.lr} ({a.lr_schedule}), "
             f"EMA {' '.join(map(str, ema_args(a)))}, {a.size}×{a.size} px, "
             + ("the papers' augmentation." if a.augment else "no augmentation (--no-augment).")]
    lines += restoration_report(log, grids)
    lines += generation_report(a, log, grids)
    lines += ["", f"Training commands (data = the train split at {a.size} px):", "", "```sh"]
    lines += [log["train"][k]["command"] for k in log["train"]] + ["```"]
    return "\n".join(lines)


def write_results(path, body, section=""):
    BEGIN, END = markers(section)
    text = path.read_text() if path.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + BEGIN + "\n" + body + "\n" + END + rest.split(END, 1)[1])
    tmp.replace(path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce", help="models, eval outputs, results.json")
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="folder for the committed grids")
    ap.add_argument("--results-md", type=Path, default=ROOT / "RESULTS.md")
    ap.add_argument("--section", default="", help="write this named section of RESULTS.md (for a second budget)")
    ap.add_argument("--data", help="a folder with train/ and test/ instead of writing them")
    ap.add_argument("--fashion-mnist-tool", type=Path, default=ROOT.parent / "shared" / "tools" / "fashion_mnist.py")
    ap.add_argument("--only", default=",".join([*RESTORATION, *GENERATION]), help="comma-separated experiments")
    ap.add_argument("--net", default="paper")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20000, help="training steps per model (the budget)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES, help="constant (the papers) or cosine (decays to 0 at --steps)")
    ap.add_argument("--ema", default="train", choices=("train", "study"), help="train: colddiff train's EMA defaults; "
                    "study: benchmarks/study.py's (0.999 every step from a fifth of --steps)")
    ap.add_argument("--n", type=int, default=10000, help="test images for the restoration table")
    ap.add_argument("--gen-n", type=int, default=10000, help="generated images per variant")
    ap.add_argument("--blurdiff-n", type=int, default=10000, help="generated images for blurdiff/DDPM (1000 steps each)")
    ap.add_argument("--gen-steps", type=int, default=None, help="Algorithm-2 jumps for cold generation (default: T)")
    ap.add_argument("--classifier-epochs", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="train and eval without torch.compile (CUDA): "
                    "its minutes of compiling per model do not pay at a short budget")
    ap.add_argument("--parallel", type=int, default=1, help="train this many models at a time, one thread each (CPU)")
    ap.add_argument("--no-augment", dest="augment", action="store_false", help="train without the papers' augmentation "
                    "(the generator study's finding: it alone puts real Fashion-MNIST at FCD 74-81)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds: start no stage after this (the report holds what finished)")
    a = ap.parse_args(argv)
    a.only = set(a.only.split(","))
    unknown = a.only - {*RESTORATION, *GENERATION}
    if unknown:
        ap.error(f"unknown experiments: {', '.join(sorted(unknown))}")
    return a


def main(argv=None):
    a = parse_args(argv)
    a.stop_at = time.monotonic() + a.deadline if a.deadline is not None else float("inf")
    a.out.mkdir(parents=True, exist_ok=True)
    a.results.mkdir(parents=True, exist_ok=True)
    log_path = a.out / "results.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {"train": {}, "eval": {}, "generation": {}}
    log.update(argv=sys.argv[1:] if argv is None else list(argv), device=device_name(a.device), torch=torch.__version__,
               date=time.strftime("%Y-%m-%d"))
    train_dir, test_dir = prepare_data(a, a.out)
    try:
        train_all(a, a.out, train_dir, log)
        eval_all(a, a.out, test_dir, log)
        generation_all(a, a.out, train_dir, test_dir, log)
    except subprocess.CalledProcessError as e:  # colddiff has printed its one-line error
        sys.exit(f"reproduce.py: error: `colddiff {e.cmd[3]}` failed (exit {e.returncode}); finished stages are kept in {a.out}")
    except KeyboardInterrupt:
        print(f"reproduce.py: interrupted; finished stages are kept in {a.out}, rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    save_log(a.out, log)
    write_results(a.results_md, report(a, log), a.section)
    print(f"wrote {a.results_md} and {a.results}/")


if __name__ == "__main__":
    main()
