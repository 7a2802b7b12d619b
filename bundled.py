"""The models that ship with colddiff (models/NAME.safetensors): `--model NAME` picks one by name,
`colddiff ops` lists them, and `generate` without `--model` uses DEFAULT."""
from __future__ import annotations

from pathlib import Path

from errors import UserError

MODELS = Path(__file__).resolve().parent / "models"
DEFAULT = "fmnist-blurdiff-gen"  # what `colddiff generate` uses without --model


def names() -> list[str]:
    return sorted(p.stem for p in MODELS.glob("*.safetensors"))


def model_path(model: str | None) -> str:
    """--model as given: a path (checked where it is opened), or the name of a bundled model; None
    is the default. A file of that name in the working folder wins over the bundled one."""
    if model is not None and not model.strip():
        raise UserError("--model is empty: give a model file or a bundled model's name (colddiff ops lists them)")
    name = DEFAULT if model is None else model
    if model is not None and (Path(model).exists() or "/" in model or model.endswith(".safetensors")):
        return model
    path = MODELS / f"{name}.safetensors"
    if not path.is_file():
        where = "" if model is not None else " (the default of generate)"
        bundled = ", ".join(names()) or "none: reinstall colddiff from its repository"
        raise UserError(f"{name}: no such model file, nor a bundled model of that name{where}; the bundled ones: {bundled}")
    return str(path)


def table() -> tuple[str, tuple, list]:
    """`colddiff ops`' table of the bundled models: name, operator, network, images, step, and the default."""
    import json

    from checkpoint import read_metadata

    rows = []
    for name in names():
        meta = json.loads(read_metadata(MODELS / f"{name}.safetensors")["colddiff"])
        op, image = meta["operator"], meta["image"]
        rows.append((name + (" (default)" if name == DEFAULT else ""), op["name"],
                     meta.get("network_preset", "?"), f"{image['width']}x{image['height']}x{image['channels']}", meta.get("step", "?")))
    return "bundled models (--model NAME; generate's default)", ("model", "operator", "network", "images", "steps trained"), rows
