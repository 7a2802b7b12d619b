"""colddiff: cold diffusion from the shell: degrade, train, restore, evaluate, generate.

The Typer app: commands, their options, and the one place user errors become one line and exit 1.
Each command reads as labelled steps (parse, plan the inputs, open the model, run, write); the work
lives in the modules (docs/development.md has the map): operators.py (D and each operator's method),
unet.py (R), samplers.py, sampling.py, generative.py, train.py, checkpoint.py, image_io.py, outputs.py.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Optional

import click
import typer
import typer.core
from click.core import ParameterSource

import bundled
import notes
from errors import Stop, Terminated, UserError, at_least, check_seed
from folders import attach_source, load_folder
from image_io import find_images, read_image, to_model
from inputs import plan as plan_inputs
from machine import check_fits, out_of_memory, pick_device
from outputs import Writer, check_writable, finish_later, folder_lock
from progress import Progress
from samplers import SAMPLERS
from sampling import Choices, batches, open_model
from strips import Strip, check_strip
from train_config import TrainConfig


class Commands(typer.core.TyperGroup):
    """The app's commands; a usage error (an unknown option, a value of the wrong type) is one
    `colddiff: error:` line and exit 2, as a UserError is one line and exit 1, not click's framed box."""

    def main(self, *args, standalone_mode=True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            path = " ".join(["colddiff", *(e.ctx.command_path.split()[1:] if e.ctx else [])])  # as typed, however started
            typer.echo(f"colddiff: error: {one_line(e.format_message())} (`{path} --help` lists the options)", err=True)
            raise SystemExit(e.exit_code) from None
        except click.ClickException as e:
            typer.echo(f"colddiff: error: {one_line(e.format_message())}", err=True)
            raise SystemExit(e.exit_code) from None
        except click.Abort:  # Ctrl-C while click reads the command line
            typer.echo("colddiff: interrupted", err=True)
            raise SystemExit(130) from None
        raise SystemExit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=Commands,
    add_completion=False,
    suggest_commands=False,  # click suggests already: one "Did you mean", not two
    pretty_exceptions_enable=False,
    help="Cold diffusion: degrade, restore, train and generate images with deterministic transforms.",
)


