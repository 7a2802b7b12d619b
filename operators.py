"""Every operator colddiff knows, and how one is built from a name, a preset and parameters.

The registry: each operator file below registers its classes with @register (operator_base.py)
when imported; this module imports each such file, one line each, in the order `colddiff ops`
lists them. An operator in a file of its own is that file plus one line here (and its name in
pyproject.toml's py-modules; tests/test_architecture.py checks both).
"""
from __future__ import annotations

import dataclasses
import math

# the order `colddiff ops` lists them in (so the sorting of imports is off here)
# isort: off
import cold  # noqa: F401  blur, mask, colour, pixelate, desaturate, noise, animorph (Bansal et al.)
import blurdiff  # noqa: F401  blurdiff (Lee et al.)
import snow  # noqa: F401  snow (ImageNet-C)
# isort: on
from errors import UserError
from operator_base import OPERATORS, Hidden, Operator, cat_hidden, register  # noqa: F401  (the registry's public names)


def _coerce(cls, key: str, value):
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    if key not in fields:
        raise UserError(f"{cls.name} has no parameter {key!r}; it has {', '.join(fields)}")
    default = fields[key].default
    if isinstance(value, float) and not math.isfinite(value):  # a model's metadata is JSON: NaN is allowed there
        raise UserError(f"{cls.name} parameter {key} must be a finite number, got {value!r}")
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        number = type(default)(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError
        return number
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a finite number"}.get(type(default), "text")
        raise UserError(f"{cls.name} parameter {key} must be {kind}, got {value!r}") from None


MAX_T = 100_000


def make_operator(name: str, preset: str | None = None, **overrides) -> Operator:
    """Build an operator from its name, a preset (default: the operator's) and overrides."""
    if name not in OPERATORS:
        raise UserError(f"unknown operator {name!r}; choose from {', '.join(OPERATORS)}")
    cls = OPERATORS[name]
    preset = preset or cls.DEFAULT_PRESET
    if preset not in cls.PRESETS:
        raise UserError(f"unknown preset {preset!r} for {name}; choose from {', '.join(cls.PRESETS)}")
    kwargs = dict(cls.PRESETS[preset])
    kwargs.update({k: _coerce(cls, k, v) for k, v in overrides.items()})
    op = cls(**checked_T(kwargs))
    op.preset = preset
    return op


def operator_from_params(name: str, params: dict) -> Operator:
    """Rebuild an operator from `name` and `op.params()` (as stored in a checkpoint)."""
    if name not in OPERATORS:
        raise UserError(f"unknown operator {name!r}; choose from {', '.join(OPERATORS)}")
    cls = OPERATORS[name]
    return cls(**checked_T({k: _coerce(cls, k, v) for k, v in params.items()}))


def checked_T(kwargs: dict) -> dict:
    """kwargs whose T is in 1..MAX_T: T = 10^9 (on the command line, or in a model's metadata) would
    ask for terabytes of tables."""
    if not 1 <= int(kwargs.get("T", 1)) <= MAX_T:
        raise UserError(f"T must be in 1..{MAX_T}, got {kwargs['T']}")
    return kwargs


def from_options(name: str, preset: str | None, pairs: list[str] | None) -> Operator:
    """The operator of --op NAME --preset P --param KEY=VALUE ... (make_operator's)."""
    params = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UserError(f"--param takes KEY=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return make_operator(name, preset, **params)
