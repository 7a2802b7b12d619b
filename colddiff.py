"""colddiff: cold diffusion from the shell: degrade, train, restore, evaluate, generate.

The Typer app: commands, their options, and the one place user errors become one line and exit 1.
The methods live elsewhere: operators.py (D and each operator's method), unet.py (R),
samplers.py, generative.py, train.py, checkpoint.py, image_io.py, outputs.py, metrics.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional

import typer
from click.core import ParameterSource

import notes
from common import ImageRNG, Progress, Stop, Terminated, UserError, at_least, check_seed, generator
from image_io import STRIP_WIDTH, attach_source, check_input, check_side, check_strip, check_size, encode_image, find_images, grid_image, grid_size, load_folder, read_alpha, read_image
from image_io import say_first_frames, shrunk_line, source_name, strip_alpha, strip_frame, strip_frame_size, strip_recording, strip_rows, strip_steps
from image_io import bits_of, to_model, to_pixels
from machine import check_fits, out_of_memory, pick_device
from outputs import Writer, atomic_write, check_folder_name, check_skip_existing, check_writable, finish_later, not_written, plan_grid_or_folder, plan_outputs
from outputs import still_to_write, write_image
from samplers import SAMPLERS, open_model
from train_config import TrainConfig

app = typer.Typer(
    add_completion=False,
    suggest_commands=False,  # click suggests already: one "Did you mean", not two
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Cold diffusion: degrade, restore, train and generate images with deterministic transforms.",
)
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "fmnist-blur-gen.safetensors"


def fail_cleanly(fn):
    """Every command runs through this: a UserError is one `colddiff: error:` line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"colddiff: error: {e}", err=True)
            raise typer.Exit(1) from None
        except Stop as stop:
            typer.echo(f"colddiff: {stop}", err=True)
            raise typer.Exit(stop.code) from None
        except KeyboardInterrupt:
            typer.echo("colddiff: interrupted", err=True)
            raise typer.Exit(130) from None
        except Terminated:
            typer.echo("colddiff: terminated", err=True)
            raise typer.Exit(128 + 15) from None
        except BrokenPipeError:  # the reader of stdout went away (`| head`, `>&-`): quiet, as Unix tools
            raise typer.Exit(128 + 13) from None  # SIGPIPE's status
        except (MemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            typer.echo(f"colddiff: error: out of memory ({(str(e).splitlines() or [type(e).__name__])[0][:90]}); use a smaller --batch, "
                       "smaller images (--size, or resize them), or --device cpu", err=True)
            raise typer.Exit(1) from None

    return wrapper


def command(name: str | None = None):
    """An app command that fails cleanly."""
    return lambda fn: app.command(name)(fail_cleanly(fn))


def make_op(name: str, preset: str | None, pairs: list[str] | None):
    import operators

    params = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UserError(f"--param takes KEY=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return operators.make_operator(name, preset, **params)


def say_line(message: str) -> None:
    typer.echo(f"colddiff: {message}", err=True)


# ----------------------------------------------------------------------------- options

CFG = TrainConfig()
OpOpt = typer.Option("blur", "--op", help="Degradation operator (see `colddiff ops`).")
PresetOpt = typer.Option(None, "--preset", help="Operator preset (default: the operator's first).")
ParamOpt = typer.Option(None, "--param", help="Override an operator parameter, KEY=VALUE (repeatable).")
SeedOpt = typer.Option(0, "--seed", help="Seed of every random draw (snow pattern, mask centre, noise).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads (default: the cores other processes are not using, read from /proc/stat).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress on stderr (errors still are).")
ForceOpt = typer.Option(False, "--force", help="Overwrite outputs that exist.")
SkipExistingOpt = typer.Option(False, "--skip-existing", help="Leave the outputs that exist as they are and do the other inputs (to finish an interrupted folder); an output whose note says other settings is an error.")
SourceOpt = typer.Option(None, "--source", help="animorph: the folder of z images (the second image set).")
ModelOpt = typer.Option(..., "--model", "-m", help="Model file (.safetensors) written by `colddiff train`.")
SamplerOpt = typer.Option(None, "--sampler", help=f"One of {', '.join(SAMPLERS)} (those whose network output fits the model's operator; `colddiff ops` says what each does); default: the operator's.")
EtaOpt = typer.Option(None, "--eta", help="ddim, dpmpp_2m: 0 deterministic .. 1 stochastic (ddim over every step at 1: ancestral, posterior variance); default 0, or the operator's with its default sampler.")
StepsOpt = typer.Option(None, "--steps", help="Sampling steps K <= t (Algorithm 2 jumps s -> s'); default: the model's, else t.")
ZOpt = typer.Option(None, "--z", help="noise/animorph/colour: fixed z, or estimated z (the DDIM choice); default: the operator's.")
CompileOpt = typer.Option(True, "--compile/--no-compile", help="torch.compile + CUDA graphs (CUDA only).")
OutOpt = typer.Option(None, "-o", "--out", help="Output file or folder (default: stdout).")
FramesOpt = typer.Option(None, "--frames", help="Frames in --strip, evenly spread (default: every one up to 21, else 11).")
X0HatOpt = typer.Option(False, "--x0-hat", help="With --strip, a second row under the states: R's prediction x0_hat from each (the released code's X_0s), blank under x_0.")


# ----------------------------------------------------------------------------- commands


def print_version(value: bool):
    """What a bug report needs: colddiff's version, torch's, and the device torch would use."""
    if value:
        from common import versions

        v = versions()
        typer.echo(f"colddiff {v['colddiff']}, torch {v['torch']}, {v['device']}")
        raise typer.Exit()


@app.callback()
def main_options(
    max_megapixels: float = typer.Option(128, "--max-megapixels", min=0.001, help="Refuse images larger than this (a guard against decompression bombs)."),
    _version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True, help="Print the versions of colddiff and torch, and the GPU, and exit."),
):
    """Cold diffusion: degrade, restore, train and generate images with deterministic transforms."""
    import image_io

    image_io.MAX_PIXELS = int(max_megapixels * 1e6)


@command()
def ops():
    """List the operators, their presets, T, the image size each preset was made for, and parameters; and the samplers."""
    from rich.console import Console
    from rich.table import Table

    import operators

    table = Table(title="colddiff operators")
    for col in ("operator", "preset", "T", "images", "parameters"):
        table.add_column(col)
    for name, cls in operators.OPERATORS.items():
        for preset in cls.PRESETS:
            p = operators.make_operator(name, preset).params()
            T = p.pop("T")
            default = " (default)" if preset == cls.DEFAULT_PRESET else ""
            size = f"{cls.NATIVE[preset]} px" if preset in cls.NATIVE else "any"
            table.add_row(name, preset + default, str(T), size, ", ".join(f"{k}={v}" for k, v in p.items()))
    Console().print(table)
    table = Table(title="samplers (restore, eval, generate --sampler)")
    for col in ("sampler", "operators", "options", "what it does"):
        table.add_column(col)
    for name, fn in SAMPLERS.items():
        ops_ = [n for n, cls in operators.OPERATORS.items() if fn.predicts in (None, cls.predicts)]
        default = [n for n in ops_ if operators.OPERATORS[n].default_sampler == name]
        takes = [flag for flag, on in (("--steps", fn.steps), ("--eta", fn.eta), ("--step-noise", fn.step_noise)) if on]
        others = [n for n in operators.OPERATORS if n not in ops_]
        applies = "all" if not others else f"all but {', '.join(others)}" if len(others) < len(ops_) else ", ".join(ops_)
        does = " ".join(fn.__doc__.split()).split(". ")[0].rstrip(".") + "."  # the docstring's first sentence
        if default:
            does += " The default." if len(default) > 1 else f" The default for {default[0]}."
        table.add_row(name, applies, ", ".join(takes) or "-", does)
    Console().print(table)


@command()
def degrade(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(..., metavar="FILE|FOLDER|-...", help="Image files, folders (recursive) or - for stdin."),
    op: str = OpOpt,
    preset: Optional[str] = PresetOpt,
    t: Optional[int] = typer.Option(None, "--t", help="Degradation step, 0..T (default T)."),
    seed: int = SeedOpt,
    out: Optional[str] = OutOpt,
    strip: bool = typer.Option(False, "--strip", help="Write x_0 ... x_T side by side in one image (a large image's frames shrunk so that it is at most 16383 px wide)."),
    frames: Optional[int] = FramesOpt,
    param: Optional[list[str]] = ParamOpt,
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    force: bool = ForceOpt,
    skip_existing: bool = SkipExistingOpt,
    fit: bool = typer.Option(True, "--fit/--no-fit", help="Scale the parameters that are lengths in pixels (blur kernels, mask and colour widths, snow flakes) from the preset's image size to each image's, where they differ more than 2x."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Degrade with this model's operator, every parameter as it was trained and not fitted (instead of --op, --preset, --param), so that `restore --model` takes the outputs as they are."),
):
    """Degrade images: x_t = D(x_0, t). Each image uses a generator seeded with --seed.

    Inputs: image files, folders (recursive) or - for stdin. Output: stdout, a file, or a folder
    for several inputs. Example: colddiff degrade photos/ --op mask --preset celeba -o masked/"""
    import checkpoint

    check_strip(strip, frames)
    if model is None:
        operator, channels = make_op(op, preset, param), None
    else:
        typed = [f"--{'no-fit' if name == 'fit' and not fit else name}" for name in ("op", "preset", "param", "fit")
                 if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if typed:
            raise UserError(f"--model degrades with the model's own operator: give {' or '.join(typed)}, or --model, not both")
        (operator, meta), fit = checkpoint.model_operator(model), False
        channels = meta["image"]["channels"]
    t = operator.T if t is None else t
    if not 0 <= t <= operator.T:
        raise UserError(f"--t must be in 0..{operator.T} for {operator.name}, got {t}")
    check_seed(seed)
    steps = strip_steps(list(range(operator.T + 1)), frames) if strip else [t]
    dev = pick_device(device, threads)
    items = not_written(find_images(inputs, skip=out), out, force, skip_existing, None if quiet else say_line,
                        notes.degraded_into(operator, t, seed, fit, steps if strip else None))
    sizes = []
    for src, _, _ in items:  # every input must decode and be large enough for D (with --model, fit the model) before anything is written
        u8 = read_image(src)
        if model is not None:
            check_input(u8, channels, operator, src, model)
        else:
            check_side(u8, operator, src)
        sizes.append(u8.shape[-2:])
    dests = plan_outputs(items, out, force)
    frame_sizes = [strip_frame_size(len(steps), h, w) if strip else (h, w) for h, w in sizes]
    for dest, (h, w) in zip(dests, frame_sizes):
        check_size(dest, len(steps) * w, h)
    if not quiet:
        say_first_frames(items, say_line)
    attach_source(operator, source, dev)
    said: set = set()
    # a strip counts frames: one of a 12 MP photo is 11 full-size D's, about 40 s on 2 cores
    unit, per_image = ("frames", len(steps)) if strip else ("images", 1)
    with finish_later(len(items)), Progress("degrading", len(items) * per_image, unit, quiet=quiet or len(items) * per_image == 1) as progress, \
            Writer() as writer:
        for i, ((src, _, _), dest, size) in enumerate(zip(items, dests, frame_sizes)):
            px = read_image(src, deep=True)  # 16-bit grey stays 16-bit
            x0 = to_model(px)[None].to(dev)
            fitted, note = operator.fit_to(*x0.shape[-3:])
            fitted = fitted if fit else operator
            if note and note not in said and not quiet and (fit or note.startswith("warning")):
                said.add(note)
                say_line(note)
            if size != tuple(x0.shape[-2:]) and "strip" not in said and not quiet:
                said.add("strip")
                say_line(f"{shrunk_line(source_name(src), len(steps), *x0.shape[-2:])} (a strip of at most "
                         f"{STRIP_WIDTH} px; crop the image or pass fewer --frames for larger ones)")
            degrade_one(fitted, x0, dest, steps, seed, dev, note=notes.degraded_strip(fitted, steps, seed) if strip else None, size=size,
                        frames_done=lambda k, i=i: progress.update(i * per_image + k), alpha=read_alpha(src, dest), write=writer.write,
                        bits=bits_of(px))


def degrade_one(operator, x0, dest: str, steps: list[int], seed: int, dev, note: dict | None = None, size=None,
                frames_done=lambda k: None, alpha=None, write=write_image, bits: int = 8) -> None:
    """One image's x_t (or its strip of frames, each shrunk to `size`) to `dest`, at `bits` per
    pixel, with a note of how it was made (notes.py): an x_t's, which `restore` reads, or `note` (a
    strip's). frames_done(k) after each call of D, k the frames made so far."""
    import torch

    hidden = operator.draw(x0, generator(seed))
    frames = []
    per_call = max(1, 2**25 // x0.numel())  # a strip of a 12-megapixel photo: a few frames at a time
    for i in range(0, len(steps), per_call):
        chunk = steps[i : i + per_call]
        h = None if hidden is None else {k: v.expand(len(chunk), *v.shape[1:]) for k, v in hidden.items()}
        frames += list(strip_frame(operator.apply(x0.expand(len(chunk), -1, -1, -1), torch.tensor(chunk), h), size, bits))
        frames_done(len(frames))
    write(torch.cat(frames, dim=-1), dest, note or notes.degraded(operator, steps[0], seed), strip_alpha(alpha, size, len(steps)))


@command()
def train(
    ctx: typer.Context,
    data: str = typer.Argument(..., metavar="FOLDER", help="Folder of training images (recursive)."),
    out: str = typer.Option(..., "-o", "--out", help="Model file to write (.safetensors)."),
    op: str = OpOpt,
    preset: Optional[str] = PresetOpt,
    param: Optional[list[str]] = ParamOpt,
    net: Optional[str] = typer.Option(None, "--net", help="Network preset: paper (the released ConvNeXt UNet, 56.6 M), small, tiny, ddpm (Ho et al., 35.7 M), adm (Lee et al., 121 M), adm-small. Default: paper; cifar10 presets: ddpm; blurdiff: adm."),
    net_param: Optional[list[str]] = typer.Option(None, "--net-param", help="Override a network preset's setting, KEY=VALUE (repeatable): dim=48, mults=1,2,4,8, heads, dim_head; ddpm/adm also blocks, attn_levels, dropout."),
    size: Optional[int] = typer.Option(None, "--size", help="Resize (short side) and centre-crop images to SIZE."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 or 3 (default: from the data)."),
    steps: int = typer.Option(CFG.steps, "--steps", help="Optimizer steps."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per step per device (default 32; blurdiff 16)."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", help="Gradient accumulation (batches per step; default 2, blurdiff 1)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default 2e-5; blurdiff 5e-5)."),
    lr_schedule: str = typer.Option(CFG.lr_schedule, "--lr-schedule", help="constant (the papers) or cosine (decays to 0 at --steps)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="EMA decay (default 0.995; blurdiff 0.9999)."),
    ema_every: Optional[int] = typer.Option(None, "--ema-every", help="Steps between EMA updates (default 10; blurdiff 1)."),
    ema_start: Optional[int] = typer.Option(None, "--ema-start", help="EMA copies the model until this step (default 2000; blurdiff 0)."),
    save_every: int = typer.Option(CFG.save_every, "--save-every"),
    sample_every: int = typer.Option(CFG.sample_every, "--sample-every", help="Write a sample grid and a metrics.jsonl line."),
    augment: bool = typer.Option(CFG.augment, "--augment/--no-augment", help="Resize 1.12x + random crop + flip."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    compile: bool = typer.Option(CFG.compile, "--compile/--no-compile", help="torch.compile the network (CUDA only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's training state when there is one, with its operator, network, size and settings (those given here win)."),
    force: bool = ForceOpt,
    source: Optional[str] = SourceOpt,
    gmm_components: int = typer.Option(CFG.gmm_components, "--gmm-components", help="Components of the generation prior (blur, pixelate)."),
    sampling_steps: Optional[int] = typer.Option(CFG.sampling_steps, "--sampling-steps", help="Default --steps of restore/eval/generate for this model (default: T)."),
    train_noise: Optional[float] = typer.Option(None, "--train-noise", metavar="SIGMA", help="Train on D(x0, t) + SIGMA eps (inverse heat dissipation); generate then adds 1.25 x SIGMA of --step-noise (default 0)."),
    step_noise: Optional[float] = typer.Option(CFG.step_noise, "--step-noise", metavar="DELTA", help="The model's default generate --step-noise (default 0.025, or 1.25 x --train-noise); set it to what measures best for this model."),
):
    """Train the restoration network R(x_t, t) on a folder of images (L1 on x0, EMA, bf16 on CUDA).

    Example: colddiff train data/faces --op blur --preset celeba --size 128 -o faces.safetensors

    Ctrl-C or SIGTERM finishes the step, saves, and exits 130/143; --resume continues exactly."""
    import checkpoint
    import operators
    import train as training
    import unet

    typed = {name for name in ctx.params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    saved = training.check_output(out, resume, force)
    if saved and not typed & {"op", "preset", "param"}:  # --resume alone: the operator the run began with
        operator = operators.operator_from_params(saved["operator"]["name"], saved["operator"]["params"])
    else:
        operator = make_op(op, preset, param)
    training.check_operator(saved, operator, out)
    given = training.method_defaults(operator, training.resumed_settings(saved, locals(), typed))
    net = given["net"]
    cfg = TrainConfig(**{f.name: given[f.name] for f in dataclasses.fields(TrainConfig)})
    cfg.check(operator)
    net_overrides = given.get("net_config") or unet.parse_overrides(net, net_param or [])
    # one writer per model file (under torchrun, rank 0 holds it for all)
    with checkpoint.train_lock(out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
        saved = training.check_output(out, resume, force)  # again: a run that just ended may have written it
        training.check_operator(saved, operator, out)
        size, channels = training.resumed_shape(saved, out, size, channels)
        dev = pick_device(device, threads)
        native = operator.NATIVE.get(operator.preset)  # celeba: 128 px, as the papers trained it
        images = load_folder(data, size, channels, quiet=quiet, say=None if quiet else say_line, skip=str(training.run_dir(out)),
                             mixed_size=native and (native, f"the size the {operator.name} {operator.preset} preset is made for"))
        attach_source(operator, source, dev)
        log = (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))
        training.train(images, operator, net, out, cfg, dev, resume=resume, log=log, net_overrides=net_overrides, quiet=quiet)
    log(f"wrote {out}")


@command()
def restore(
    inputs: list[str] = typer.Argument(..., metavar="FILE|FOLDER|-...", help="Degraded image files, folders (recursive) or - for stdin."),
    model: str = ModelOpt,
    sampler: Optional[str] = SamplerOpt,
    t: Optional[int] = typer.Option(None, "--t", help="The step the inputs were degraded to (default: what an image from `colddiff degrade` says, else the model's T)."),
    steps: Optional[int] = StepsOpt,
    z: Optional[str] = ZOpt,
    eta: Optional[float] = EtaOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the operator's hidden randomness: the --seed that `degrade` used (default: what its image file says, else 0)."),
    out: Optional[str] = OutOpt,
    batch: int = typer.Option(16, "--batch", help="Images per network call."),
    tile: Optional[int] = typer.Option(None, "--tile", metavar="N", help="Run R on N x N tiles that overlap by N/8, blended (memory of one tile, time linear in pixels); 0: never. Default: whole images; 512 px tiles (or the largest that fit) for one that cannot fit in memory whole."),
    strip: bool = typer.Option(False, "--strip", help="Write the sampler's states x_t ... x_0 side by side, one strip per image (its frames shrunk as degrade --strip's)."),
    frames: Optional[int] = FramesOpt,
    x0_hat_row: bool = X0HatOpt,
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    compile: bool = CompileOpt,
    force: bool = ForceOpt,
    skip_existing: bool = SkipExistingOpt,
):
    """Restore degraded images with a trained model, at their own size.

    Inputs: image files, folders (recursive) or - for stdin. Example:
    colddiff restore blurry/ --model faces.safetensors --sampler tacos -o restored/

    Operators with hidden randomness (snow's pattern, mask's random centre, noise's z) redraw it
    from --seed inside naive/tacos sampling, to reproduce the exact degradation. An image (not a BMP) written by
    `colddiff degrade` says its operator, t and seed, so none of them need be given; --t and --seed
    override it. direct needs no seed."""
    import torch

    import samplers

    at_least(batch, "--batch"), check_strip(strip, frames, x0_hat_row)
    if tile is not None and tile != 0 and tile < 32:
        raise UserError(f"--tile must be 0 (whole images only) or at least 32 px, got {tile}")
    if seed is not None:
        check_seed(seed)
    dev = pick_device(device, threads)
    sampling = open_model(model, dev, sampler, steps, z, t, source, compile, eta)
    op, C = sampling.op, sampling.meta["image"]["channels"]
    items = not_written(find_images(inputs, skip=out), out, force, skip_existing, None if quiet else say_line,
                        notes.restored_as(model, sampling, t, seed, steps, strip, frames, x0_hat_row))
    plans, sizes, at_t, unsaid, tiled = [], [], {}, 0, None  # a Plan and size per image; the sampling from each t; ...
    for src, _, _ in items:  # every input must decode and fit before anything is written
        name = source_name(src)
        u8 = read_image(src)
        check_input(u8, C, op, src, model)
        tile_px = check_fits(sampling, name, *u8.shape[-2:], min(batch, len(items)), dev, tile)
        if tile_px and not tile and not tiled:
            tiled = f"{name}: {u8.shape[-1]}x{u8.shape[-2]} cannot fit in memory whole; restoring it in {tile_px} px tiles (--tile N chooses, --tile 0 refuses)"
        t_i, seed_i, said = notes.degradation_of(src, name, op, model, t, seed)
        unsaid += t is None and not said
        if t_i not in at_t:  # steps default to at most t: each t its own (checked here, before any work)
            try:
                at_t[t_i] = sampling.at(t_i, steps)
            except UserError as e:
                raise UserError(f"{name}: degraded to t = {t_i} (its colddiff note): {e}") from None
        plans.append(Plan(t_i, seed_i, tile_px))
        sizes.append(u8.shape[-2:])
    dests = plan_outputs(items, out, force)
    shown = {t_: notes.strip_of(at_t[t_], t_, strip, frames, x0_hat_row) for t_ in at_t}  # {"strip": the steps of its frames, ...}, or {}
    shrunk, rows = None, 1 + x0_hat_row
    for dest, (h, w), plan in zip(dests, sizes, plans):
        n = len(shown[plan.t]["strip"]) if strip else 1
        fh, fw = strip_frame_size(n, h, w)
        check_size(dest, n * fw, rows * fh)
        if fw != w and not shrunk:
            shrunk = shrunk_line(dest, n, h, w)
    if unsaid and not quiet:  # after every check: an error stays the only line
        which = "" if unsaid == len(items) else f" the {unsaid} images that carry no colddiff note"
        typer.echo(f"colddiff: restoring{which} as if degraded to t = T = {op.T}; pass --t if the images were degraded less", err=True)
    if tiled and not quiet:
        typer.echo(f"colddiff: {tiled}", err=True)
    if shrunk and not quiet:
        say_line(shrunk)
    if not quiet:
        say_first_frames(items, say_line)
    pending: list = []  # (x_t, plan, dest, alpha, bits) of the images of one network call: one size, t, tile and depth
    written = 0

    def flush():
        nonlocal written
        x_t, (t_, _, tile_px), bits = torch.cat([x for x, *_ in pending]), pending[0][1], pending[0][4]
        calls = at_t[t_].calls(t_) * (samplers.tile_count(*x_t.shape[-2:], tile_px) if tile_px else 1)

        def after_call():  # within a batch (a photo in tiles takes minutes): images done ~ the share of its calls made
            progress.update(min(written + len(pending), progress.done + len(pending) / calls))

        sampling_t = at_t[t_].watched(after_call)
        if tile_px:
            sampling_t = dataclasses.replace(sampling_t, restore=samplers.tiled(sampling_t.restore, tile_px))
        states, predicted, size = [], None, None  # the strip's frames and R's x0_hat from each, (B, C, h, w) uint8; their size
        if strip:
            size = strip_frame_size(len(shown[t_]["strip"]), *x_t.shape[-2:])
            sampling_t, states, predicted = strip_recording(sampling_t, shown[t_]["strip"], size, x0_hat_row, bits)
        x0_hat = sampling_t(x_t, t_, ImageRNG([plan.seed for _, plan, *_ in pending]).draw(op, x_t))
        strips = strip_rows([*states, strip_frame(x0_hat, size, bits)], predicted)
        made = notes.made("restore", model, at_t[t_], t=t_, tile=tile_px, **shown[t_])
        for i, (_, plan, dest, alpha, _) in enumerate(pending):
            writer.write(strips[i], dest, {**made, "seed": plan.seed}, strip_alpha(alpha, size, len(states) + 1, rows))
        written += len(pending)
        progress.update(written)
        pending.clear()

    with finish_later(len(items)), Progress("restoring", len(items), "images", quiet=quiet) as progress, Writer() as writer:
        for (src, _, _), plan, dest in zip(items, plans, dests):
            px = read_image(src, C, deep=True)  # 16-bit grey stays 16-bit
            x = to_model(px)[None].to(dev)
            first = pending[0] if pending else None
            if first and (first[0].shape != x.shape or (first[1].t, first[1].tile, first[4]) != (plan.t, plan.tile, bits_of(px))
                          or len(pending) == batch):
                flush()
            pending.append((x, plan, dest, read_alpha(src, dest), bits_of(px)))
        flush()


class Plan(NamedTuple):
    """How restore runs one image: from step t, with the hidden randomness of seed, whole or in tiles."""

    t: int
    seed: int
    tile: int | None


@command("eval")
def evaluate(
    data: str = typer.Argument(..., metavar="FOLDER", help="Folder of held-out clean images."),
    model: str = ModelOpt,
    n: int = typer.Option(1000, "--n", help="How many images to evaluate (the first N, sorted by name)."),
    sampler: Optional[str] = SamplerOpt,
    steps: Optional[int] = StepsOpt,
    z: Optional[str] = ZOpt,
    eta: Optional[float] = EtaOpt,
    seed: int = typer.Option(0, "--seed", help="Image i's hidden randomness is seeded from (seed, i), as in generate."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Folder for eval.json and grid.png."),
    batch: int = typer.Option(64, "--batch"),
    fid_weights: Optional[str] = typer.Option(None, "--fid-weights", help="pt_inception-2015-12-05 weights file for FID."),
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    compile: bool = CompileOpt,
    force: bool = ForceOpt,
):
    """Degrade held-out images to T, restore them (direct and --sampler), print the papers' table.

    Example: colddiff eval held-out/ --model faces.safetensors --n 1000 -o eval/

    Columns: degraded / sampled / direct, each FID / SSIM / RMSE against the originals
    (SSIM: Gaussian window 11, sigma 1.5, data range 1; RMSE on [0, 1])."""
    import torch

    import metrics

    at_least(n, "--n"), at_least(batch, "--batch"), check_seed(seed)
    if out:
        check_folder_name(out, "eval.json and grid.png")
    dests = [Path(out) / "eval.json", Path(out) / "grid.png"] if out else []
    if any(p.exists() for p in dests) and not force:
        raise UserError(f"{next(p for p in dests if p.exists())}: output exists; pass --force to overwrite")
    check_writable(dests)
    dev = pick_device(device, threads)
    sampling = open_model(model, dev, sampler, steps, z, None, source, compile, eta)
    H, W, C = (sampling.meta["image"][k] for k in ("height", "width", "channels"))
    check_input(read_image(find_images([data], out)[0][0]), C, sampling.op, data, model, least=11)  # as restore: no silent grey <-> colour
    images = load_folder(data, H if H == W else None, C, limit=n, quiet=quiet, say=None if quiet else say_line, skip=out,
                         size_is="the model's size")
    check_fits(sampling, data, *images.shape[-2:], min(batch, len(images)), dev)
    if images.shape[-2:] != (H, W):
        raise UserError(f"{data}: images are {images.shape[-1]}x{images.shape[-2]}, the model was trained on {W}x{H}")
    with Progress("evaluating", len(images), "images", quiet=quiet) as progress:
        table, columns = metrics.evaluate(sampling, to_model(images), seed, batch, dev, fid_weights, progress=progress.update)
    table = {"model": str(model), "operator": sampling.meta["operator"], **table}
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    typer.echo(f"{sampling.op.name} (T={sampling.op.T}), {len(images)} images, sampler {sampling.sampler}" + (f", {sampling.steps} steps" if sampling.steps else ""))
    typer.echo("|        | degraded FID | SSIM  | RMSE  | sampled FID | SSIM  | RMSE  | direct FID | SSIM  | RMSE  |")
    typer.echo("|--------|---|---|---|---|---|---|---|---|---|")
    typer.echo("| " + Path(data).name + " | " + " | ".join(fmt(table[c][k]) for c in ("degraded", "sampled", "direct") for k in ("fid", "ssim", "rmse")) + " |")
    d = table["sampled_minus_direct"]
    typer.echo(f"sampled - direct SSIM: {d['ssim']:+.3f}" + ("" if d["ssim_se"] is None else f" +- {2 * d['ssim_se']:.3f} (2 standard errors "
               f"over the {len(images)} paired images)") + f": {metrics.paired_verdict(d['ssim'], d['ssim_se'])}")
    if not table["fid_available"]:
        typer.echo(f"colddiff: FID n/a: {table['fid_note']}", err=True)
    if out is not None:
        k = min(8, len(images))
        rows = torch.stack([columns[c][:k] for c in ("degraded", "direct", "sampled", "original")], 1).flatten(0, 1)
        atomic_write(dests[1], encode_image(to_pixels(grid_image(rows * 2 - 1, ncol=4))))
        atomic_write(dests[0], (json.dumps(table, indent=2) + "\n").encode())


@command()
def generate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model file (default: the bundled Fashion-MNIST blur model)."),
    n: int = typer.Option(64, "--n", help="How many images."),
    symmetry: str = typer.Option("broken", "--symmetry", help="broken (the model's way of breaking the symmetry of a flat x_T) or perfect (no noise)."),
    break_noise: Optional[float] = typer.Option(None, "--break-noise", metavar="STD", help="Noise added once to x_T (default: the model's, 0; the released code used 0.002)."),
    step_noise: Optional[float] = typer.Option(None, "--step-noise", metavar="DELTA", help="Noise added after every naive/tacos step (default: the model's own: its train --step-noise, else 0.025 for a flat x_T or 1.25 x --train-noise if it was trained with one)."),
    sampler: Optional[str] = SamplerOpt,
    steps: Optional[int] = StepsOpt,
    z: Optional[str] = ZOpt,
    eta: Optional[float] = EtaOpt,
    seed: int = typer.Option(0, "--seed", help="Image i is drawn from its own generator, seeded from (seed, i)."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="A grid PNG, or DIR/ for one PNG per image (default: grid to stdout)."),
    ncol: Optional[int] = typer.Option(None, "--ncol", help="Grid columns (default: square-ish)."),
    strip: bool = typer.Option(False, "--strip", help="Each image as the sampler's states x_T ... x_0 side by side: a grid row, or a file, per image."),
    frames: Optional[int] = FramesOpt,
    x0_hat_row: bool = X0HatOpt,
    batch: int = typer.Option(64, "--batch", help="Images per network call."),
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    compile: bool = CompileOpt,
    force: bool = ForceOpt,
    skip_existing: bool = SkipExistingOpt,
):
    """Generate images from nothing but a model: x_T from the model's prior, then --sampler.

    Example: colddiff generate --n 64 -o grid.png   (the bundled Fashion-MNIST model)

    x_T: blur (generation preset) a colour from the stored Gaussian mixture; pixelate a low-res image
    from its mixture; colour a random colour; noise z ~ N(0, I); animorph an image of --source.
    Broken symmetry (blur's flat x_T): N(0, DELTA^2) after every step, DELTA 0.025 (1.25 SIGMA for a
    model trained with --train-noise SIGMA); the released code's N(0, 0.002^2) once on x_T is
    --step-noise 0 --break-noise 0.002."""
    import torch

    import generative

    at_least(n, "--n"), at_least(batch, "--batch"), check_seed(seed), ncol is None or at_least(ncol, "--ncol"), check_strip(strip, frames, x0_hat_row)
    if model is None and not BUNDLED_MODEL.is_file():
        raise UserError(f"no --model given and the bundled model {BUNDLED_MODEL} is missing")
    dev = pick_device(device, threads)
    sampling = open_model(model or str(BUNDLED_MODEL), dev, sampler, steps, z, None, source, compile, eta)
    break_noise = generative.break_symmetry(sampling, symmetry, break_noise, step_noise)
    generative.check(sampling)
    check_skip_existing(force, skip_existing)
    folder, names = plan_grid_or_folder(out, [f"{seed}_{i:06d}.png" for i in range(n)], force or skip_existing)
    if skip_existing and not folder:
        raise UserError("--skip-existing applies to -o DIR/ (a file per image), not to a grid")
    if strip and ncol is not None:
        raise UserError("--strip lays out one image's frames per grid row: leave --ncol out")
    shown = notes.strip_of(sampling, sampling.op.T, strip, frames, x0_hat_row)  # {"strip": the steps of its frames, ...}, or {}
    per_image, rows = len(shown["strip"]) if strip else 1, 1 + x0_hat_row
    made = notes.made("generate", model or str(BUNDLED_MODEL), sampling, break_noise=break_noise, seed=seed, **shown)
    # image i draws from its own seed, whatever else is made
    numbers = (still_to_write(names, None if quiet else say_line, "images", "generating", f" in {out}", lambda i: {**made, "image": i})
               if skip_existing else list(range(n)))
    H, W = strip_frame_size(per_image, sampling.meta["image"]["height"], sampling.meta["image"]["width"])
    if folder:
        for name in names:
            check_size(name, per_image * W, rows * H)
    else:
        ncol = per_image if strip else ncol or math.ceil(math.sqrt(n))
        check_size(names[0], *grid_size(n * per_image * rows, ncol, H, W))
    results = []
    with finish_later(len(numbers) if folder else 1), Progress("generating", len(numbers), "images", quiet=quiet) as progress, Writer() as writer:
        per_batch = sampling.calls(sampling.op.T)

        def after_call():  # within a batch: images done ~ the share of its network calls made
            progress.update(min(len(numbers), progress.done + min(batch, len(numbers)) / per_batch))

        states, predicted = [], None  # a batch's frames, x_T .. x_0, and R's x0_hat from each, (B, C, H, W) uint8
        watched = sampling.watched(after_call)
        if strip:
            watched, states, predicted = strip_recording(watched, shown["strip"], (H, W), x0_hat_row)
        done = 0
        for made_now, images in generative.generate(watched, n, batch, seed, dev, break_noise, numbers):
            images = strip_rows([*states, strip_frame(images, (H, W))], predicted)  # each image's strip, or itself
            for recorded in (states, predicted or []):  # the next batch's
                recorded.clear()
            if folder:
                for i, img in zip(made_now, images):
                    writer.write(img, names[i], {**made, "image": i})
            else:
                results.append(images)
            done += len(images)
            progress.update(done)
    if not folder:
        # strips (N, C, rows H, per_image W) -> their frames (N rows per_image, C, H, W), a grid row each
        frames = torch.cat(results).unflatten(-2, (rows, H)).unflatten(-1, (per_image, W)).permute(0, 2, 4, 1, 3, 5).flatten(0, 2)
        write_image(grid_image(frames, ncol=ncol), names[0], {**made, "n": n})  # uint8: a quarter of float's memory


@command()
def info(
    files: list[str] = typer.Argument(..., metavar="FILE|FOLDER...", help="Model files (.safetensors) or images colddiff wrote, or folders of them (recursive)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file, on one line each."),
):
    """What a model file or an image says of how colddiff made it.

    A model: its operator, network, training and prior. An image: its note (degrade: operator, t,
    seed; restore, generate: model and sampling). A folder: each of its images and models."""
    for path in [f for arg in files for f in notes.files_in(arg)]:
        text, data = notes.describe(path)
        typer.echo(json.dumps({"file": path, **data}) if as_json else text)


@command("fit-prior")
def fit_prior(
    data: str = typer.Argument(..., metavar="FOLDER", help="Folder of the training images."),
    model: str = ModelOpt,
    gmm_components: int = typer.Option(1, "--gmm-components"),
    seed: int = SeedOpt,
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Where to write the updated model (default: MODEL, needs --force)."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    force: bool = ForceOpt,
):
    """Fit (again) the generation prior of a model on a folder of images and store it in the model.

    Example: colddiff fit-prior data/ --model gen.safetensors --gmm-components 10 -o gen10.safetensors"""
    import checkpoint
    import generative

    at_least(gmm_components, "--gmm-components")
    net, op, meta = checkpoint.load_model(model, "cpu")
    dest = checkpoint.check_model_name(out or model)
    if Path(dest).exists() and not force:
        raise UserError(f"{dest}: exists; pass --force to overwrite it with the new prior")
    check_writable([dest])
    if op.prior is None:
        raise UserError(f"{op.name} (this preset) has no fitted generation prior")
    H, W, C = meta["image"]["height"], meta["image"]["width"], meta["image"]["channels"]
    images = load_folder(data, H if H == W else None, C, quiet=quiet, say=None if quiet else say_line, size_is="the model's size")
    prior = generative.fit_prior(op, images, gmm_components, seed, pick_device(device, threads))
    checkpoint.save_model(dest, net, meta | {"prior": prior})
    typer.echo(f"wrote {dest}: {gmm_components}-component prior over {len(images)} images", err=True)


def main():
    import signal

    def terminated(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminated)  # train's loop takes it over while it runs, to save first
    app()


if __name__ == "__main__":
    main()