def fail_cleanly(fn):
    """Every command runs through this: a UserError is one `colddiff: error:` line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"colddiff: error: {one_line(str(e))}", err=True)
            raise typer.Exit(1) from None
        except Stop as stop:
            typer.echo(f"colddiff: {one_line(str(stop))}", err=True)
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


def one_line(message: str) -> str:
    """A message as one line: a newline in a file name would split the one error line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def reflowed(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line: --help wraps it to the terminal, and keeps the
    source's line breaks otherwise (sentences broken mid-way)."""
    import inspect

    if doc is None:
        return None
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def command(name: str | None = None):
    """An app command that fails cleanly."""

    def register(fn):
        fn.__doc__ = reflowed(fn.__doc__)
        return app.command(name)(fail_cleanly(fn))

    return register


def say_line(message: str) -> None:
    typer.echo(f"colddiff: {message}", err=True)


def say_once(quiet: bool):
    """say(key, line): say_line(line) the first time `key` comes (nothing with --quiet)."""
    said: set = set()

    def say(key, line: str) -> None:
        if not quiet and key not in said:
            said.add(key)
            say_line(line)

    return say


def typed_here(ctx: typer.Context, name: str) -> bool:
    """Option `name` was given on the command line (not left at its default)."""
    return ctx.get_parameter_source(name) is not ParameterSource.DEFAULT


# ----------------------------------------------------------------------------- options

CFG = TrainConfig()
OpOpt = typer.Option("blur", "--op", help="Degradation operator (see `colddiff ops`).")
PresetOpt = typer.Option(None, "--preset", help="Operator preset (default: the operator's first).")
ParamOpt = typer.Option(None, "--param", help="Override an operator parameter, KEY=VALUE (repeatable).")
SeedOpt = typer.Option(0, "--seed", help="Seed of every random draw (snow pattern, mask centre, noise).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
ThreadsOpt = typer.Option(None, "--threads", help=(
    "CPU threads (default: OMP_NUM_THREADS where set, else the cores other processes are not using, read from /proc/stat)."
))
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress on stderr (errors still are).")
ForceOpt = typer.Option(False, "--force", help="Overwrite outputs that exist.")
SkipExistingOpt = typer.Option(False, "--skip-existing", help=(
    "Leave the outputs that exist as they are and do the other inputs (to finish an interrupted folder); "
    "an output whose note says other settings is an error."
))
SourceOpt = typer.Option(None, "--source", help="animorph: the folder of z images (the second image set).")
ModelOpt = typer.Option(..., "--model", "-m", help="Model file (.safetensors) written by `colddiff train`, or a bundled model's name (`colddiff ops`).")
SamplerOpt = typer.Option(None, "--sampler", help=(
    f"One of {', '.join(SAMPLERS)} (those whose network output fits the model's operator; `colddiff ops` "
    "says what each does); default: the operator's."
))
EtaOpt = typer.Option(None, "--eta", help=(
    "ddim, dpmpp_2m: 0 deterministic .. 1 stochastic (ddim over every step at 1: ancestral, posterior "
    "variance); default 0, or the operator's with its default sampler."
))
StepsOpt = typer.Option(None, "--steps", help="Sampling steps K <= t (Algorithm 2 jumps s -> s'); default: the model's, else t.")
ZOpt = typer.Option(None, "--z", help="noise/animorph/colour: fixed z, or estimated z (the DDIM choice); default: the operator's.")
CompileOpt = typer.Option(True, "--compile/--no-compile", help="torch.compile + CUDA graphs (CUDA only).")
OutOpt = typer.Option(None, "-o", "--out", help="Output file or folder (default: stdout).")
FramesOpt = typer.Option(None, "--frames", help="Frames in --strip, evenly spread (default: every one up to 21, else 11).")
X0HatOpt = typer.Option(False, "--x0-hat", help=(
    "With --strip, a second row under the states: R's prediction x0_hat from each (the released code's "
    "X_0s), blank under x_0."
))


# ----------------------------------------------------------------------------- commands


def print_version(value: bool):
    """What a bug report needs: colddiff's version, torch's, and the device torch would use."""
    if value:
        from machine import versions

        v = versions()
        typer.echo(f"colddiff {v['colddiff']}, torch {v['torch']}, {v['device']}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    max_megapixels: float = typer.Option(128, "--max-megapixels", min=0.001, help="Refuse images larger than this (a guard against decompression bombs)."),
    _version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True, help=(
        "Print the versions of colddiff and torch, and the GPU, and exit."
    )),
):
    """Cold diffusion: degrade, restore, train and generate images with deterministic transforms."""
    import image_io

    if ctx.invoked_subcommand is None:  # bare `colddiff`: the help, and success (as git)
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    image_io.MAX_PIXELS = int(max_megapixels * 1e6)


@command()
def ops(as_json: bool = typer.Option(False, "--json", help="The tables as one JSON object (lists of rows by column name).")):
    """List the operators, their presets, T, the image size each preset was made for, and parameters; the samplers; the bundled models.

    On a terminal as tables; piped, as tab-separated lines (a header, then a row a line), whole."""
    import describe

    tables = describe.ops_tables()
    if as_json:
        typer.echo(json.dumps({key: [dict(zip(columns, row)) for row in rows] for key, (_, columns, rows) in tables.items()}))
    elif not os.isatty(1):  # a pipe or a file: no boxes cut to 80 columns
        for title, columns, rows in tables.values():
            typer.echo(f"# {title}\n" + "\n".join("\t".join(map(str, r)) for r in [columns, *rows]))
    else:
        from rich.console import Console
        from rich.table import Table

        for title, columns, rows in tables.values():
            table = Table(*columns, title=title)
            for row in rows:
                table.add_row(*map(str, row))
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
    strip: bool = typer.Option(False, "--strip", help=(
        "Write x_0 ... x_T side by side in one image (a large image's frames shrunk so that it is at most "
        "16383 px wide)."
    )),
    frames: Optional[int] = FramesOpt,
    param: Optional[list[str]] = ParamOpt,
    source: Optional[str] = SourceOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    force: bool = ForceOpt,
    skip_existing: bool = SkipExistingOpt,
    fit: bool = typer.Option(True, "--fit/--no-fit", help=(
        "Scale the parameters that are lengths in pixels (blur kernels, mask and colour widths, snow flakes, pixelate's blocks) "
        "from the preset's image size to each image's, where they differ more than 2x."
    )),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=(
        "Degrade with this model's operator, every parameter as it was trained and not fitted (instead of "
        "--op, --preset, --param), so that `restore --model` takes the outputs as they are."
    )),
):
    """Degrade images: x_t = D(x_0, t). Each image uses a generator seeded with --seed.

    Inputs: image files, folders (recursive) or - for stdin. Output: stdout, a file, or a folder
    for several inputs. Example: colddiff degrade photos/ --op mask --preset celeba -o masked/"""
    import degrading
    from inputs import check_input, check_side

    # parse: the operator (--op's, or the model's), t, the strip's frames
    typed = [f"--{'no-fit' if name == 'fit' and not fit else name}" for name in ("op", "preset", "param", "fit") if typed_here(ctx, name)]
    model = model and bundled.model_path(model)
    operator, channels, refit = degrading.operator_for(op, preset, param, model, typed)
    fit, t, seed = fit and refit, degrading.checked_step(operator, t), check_seed(seed)
    shown = Strip.asked(strip, frames, list(range(operator.T + 1)))
    steps = list(shown.steps) or [t]
    dev = pick_device(device, threads)

    # plan the inputs: every one decoded and large enough for D (with --model, fit the model) before anything is written
    def check(src, u8, _n):
        check_input(u8, channels, operator, src, model) if model else check_side(u8, operator, src)
        return None, shown.out_size(*u8.shape[-2:])

    planned = plan_inputs(inputs, out, force, skip_existing, None if quiet else say_line,
                          notes.degraded_into(operator, t, seed, fit, steps if shown else None), check)
    attach_source(operator, source, dev)

    # run and write: a strip counts frames (one of a 12 MP photo is 11 full-size D's, about 40 s on 2 cores)
    per_image = len(steps)
    total, say = len(planned) * per_image, say_once(quiet)
    with folder_lock(out, len(planned) > 1), finish_later(len(planned)), \
            Progress("degrading", total, "frames" if shown else "images", quiet=quiet or total == 1) as progress, Writer() as writer:
        for i, (src, dest, _) in enumerate(planned):
            degrading.degrade_image(operator, src, dest, steps, shown, seed, dev, fit, say, writer.write,
                                    frames_done=lambda k, i=i: progress.update(i * per_image + k))


