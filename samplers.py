"""Sampling: invert D with a restoration network R, as in Bansal et al. (Cold Diffusion).

Each sampler is a short loop next to the equation it implements. `restore(x, s)` is R applied to a
batch at step s (an int); `hidden` is the operator's hidden randomness for these images (the snow
pattern, mask centre, noise z, ...), reused by every D inside the loop.

    direct   x0_hat = R(x_t, t)
    naive    (Algorithm 1)  x0_hat = R(x_s, s);  x_{s'} = D(x0_hat, s')
    tacos    (Algorithm 2)  x0_hat = R(x_s, s);  x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')
    reverse, ancestral, ddim, dpmpp_2m   blur diffusion (R predicts eps): Lee et al.'s published
             step, the exact posterior step, DDIM jumps and DPM-Solver++(2M) jumps; the steps
             themselves are blurdiff.py's

s runs down from t to 0 in `steps` jumps (default t: s' = s - 1). naive and tacos take `step_noise`
delta: N(0, delta^2) is added after every jump but the last, from each image's own stream, the
sampling noise of inverse heat dissipation (Rissanen et al., ICLR 2023) that breaks the symmetry of
a flat x_T; the network is trained for it on D(x0, t) + sigma eps (train.py, --train-noise).
For the interpolation operators
(noise, animorph, colour: D = a_s x0 + b_s z) `z="estimated"` re-estimates z at every step,
z_hat = (x_s - a_s x0_hat) / b_s (the DDIM choice); `z="fixed"` reuses the z in `hidden`.

A sampler is one function registered with `@sampler(predicts, steps, eta)`: it applies to the
operators whose network predicts that ("x0": cold diffusion, "eps": blur diffusion; None: any),
and says whether it jumps in --steps and takes --eta. Its docstring's first sentence is what
`colddiff ops` says it does.

This module imports torch inside the functions that use it, as common.py does: colddiff lists
SAMPLERS in its --help.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common import ImageRNG, UserError, bf16

if TYPE_CHECKING:
    import torch

SAMPLERS: dict = {}
Z_MODES = ("fixed", "estimated")


def sampler(predicts: str | None, steps: bool = True, eta: bool = False, step_noise: bool = False):
    """Register a sampler under its function's name, for operators whose R predicts `predicts`;
    `steps`: it jumps in --steps K; `eta`: it takes --eta (stochasticity); `step_noise`: it takes
    --step-noise."""

    def register(fn):
        fn.predicts, fn.steps, fn.eta, fn.step_noise = predicts, steps, eta, step_noise
        SAMPLERS[fn.__name__] = fn
        return fn

    return register


def applicable(op) -> list[str]:
    return [name for name, fn in SAMPLERS.items() if fn.predicts in (None, op.predicts)]


def schedule(t: int, steps: int | None) -> list[int]:
    """t = s_0 > s_1 > ... > s_K = 0, K = steps (default t), evenly spaced."""
    K = t if steps is None else steps
    if not 1 <= K <= max(t, 1):
        raise UserError(f"--steps must be in 1..{t}, got {K}")
    return sorted({round(t * i / K) for i in range(K + 1)}, reverse=True)


def _step_tensor(x, s):
    import torch

    return torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)


def with_z(op, hidden, x_s, x0_hat, s: int, z: str):
    """The hidden randomness for this step's D; with z="estimated", z_hat = (x_s - a_s x0_hat) / b_s."""
    import torch

    if z != "estimated":
        return hidden
    a, b = op.coefficients(_step_tensor(x_s, s), x_s, hidden)
    safe = b > 1e-6  # where b = 0 (colour: pixels the mask never reached) z plays no part
    z_hat = torch.where(safe, (x_s.float() - a * x0_hat.float()) / torch.where(safe, b, 1), 0)
    return {**hidden, "z": z_hat}


