"""colddiff's files: a model (.safetensors) and, beside it, the training state that resumes it.

A model is one `.safetensors` file: the EMA weights (what inference uses) and JSON metadata that
fully describe it (operator and parameters, network config, image size/channels, step, generation
prior). Beside it, `MODEL.state.safetensors` holds what exact resume needs: raw weights,
optimizer moments, EMA, step and every RNG state. Both are written atomically (temp + rename);
loading never unpickles anything. Inference imports this module, never the training loop.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import operators
import unet
from common import UserError

FORMAT = "colddiff-model"
FORMAT_VERSION = 1


def _atomic_bytes(path: Path, data: bytes):
    from image_io import atomic_write

    atomic_write(path, data)


def state_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.safetensors")


def save_model(path, net, meta: dict) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    _atomic_bytes(Path(path), save(tensors, metadata={"format": FORMAT, "colddiff": json.dumps(meta)}))


def read_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file, with one clear error for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such model file")
    data = p.read_bytes()
    try:
        tensors = load(data)
        n = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError, OverflowError) as e:
        raise UserError(f"{path}: not a safetensors file ({str(e).splitlines()[0][:80]})") from None
    return tensors, metadata


def load_model(path, device="cpu"):
    """(net, operator, meta) from a colddiff model file; the net is in eval mode."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT or "colddiff" not in metadata:
        raise UserError(f"{path}: a safetensors file, but not a colddiff model (no colddiff metadata)")
    meta = json.loads(metadata["colddiff"])
    if meta.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: written by a newer colddiff (format {meta['version']})")
    try:
        op = operators.operator_from_params(meta["operator"]["name"], meta["operator"]["params"])
        net = unet.UNet(**meta["network"])
        net.load_state_dict(tensors)
    except (KeyError, TypeError, RuntimeError, UserError) as e:
        raise UserError(f"{path}: colddiff model metadata or weights are inconsistent ({str(e).splitlines()[0][:100]})") from None
    return net.to(device).eval(), op, meta


def save_training_state(path, net, ema, opt, step, rng: torch.Generator, meta) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(val).contiguous().cpu()
    tensors["rng.data"] = rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    info = {"step": step, "param_groups": opt_state["param_groups"], "meta": meta}
    _atomic_bytes(state_path(path), save(tensors, metadata={"format": FORMAT + "-state", "colddiff": json.dumps(info)}))


def load_training_state(path, net, ema, opt, rng: torch.Generator) -> int:
    tensors, metadata = read_safetensors(state_path(path))
    if metadata.get("format") != FORMAT + "-state":
        raise UserError(f"{state_path(path)}: not a colddiff training state")
    info = json.loads(metadata["colddiff"])
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    rng.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(info["step"])




def saved_operator(path) -> dict:
    """{"name", "params"} of the operator a training state was written for."""
    _, metadata = read_safetensors(state_path(path))
    return json.loads(metadata.get("colddiff", "{}")).get("meta", {}).get("operator", {})