@command()
def train(
    ctx: typer.Context,
    data: str = typer.Argument(..., metavar="FOLDER", help="Folder of training images (recursive)."),
    out: str = typer.Option(..., "-o", "--out", help="Model file to write (.safetensors)."),
    op: str = OpOpt,
    preset: Optional[str] = PresetOpt,
    param: Optional[list[str]] = ParamOpt,
    net: Optional[str] = typer.Option(None, "--net", help=(
        "Network preset: paper (the released ConvNeXt UNet, 56.6 M), small, tiny, ddpm (Ho et al., 35.7 M), "
        "adm (Lee et al., 121 M), adm-small, adm-cpu (on 2x2 patches, widths 96 and 192: near a CPU's matmul rate). "
        "Default: paper; cifar10 presets: ddpm; blurdiff: adm."
    )),
    net_param: Optional[list[str]] = typer.Option(None, "--net-param", help=(
        "Override a network preset's setting, KEY=VALUE (repeatable): dim=48, mults=1,2,4,8, heads, dim_head; "
        "ddpm/adm also blocks, attn_levels, dropout, patch (run on PxP blocks of pixels)."
    )),
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
    save_every: int = typer.Option(CFG.save_every, "--save-every", help="Save the model and its training state every N steps (and at the end, and on Ctrl-C)."),
    sample_every: int = typer.Option(CFG.sample_every, "--sample-every", help="Write a sample grid and a metrics.jsonl line."),
    augment: bool = typer.Option(CFG.augment, "--augment/--no-augment", help="Resize 1.12x + random crop + flip (the papers'). "
                                 "A generator of images that face one way (Fashion-MNIST) learns the flips and zooms too: --no-augment."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    quiet: bool = QuietOpt,
    compile: bool = typer.Option(CFG.compile, "--compile/--no-compile", help="torch.compile the network (CUDA only)."),
    resume: bool = typer.Option(False, "--resume", help=(
        "Continue from OUT's training state when there is one, with its operator, network, size and settings "
        "(those given here win)."
    )),
    force: bool = ForceOpt,
    source: Optional[str] = SourceOpt,
    gmm_components: int = typer.Option(CFG.gmm_components, "--gmm-components", help="Components of the generation prior (blur, pixelate)."),
    sampling_steps: Optional[int] = typer.Option(CFG.sampling_steps, "--sampling-steps", help=(
        "Default --steps of restore/eval/generate for this model (default: T)."
    )),
    train_noise: Optional[float] = typer.Option(None, "--train-noise", metavar="SIGMA", help=(
        "Train on D(x0, t) + SIGMA eps (inverse heat dissipation); generate then adds 1.25 x SIGMA of "
        "--step-noise (default 0)."
    )),
    step_noise: Optional[float] = typer.Option(CFG.step_noise, "--step-noise", metavar="DELTA", help=(
        "The model's default generate --step-noise (default 0.025, or 1.25 x --train-noise); set it to what "
        "measures best for this model."
    )),
    weights: str = typer.Option(CFG.weights, "--weights", help=(
        "The model file's weights: fp32, or fp16 (half the size; they are read back into float32). A finished "
        "run takes it with --resume."
    )),
    precision: str = typer.Option(CFG.precision, "--precision", help=(
        "R's arithmetic while training: auto (bf16 on CUDA, fp32 on the CPU), fp32, or bf16 (on a CPU with "
        "AMX or AVX512-BF16, 1.5-2x faster steps; the weights and the optimizer stay float32)."
    )),
):
    """Train the restoration network R(x_t, t) on a folder of images (L1 on x0, EMA, bf16 on CUDA or by --precision).

    Example: colddiff train data/faces --op blur --preset celeba --size 128 -o faces.safetensors

    Ctrl-C or SIGTERM finishes the step, saves, and exits 130/143; --resume continues exactly."""
    import checkpoint
    import train as training

    # parse: the run, as the options and a resumed run's state resolve it
    run = training.resolve(dict(ctx.params), {name for name in ctx.params if typed_here(ctx, name)})
    # one writer per model file, and one voice (under torchrun, rank 0 holds and speaks for all)
    first = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not first  # another rank's lines would repeat rank 0's (its errors still say)
    with checkpoint.train_lock(out) if first else contextlib.nullcontext():
        run.saved = training.check_output(out, resume, force)  # again: a run that just ended may have written it
        training.check_operator(run.saved, run.op, out)
        size, channels = training.resumed_shape(run.saved, out, size, channels)
        dev = pick_device(device, threads)
        # the data
        native = run.op.NATIVE.get(run.op.preset)  # celeba: 128 px, as the papers trained it
        images = load_folder(data, size, channels, quiet=quiet, say=None if quiet else say_line, skip=str(training.run_dir(out)),
                             mixed_size=native and (native, f"the size the {run.op.name} {run.op.preset} preset is made for"))
        attach_source(run.op, source, dev)
        # run
        log = (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))
        training.train(images, run.op, run.net, out, run.cfg, dev, resume=resume, log=log, net_overrides=run.net_overrides, quiet=quiet)
    log(f"wrote {out}")


