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
from errors import UserError
from outputs import FileLock

FORMAT = "colddiff-model"
FORMAT_VERSION = 1


def _atomic_bytes(path: Path, data: bytes):
    from outputs import atomic_write

    atomic_write(path, data)


def check_model_name(path: str) -> str:
    """A model file to write: its name ends in .safetensors (a model written as fp.png misleads every tool)."""
    if not str(path).endswith(".safetensors"):
        raise UserError(f"{path}: model files end in .safetensors")
    return path


def state_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.safetensors")


def save_model(path, net, meta: dict) -> None:
    """The weights in float32, or in float16 when the run says `weights: fp16` (half the file: loading
    copies them into the float32 network); a weight beyond float16's range is refused, not made infinite."""
    from safetensors.torch import save

    half = meta.get("train", {}).get("weights") == "fp16"
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    if half:
        big = next((k for k, v in tensors.items() if v.numel() and float(v.abs().max()) > torch.finfo(torch.float16).max), None)
        if big:
            raise UserError(f"{path}: weight {big} exceeds float16's range ({torch.finfo(torch.float16).max:g}); save it with --weights fp32")
        tensors = {k: v.half() for k, v in tensors.items()}
    _atomic_bytes(Path(path), save(tensors, metadata={"format": FORMAT, "colddiff": json.dumps(meta)}))


def read_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file, with one clear error for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = _read(path)
    try:
        return load(data), _metadata(data)
    except (SafetensorError, ValueError, AttributeError, UnicodeDecodeError, OverflowError) as e:
        raise UserError(f"{path}: not a safetensors file ({str(e).splitlines()[0][:80]})") from None


def _read(path, head: bool = False) -> bytes:
    """A model file's bytes (with head: its 8-byte length and JSON header only); a file that may not be
    read is one line."""
    p = _file(path)
    try:
        if not head:
            return p.read_bytes()
        with p.open("rb") as f:
            start = f.read(8)
            n = int.from_bytes(start, "little")
            if len(start) < 8 or n > p.stat().st_size - 8:
                raise UserError(f"{path}: not a safetensors file (its header length {n} runs past its end)")
            return start + f.read(n)
    except PermissionError:
        raise UserError(f"{path}: permission denied (the file may not be read)") from None


def read_metadata(path) -> dict:
    """The metadata of a .safetensors file from its header alone: no tensor is read (a paper
    network's training state is 680 MB)."""
    data = _read(path, head=True)
    try:
        return _metadata(data)
    except (ValueError, AttributeError, UnicodeDecodeError, OverflowError) as e:
        raise UserError(f"{path}: not a safetensors file ({str(e).splitlines()[0][:80]})") from None


def _file(path) -> Path:
    from image_io import check_reachable

    check_reachable(Path(path))
    if Path(path).is_dir():
        raise UserError(f"{path}: is a folder, not a model file (.safetensors)")
    if not Path(path).is_file():
        raise UserError(f"{path}: no such model file")
    return Path(path)


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's bytes (its 8-byte length, then the JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}


def model_meta(path, metadata: dict | None = None) -> dict:
    """A colddiff model's metadata (from its header alone where not given), checked."""
    metadata = read_metadata(path) if metadata is None else metadata
    if metadata.get("format") != FORMAT or "colddiff" not in metadata:
        raise UserError(f"{path}: a safetensors file, but not a colddiff model (no colddiff metadata)")
    try:
        meta = json.loads(metadata["colddiff"])
    except ValueError as e:
        raise inconsistent(path, e) from None
    if meta.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: written by a newer colddiff (format {meta['version']})")
    return meta


def model_operator(path, metadata: dict | None = None):
    """(operator, meta) of a colddiff model, its weights not read (`degrade --model`)."""
    meta = model_meta(path, metadata)
    try:
        return operators.operator_from_params(meta["operator"]["name"], meta["operator"]["params"]), meta
    except (KeyError, TypeError, ValueError, UserError) as e:
        raise inconsistent(path, e) from None


def inconsistent(path, e: Exception) -> UserError:
    # torch's load_state_dict says "Error(s) in loading state_dict for UNet:" first; the line after names the tensor
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith("Error(s) in loading")]
    first = lines[0] if lines else type(e).__name__
    return UserError(f"{path}: colddiff model metadata or weights are inconsistent ({first[:240]})")


def load_model(path, device="cpu"):
    """(net, operator, meta) from a colddiff model file; the net is in eval mode."""
    tensors, metadata = read_safetensors(path)
    op, meta = model_operator(path, metadata)
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # a model saved from a diverged run restores to black
        raise UserError(f"{path}: {len(broken)} of its weight tensors hold NaN or infinity ({broken[0]}, ...): "
                        "the run that made it diverged; retrain it (a lower --lr)")
    try:
        net = unet.from_config(meta["network"])
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError, UserError) as e:
        raise inconsistent(path, e) from None
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
    saved = info.get("meta", {}).get("network")
    wanted = json.loads(json.dumps(net.config))
    if saved is not None and saved != wanted:
        differ = ", ".join(f"{k} {saved.get(k)} not {wanted.get(k)}" for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k))
        raise UserError(f"{path}: its training state is for another network ({differ}); resume with the --net and --net-param it was trained with")
    try:
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as e:
        raise UserError(f"{state_path(path)}: weights do not fit the network ({str(e).splitlines()[0][:100]})") from None
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    rng.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(info["step"])




class train_lock(FileLock):
    """Held while `colddiff train` writes a model: a second run on the same file is refused, not
    interleaved (MODEL.lock); taking it removes the temporaries a killed run left."""

    def __init__(self, model_path):
        p = Path(model_path)
        super().__init__(p.with_name(p.name + ".lock"), f"{p}: another `colddiff train` is writing this model "
                         f"(it holds {p.name}.lock); wait for it, or write another file")

    def taken(self):
        """A write killed between its temp file and the rename (kill -9, power loss) leaves
        `.MODEL.XXXX.tmp`; with the lock held no one else can be writing them."""
        model = self.path.with_suffix("")
        for name in (model.name, state_path(model).name):
            for tmp in model.parent.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)


def saved_run(path) -> dict:
    """The metadata of the run a training state was written by (operator, image, train, …)."""
    metadata = read_metadata(state_path(path))
    return json.loads(metadata.get("colddiff", "{}")).get("meta", {})
