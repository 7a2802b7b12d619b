"""The notes colddiff writes into the PNGs it makes (image_io.NOTE_KEY, JSON), and how restore reads them.

`degrade` says how it made an image (operator with every parameter, t, seed), so that `restore`
needs no --t or --seed, in a pipe or for a folder of images degraded to different t; `restore` and
`generate` say which model and sampling made theirs. restore reads only degrade's notes.
"""
from __future__ import annotations

from pathlib import Path

import operators
from common import UserError
from image_io import read_note


def degraded(op, t: int, seed: int) -> dict:
    """The note of an image `degrade` made: D(x0, t) by `op`, its hidden randomness from `seed`."""
    return {"command": "degrade", "op": op.name, "params": op.params(), "t": t, "seed": seed}


def made(command: str, model: str, sampling, **more) -> dict:
    """The note of an image that `command` (restore, generate) made with a model."""
    return {"command": command, "model": Path(model).name, **sampling.describe(), **more}


def degraded_as(note: dict, op, name: str, model: str) -> tuple[int, int]:
    """(t, seed) from the note `degrade` wrote into an image, once its operator is the model's."""
    try:
        made = operators.operator_from_params(note["op"], note["params"])
        t, seed = note["t"], note["seed"]
        if not (isinstance(t, int) and isinstance(seed, int) and 0 <= t <= made.T and 0 <= seed < 2**32):
            raise ValueError
    except (UserError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{name}: its colddiff note (how `degrade` made it) is damaged; pass --t to restore it anyway") from None
    if made.name != op.name:
        raise UserError(f"{name}: was degraded by {made.name} (its colddiff note), but {model} restores {op.name}; "
                        "pass --t to restore it anyway")
    a, b = made.params(), op.params()
    diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    if diff:
        said = ", ".join(f"{k}={getattr(made, k)} (the model's: {getattr(op, k)})" for k in diff[:3])
        fitted = "; degrade fitted it to the image's size, --no-fit keeps the preset's" if "px_scale" in diff else ""
        raise UserError(f"{name}: was degraded by {op.name} with {said}{fitted}; pass --t to restore it anyway")
    return t, seed


def degradation_of(src, name: str, op, model: str, t: int | None, seed: int | None) -> tuple[int, int, bool]:
    """(t, seed, said) to restore an image from: --t and --seed where given, else what the note of
    `degrade` in its PNG says (said), else T and 0. With --t given, a note that does not fit the
    model is passed over."""
    said_t = said_seed = None
    if t is None or seed is None:
        try:
            note = read_note(src)
            if note is not None and note.get("command") == "degrade":  # not another command's output
                said_t, said_seed = degraded_as(note, op, name, model)
        except UserError:
            if t is None:
                raise
    return (t if t is not None else op.T if said_t is None else said_t,
            seed if seed is not None else 0 if said_seed is None else said_seed, said_t is not None)
