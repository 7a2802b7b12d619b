"""The notes colddiff writes into the images it makes (not BMPs) (image_io.NOTE_KEY, JSON), and how restore reads them.

`degrade` says how it made an image (operator with every parameter, t, seed), so that `restore`
needs no --t or --seed, in a pipe or for a folder of images degraded to different t; `restore` and
`generate` say which model and sampling made theirs. restore reads only degrade's notes.
`colddiff info` prints them, and what a model file's metadata says (describe).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from common import UserError
from image_io import read_note


STRIP = "degrade --strip"


def degraded(op, t: int, seed: int) -> dict:
    """The note of an image `degrade` made: D(x0, t) by `op`, its hidden randomness from `seed`."""
    return {"command": "degrade", "op": op.name, "params": op.params(), "t": t, "seed": seed}


def degraded_strip(op, steps: list[int], seed: int) -> dict:
    """The note of a `degrade --strip`: its frames x_s, s in `steps`. Not "degrade": it is no one x_t
    (restore refuses it)."""
    return {"command": STRIP, "op": op.name, "params": op.params(), "strip": steps, "seed": seed}


def made(command: str, model: str, sampling, **more) -> dict:
    """The note of an image that `command` (restore, generate) made with a model."""
    return {"command": command, "model": Path(model).name, **sampling.describe(), **more}


def degraded_into(op, t: int, seed: int, fit: bool, strip: list[int] | None = None):
    """expected(src, dest) for `degrade --skip-existing` (outputs.still_to_write): the note degrade
    writes into dest, its operator fitted to dest's size as it was to its input's (a strip's, whose
    frames may be shrunk, to its input's: the fit follows the short side, which no EXIF turn changes)."""
    from image_io import open_image

    def note(src, dest) -> dict:
        with open_image(src if strip else dest) as im:
            (w, h), c = im.size, len(im.getbands())
        fitted = op.fit_to(c, h, w)[0] if fit else op
        return degraded_strip(fitted, strip, seed) if strip else degraded(fitted, t, seed)

    return note


def restored_as(model: str, sampling, t: int | None, seed: int | None, steps: int | None, strip: bool = False, frames: int | None = None,
                x0_hat: bool = False):
    """expected(src, dest) for `restore --skip-existing`: the note restore writes for src (its tiling,
    which follows the memory free, aside)."""
    from image_io import source_name

    def note(src, dest) -> dict:
        t_i, seed_i, _ = degradation_of(src, source_name(src), sampling.op, model, t, seed)
        at_t = sampling.at(t_i, steps)
        return {**made("restore", model, at_t, **strip_of(at_t, t_i, strip, frames, x0_hat)), "t": t_i, "seed": seed_i}

    return note


def strip_of(sampling, t: int, strip: bool, frames: int | None, x0_hat: bool = False) -> dict:
    """The note's word on a --strip of restore or generate: the steps s of its frames x_s, and
    whether a row of R's x0_hat from each lies under them (--x0-hat)."""
    from image_io import strip_steps

    if not strip:
        return {}
    return {"strip": strip_steps(sampling.path(t), frames), **({"x0_hat_row": True} if x0_hat else {})}


@functools.lru_cache(maxsize=64)
def degrader(name: str, params: str):
    """The operator a note names (params: its JSON), built once per folder: a blur's T kernels take ~8 ms,
    which over 2,000 notes was half of restoring them."""
    import operators

    return operators.operator_from_params(name, json.loads(params))


def degraded_as(note: dict, op, name: str, model: str) -> tuple[int, int]:
    """(t, seed) from the note `degrade` wrote into an image, once its operator is the model's."""
    try:
        by = degrader(note["op"], json.dumps(note["params"], sort_keys=True))
        t, seed = note["t"], note["seed"]
        if not (isinstance(t, int) and isinstance(seed, int) and 0 <= t <= by.T and 0 <= seed < 2**32):
            raise ValueError
    except (UserError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{name}: its colddiff note (how `degrade` made it) is damaged; pass --t to restore it anyway") from None
    if by.name != op.name:
        raise UserError(f"{name}: was degraded by {by.name} (its colddiff note), but {model} restores {op.name}; "
                        "pass --t to restore it anyway")
    a, b = by.params(), op.params()
    diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    if diff:
        said = ", ".join(f"{k}={getattr(by, k)} (the model's: {getattr(op, k)})" for k in diff[:3])
        fitted = "; degrade fitted it to the image's size, --no-fit keeps the preset's" if "px_scale" in diff else ""
        raise UserError(f"{name}: was degraded by {op.name} with {said}{fitted}; pass --t to restore it anyway")
    return t, seed


def degradation_of(src, name: str, op, model: str, t: int | None, seed: int | None) -> tuple[int, int, bool]:
    """(t, seed, said) to restore an image from: --t and --seed where given, else what the note of
    `degrade` in its image file says (said), else T and 0. With --t given, a note that does not fit the
    model is passed over."""
    said_t = said_seed = None
    if t is None or seed is None:
        try:
            note = read_note(src)
            if note is not None and note.get("command") == STRIP:
                raise UserError(f"{name}: is a strip of {len(note.get('strip') or [])} frames (degrade --strip), not one degraded image; "
                                "pass --t to restore it anyway")
            if note is not None and note.get("command") == "degrade":  # not another command's output
                said_t, said_seed = degraded_as(note, op, name, model)
        except UserError:
            if t is None:
                raise
    return (t if t is not None else op.T if said_t is None else said_t,
            seed if seed is not None else 0 if said_seed is None else said_seed, said_t is not None)


def files_in(arg: str) -> list[str]:
    """`colddiff info`'s files: the argument, or a folder's images and models (recursive, sorted)."""
    from image_io import IMAGE_EXTS, scan

    folder = Path(arg)
    if not folder.is_dir():
        return [arg]
    found = [str(p) for p in scan(folder, IMAGE_EXTS | {".safetensors"})]
    if not found:
        raise UserError(f"{arg}: folder holds no images or models")
    return found


def describe(path: str) -> tuple[str, dict]:
    """(text, data) of what a file says of how colddiff made it: a model's metadata, or the note
    in an image (`colddiff info`)."""
    from image_io import alpha_pixels, bits_of, frame_count, neutral, read_pixels

    if Path(path).suffix.lower() == ".safetensors":
        return describe_model(path)
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    px = read_pixels(path, deep=True)  # one clear line for a file that is neither a model nor an image
    c, h, w = px.shape
    alpha, frames, bits = alpha_pixels(path) is not None, frame_count(path), bits_of(px)
    size = {"width": w, "height": h, "channels": c, "bits": bits}  # not "image": generate's notes number their images so
    kind = f"{w}x{h} {'16-bit grey' if bits == 16 else 'grey' if c == 1 else 'grey, stored as colour' if neutral(px) else 'colour'}"  # as colddiff reads it: upright, in sRGB
    kind += ", with transparency" if alpha else ""
    kind += f", {frames} frames: colddiff reads the first" if frames > 1 else ""
    extra = {"size": size, "alpha": alpha, "frames": frames}
    note = read_note(path)
    if note is None:
        return f"{path}: an image with no colddiff note ({kind})", extra
    rows = [row("size", kind)] + [row(k, worded(k, v, note)) for k, v in note.items() if k not in ("command", "params")]
    rows += [row("parameters", settings(note["params"]))] if isinstance(note.get("params"), dict) else []
    return "\n".join([f"{path}: made by colddiff {note.get('command')}", *rows]), {**note, **extra}


def describe_model(path: str) -> tuple[str, dict]:
    import json

    import checkpoint
    import unet

    metadata = checkpoint.read_metadata(path)
    if metadata.get("format") == checkpoint.FORMAT + "-state":  # MODEL.state.safetensors
        info = json.loads(metadata.get("colddiff", "{}"))
        model = Path(path).name.removesuffix(".state.safetensors") + ".safetensors"
        return (f"{path}: a colddiff training state at step {info.get('step', '?')}, what `train --resume` continues "
                f"{model} from (`colddiff info {model}` describes the model)"), {"training_state": True, "step": info.get("step")}
    net, op, meta = checkpoint.load_model(path)
    img, train, n = meta["image"], meta.get("train", {}), unet.count_parameters(net)
    steps = train.get("sampling_steps") or op.default_steps
    lines = [f"{path}: colddiff model, step {meta.get('step', '?')}",
             row("operator", f"{op.name}, {preset_of(op)}"),
             row("network", f"{meta.get('network_preset', 'custom')}, {n / 1e6:.2f} M parameters ({settings(meta['network'])})"),
             row("images", f"{img['width']}x{img['height']} {'grey' if img['channels'] == 1 else 'colour'}"),
             row("training", settings(train)),
             row("sampling", f"default {op.default_sampler}, " + (f"{steps} steps" if steps else "every step"))]
    if meta.get("prior"):
        p = meta["prior"]
        lines.append(row("prior", f"{p.get('kind')}, {p.get('components')} component(s) over {p.get('features')}"))
    if meta.get("symmetry"):
        lines.append(row("symmetry", settings(meta["symmetry"])))
    if meta.get("made_by"):
        lines.append(row("made by", settings(meta["made_by"])))
    state = checkpoint.state_path(path)
    lines.append(row("resume", f"{state.name} beside it" if state.is_file() else "no training state beside it (cannot --resume)"))
    return "\n".join(lines), {**meta, "parameters": n}


def preset_of(op) -> str:
    """The preset the operator is, or the nearest one and what differs from it."""
    import operators

    cls, mine = type(op), op.params()

    def diff(preset):
        theirs = operators.make_operator(op.name, preset).params()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}

    best = min(cls.PRESETS, key=lambda p: len(diff(p)))
    changed = diff(best)
    return f"preset {best}" + (f" with {settings(changed)}" if changed else "") + f" ({settings(mine)})"


def worded(key: str, value, note: dict):
    """A note's value as info says it: a strip's x0_hat row, and what a null means (restore's and
    generate's steps and tile)."""
    if key == "x0_hat_row":
        return "yes: under each frame, R's x0_hat from it" if value else "no"
    if value is not None:
        return value
    if key == "steps":
        return "one network call" if note.get("sampler") == "direct" else "every step"
    return "none, the whole image at once" if key == "tile" else "none"


def row(key: str, value) -> str:
    return f"  {key:<12}{value}"


def settings(d: dict) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in d.items())