@command()
def restore(
    inputs: list[str] = typer.Argument(..., metavar="FILE|FOLDER|-...", help="Degraded image files, folders (recursive) or - for stdin."),
    model: str = ModelOpt,
    sampler: Optional[str] = SamplerOpt,
    t: Optional[int] = typer.Option(None, "--t", help=(
        "The step the inputs were degraded to (default: what an image from `colddiff degrade` says, else the "
        "model's T)."
    )),
    steps: Optional[int] = StepsOpt,
    z: Optional[str] = ZOpt,
    eta: Optional[float] = EtaOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help=(
        "Seed of the operator's hidden randomness: the --seed that `degrade` used (default: what its image "
        "file says, else 0)."
    )),
    out: Optional[str] = OutOpt,
    batch: int = typer.Option(16, "--batch", help="Images per network call."),
    tile: Optional[int] = typer.Option(None, "--tile", metavar="N", help=(
        "Run R on N x N tiles that overlap by N/8, blended (memory of one tile, time linear in pixels); 0: "
        "never. Default: whole images; 512 px tiles (or the largest that fit) for one that cannot fit in "
        "memory whole."
    )),
    strip: bool = typer.Option(False, "--strip", help=(
        "Write the sampler's states x_t ... x_0 side by side, one strip per image (its frames shrunk as "
        "degrade --strip's)."
    )),
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

    An image `colddiff degrade` wrote says its operator, t and seed, so none need be given; --t and
    --seed override it. Seeds, notes and tiles: docs/files.md, docs/large-images.md."""
    import restoring

    # parse
    at_least(batch, "--batch"), check_strip(strip, frames, x0_hat_row)
    if tile is not None and tile != 0 and tile < 32:
        raise UserError(f"--tile must be 0 (whole images only) or at least 32 px, got {tile}")
    seed, model = seed if seed is None else check_seed(seed), bundled.model_path(model)
    # open the model
    dev = pick_device(device, threads)
    sampling = open_model(model, dev, Choices(sampler, steps, z, eta, t, source, compile))
    # plan the inputs: each one's t, seed and tiles, every one decoded and checked before anything is written
    strip_at = lambda at, t_: Strip.asked(strip, frames, at.path(t_), x0_hat_row)  # noqa: E731
    planner = restoring.Planner(sampling, model, t, seed, steps, tile, batch, dev, strip_at)
    planned = plan_inputs(inputs, out, force, skip_existing, None if quiet else say_line,
                          notes.restored_as(model, sampling, t, seed, steps, strip_at), planner)
    for line in [] if quiet else planner.said(len(planned)):
        say_line(line)
    # run and write, a batch of images of one size, t and tiling per sampling call
    C = sampling.meta["image"]["channels"]
    loaded = (restoring.load(src, dest, plan, C, dev) for src, dest, plan in planned)
    with folder_lock(out, len(planned) > 1), finish_later(len(planned)), \
            Progress("restoring", len(planned), "images", quiet=quiet) as progress, Writer() as writer:
        done = 0
        for images in batches(loaded, batch, restoring.batch_key):
            restoring.restore_batch(images, model, progress, done, writer.write)
            done += len(images)
            progress.update(done)


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
    batch: int = typer.Option(64, "--batch", help="Images per network call."),
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
    import metrics
    from inputs import check_input

    # parse
    at_least(n, "--n"), at_least(batch, "--batch"), check_seed(seed)
    dests, model = metrics.plan_outputs(out, force), bundled.model_path(model)
    # open the model
    dev = pick_device(device, threads)
    sampling = open_model(model, dev, Choices(sampler, steps, z, eta, None, source, compile))
    H, W, C = (sampling.meta["image"][k] for k in ("height", "width", "channels"))
    # the held-out images, at the model's size
    check_input(read_image(find_images([data], out)[0][0]), C, sampling.op, data, model, least=11)  # as restore: no silent grey <-> colour
    images = load_folder(data, H if H == W else None, C, limit=n, quiet=quiet, say=None if quiet else say_line, skip=out,
                         size_is="the model's size")
    check_fits(sampling, data, *images.shape[-2:], min(batch, len(images)), dev)
    if images.shape[-2:] != (H, W):
        raise UserError(f"{data}: images are {images.shape[-1]}x{images.shape[-2]}, the model was trained on {W}x{H}")
    # run
    with folder_lock(out):
        with Progress("evaluating", len(images), "images", quiet=quiet) as progress:
            table, columns = metrics.evaluate(sampling, to_model(images), seed, batch, dev, fid_weights, progress=progress.update)
        table = {"model": str(model), "operator": sampling.meta["operator"], **table}
        # write
        typer.echo(metrics.report(table, sampling, Path(data).name, len(images)))
        if not table["fid_available"]:
            say_line(f"FID n/a: {table['fid_note']}")
        metrics.write_outputs(dests, table, columns)


@command()
def generate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model file, or a bundled model's name (`colddiff ops`; default: the bundled default)."),
    n: int = typer.Option(64, "--n", help="How many images."),
    symmetry: str = typer.Option("broken", "--symmetry", help="broken (the model's way of breaking the symmetry of a flat x_T) or perfect (no noise)."),
    break_noise: Optional[float] = typer.Option(None, "--break-noise", metavar="STD", help=(
        "Noise added once to x_T (default: the model's, 0; the released code used 0.002)."
    )),
    step_noise: Optional[float] = typer.Option(None, "--step-noise", metavar="DELTA", help=(
        "Noise added after every naive/tacos step (default: the model's own: its train --step-noise, else "
        "0.025 for a flat x_T or 1.25 x --train-noise if it was trained with one)."
    )),
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

    Example: colddiff generate --n 64 -o grid.png   (the bundled default model)

    x_T comes from each operator's prior (`colddiff ops`); blur's flat x_T needs its symmetry broken
    (--step-noise). How each is drawn: docs/methods.md, "Generation"."""
    import generative
    from generated import Generated

    # parse
    at_least(n, "--n"), at_least(batch, "--batch"), check_seed(seed), ncol is None or at_least(ncol, "--ncol")
    check_strip(strip, frames, x0_hat_row)
    model = bundled.model_path(model)
    # open the model
    dev = pick_device(device, threads)
    sampling = open_model(model, dev, Choices(sampler, steps, z, eta, None, source, compile))
    break_noise = generative.break_symmetry(sampling, symmetry, break_noise, step_noise)
    generative.check(sampling)
    # plan the outputs: a grid or a file per image, every one checked before any work
    shown = Strip.asked(strip, frames, sampling.path(sampling.op.T), x0_hat_row)
    made = notes.made("generate", model, sampling, break_noise=break_noise, seed=seed, **shown.note())
    size = (sampling.meta["image"]["height"], sampling.meta["image"]["width"])
    outputs = Generated(out, n, seed, ncol, shown, size, made, force, skip_existing, None if quiet else say_line)
    # run and write
    todo, frame = len(outputs.numbers), shown.frame_size(*size)
    with folder_lock(out, outputs.folder), finish_later(todo if outputs.folder else 1), \
            Progress("generating", todo, "images", quiet=quiet) as progress, Writer() as writer:
        per_batch = sampling.calls(sampling.op.T)  # progress within a batch: the share of its network calls made
        watched = sampling.watched(lambda: progress.update(min(todo, progress.done + min(batch, todo) / per_batch)))
        watched, states, predicted = shown.record(watched, frame)
        for done, (numbers, images) in enumerate(generative.generate(watched, n, batch, seed, dev, break_noise, outputs.numbers)):
            outputs.add(numbers, shown.images(states, predicted, images, frame), writer.write)
            states.clear(), predicted and predicted.clear()  # the next batch's
            progress.update(min(todo, (done + 1) * batch))
    outputs.finish()


