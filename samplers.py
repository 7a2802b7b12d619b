"""Sampling: invert D with a restoration network R, as in Bansal et al. (Cold Diffusion).

Each sampler is a short loop next to the equation it implements. `restore(x, s)` is R applied to a
batch at step s (an int); `hidden` is the operator's hidden randomness for these images (the snow
pattern, mask centre, noise z, ...), reused by every D inside the loop.

    direct   x0_hat = R(x_t, t)
    naive    (Algorithm 1)  x0_hat = R(x_s, s);  x_{s'} = D(x0_hat, s')
    tacos    (Algorithm 2)  x0_hat = R(x_s, s);  x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')

s runs down from t to 0 in `steps` jumps (default t: s' = s - 1). For the interpolation operators
(noise, animorph, colour: D = a_s x0 + b_s z) `z="estimated"` re-estimates z at every step,
z_hat = (x_s - a_s x0_hat) / b_s (the DDIM choice); `z="fixed"` reuses the z in `hidden`.
"""
from __future__ import annotations

import torch

SAMPLERS = ("direct", "naive", "tacos")
Z_MODES = ("fixed", "estimated")


class SamplerError(ValueError):
    """A sampler that does not apply: the message is meant for the user."""


def schedule(t: int, steps: int | None) -> list[int]:
    """t = s_0 > s_1 > ... > s_K = 0, K = steps (default t), evenly spaced."""
    K = t if steps is None else steps
    if not 1 <= K <= max(t, 1):
        raise SamplerError(f"--steps must be in 1..{t}, got {K}")
    return sorted({round(t * i / K) for i in range(K + 1)}, reverse=True)


def _step_tensor(x, s):
    return torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)


def with_z(op, hidden, x_s, x0_hat, s: int, z: str):
    """The hidden randomness for this step's D; with z="estimated", z_hat = (x_s - a_s x0_hat) / b_s."""
    if z != "estimated":
        return hidden
    a, b = op.coefficients(_step_tensor(x_s, s), x_s, hidden)
    safe = b > 1e-6  # where b = 0 (colour: pixels the mask never reached) z plays no part
    z_hat = torch.where(safe, (x_s.float() - a * x0_hat.float()) / torch.where(safe, b, 1), 0)
    return {**hidden, "z": z_hat}


def direct(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed"):
    return restore(x_t, t)


def naive(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed"):
    """Algorithm 1: x_{s'} = D(R(x_s, s), s')."""
    x = x_t
    path = schedule(t, steps)
    for s, s_next in zip(path, path[1:]):
        x0_hat = restore(x, s)
        h = with_z(op, hidden, x, x0_hat, s, z)
        x = op.apply(x0_hat, _step_tensor(x, s_next), h)
    return x


def tacos(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed"):
    """Algorithm 2 (transformation-agnostic cold sampling): x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')."""
    x = x_t
    path = schedule(t, steps)
    for s, s_next in zip(path, path[1:]):
        x0_hat = restore(x, s)
        h = with_z(op, hidden, x, x0_hat, s, z)
        x = x - op.apply(x0_hat, _step_tensor(x, s), h) + op.apply(x0_hat, _step_tensor(x, s_next), h)
    return x


SAMPLER_FUNCTIONS = {"direct": direct, "naive": naive, "tacos": tacos}


def sample(name: str, restore, op, x_t, t: int, hidden=None, steps=None, z: str = "fixed"):
    """Run sampler `name`; checks that it (and the z mode) applies to the operator."""
    if name not in SAMPLER_FUNCTIONS:
        raise SamplerError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if z not in Z_MODES:
        raise SamplerError(f"unknown z mode {z!r}; choose from {', '.join(Z_MODES)}")
    if z == "estimated" and not op.interpolates:
        raise SamplerError(f"--z estimated applies to the interpolation operators (noise, animorph, colour), not {op.name}")
    if not 0 <= t <= op.T:
        raise SamplerError(f"--t must be in 0..{op.T} for this model, got {t}")
    if t == 0:
        return x_t
    return SAMPLER_FUNCTIONS[name](restore, op, x_t, t, hidden, steps, z)


def make_restorer(net, device, compile: bool = False):
    """R as a function of (x, s): bf16 autocast on CUDA, optionally compiled with CUDA graphs."""
    cuda = device.type == "cuda"
    model = net
    if cuda:
        model = net.to(memory_format=torch.channels_last)
        if compile:
            # "reduce-overhead" captures each fixed-shape call in a CUDA graph
            model = torch.compile(model, mode="reduce-overhead")

    @torch.no_grad()
    def restore(x, s: int):
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            out = model(x, _step_tensor(x, s))
        return out.float()

    return restore