@sampler(predicts=None, steps=False)
def direct(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """x0_hat from one network call at t."""
    return op.x0_hat(x_t, _step_tensor(x_t, t), restore(x_t, t))


@sampler(predicts="x0", step_noise=True)
def naive(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """Algorithm 1: x_{s'} = D(R(x_s, s), s') (+ delta z)."""
    x, noise = x_t, _step_noise(hidden, x_t, step_noise)
    path = schedule(t, steps)
    for s, s_next in zip(path, path[1:]):
        x0_hat = restore(x, s)
        h = with_z(op, hidden, x, x0_hat, s, z)
        x = noise(op.apply(x0_hat, s_next, h), s_next)
    return x


@sampler(predicts="x0", step_noise=True)
def tacos(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """Algorithm 2 (transformation-agnostic cold sampling): x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s') (+ delta z)."""
    x, noise = x_t, _step_noise(hidden, x_t, step_noise)
    path = schedule(t, steps)
    for s, s_next in zip(path, path[1:]):
        x0_hat = restore(x, s)
        h = with_z(op, hidden, x, x0_hat, s, z)
        x = noise(x - op.apply(x0_hat, s, h) + op.apply(x0_hat, s_next, h), s_next)
    return x


def _step_noise(hidden, x_t, delta: float):
    """x -> x + delta z after a jump to s' > 0 (z from each image's stream); the identity at delta = 0."""
    if not delta:
        return lambda x, s_next: x
    if hidden is None or "seed" not in hidden:
        raise UserError("step noise needs each image's noise seed (generation provides it)")
    draw = _noise_streams(hidden, x_t)
    return lambda x, s_next: x + delta * draw() if s_next > 0 else x


def _noise_streams(hidden, x):
    """Each image's sampling noise, from its own generator (hidden["seed"]): image i never depends
    on the batch it is sampled in. (Blur diffusion's steps take it as DCT coefficients: U^T z ~ N(0, I) too.)"""
    rng = ImageRNG(hidden["seed"].tolist())
    return lambda: rng.randn(x.shape[1:], x.device)


def _every_step(step, restore, x_t, t: int, hidden):
    """x_{i-1} = step(x_i, eps_hat, i, noise) for i = t..1, no noise on the last step."""
    noise, x = _noise_streams(hidden, x_t), x_t.float()
    for i in range(t, 0, -1):
        x = step(x, restore(x, i), i, noise() if i > 1 else None)
    return x


@sampler(predicts="eps", steps=False)
def reverse(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """Blur diffusion's published reverse process (Lee et al.), every step from t to 1. op.lee_step
    (SPEC section 5): a first-order approximation of the true posterior, variance B_i."""
    return _every_step(op.lee_step, restore, x_t, t, hidden)


@sampler(predicts="eps", steps=False)
def ancestral(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """The exact reverse process, every step from t to 1: a draw from DDPM's posterior per DCT
    coefficient, with Lee et al.'s variance. op.posterior_step, variance B_i."""
    return _every_step(op.posterior_step, restore, x_t, t, hidden)


@sampler(predicts="eps", eta=True)
def ddim(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """DDIM for the non-isotropic diffusion (gDDIM) in --steps jumps, deterministic at eta = 0. K jumps
    s -> s' (op.ddim_step); eta = 1 with every step is ancestral sampling with the posterior variance."""
    noise, x = _noise_streams(hidden, x_t) if eta > 0 else None, x_t.float()
    path = schedule(t, steps)
    for s, s_next in zip(path, path[1:]):
        x = op.ddim_step(x, restore(x, s), s, s_next, eta, noise() if eta > 0 and s_next > 0 else None)
    return x


@sampler(predicts="eps", eta=True)
def dpmpp_2m(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """DPM-Solver++(2M) (Lu et al., 2022) in --steps jumps, second order by reusing the previous
    jump's x0_hat; deterministic at eta = 0, the SDE variant above it. Per DCT coefficient
    (op.dpmpp_2m_step); the first jump is ddim's (at the same eta), and the last (into s = 0) is
    x0_hat, as in the paper."""
    noise, x, prev = _noise_streams(hidden, x_t) if eta > 0 else None, x_t.float(), None
    path = schedule(t, steps)
    for s, s_next in zip(path, path[1:]):
        x, prev = op.dpmpp_2m_step(x, restore(x, s), s, s_next, prev, eta, noise() if eta > 0 and s_next > 0 else None)
    return x


def check(name: str, op, t: int, z: str, eta: float = 0.0, steps: int | None = None, step_noise: float = 0.0):
    """The sampler `name`, z mode, steps, eta and step noise apply to `op` at step t, or a UserError saying why not."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if z not in Z_MODES:
        raise UserError(f"unknown z mode {z!r}; choose from {', '.join(Z_MODES)}")
    if z not in op.z_modes:
        from operators import OPERATORS

        which = ", ".join(n for n, c in OPERATORS.items() if z in c.z_modes)
        raise UserError(f"--z {z} applies to {which}, not {op.name}")
    if not 0 <= t <= op.T:
        raise UserError(f"--t must be in 0..{op.T} for this model, got {t}")
    if name not in applicable(op):
        raise UserError(f"{op.name} samples with {' or '.join(applicable(op))}, not {name}")
    if steps not in (None, t) and not SAMPLERS[name].steps:
        raise UserError(f"{name} runs every step: leave --steps out ({', '.join(n for n, f in SAMPLERS.items() if f.steps)} take --steps)")
    if steps is not None and t > 0 and SAMPLERS[name].steps:
        schedule(t, steps)  # a UserError for K outside 1..t, before any work starts
    if eta != 0 and not SAMPLERS[name].eta:
        raise UserError(f"--eta applies to {', '.join(n for n, f in SAMPLERS.items() if f.eta)}, not {name}")
    if not 0 <= eta <= 1:
        raise UserError(f"--eta must be in 0..1, got {eta}")
    if not step_noise >= 0:
        raise UserError(f"--step-noise must be at least 0, got {step_noise}")
    if step_noise and not SAMPLERS[name].step_noise:
        raise UserError(f"--step-noise applies to {', '.join(n for n, f in SAMPLERS.items() if f.step_noise)}, not {name}")


def sample(name: str, restore, op, x_t, t: int, hidden=None, steps=None, z: str = "fixed", eta: float = 0.0,
           step_noise: float = 0.0):
    """Run sampler `name` from x_t at step t; checks that it (and the z mode) applies to the operator."""
    check(name, op, t, z, eta, steps, step_noise)
    if t == 0:
        return x_t
    return SAMPLERS[name](restore, op, x_t, t, hidden, steps, z, eta, step_noise)


def make_restorer(net, device, compile: bool = False):
    """R as a function of (x, s): bf16 autocast on CUDA, optionally compiled with CUDA graphs."""
    import torch

    cuda = device.type == "cuda"
    model = net
    if cuda:
        model = net.to(memory_format=torch.channels_last)
        if compile:
            # "reduce-overhead" captures each fixed-shape call in a CUDA graph
            model = torch.compile(model, mode="reduce-overhead")

    @torch.no_grad()
    def restore(x, s: int):
        with bf16(device):
            out = model(x, _step_tensor(x, s))
        # a copy: CUDA-graph replays overwrite their output buffer on the next call
        return out.to(torch.float32, copy=True)

    return restore


def steps_for(name: str, op, meta: dict, t: int, steps: int | None) -> int | None:
    """--steps if given; for samplers that jump, the model's recommended steps, else the
    operator's default, at most t; else None (every step)."""
    default = meta.get("train", {}).get("sampling_steps") or op.default_steps
    if steps is None and default is not None and SAMPLERS[name].steps:
        return min(default, max(t, 1))
    return steps


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` px start along an axis of n px: evenly spread, overlapping by at least
    `overlap`, the first at 0 and the last ending at n (every tile the same size: one CUDA graph)."""
    if n <= tile:
        return [0]
    k = -(-(n - tile) // (tile - overlap))  # strides
    return [round(i * (n - tile) / k) for i in range(k + 1)]


def tile_ramp(n: int, overlap: int, first: bool, last: bool, device=None) -> torch.Tensor:
    """A tile's blending weight along one axis: 1 inside, falling linearly over `overlap` px at an edge
    that a neighbour overlaps (not at the image's own edges, which no other tile covers). Made on
    the device: a host copy would wait for the GPU."""
    import torch

    w = torch.ones(n, device=device)
    ramp = (torch.arange(overlap, device=device) + 0.5) / overlap
    if not first:
        w[:overlap] = ramp
    if not last:
        w[n - overlap :] = torch.minimum(w[n - overlap :], ramp.flip(0))
    return w


def tile_overlap(tile: int) -> int:
    """colddiff's overlap of N px tiles: N/8 (measured: README, "Large images")."""
    return max(8, tile // 8)


def tile_count(h: int, w: int, tile: int) -> int:
    """Network calls per R call on an h x w image in tiles of `tile` px."""
    return len(tile_starts(h, tile, tile_overlap(tile))) * len(tile_starts(w, tile, tile_overlap(tile)))


def tiled(restore, tile: int, overlap: int | None = None):
    """R over overlapping tile x tile windows, blended by linear ramps: peak memory that of one tile
    and time linear in the pixels (the whole image costs memory in proportion to its pixels, and time
    quadratic in them in the middle attention). Images no larger than a tile go through whole."""
    import torch

    overlap = tile_overlap(tile) if overlap is None else overlap
    layouts: dict = {}  # (H, W, device) -> the tiles' windows and weights, and their sum: once, not every step

    def layout(H: int, W: int, device):
        tops, lefts = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
        h, w = min(H, tile), min(W, tile)
        tiles, weight = [], torch.zeros(H, W, device=device)
        for i, top in enumerate(tops):
            wy = tile_ramp(h, overlap, i == 0, i == len(tops) - 1, device)
            for j, left in enumerate(lefts):
                wt = wy[:, None] * tile_ramp(w, overlap, j == 0, j == len(lefts) - 1, device)
                window = (..., slice(top, top + h), slice(left, left + w))
                tiles.append((window, wt))
                weight[window[1:]] += wt
        return tiles, weight

    def restore_tiled(x, s: int):
        H, W = x.shape[-2:]
        if H <= tile and W <= tile:
            return restore(x, s)
        key = (H, W, x.device)
        if key not in layouts:
            layouts[key] = layout(H, W, x.device)
        tiles, weight = layouts[key]
        out = torch.zeros(x.shape, device=x.device)
        for window, wt in tiles:
            out[window] += restore(x[window].contiguous(), s) * wt
        return out / weight

    return restore_tiled


@dataclass
class Sampling:
    """A model opened for sampling: its operator and metadata, R, and the chosen sampler."""

    op: object
    meta: dict
    restore: object
    sampler: str
    steps: int | None
    z: str
    eta: float = 0.0
    step_noise: float = 0.0

    def __call__(self, x_t, t: int, hidden):
        return sample(self.sampler, self.restore, self.op, x_t, t, hidden, self.steps, self.z, self.eta, self.step_noise)

    def at(self, t: int, steps: int | None = None) -> "Sampling":
        """This sampling from step t (restoring images degraded less than T): --steps, else the
        model's steps cut to t; checked, a UserError before any work."""
        steps = steps_for(self.sampler, self.op, self.meta, t, steps)
        check(self.sampler, self.op, t, self.z, self.eta, steps, self.step_noise)
        return dataclasses.replace(self, steps=steps)

    def describe(self) -> dict:
        """The choices that make its images, for the note in each output PNG."""
        return {"sampler": self.sampler, "steps": self.steps, "z": self.z, "eta": self.eta, "step_noise": self.step_noise}

    def path(self, t: int) -> list[int]:
        """The steps s of the states x_s that sampling from x_t passes through, t down to 0: R is
        called on every one but the last, x_0, the output."""
        if t == 0:  # x_0 is the image itself: sample() returns it
            return [0]
        if self.sampler == "direct":
            return [t, 0]
        return schedule(t, self.steps) if SAMPLERS[self.sampler].steps else list(range(t, -1, -1))

    def calls(self, t: int) -> int:
        """Network calls per batch from step t: 1 (direct), the jumps, or every step."""
        return len(self.path(t)) - 1

    def recorded(self, keep, record, record_x0_hat=None) -> "Sampling":
        """This sampling, calling record(x_s, s) with each state x_s handed to R at a step s in
        `keep` (the frames of a --strip: the sampler's own states, whatever it is), and
        record_x0_hat(x0_hat, s) with R's prediction from it (the released code's X_0s)."""
        def restore(x, s):
            if s in keep:
                record(x, s)
            out = self.restore(x, s)
            if s in keep and record_x0_hat:
                record_x0_hat(self.op.x0_hat(x, _step_tensor(x, s), out), s)
            return out

        return dataclasses.replace(self, restore=restore)

    def watched(self, after_call) -> "Sampling":
        """This sampling, calling after_call() after every network call (progress within a batch)."""
        def restore(x, s):
            out = self.restore(x, s)
            after_call()
            return out

        return dataclasses.replace(self, restore=restore)


def open_model(path: str, device, sampler=None, steps=None, z=None, t=None, source=None, compile=True, eta=None):
    """A model ready to sample (Sampling), every choice checked before any work:
    the operator's default sampler (with its default eta) and z mode unless given; for samplers
    that jump, --steps, else the model's recommended steps, else the operator's default (at most t)."""
    import checkpoint
    from image_io import attach_source

    net, op, meta = checkpoint.load_model(path, device)
    attach_source(op, source, device)
    if eta is None:
        eta = op.default_eta if sampler is None else 0.0
    sampler = sampler or op.default_sampler
    z = z or op.z_modes[0]
    t = op.T if t is None else t
    check(sampler, op, t, z, eta, steps)
    restore = make_restorer(net, device, compile and device.type == "cuda")
    return Sampling(op, meta, restore, sampler, steps_for(sampler, op, meta, t, steps), z, eta)
