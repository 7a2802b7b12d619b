"""Training R(x_t, t) and the checkpoints it writes.

A model is one `.safetensors` file: the EMA weights (what inference uses) and JSON metadata that
fully describe it (operator and parameters, network config, image size/channels, step, generation
prior). Beside it, `MODEL.state.safetensors` holds what exact resume needs: raw weights,
optimizer moments, EMA, step and every RNG state. Both are written atomically (temp + rename);
loading never unpickles anything.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import operators
import unet

FORMAT = "colddiff-model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable colddiff model: the message is meant for the user."""


# ----------------------------------------------------------------------------- checkpoints


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
        raise CheckpointError(f"{path}: no such model file")
    data = p.read_bytes()
    try:
        tensors = load(data)
        n = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError, OverflowError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({str(e).splitlines()[0][:80]})") from None
    return tensors, metadata


def load_model(path, device="cpu"):
    """(net, operator, meta) from a colddiff model file; the net is in eval mode."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT or "colddiff" not in metadata:
        raise CheckpointError(f"{path}: a safetensors file, but not a colddiff model (no colddiff metadata)")
    meta = json.loads(metadata["colddiff"])
    if meta.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer colddiff (format {meta['version']})")
    try:
        op = operators.operator_from_params(meta["operator"]["name"], meta["operator"]["params"])
        net = unet.UNet(**meta["network"])
        net.load_state_dict(tensors)
    except (KeyError, TypeError, RuntimeError, operators.OperatorError) as e:
        raise CheckpointError(f"{path}: colddiff model metadata or weights are inconsistent ({str(e).splitlines()[0][:100]})") from None
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
        raise CheckpointError(f"{state_path(path)}: not a colddiff training state")
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


# ----------------------------------------------------------------------------- data


def load_folder(folder: str, size: int | None, channels: int | None) -> torch.Tensor:
    """Every image of a folder as one uint8 tensor (N, C, S, S) (or the images' own size)."""
    from image_io import UserError, find_images, read_image

    items = find_images([folder])
    first = read_image(items[0][0], channels)
    C = channels or first.shape[0]
    imgs = []
    for src, _, _ in items:
        im = read_image(src, C)
        if size is not None and im.shape[-2:] != (size, size):
            im = resize_square(im, size)
        elif size is None and im.shape != first.shape:
            raise UserError(f"{src}: {tuple(im.shape[-2:])} differs from {tuple(first.shape[-2:])}; pass --size to resize all")
        imgs.append(im)
    return torch.stack(imgs)


def resize_square(im: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to `size` and centre-crop (uint8 in, uint8 out)."""
    H, W = im.shape[-2:]
    s = size / min(H, W)
    h, w = max(size, round(H * s)), max(size, round(W * s))
    x = F.interpolate(im[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """The papers' augmentation for a float batch: resize to 1.12x, random crop back, random flip."""
    B, _, H, W = x.shape
    h, w = round(H * 1.12), round(W * 1.12)
    big = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    oy = torch.randint(h - H + 1, (B,), generator=rng).to(x.device)
    ox = torch.randint(w - W + 1, (B,), generator=rng).to(x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :]
    crop = big[torch.arange(B, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    flip = (torch.rand(B, generator=rng) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, crop.flip(-1), crop)


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainConfig:
    steps: int = 700_000
    batch: int = 32
    accumulate: int = 2
    lr: float = 2e-5
    lr_schedule: str = "constant"  # the papers'; "cosine" decays to 0 at `steps` (for short budgets)
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    save_every: int = 5000
    sample_every: int = 1000
    augment: bool = True
    seed: int = 0
    compile: bool = True
    gmm_components: int = 1
    sampling_steps: int | None = None  # the model's default sampling steps (None: all T)


@dataclasses.dataclass
class Trained:
    net: torch.nn.Module
    ema: torch.nn.Module
    losses: list  # this run's per-step losses (not those before a resume)


class Stop(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _dist():
    """(rank, world size, local rank) under torchrun, else (0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def loss_fn(net, op, x0, rng):
    """Cold diffusion: |R(D(x0, t), t) - x0| (L1 on x0). Blur diffusion: |R(x_t, t) - eps|^2
    (the plain MSE of Lee et al.'s eq. 18). t uniform in 1..T."""
    t = torch.randint(1, op.T + 1, (x0.shape[0],), generator=rng).to(x0.device)
    hidden = op.draw(x0, rng)
    xt = op.apply(x0, t, hidden)
    if op.objective == "eps_mse":
        return (net(xt, t).float() - hidden["z"]).pow(2).mean()
    return (net(xt, t) - x0).abs().mean()


def train(data: torch.Tensor, op, net_preset: str, out: str, cfg: TrainConfig, device, resume: bool, log=print, net_overrides=None):
    """Train on uint8 images `data` (N, C, H, W); write `out` (+ state, samples, metrics.jsonl)."""
    rank, world, local_rank = _dist()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    cuda = device.type == "cuda"
    N, C, H, W = data.shape
    torch.manual_seed(cfg.seed)
    net = unet.build(C, net_preset, **(net_overrides or {})).to(device)
    ema = unet.build(C, net_preset, **(net_overrides or {})).to(device).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, **({"fused": True} if cuda else {}))
    rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # data order, t, hidden randomness, augmentation
    meta = {
        "version": FORMAT_VERSION,
        "operator": {"name": op.name, "params": op.params()},
        "network": net.config,
        "network_preset": net_preset,
        "image": {"channels": C, "height": H, "width": W},
        "train": dataclasses.asdict(cfg) | {"images": N, "world_size": world},
        "prior": fit_prior(op, data, cfg.gmm_components, cfg.seed, device),
    }
    step = 0
    if resume and state_path(out).exists():
        step = load_training_state(out, net, ema, opt, rng)
        log(f"resuming from step {step}")
    # keep the data on the GPU as uint8 when it fits easily (a quarter of free memory)
    if cuda and data.numel() < torch.cuda.mem_get_info(device)[0] // 4:
        data = data.to(device)
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if cuda and cfg.compile:
        model = torch.compile(model)
    train_step = make_step(model, opt, op, cfg, device)
    run_dir = Path(out).with_suffix("").with_name(Path(out).stem + ".run")
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    probe = data[:8].to(device)
    probe_x0 = probe.float() / 127.5 - 1
    probe_gen = torch.Generator().manual_seed(12345)
    probe_t = torch.full((len(probe),), op.T, device=device)
    probe_xt = op.degrade(probe_x0, probe_t, probe_gen)

    def checkpoint():
        if rank == 0:
            save_training_state(out, net, ema, opt, step, rng, meta)
            save_model(out, ema, meta | {"step": step})

    def sample_and_log(loss_value, rate):
        if rank != 0:
            return
        from image_io import atomic_write, encode_image, grid_image, to_uint8

        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            direct = ema(probe_xt, probe_t).float()
        if op.objective == "eps_mse":  # show x0_hat from the predicted eps (noisy at t = T: a sanity view)
            direct = x0_from_eps(op, probe_xt, probe_t, direct)
        rmse_direct = float(((direct.clamp(-1, 1) - probe_x0) / 2).pow(2).mean().sqrt())
        rmse_degraded = float(((probe_xt - probe_x0) / 2).pow(2).mean().sqrt())
        rows = torch.stack([probe_xt, direct, probe_x0], 1).flatten(0, 1)
        atomic_write(run_dir / f"step_{step:08d}.png", encode_image(to_uint8(grid_image(rows, ncol=3))))
        line = {"step": step, "loss": loss_value, "img_per_s": rate, "rmse_degraded": rmse_degraded, "rmse_direct": rmse_direct, "time": time.time()}
        if not sys.stderr.isatty():  # the progress bar only draws on a terminal: keep logs readable
            log(f"step {step}/{cfg.steps} loss {loss_value:.4f} {rate:,.0f} img/s rmse degraded {rmse_degraded:.4f} direct {rmse_direct:.4f}")
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    losses = []
    start_step = step
    t_last, n_last = time.perf_counter(), step
    try:
        with progress_bar(rank == 0) as bar:
            task = bar.add_task("training", total=cfg.steps, completed=step, loss=float("nan"), rate=0.0)
            while step < cfg.steps:
                for group in opt.param_groups:  # set every step, so a resumed run follows the schedule
                    group["lr"] = learning_rate(step + 1, cfg)
                total = train_step(data, rng)
                if not math.isfinite(total):
                    raise Stop(1, f"loss became {total} at step {step + 1}; stopped, the last good checkpoint is kept")
                step += 1
                losses.append(total)
                update_ema(ema, net, step, cfg)
                now = time.perf_counter()
                if step - start_step == 1:  # leave the first (compiling) step out of the rate
                    t_last, n_last = now, step
                rate = (step - n_last) * cfg.batch * cfg.accumulate * world / max(now - t_last, 1e-9)
                bar.update(task, completed=step, loss=total, rate=rate)
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    sample_and_log(total, rate)
                if step % cfg.save_every == 0 or step == cfg.steps:
                    checkpoint()
                if stop["signal"] is not None:
                    checkpoint()
                    sig = stop["signal"]
                    raise Stop(128 + sig, f"interrupted at step {step}: saved {out}; continue with --resume")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return Trained(net, ema, losses)


def fit_prior(op, data: torch.Tensor, components: int, seed: int, device) -> dict | None:
    """The generation prior of SPEC section 4, fitted on the training images (None if the
    operator needs none): a Gaussian mixture stored in the model's metadata."""
    import samplers

    feats = [samplers.prior_features(op, data[i : i + 4096].to(device).float() / 127.5 - 1) for i in range(0, len(data), 4096)]
    if feats[0] is None:
        return None
    gmm = samplers.fit_gmm(torch.cat(feats), components, seed)
    return {"kind": "gmm", "components": components, "features": "channel_means" if op.name == "blur" else "downsampled", **gmm}


def x0_from_eps(op, xt, t, eps):
    """x0_hat = U(Abar^-1/2 (U^T x_t - (1 - Abar)^1/2 U^T eps)), clipped to [-1, 1]."""
    abar = op.log_abar(t, *xt.shape[-2:]).exp()
    c = (op.to_dct(xt) - (1 - abar).sqrt() * op.to_dct(eps)) / abar.sqrt().clamp(min=1e-3)
    return op.from_dct(c).clamp(-1, 1)


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The lr of optimizer step `step` (1-based): constant, or a half cosine from lr to 0 at cfg.steps."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))
    return cfg.lr


def make_step(model, opt, op, cfg: TrainConfig, device):
    """One optimizer step on `cfg.accumulate` batches drawn from uint8 `data`; returns the loss,
    and skips the update when it is not finite."""
    cuda = device.type == "cuda"

    def step(data, rng) -> float:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.accumulate):
            idx = torch.randint(len(data), (cfg.batch,), generator=rng)
            x0 = data[idx.to(data.device)].to(device, non_blocking=True).float() / 127.5 - 1
            if cfg.augment:
                x0 = augment(x0, rng)
            if cuda:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
                loss = loss_fn(model, op, x0, rng) / cfg.accumulate
            loss.backward()
            total += loss.detach()
        total = float(total)
        if math.isfinite(total):
            opt.step()
        return total

    return step


@torch.no_grad()
def update_ema(ema, net, step: int, cfg: TrainConfig):
    """The papers' EMA: a copy of the model until `ema_start`, then decay every `ema_every` steps."""
    if step <= cfg.ema_start:
        ema.load_state_dict(net.state_dict())
    elif step % cfg.ema_every == 0:
        for e, p in zip(ema.state_dict().values(), net.state_dict().values()):
            e.lerp_(p, 1 - cfg.ema_decay)


def progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:,.0f} img/s"),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, transient=False,
    )
