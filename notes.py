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

from errors import UserError
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


def restored_as(model: str, sampling, t: int | None, seed: int | None, steps: int | None, strip_at):
    """expected(src, dest) for `restore --skip-existing`: the note restore writes for src (its tiling,
    which follows the memory free, aside); strip_at(sampling, t): the --strip of an image restored from t."""
    from image_io import source_name

    def note(src, dest) -> dict:
        t_i, seed_i, _ = degradation_of(src, source_name(src), sampling.op, model, t, seed)
        at_t = sampling.at(t_i, steps)
        return {**made("restore", model, at_t, **strip_at(at_t, t_i).note()), "t": t_i, "seed": seed_i}

    return note


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


