"""`colddiff info` (describe a file): what a model file or an image says of how colddiff made it, in words or JSON."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from errors import UserError
from image_io import read_note


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
    # as colddiff reads it: upright, in sRGB
    kind = f"{w}x{h} {'16-bit grey' if bits == 16 else 'grey' if c == 1 else 'grey, stored as colour' if neutral(px) else 'colour'}"
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
        from samplers import SAMPLERS

        sampler = SAMPLERS.get(note.get("sampler"))  # a note from a newer colddiff may name another
        return "one network call" if sampler is not None and sampler.one_call else "every step"
    return "none, the whole image at once" if key == "tile" else "none"


def row(key: str, value) -> str:
    return f"  {key:<12}{value}"


def settings(d: dict) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in d.items())


def ops_tables() -> dict:
    """`colddiff ops`: {"operators": (title, columns, rows), "samplers": (...), "models": (...)}."""
    import bundled
    import operators
    from samplers import SAMPLERS

    rows = []
    for name, cls in operators.OPERATORS.items():
        for preset in cls.PRESETS:
            op = operators.make_operator(name, preset)
            # every parameter --param takes, those that params() leaves out at their default too
            p = {f.name: getattr(op, f.name) for f in dataclasses.fields(op) if f.init and f.name != "source"}
            T = p.pop("T")
            default = " (default)" if preset == cls.DEFAULT_PRESET else ""
            size = f"{cls.NATIVE[preset]} px" if preset in cls.NATIVE else "any"
            rows.append((name, preset + default, T, size, ", ".join(f"{k}={v}" for k, v in p.items())))
    samplers = []
    for name, fn in SAMPLERS.items():
        ops_ = [n for n, cls in operators.OPERATORS.items() if fn.predicts in (None, cls.predicts)]
        default = [n for n in ops_ if operators.OPERATORS[n].default_sampler == name]
        takes = [flag for flag, on in (("--steps", fn.steps), ("--eta", fn.eta), ("--step-noise", fn.step_noise)) if on]
        others = [n for n in operators.OPERATORS if n not in ops_]
        applies = "all" if not others else f"all but {', '.join(others)}" if len(others) < len(ops_) else ", ".join(ops_)
        does = " ".join(fn.__doc__.split()).split(". ")[0].rstrip(".") + "."  # the docstring's first sentence
        if default:
            does += " The default." if len(default) > 1 else f" The default for {default[0]}."
        samplers.append((name, applies, ", ".join(takes) or "-", does))
    return {"operators": ("colddiff operators", ("operator", "preset", "T", "images", "parameters"), rows),
            "samplers": ("samplers (restore, eval, generate --sampler)", ("sampler", "operators", "options", "what it does"), samplers),
            "models": bundled.table()}

