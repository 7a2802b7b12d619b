"""Training R(x_t, t): the papers' loop (Adam, EMA, accumulation, augmentation), exact resume.

The operator decides what R predicts and its loss (op.loss); checkpoints are checkpoint.py's.
On CUDA: bf16 autocast, channels_last, fused Adam, torch.compile; DDP under torchrun. On the CPU,
bf16 autocast by --precision bf16 (AMX makes it the faster arithmetic there).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import checkpoint
import unet
from errors import Stop, UserError
from generative import fit_prior, symmetry_defaults
from machine import autocast, native_bf16, rough_seconds, to_device, versions
from outputs import check_writable
from progress import Progress, duration
from train_config import TrainConfig


def augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """The papers' augmentation for a float batch: resize to 1.12x, random crop back, random flip."""
    B, _, H, W = x.shape
    h, w = round(H * 1.12), round(W * 1.12)
    big = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    oy = to_device(torch.randint(h - H + 1, (B,), generator=rng), x.device)
    ox = to_device(torch.randint(w - W + 1, (B,), generator=rng), x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :]
    crop = big[torch.arange(B, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    flip = to_device(torch.rand(B, generator=rng) < 0.5, x.device)[:, None, None, None]
    return torch.where(flip, crop.flip(-1), crop)


# ----------------------------------------------------------------------------- training


NET_DEFAULT = "paper"
PRESET_NETS = {"cifar10": "ddpm"}  # the released code trained its CIFAR-10 runs with Ho et al.'s UNet


def method_defaults(op, given: dict) -> dict:
    """`given` with every training setting the user left unset (None) filled in: the
    operator's own method first (blurdiff: Lee et al.'s ADM UNet, Adam 5e-5, EMA 0.9999 every
    step from the start, batch 16), then the preset's network (cifar10: ddpm), else
    TrainConfig's papers' defaults (net: `paper`)."""
    defaults = {"net": PRESET_NETS.get(op.preset, NET_DEFAULT), **op.train_defaults}
    out = dict(given)
    for name, value in given.items():
        if value is None and name in (*defaults, *(f.name for f in dataclasses.fields(TrainConfig))):
            out[name] = defaults[name] if name in defaults else getattr(TrainConfig, name)
    return out


@dataclasses.dataclass
class Trained:
    net: torch.nn.Module
    ema: torch.nn.Module
    losses: list  # this run's per-step losses (not those before a resume)


def check_output(out: str, resume: bool, force: bool) -> dict:
    """`out` may be written: a new file, --force, or --resume of a training state beside it.
    The metadata of the run being resumed, or {}."""
    checkpoint.check_model_name(out)
    check_writable([out])  # before the data is loaded and hours are trained
    has_state = checkpoint.state_path(out).exists()
    if Path(out).exists() and not force and not (resume and has_state):
        if resume:
            raise UserError(f"{out}: exists, but no training state lies beside it ({checkpoint.state_path(out).name}) to resume; "
                            "--force trains a new model in its place")
        raise UserError(f"{out}: exists; pass --resume to continue training it or --force to start over")
    return checkpoint.saved_run(out) if resume and has_state else {}


@dataclasses.dataclass
class Settings:
    """A training run as `colddiff train`'s options resolve it: what is trained, how, and the run it resumes."""

    op: object
    net: str
    net_overrides: dict
    cfg: TrainConfig
    saved: dict  # the metadata of the run being resumed, or {}


def resolve(given: dict, typed: set) -> Settings:
    """The run of `colddiff train`'s parsed options `given` (by name; `typed`: those typed on the
    command line): a --resume alone continues the run with its operator, network and settings
    (typed ones win); the operator's method and the papers fill in the rest (method_defaults)."""
    import operators

    out = given["out"]
    saved = check_output(out, given["resume"], given["force"])
    if saved and not typed & {"op", "preset", "param"}:  # --resume alone: the operator the run began with
        op = operators.operator_from_params(saved["operator"]["name"], saved["operator"]["params"])
    else:
        op = operators.from_options(given["op"], given["preset"], given["param"])
    check_operator(saved, op, out)
    given = method_defaults(op, resumed_settings(saved, given, typed))
    cfg = TrainConfig(**{f.name: given[f.name] for f in dataclasses.fields(TrainConfig)})
    cfg.check(op)
    net_overrides = given.get("net_config") or unet.parse_overrides(given["net"], given["net_param"] or [])
    return Settings(op, given["net"], net_overrides, cfg, saved)


def check_operator(saved: dict, op, out: str):
    """A run is resumed with the operator it began with."""
    operator = saved.get("operator", {"name": op.name, "params": op.params()})
    if operator != {"name": op.name, "params": op.params()}:
        raise UserError(f"{out}: was trained for {operator.get('name')} {operator.get('params')}, not {op.name} {op.params()}")


def resumed_settings(saved: dict, given: dict, typed: set) -> dict:
    """`given` with every training setting that was not typed on the command line taken from the
    run being resumed, and its network (as "net" and "net_config"), so that `--resume` alone
    continues the run as it began; what was typed wins (and resumed_line says so)."""
    if not saved:
        return given
    out = dict(given)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in typed and f.name in saved.get("train", {}):
            out[f.name] = saved["train"][f.name]
    if not typed & {"net", "net_param"} and "network_preset" in saved:
        out["net"] = saved["network_preset"]
        out["net_config"] = {k: v for k, v in saved["network"].items() if k != "channels"}
    return out


def resumed_shape(saved: dict, out: str, size: int | None, channels: int | None) -> tuple[int | None, int | None]:
    """--size and --channels of a resumed run: the run's own where not given (a folder of mixed
    sizes would otherwise load at the preset's size, not at the --size the run began with)."""
    image = saved.get("image")
    if not image:
        return size, channels
    H, W, C = image["height"], image["width"], image["channels"]
    kind = {1: "grey", 3: "colour"}
    if size is not None and (size, size) != (H, W) or channels not in (None, C):
        raise UserError(f"{out}: the run being resumed trains on {W}x{H} {kind[C]} images; resume it at that size "
                        f"and channels, or start over with --force")
    return (H if H == W else size), C


def resumed_line(step: int, saved: dict, meta: dict) -> str:
    """"resuming from step N", and what differs from the run that wrote the state: the images
    (their shape is refused, their number changes the data order) and any training setting."""
    old, new = saved.get("train", {}), meta["train"]
    if saved.get("image", meta["image"]) != meta["image"]:
        raise UserError("the images are {width}x{height}, ".format(**meta["image"])
                        + "the run being resumed trained on {width}x{height}; resize them to it, or start over with --force".format(**saved["image"]))
    unseen = UNSEEN | ({"steps"} if new["lr_schedule"] == "constant" else set())  # cosine: steps set the lr
    changed = [f"{k} {old[k]} -> {new[k]}" for k in new if k in old and k not in unseen and old[k] != new[k]]
    return f"resuming from step {step}" + (f", with other images or settings than its last run: {', '.join(changed)}" if changed else "")


SAMPLING = ("sampling_steps", "step_noise", "weights")  # what only the model file holds: a finished run may change them
UNSEEN = {"compile", "save_every", "sample_every", *SAMPLING}  # settings that change no step of a resumed run


def _dist(device):
    """(rank, world size, local rank, backend) under torchrun (it sets RANK and WORLD_SIZE; one
    process counts too), else (0, 1, 0, None). NCCL for CUDA, gloo for the CPU."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0, None
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank, world, int(os.environ.get("LOCAL_RANK", "0")), torch.distributed.get_backend()


def loss_fn(net, op, x0, rng, train_noise: float = 0.0, precision: str = "auto"):
    """op.loss of R's output on x_t = D(x0, t), t uniform in 1..T (L1 on x0 for cold diffusion);
    with train_noise sigma, on D(x0, t) + sigma eps, so that R meets the noise that sampling with
    --step-noise adds (inverse heat dissipation, Rissanen et al.). Only R runs in bf16 (on CUDA, or
    --precision bf16): D and the loss stay float32 (under autocast blur's and blurdiff's matmuls would
    round x_t and the eps target to bf16's 3 digits), as they are in float32 training and in sampling."""
    t = torch.randint(1, op.T + 1, (x0.shape[0],), generator=rng)  # checked on the CPU by apply, no wait for the GPU
    hidden = op.draw(x0, rng)
    x_t = op.apply(x0, t, hidden)
    if train_noise:
        x_t = x_t + train_noise * to_device(torch.randn(x_t.shape, generator=rng), x_t.device)
    with autocast(x0.device, precision):
        pred = net(x_t, to_device(t, x0.device))
    return op.loss(pred.float(), x0, hidden)


def estimate(net, cfg: TrainConfig, H: int, W: int, steps_left: int, world: int, device, backend=None) -> tuple[float, str]:
    """(seconds, one line) of a rough time estimate: 3 forwards' FLOPs per image (forward and
    backward) at machine.rough_seconds' assumed rate; under torchrun, the processes and backend."""
    flops = 3 * unet.forward_flops(net.config, H, W) * cfg.batch * cfg.accumulate * steps_left
    seconds, where = rough_seconds(flops / world, device)
    if backend:
        where += f" in each of {world} processes ({backend})"
    return seconds, (f"{steps_left:,} steps x {cfg.batch * cfg.accumulate * world} images of {W}x{H} through a "
                     f"{unet.count_parameters(net) / 1e6:.1f} M-parameter network: roughly {duration(seconds)} on {where}")


def train(data: torch.Tensor, op, net_preset: str, out: str, cfg: TrainConfig, device, resume: bool, log=print, net_overrides=None,
          quiet=False):
    """Train on uint8 images `data` (N, C, H, W); write `out` (+ state, samples, metrics.jsonl)."""
    rank, world, local_rank, backend = _dist(device)
    if device.type == "cuda" and backend:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    cuda = device.type == "cuda"
    N, C, H, W = data.shape
    if min(H, W) < op.min_size():  # pixelate halves its images T times: refused now, not at the first step
        m = op.min_size()
        raise UserError(f"{op.name} {op.preset} needs images of at least {m}x{m}, these are {W}x{H}: pass --size {m} or more")
    torch.manual_seed(cfg.seed)
    net, ema, opt = build(C, net_preset, net_overrides, cfg, device)
    rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # data order, t, hidden randomness, augmentation
    meta = run_meta(op, net, net_preset, data, cfg, world, backend, device)
    saver = Saver(out, net, ema, opt, rng, meta, rank)
    step = saver.resume(cfg, log) if resume and checkpoint.state_path(out).exists() else 0
    if rank == 0:
        announce(net, cfg, H, W, cfg.steps - step, world, backend, device, log)
    # keep the data on the GPU as uint8 when it fits easily (a quarter of free memory)
    if cuda and data.numel() < torch.cuda.mem_get_info(device)[0] // 4:
        data = data.to(device)
    model = net
    if backend:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if cuda and cfg.compile:
        model = torch.compile(model)
    train_step = make_step(model, opt, op, cfg, device)
    view = RunLog(op, ema, data, out, cfg, device, log, enabled=rank == 0, quiet=quiet)
    losses = []
    with stop_on_signals(log if rank == 0 else None) as stop, view:
        view.begin(step)
        while step < cfg.steps:
            for group in opt.param_groups:  # set every step, so a resumed run follows the schedule
                group["lr"] = learning_rate(step + 1, cfg)
            total = train_step(data, rng)
            if not math.isfinite(total):
                raise Stop(1, f"loss became {total} at step {step + 1}; stopped, the last good checkpoint is kept")
            step += 1
            losses.append(total)
            update_ema(ema, net, step, cfg)
            view.update(step, total, world)
            if step % cfg.save_every == 0 or step == cfg.steps:
                saver.save(step)
            if stop["signal"] is not None:
                saver.save(step)
                raise Stop(128 + stop["signal"], f"interrupted at step {step}: saved {out}; continue with --resume")
    return Trained(net, ema, losses)


def build(C: int, net_preset: str, net_overrides: dict | None, cfg: TrainConfig, device):
    """(net, ema, opt): the network, its EMA (a copy to begin with) and Adam; channels_last and fused on CUDA."""
    net = unet.build(C, net_preset, **(net_overrides or {})).to(device)
    ema = unet.build(C, net_preset, **(net_overrides or {})).to(device).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    cuda = device.type == "cuda"
    if cuda:  # the EMA too: update_ema's multi-tensor kernels need the same layout on both sides
        net, ema = net.to(memory_format=torch.channels_last), ema.to(memory_format=torch.channels_last)
    return net, ema, torch.optim.Adam(net.parameters(), lr=cfg.lr, **({"fused": True} if cuda else {}))


def run_meta(op, net, net_preset: str, data: torch.Tensor, cfg: TrainConfig, world: int, backend, device) -> dict:
    """What a model file says of itself: its operator, network, images, training, prior and provenance."""
    N, C, H, W = data.shape
    return {
        "version": checkpoint.FORMAT_VERSION,
        "operator": {"name": op.name, "params": op.params()},
        "network": net.config,
        "network_preset": net_preset,
        "image": {"channels": C, "height": H, "width": W},
        "train": dataclasses.asdict(cfg) | {"images": N, "world_size": world, "distributed": backend},
        "prior": fit_prior(op, data, cfg.gmm_components, cfg.seed, device),
        "symmetry": symmetry_defaults(cfg.train_noise, op.flat_start, cfg.step_noise),
        "made_by": versions(device),
    }


def announce(net, cfg: TrainConfig, H: int, W: int, steps_left: int, world: int, backend, device, log) -> None:
    """The run's estimated time, and warnings about its length, its EMA and an emulated bf16."""
    seconds, line = estimate(net, cfg, H, W, steps_left, world, device, backend)
    log(line)
    if seconds > 86400:
        log(f"warning: that is {duration(seconds)}: use a GPU, a smaller --net (small, tiny), fewer --steps or a smaller --size")
    if cfg.precision == "bf16" and device.type == "cpu" and not native_bf16():
        log("warning: this CPU has no bf16 arithmetic (AMX or AVX512-BF16): --precision bf16 is emulated here, slower than fp32")
    warning = ema_warning(cfg)
    if warning:
        log(warning)


class Saver:
    """A run's checkpoints: the training state first, then the model, so that a model file never runs
    ahead of the state that resumes it; only finite weights are saved (rank 0 writes)."""

    def __init__(self, out: str, net, ema, opt, rng: torch.Generator, meta: dict, rank: int):
        self.out, self.net, self.ema, self.opt, self.rng, self.meta, self.rank = out, net, ema, opt, rng, meta, rank
        self.step = None  # the step saved last (this run's, or the one resumed)

    def resume(self, cfg: TrainConfig, log) -> int:
        """The step of the state resumed (its weights, optimizer and random state loaded)."""
        step = checkpoint.load_training_state(self.out, self.net, self.ema, self.opt, self.rng)
        if step >= cfg.steps:
            stored = self.restate(cfg)
            raise Stop(0, f"{self.out} is at step {step} already, not below --steps {cfg.steps}: "
                          + (f"stored {stored} in it, nothing to train" if stored else "nothing to do (raise --steps to train on)"))
        log(resumed_line(step, checkpoint.saved_run(self.out), self.meta))
        self.step = step or None
        return step

    def restate(self, cfg: TrainConfig) -> str | None:
        """A finished run resumed with other sampling defaults (--sampling-steps, --step-noise) or another
        --weights: they change no training step, so the model file takes them as they are; what was stored, or None."""
        net, _, meta = checkpoint.load_model(self.out)
        changed = {k: getattr(cfg, k) for k in SAMPLING if meta["train"].get(k) != getattr(cfg, k)}
        if not changed:
            return None
        meta["train"] |= changed
        meta["symmetry"] = self.meta["symmetry"]
        if self.rank == 0:
            checkpoint.save_model(self.out, net, meta)
        return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changed.items())

    def save(self, step: int) -> None:
        kept = f"{self.out} keeps step {self.step}" if self.step is not None else f"nothing was saved to {self.out}"
        if not all(bool(torch.isfinite(p).all()) for m in (self.net, self.ema) for p in m.parameters()):
            raise Stop(1, f"the weights became non-finite by step {step} (is --lr too large?); stopped, {kept}")
        if self.rank == 0:
            try:
                checkpoint.save_training_state(self.out, self.net, self.ema, self.opt, step, self.rng, self.meta)
                checkpoint.save_model(self.out, self.ema, self.meta | {"step": step})
            except UserError as e:
                raise Stop(1, f"{e}; training stopped at step {step}, {kept}") from None
        self.step = step


class stop_on_signals:
    """SIGINT/SIGTERM set stop["signal"] instead of killing the run: the loop saves and stops. The first
    says so at once (a step of a large network on a CPU takes minutes); a second stops at once, without
    that save (what was saved before stays whole: every write is atomic)."""

    def __init__(self, say=None):
        self.say = say

    def __enter__(self):
        self.stop = {"signal": None}
        self.old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self.stop

    def _on_signal(self, signum, _frame):
        from errors import Terminated

        if self.stop["signal"] is not None:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        self.stop["signal"] = signum
        if self.say:
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            self.say(f"colddiff: stopping: this step finishes and is saved, then the run ends ({again} again stops at once, "
                     "without saving it)")

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def run_dir(out) -> Path:
    """MODEL.run/: a run's sample grids and metrics.jsonl."""
    return Path(out).with_name(Path(out).stem + ".run")


class RunLog:
    """The run's signs of life: a progress bar, and every `sample_every` steps a grid
    (degraded | direct | original of 8 fixed images) and a metrics.jsonl line in MODEL.run/."""

    def __init__(self, op, ema, data, out, cfg, device, log, enabled, quiet=False):
        self.op, self.ema, self.cfg, self.device, self.log, self.enabled = op, ema, cfg, device, log, enabled
        self.run_dir = run_dir(out)
        self.x0 = data[:8].to(device).float() / 127.5 - 1
        self.t = torch.full((len(self.x0),), op.T, device=device)
        self.xt = op.degrade(self.x0, self.t, torch.Generator().manual_seed(12345))
        self.progress = Progress("training", cfg.steps, "steps", quiet=quiet or not enabled)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def begin(self, step):
        self.progress.begin_at(step)
        self.start_step, self.t_last, self.n_last = step, time.perf_counter(), step

    def update(self, step, loss, world):
        now = time.perf_counter()
        if step - self.start_step == 1:  # leave the first (compiling) step out of the rate
            self.t_last, self.n_last = now, step
            self.progress.begin_at(step)
        rate = (step - self.n_last) * self.cfg.batch * self.cfg.accumulate * world / max(now - self.t_last, 1e-9)
        self.progress.update(step, f"loss {loss:.4f}, {rate:,.0f} img/s")
        if self.enabled and (step % self.cfg.sample_every == 0 or step == self.cfg.steps):
            self.sample(step, loss, rate)

    @torch.no_grad()
    def sample(self, step, loss, rate):
        from image_io import encode_image, grid_image, to_pixels
        from outputs import atomic_write

        with autocast(self.device, self.cfg.precision):
            pred = self.ema(self.xt, self.t).float()
        direct = self.op.x0_hat(self.xt, self.t, pred)  # blurdiff: x0 from eps, noisy at t = T (a sanity view)
        rmse_direct = float(((direct.clamp(-1, 1) - self.x0) / 2).pow(2).mean().sqrt())
        rmse_degraded = float(((self.xt - self.x0) / 2).pow(2).mean().sqrt())
        rows = torch.stack([self.xt, direct, self.x0], 1).flatten(0, 1)
        atomic_write(self.run_dir / f"step_{step:08d}.png", encode_image(to_pixels(grid_image(rows, ncol=3))))
        line = {"step": step, "loss": loss, "img_per_s": rate, "rmse_degraded": rmse_degraded, "rmse_direct": rmse_direct, "time": time.time()}
        if self.progress.mode == "lines":  # the bar shows this on a terminal
            self.log(f"step {step}/{self.cfg.steps} loss {loss:.4f} {rate:,.0f} img/s rmse degraded {rmse_degraded:.4f} direct {rmse_direct:.4f}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


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
            x0 = to_device(data[to_device(idx, data.device)], device).float() / 127.5 - 1
            if cfg.augment:
                x0 = augment(x0, rng)
            if cuda:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model, op, x0, rng, cfg.train_noise, cfg.precision) / cfg.accumulate
            loss.backward()
            total += loss.detach()
        if torch.distributed.is_initialized():  # the mean over ranks: every rank logs it, and skips a step or not, alike
            torch.distributed.all_reduce(total)
            total /= torch.distributed.get_world_size()
        total = float(total)
        if math.isfinite(total):
            opt.step()
        return total

    return step


def ema_warning(cfg: TrainConfig) -> str | None:
    """A warning when the run ends before its EMA has forgotten the weights of step --ema-start:
    with n updates after it, that step keeps decay^n of the saved model. Past 1/e (fewer updates
    than the EMA's horizon 1/(1 - decay)) the saved model is mostly a snapshot of that early
    network, whatever the rest of the run learns (0.9999 every step, blurdiff's, over 1,200 steps
    keeps 89% of its starting weights)."""
    updates = (cfg.steps - cfg.ema_start) // cfg.ema_every
    kept = cfg.ema_decay**updates
    if cfg.steps <= cfg.ema_start or kept <= math.exp(-1):  # a run that ends by --ema-start saves its last weights
        return None
    horizon = cfg.ema_every / (1 - cfg.ema_decay) if cfg.ema_decay < 1 else math.inf
    return (f"warning: the EMA (decay {cfg.ema_decay} every {cfg.ema_every} step{'s' if cfg.ema_every != 1 else ''}) averages over "
            f"~{horizon:,.0f} steps, but only {updates * cfg.ema_every:,} follow --ema-start {cfg.ema_start:,}: the saved model "
            f"will be {kept:.0%} the weights of step {cfg.ema_start:,}; for a run this short lower --ema-decay "
            f"(to {max(0.0, 1 - 4 * cfg.ema_every / max(updates * cfg.ema_every, 1)):.4g} or less) or raise --steps")


@torch.no_grad()
def update_ema(ema, net, step: int, cfg: TrainConfig):
    """The papers' EMA: a copy of the model until `ema_start`, then decay every `ema_every` steps.
    One multi-tensor call over every weight, not one per tensor: the host spent 3.2 ms a step
    copying the `small` network's 180 tensors, as long as a GPU takes for its whole training step."""
    e, p = [*ema.parameters(), *ema.buffers()], [*net.parameters(), *net.buffers()]
    if step <= cfg.ema_start:
        torch._foreach_copy_(e, p)
    elif step % cfg.ema_every == 0:
        torch._foreach_lerp_(e, p, 1 - cfg.ema_decay)
