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

A model opened for sampling (R, its operator and these choices) is sampling.py's; R in tiles is
tiles.py's. A sampler is one function registered with `@sampler(predicts, steps, eta)`: it applies to the
operators whose network predicts that ("x0": cold diffusion, "eps": blur diffusion; None: any),
and says whether it jumps in --steps and takes --eta. Its docstring's first sentence is what
`colddiff ops` says it does.

This module imports torch inside the functions that use it, as seeding.py does: colddiff lists
SAMPLERS in its --help.
"""
from __future__ import annotations

from errors import UserError
from seeding import ImageRNG

SAMPLERS: dict = {}
Z_MODES = ("fixed", "estimated")


def sampler(predicts: str | None, steps: bool = True, eta: bool = False, step_noise: bool = False, one_call: bool = False):
    """Register a sampler under its function's name, for operators whose R predicts `predicts`;
    `steps`: it jumps in --steps K; `eta`: it takes --eta (stochasticity); `step_noise`: it takes
    --step-noise; `one_call`: it calls R once, at t, and passes through no other state."""

    def register(fn):
        fn.predicts, fn.steps, fn.eta, fn.step_noise, fn.one_call = predicts, steps, eta, step_noise, one_call
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


def path(name: str, t: int, steps: int | None) -> list[int]:
    """The steps s of the states x_s that sampler `name` passes through from x_t, t down to 0: R is
    called on every one but the last, x_0, the output."""
    if t == 0:  # x_0 is the image itself: sample() returns it
        return [0]
    if SAMPLERS[name].one_call:
        return [t, 0]
    return schedule(t, steps) if SAMPLERS[name].steps else list(range(t, -1, -1))


def step_tensor(x, s):
    import torch

    return torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)


def with_z(op, hidden, x_s, x0_hat, s: int, z: str):
    """The hidden randomness for this step's D; with z="estimated", z_hat = (x_s - a_s x0_hat) / b_s."""
    import torch

    if z != "estimated":
        return hidden
    a, b = op.coefficients(step_tensor(x_s, s), x_s, hidden)
    safe = b > 1e-6  # where b = 0 (colour: pixels the mask never reached) z plays no part
    z_hat = torch.where(safe, (x_s.float() - a * x0_hat.float()) / torch.where(safe, b, 1), 0)
    return {**hidden, "z": z_hat}


@sampler(predicts=None, steps=False, one_call=True)
def direct(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed", eta=0.0, step_noise=0.0):
    """x0_hat from one network call at t."""
    return op.x0_hat(x_t, step_tensor(x_t, t), restore(x_t, t))


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


def steps_for(name: str, op, meta: dict, t: int, steps: int | None) -> int | None:
    """--steps if given; for samplers that jump, the model's recommended steps, else the
    operator's default, at most t; else None (every step)."""
    default = meta.get("train", {}).get("sampling_steps") or op.default_steps
    if steps is None and default is not None and SAMPLERS[name].steps:
        return min(default, max(t, 1))
    return steps
