"""colddiff: cold diffusion from the shell: degrade, train, restore, evaluate, generate.

The Typer app, image I/O (files, folders, stdin/stdout) and the user-facing error handling.
The math lives in operators.py (D), unet.py (R), samplers.py; training in train.py.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Cold diffusion: degrade, restore, train and generate images with deterministic transforms.",
)

from image_io import (  # noqa: F401  (re-exported: the commands' building blocks)
    STDIO, UserError, atomic_write, encode_image, find_images, grid_image, plan_outputs, read_image, to_model,
    to_uint8, write_image,
)

def fail_cleanly(fn):
    """Turn UserError (and operator errors) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from operators import OperatorError
        from train import CheckpointError

        try:
            return fn(*args, **kwargs)
        except (UserError, OperatorError, CheckpointError) as e:
            typer.echo(f"colddiff: error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("colddiff: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use auto, cpu or cuda)") from None


def parse_params(pairs: list[str] | None) -> dict:
    params = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UserError(f"--param takes KEY=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def seeded(seed: int):
    """The CPU generator every random draw comes from: same seed, same bytes, on any device."""
    import torch

    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in 0..{2**32 - 1}, got {seed}")  # mt19937 keeps 32 bits
    return torch.Generator().manual_seed(seed)


def strip_frames(T: int, frames: int | None) -> list[int]:
    n = T + 1 if frames is None and T <= 20 else min(frames or 11, T + 1)
    if n < 2:
        raise UserError("--frames must be at least 2")
    return sorted({round(i * T / (n - 1)) for i in range(n)})


# ----------------------------------------------------------------------------- commands

OpOpt = typer.Option("blur", "--op", help="Degradation operator (see `colddiff ops`).")
PresetOpt = typer.Option(None, "--preset", help="Operator preset (default: the operator's first).")
ParamOpt = typer.Option(None, "--param", help="Override an operator parameter, KEY=VALUE (repeatable).")
SeedOpt = typer.Option(0, "--seed", help="Seed of every random draw (snow pattern, mask centre, noise).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
ForceOpt = typer.Option(False, "--force", help="Overwrite outputs that exist.")
SourceOpt = typer.Option(None, "--source", help="animorph: the folder of z images (the second image set).")


@app.command()
@fail_cleanly
def ops():
    """List the operators, their presets, T and parameters."""
    from rich.console import Console
    from rich.table import Table

    import operators

    table = Table(title="colddiff operators")
    for col in ("operator", "preset", "T", "parameters"):
        table.add_column(col)
    for name, cls in operators.OPERATORS.items():
        for preset in cls.PRESETS:
            p = operators.make_operator(name, preset).params()
            T = p.pop("T")
            default = " (default)" if preset == cls.DEFAULT_PRESET else ""
            table.add_row(name, preset + default, str(T), ", ".join(f"{k}={v}" for k, v in p.items()))
    Console().print(table)


@app.command()
@fail_cleanly
def degrade(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (recursive) or - for stdin."),
    op: str = OpOpt,
    preset: Optional[str] = PresetOpt,
    t: Optional[int] = typer.Option(None, "--t", help="Degradation step, 0..T (default T)."),
    seed: int = SeedOpt,
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Output file or folder (default: stdout)."),
    strip: bool = typer.Option(False, "--strip", help="Write x_0 ... x_T side by side in one PNG."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames in --strip (default all up to T=20, else 11)."),
    param: Optional[list[str]] = ParamOpt,
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    force: bool = ForceOpt,
):
    """Degrade images: x_t = D(x_0, t). Each image uses a generator seeded with --seed."""
    import torch

    import operators

    operator = operators.make_operator(op, preset, **parse_params(param))
    if t is None:
        t = operator.T
    if not 0 <= t <= operator.T:
        raise UserError(f"--t must be in 0..{operator.T} for {op}, got {t}")
    dev = pick_device(device)
    items = find_images(inputs)
    for src, _, _ in items:  # every input must decode before anything is written
        read_image(src)
    dests = plan_outputs(items, out, force)
    if op == "animorph":
        operator.source = load_source(source, dev)
    for (src, _, _), dest in zip(items, dests):
        x0 = to_model(read_image(src))[None].to(dev)
        if strip:
            steps = strip_frames(operator.T, frames)
            hidden = operator.draw(x0, seeded(seed))
            batch = x0.expand(len(steps), -1, -1, -1)
            hidden = None if hidden is None else {k: v.expand(len(steps), *v.shape[1:]) for k, v in hidden.items()}
            xt = operator.apply(batch, torch.tensor(steps, device=dev), hidden)
            result = torch.cat(list(xt), dim=-1)
        else:
            result = operator.degrade(x0, torch.tensor([t], device=dev), seeded(seed))[0]
        write_image(to_uint8(result), dest)


@app.command()
@fail_cleanly
def train(
    data: str = typer.Argument(..., help="Folder of training images (recursive)."),
    out: str = typer.Option(..., "-o", "--out", help="Model file to write (.safetensors)."),
    op: str = OpOpt,
    preset: Optional[str] = PresetOpt,
    param: Optional[list[str]] = ParamOpt,
    net: str = typer.Option("paper", "--net", help="Network preset: paper (56.6 M), small, tiny."),
    size: Optional[int] = typer.Option(None, "--size", help="Resize (short side) and centre-crop images to SIZE."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 or 3 (default: from the data)."),
    steps: int = typer.Option(700_000, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(32, "--batch", help="Images per step per device."),
    accumulate: int = typer.Option(2, "--accumulate", help="Gradient accumulation (batches per step)."),
    lr: float = typer.Option(2e-5, "--lr"),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant (the papers) or cosine (decays to 0 at --steps)."),
    ema_decay: float = typer.Option(0.995, "--ema-decay"),
    ema_every: int = typer.Option(10, "--ema-every"),
    ema_start: int = typer.Option(2000, "--ema-start", help="EMA copies the model until this step."),
    save_every: int = typer.Option(5000, "--save-every"),
    sample_every: int = typer.Option(1000, "--sample-every", help="Write a sample grid and a metrics.jsonl line."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Resize 1.12x + random crop + flip."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the network (CUDA only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's training state when there is one."),
    force: bool = ForceOpt,
    source: Optional[str] = SourceOpt,
    gmm_components: int = typer.Option(1, "--gmm-components", help="Components of the generation prior (blur, pixelate)."),
    sampling_steps: Optional[int] = typer.Option(None, "--sampling-steps", help="Default --steps of restore/eval/generate for this model (default: T)."),
):
    """Train the restoration network R(x_t, t) on a folder of images (L1 on x0, EMA, bf16 on CUDA).

    Ctrl-C or SIGTERM finishes the step, saves, and exits 130/143; --resume continues exactly."""
    import operators
    import train as training

    import unet

    if channels not in (None, 1, 3):
        raise UserError(f"--channels must be 1 or 3, got {channels}")
    if net not in unet.PRESETS:
        raise UserError(f"unknown network preset {net!r}; choose from {', '.join(unet.PRESETS)}")
    if size is not None and size < 8:
        raise UserError(f"--size must be at least 8, got {size}")
    if not lr > 0:
        raise UserError(f"--lr must be positive, got {lr}")
    if lr_schedule not in training.LR_SCHEDULES:
        raise UserError(f"unknown --lr-schedule {lr_schedule!r}; choose from {', '.join(training.LR_SCHEDULES)}")
    for name, v in (("--gmm-components", gmm_components), ("--steps", steps), ("--batch", batch), ("--accumulate", accumulate), ("--save-every", save_every), ("--sample-every", sample_every), ("--ema-every", ema_every)):
        if v < 1:
            raise UserError(f"{name} must be at least 1, got {v}")
    if not out.endswith(".safetensors"):
        raise UserError(f"{out}: model files end in .safetensors")
    operator = operators.make_operator(op, preset, **parse_params(param))
    if sampling_steps is not None and not 1 <= sampling_steps <= operator.T:
        raise UserError(f"--sampling-steps must be in 1..{operator.T}, got {sampling_steps}")
    has_state = training.state_path(out).exists()
    if Path(out).exists() and not force and not (resume and has_state):
        raise UserError(f"{out}: exists; pass --resume to continue training it or --force to start over")
    if resume and has_state:
        _, meta = training.read_safetensors(training.state_path(out))
        saved = json.loads(meta.get("colddiff", "{}")).get("meta", {}).get("operator", {})
        if saved != {"name": operator.name, "params": operator.params()}:
            raise UserError(f"{out}: was trained for {saved.get('name')} {saved.get('params')}, not {operator.name} {operator.params()}")
    dev = pick_device(device)
    images = training.load_folder(data, size, channels)
    if op == "animorph":
        operator.source = load_source(source, dev)
    cfg = training.TrainConfig(
        steps=steps, batch=batch, accumulate=accumulate, lr=lr, lr_schedule=lr_schedule, ema_decay=ema_decay, ema_every=ema_every,
        ema_start=ema_start, save_every=save_every, sample_every=sample_every, augment=augment, seed=seed, compile=compile,
        gmm_components=gmm_components, sampling_steps=sampling_steps,
    )
    try:
        training.train(images, operator, net, out, cfg, dev, resume=resume, log=lambda m: typer.echo(m, err=True))
    except training.Stop as stop:
        typer.echo(f"colddiff: {stop}", err=True)
        raise typer.Exit(stop.code) from None
    typer.echo(f"wrote {out}", err=True)


ModelOpt = typer.Option(..., "--model", "-m", help="Model file (.safetensors) written by `colddiff train`.")
SamplerOpt = typer.Option(None, "--sampler", help="direct, naive (Algorithm 1), tacos (Algorithm 2; the default), reverse (blurdiff's default).")
StepsOpt = typer.Option(None, "--steps", help="Sampling steps K <= t (Algorithm 2 jumps s -> s'); default t.")
ZOpt = typer.Option("fixed", "--z", help="noise/animorph/colour: fixed z, or estimated z (the DDIM choice).")
BatchOpt = typer.Option(16, "--batch", help="Images per network call.")
CompileOpt = typer.Option(True, "--compile/--no-compile", help="torch.compile + CUDA graphs (CUDA only).")


def open_model(path: str, device):
    import train as training

    net, op, meta = training.load_model(path, device)
    return net, op, meta


def default_steps(steps: int | None, meta: dict, t: int) -> int | None:
    """--steps, else the model's recommended sampling steps (at most t), else None (all t)."""
    if steps is not None:
        return steps
    k = meta.get("train", {}).get("sampling_steps")
    return None if k is None else min(k, t)


def pick_sampler(sampler: str | None, op) -> str:
    import samplers

    sampler = sampler or op.default_sampler
    if sampler not in samplers.SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose from {', '.join(samplers.SAMPLERS)}")
    return sampler


def draw_hidden(op, x0, seed: int):
    """One image's hidden randomness, from a generator seeded exactly as `degrade --seed` seeds it."""
    return op.draw(x0, seeded(seed))


def run_sampler(name, restorer, op, x_t, t, hidden, steps, z):
    import samplers

    try:
        return samplers.sample(name, restorer, op, x_t, t, hidden, steps, z)
    except samplers.SamplerError as e:
        raise UserError(str(e)) from None


@app.command()
@fail_cleanly
def restore(
    inputs: list[str] = typer.Argument(..., help="Degraded image files, folders (recursive) or - for stdin."),
    model: str = ModelOpt,
    sampler: Optional[str] = SamplerOpt,
    t: Optional[int] = typer.Option(None, "--t", help="The step the inputs were degraded to (default: the model's T)."),
    steps: Optional[int] = StepsOpt,
    z: str = ZOpt,
    seed: int = typer.Option(0, "--seed", help="Seed of the operator's hidden randomness: pass the --seed that `degrade` used."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Output file or folder (default: stdout)."),
    batch: int = BatchOpt,
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    compile: bool = CompileOpt,
    force: bool = ForceOpt,
):
    """Restore degraded images with a trained model, at their own size.

    Operators with hidden randomness (snow's pattern, mask's random centre, noise's z) redraw it
    from --seed inside naive/tacos sampling: give the --seed that `colddiff degrade` used to
    reproduce the exact degradation. direct needs no seed."""
    import torch

    import operators
    import samplers

    dev = pick_device(device)
    net, op, meta = open_model(model, dev)
    sampler = pick_sampler(sampler, op)
    t = op.T if t is None else t
    steps = default_steps(steps, meta, t)
    if op.name == "animorph":
        op.source = load_source(source, dev)
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    C = meta["image"]["channels"]
    items = find_images(inputs)
    for src, _, _ in items:  # every input must decode and fit before anything is written
        check_input(read_image(src), C, op, src, model)
    dests = plan_outputs(items, out, force)
    restorer = samplers.make_restorer(net, dev, compile and dev.type == "cuda")
    pending: list = []

    def flush():
        x_t = torch.cat([x for x, _ in pending])
        hidden = operators.cat_hidden([draw_hidden(op, x, seed) for x, _ in pending])
        x0_hat = run_sampler(sampler, restorer, op, x_t, t, hidden, steps, z)
        for img, (_, dest) in zip(x0_hat, pending):
            write_image(to_uint8(img), dest)
        pending.clear()

    for (src, _, _), dest in zip(items, dests):
        x = to_model(read_image(src, C))[None].to(dev)
        if pending and (pending[0][0].shape != x.shape or len(pending) == batch):
            flush()
        pending.append((x, dest))
    flush()


def check_input(u8, channels: int, op, src, model):
    name = "<stdin>" if isinstance(src, bytes) else src
    if u8.shape[0] != channels:
        kind = {1: "grey (1-channel)", 3: "colour (3-channel)"}
        raise UserError(f"{name}: is {kind[u8.shape[0]]} but {model} was trained on {kind[channels]} images")
    if min(u8.shape[-2:]) < 8:
        raise UserError(f"{name}: {u8.shape[-1]}x{u8.shape[-2]} is too small (at least 8x8)")
    if op.name == "pixelate" and min(u8.shape[-2:]) < 2**op.T:
        raise UserError(f"{name}: pixelate with T={op.T} needs at least {2**op.T}x{2**op.T} px")


@app.command("eval")
@fail_cleanly
def evaluate(
    data: str = typer.Argument(..., help="Folder of held-out clean images."),
    model: str = ModelOpt,
    n: int = typer.Option(1000, "--n", help="How many images to evaluate (the first N, sorted by name)."),
    sampler: Optional[str] = SamplerOpt,
    steps: Optional[int] = StepsOpt,
    z: str = ZOpt,
    seed: int = typer.Option(0, "--seed", help="Image i's hidden randomness is seeded with seed + i."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Folder for eval.json and grid.png."),
    batch: int = typer.Option(64, "--batch"),
    fid_weights: Optional[str] = typer.Option(None, "--fid-weights", help="pt_inception-2015-12-05 weights file for FID."),
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    compile: bool = CompileOpt,
    force: bool = ForceOpt,
):
    """Degrade held-out images to T, restore them (direct and --sampler), print the papers' table.

    Columns: degraded / sampled / direct, each FID / SSIM / RMSE against the originals
    (SSIM: Gaussian window 11, sigma 1.5, data range 1; RMSE on [0, 1])."""
    import torch

    import metrics
    import samplers
    import train as training

    dev = pick_device(device)
    net, op, meta = open_model(model, dev)
    sampler = pick_sampler(sampler, op)
    steps = default_steps(steps, meta, op.T)
    if op.name == "animorph":
        op.source = load_source(source, dev)
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if out is not None:
        clash = [p for p in (Path(out) / "eval.json", Path(out) / "grid.png") if p.exists()]
        if clash and not force:
            raise UserError(f"{clash[0]}: output exists; pass --force to overwrite")
    H, W, C = meta["image"]["height"], meta["image"]["width"], meta["image"]["channels"]
    images = training.load_folder(data, H if H == W else None, C)[:n]
    if images.shape[-2:] != (H, W):
        raise UserError(f"{data}: images are {images.shape[-1]}x{images.shape[-2]}, the model was trained on {W}x{H}")
    restorer = samplers.make_restorer(net, dev, compile and dev.type == "cuda")
    draw = lambda x, i: draw_hidden(op, x, seed + i)  # noqa: E731
    try:
        table, columns = metrics.evaluate(restorer, op, to_model(images), sampler, steps, z, draw, batch, dev, fid_weights)
    except samplers.SamplerError as e:
        raise UserError(str(e)) from None
    table = {"model": str(model), "operator": meta["operator"], **table}
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    typer.echo(f"{op.name} (T={op.T}), {len(images)} images, sampler {sampler}" + (f", {steps} steps" if steps else ""))
    typer.echo("|        | degraded FID | SSIM  | RMSE  | sampled FID | SSIM  | RMSE  | direct FID | SSIM  | RMSE  |")
    typer.echo("|--------|---|---|---|---|---|---|---|---|---|")
    typer.echo("| " + Path(data).name + " | " + " | ".join(fmt(table[c][k]) for c in ("degraded", "sampled", "direct") for k in ("fid", "ssim", "rmse")) + " |")
    if not table["fid_available"]:
        typer.echo(f"colddiff: FID n/a: {table['fid_note']}", err=True)
    if out is not None:
        k = min(8, len(images))
        rows = torch.stack([columns[c][:k] for c in ("degraded", "direct", "sampled", "original")], 1).flatten(0, 1)
        atomic_write(Path(out) / "grid.png", encode_image(to_uint8(grid_image(rows * 2 - 1, ncol=4))))
        atomic_write(Path(out) / "eval.json", (json.dumps(table, indent=2) + "\n").encode())


BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "fmnist-blur-gen.safetensors"


def _mix32(h: int) -> int:
    """The murmur3 finaliser: a bijection of 32-bit integers that scatters neighbours."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def image_seed(seed: int, i: int) -> int:
    """Image i's own 32-bit seed (torch's CPU generator keeps 32 bits): the same image whatever
    --n or the batch size, and distinct for every i < 2^32 under one seed."""
    return _mix32((_mix32(seed) + i) & 0xFFFFFFFF)


@app.command()
@fail_cleanly
def generate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model file (default: the bundled Fashion-MNIST blur model)."),
    n: int = typer.Option(64, "--n", help="How many images."),
    symmetry: str = typer.Option("broken", "--symmetry", help="blur: broken (noise added once to x_T) or perfect."),
    break_noise: float = typer.Option(0.002, "--break-noise", help="Std of the symmetry-breaking noise."),
    sampler: Optional[str] = SamplerOpt,
    steps: Optional[int] = StepsOpt,
    z: Optional[str] = typer.Option(None, "--z", help="noise/animorph/colour: estimated (default for noise, animorph) or fixed."),
    seed: int = typer.Option(0, "--seed", help="Image i is drawn from its own generator, seeded from (seed, i)."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="A grid PNG, or DIR/ for one PNG per image (default: grid to stdout)."),
    ncol: Optional[int] = typer.Option(None, "--ncol", help="Grid columns (default: square-ish)."),
    batch: int = typer.Option(64, "--batch", help="Images per network call."),
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    compile: bool = CompileOpt,
    force: bool = ForceOpt,
):
    """Generate images from nothing but a model: x_T from the model's prior, then --sampler.

    blur (generation preset): a colour from the stored Gaussian mixture, plus N(0, break_noise^2)
    once (broken symmetry); pixelate: a low-res image from its mixture; colour: a random colour;
    noise: z ~ N(0, I); animorph: an image of --source."""
    import math as _math

    import torch

    import samplers

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if symmetry not in ("broken", "perfect"):
        raise UserError(f"--symmetry must be broken or perfect, got {symmetry!r}")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if ncol is not None and ncol < 1:
        raise UserError(f"--ncol must be at least 1, got {ncol}")
    seeded(seed)  # checks the range: image seeds are derived from it
    if model is None:
        if not BUNDLED_MODEL.is_file():
            raise UserError(f"no --model given and the bundled model {BUNDLED_MODEL} is missing")
        model = str(BUNDLED_MODEL)
    dev = pick_device(device)
    net, op, meta = open_model(model, dev)
    sampler = pick_sampler(sampler, op)
    steps = default_steps(steps, meta, op.T)
    if z is None:
        z = "estimated" if op.name in ("noise", "animorph") else "fixed"
    if op.name == "animorph":
        op.source = load_source(source, torch.device("cpu"))
    folder = out is not None and (out.endswith(("/", os.sep)) or Path(out).is_dir())
    names = [f"{seed}_{i:06d}.png" for i in range(n)]
    if folder:
        clash = [Path(out) / f for f in names if (Path(out) / f).exists()]
        if clash and not force:
            raise UserError(f"{clash[0]}: output exists; pass --force to overwrite")
    elif out is None or out == STDIO:
        if out is None and sys.stdout.isatty():
            raise UserError("refusing to write a PNG to the terminal: give -o FILE or redirect the output")
    elif Path(out).exists() and not force:
        raise UserError(f"{out}: output exists; pass --force to overwrite")
    shape = (1, meta["image"]["channels"], meta["image"]["height"], meta["image"]["width"])
    restorer = samplers.make_restorer(net, dev, compile and dev.type == "cuda")
    from rich.console import Console
    from rich.progress import Progress

    results = []
    starts = lambda i: samplers.generation_start(op, meta.get("prior"), shape, seeded(image_seed(seed, i)), symmetry, break_noise)  # noqa: E731
    try:
        with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("generating", total=n)
            for lo, images in samplers.generate(restorer, op, starts, n, batch, sampler, steps, z, dev):
                images = to_uint8(images).cpu()
                if folder:
                    for i, img in enumerate(images, start=lo):
                        write_image(img, str(Path(out) / names[i]))
                else:
                    results.append(images)
                bar.update(task, advance=len(images))
    except samplers.SamplerError as e:
        raise UserError(str(e)) from None
    if not folder:
        allimgs = torch.cat(results).float() / 127.5 - 1
        cols = ncol or _math.ceil(_math.sqrt(n))
        write_image(to_uint8(grid_image(allimgs, ncol=cols)), out or STDIO)


@app.command("fit-prior")
@fail_cleanly
def fit_prior(
    data: str = typer.Argument(..., help="Folder of the training images."),
    model: str = ModelOpt,
    gmm_components: int = typer.Option(1, "--gmm-components"),
    seed: int = SeedOpt,
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Where to write the updated model (default: MODEL, needs --force)."),
    device: str = DeviceOpt,
    force: bool = ForceOpt,
):
    """Fit (again) the generation prior of a model on a folder of images and store it in the model."""
    import train as training

    if gmm_components < 1:
        raise UserError(f"--gmm-components must be at least 1, got {gmm_components}")
    dev = pick_device(device)
    net, op, meta = open_model(model, "cpu")
    dest = out or model
    if Path(dest).exists() and not force:
        raise UserError(f"{dest}: exists; pass --force to overwrite it with the new prior")
    H, W, C = meta["image"]["height"], meta["image"]["width"], meta["image"]["channels"]
    images = training.load_folder(data, H if H == W else None, C)
    prior = training.fit_prior(op, images, gmm_components, seed, dev)
    if prior is None:
        raise UserError(f"{op.name} (this preset) has no fitted generation prior")
    training.save_model(dest, net, meta | {"prior": prior})
    typer.echo(f"wrote {dest}: {gmm_components}-component prior over {len(images)} images", err=True)


def load_source(folder: str | None, device):
    """The animorph z images: every image of a folder, resized to the first one's size."""
    import torch
    import torch.nn.functional as F

    if folder is None:
        raise UserError("animorph needs --source DIR, a folder of the images to morph into")
    items = find_images([folder])
    first = read_image(items[0][0])
    imgs = [to_model(read_image(src, channels=first.shape[0])) for src, _, _ in items]
    size = first.shape[-2:]
    out = []
    for im in imgs:
        if im.shape[-2:] != size:
            im = F.interpolate(im[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        out.append(im)
    return torch.stack(out).to(device)


def main():
    app()


if __name__ == "__main__":
    main()