@command()
def info(
    files: list[str] = typer.Argument(..., metavar="FILE|FOLDER...", help=(
        "Model files (.safetensors) or images colddiff wrote, or folders of them (recursive)."
    )),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file, on one line each."),
):
    """What a model file or an image says of how colddiff made it.

    A model: its operator, network, training and prior. An image: its note (degrade: operator, t,
    seed; restore, generate: model and sampling). A folder: each of its images and models."""
    import describe

    failed = 0
    for arg in files:  # every file is reported; one that cannot be is a line, and exit 1 at the end
        try:
            for path in describe.files_in(arg):
                text, data = describe.describe(path)
                typer.echo(json.dumps({"file": path, **data}) if as_json else text)
        except UserError as e:
            typer.echo(f"colddiff: error: {one_line(str(e))}", err=True)
            failed += 1
    if failed:
        raise typer.Exit(1)


@command("fit-prior")
def fit_prior(
    data: str = typer.Argument(..., metavar="FOLDER", help="Folder of the training images."),
    model: str = ModelOpt,
    gmm_components: int = typer.Option(1, "--gmm-components", help="Components of the Gaussian mixture fitted as the generation prior."),
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

    # parse
    at_least(gmm_components, "--gmm-components")
    model = bundled.model_path(model)
    net, op, meta = checkpoint.load_model(model, "cpu")
    dest = checkpoint.check_model_name(out or model)
    if Path(dest).exists() and not force:
        raise UserError(f"{dest}: exists; pass --force to overwrite it with the new prior")
    check_writable([dest])
    if op.prior is None:
        raise UserError(f"{op.name} (this preset) has no fitted generation prior")
    # the images, at the model's size
    H, W, C = meta["image"]["height"], meta["image"]["width"], meta["image"]["channels"]
    images = load_folder(data, H if H == W else None, C, quiet=quiet, say=None if quiet else say_line, size_is="the model's size")
    # run and write
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
