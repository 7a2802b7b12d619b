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

import math

import torch
import torch.nn.functional as F

SAMPLERS = ("direct", "naive", "tacos", "reverse")
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


def reverse(restore, op, x_t, t: int, hidden=None, steps=None, z="fixed"):
    """Blur diffusion's reverse process (Lee et al.; SPEC section 5), in the DCT basis U:

    x_{i-1} = x_i + H(x_i) - U(B_i (1 - Abar_i)^-1/2 U^T eps_hat) + U(B_i^1/2 U^T z),
    H(x) = x - U(A_i^1/2 U^T x), B_i = 1 - A_i, no noise on the last step. `restore` predicts eps.
    Each image's noise comes from its own generator (hidden["seed"]): image i never depends on
    the batch it is sampled in."""
    if steps not in (None, t):
        raise SamplerError("the blurdiff reverse sampler runs every step: leave --steps out")
    H, W = x_t.shape[-2:]
    gens = [torch.Generator().manual_seed(int(s)) for s in hidden["seed"].tolist()]
    x = x_t.float()
    for i in range(t, 0, -1):
        eps_hat = restore(x, i)
        A = op.log_a_step(i, H, W, x.device).exp()
        B = 1 - A
        one_minus_abar = 1 - op.log_abar(_step_tensor(x, i), H, W).exp()
        c = op.to_dct(x)
        c = (2 - A.sqrt()) * c - B / one_minus_abar.sqrt() * op.to_dct(eps_hat)
        if i > 1:
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device)
            c = c + B.sqrt() * noise  # N(0, I) in the DCT basis: U^T z for z ~ N(0, I)
        x = op.from_dct(c)
    return x


SAMPLER_FUNCTIONS = {"direct": direct, "naive": naive, "tacos": tacos, "reverse": reverse}


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
    if (name == "reverse") != (op.objective == "eps_mse"):
        raise SamplerError(f"{op.name} samples with --sampler {op.default_sampler}, not {name}")
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
        # a copy: CUDA-graph replays overwrite their output buffer on the next call
        return out.to(torch.float32, copy=True)

    return restore


# ----------------------------------------------------------------------------- generation priors


def fit_gmm(x: torch.Tensor, k: int = 1, seed: int = 0, iters: int = 200, reg: float = 1e-6) -> dict:
    """Gaussian mixture with full covariances fitted by EM on (N, D) features, in float64.

    Deterministic for a seed (initial means are k distinct data points). Runs where x lives."""
    x = x.double()
    N, D = x.shape
    if N < k:
        raise ValueError(f"a {k}-component mixture needs at least {k} images, got {N}")
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(N, generator=g)[:k].to(x.device)].clone()
    covs = (torch.cov(x.T).reshape(D, D) + reg * eye).expand(k, D, D).clone()
    weights = torch.full((k,), 1 / k, dtype=x.dtype, device=x.device)
    last = -math.inf
    for _ in range(iters):
        # E step: responsibilities from log N(x | mu_k, S_k) + log w_k
        logp = torch.distributions.MultivariateNormal(means, covs).log_prob(x[:, None, :]) + weights.log()
        ll = torch.logsumexp(logp, 1)
        resp = (logp - ll[:, None]).exp()
        # M step
        nk = resp.sum(0) + 1e-12
        weights = nk / N
        means = resp.T @ x / nk[:, None]
        d = x[:, None, :] - means[None]
        covs = torch.einsum("nk,nkd,nke->kde", resp, d, d) / nk[:, None, None] + reg * eye
        if float(ll.mean()) - last < 1e-9:
            break
        last = float(ll.mean())
    return {"weights": weights.tolist(), "means": means.tolist(), "covs": covs.tolist()}


def sample_gmm(gmm: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, D) float32 draws from a mixture stored as `fit_gmm` returns it."""
    w = torch.tensor(gmm["weights"], dtype=torch.float64)
    means = torch.tensor(gmm["means"], dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.tensor(gmm["covs"], dtype=torch.float64))
    comp = torch.multinomial(w, n, replacement=True, generator=generator)
    z = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
    return (means[comp] + (chol[comp] @ z[..., None])[..., 0]).float()


def prior_features(op, x0: torch.Tensor) -> torch.Tensor | None:
    """What the generation prior is fitted to, (N, D): blur (flat last step) the per-channel
    means, i.e. x_T itself; pixelate the fully downsampled images; None where x_T needs no fit."""
    if op.name == "blur" and op.flat_last:
        return x0.float().mean((-2, -1))
    if op.name == "pixelate":
        H, W = x0.shape[-2:]
        x_T = op.apply(x0.float(), torch.full((len(x0),), op.T, device=x0.device))
        return x_T[..., :: 2**op.T, :: 2**op.T][..., : H >> op.T, : W >> op.T].flatten(1)
    return None


GENERATIVE = {"blur": "GMM over the per-channel means (generation preset)", "pixelate": "GMM over the downsampled images",
              "colour": "a random colour", "noise": "z ~ N(0, I)", "animorph": "an image of --source", "blurdiff": "N(0, I)"}


def generation_start(op, prior: dict | None, shape, generator, symmetry: str = "broken", break_noise: float = 0.002):
    """(x_T, hidden) for one image of `shape` (1, C, H, W), every draw from `generator`."""
    C, H, W = shape[1:]
    T = torch.full((1,), op.T)
    if op.name == "blur":
        if not op.flat_last or prior is None:
            raise SamplerError("blur generation needs a model trained with --preset generation (its x_T is a flat colour)")
        colour = sample_gmm(prior, 1, generator).view(1, C, 1, 1)
        x_T = colour.expand(1, C, H, W).clone()
        if symmetry == "broken":
            x_T = x_T + break_noise * torch.randn(x_T.shape, generator=generator)  # added once, to x_T only
        return x_T, None
    if op.name == "pixelate":
        if prior is None:
            raise SamplerError("this pixelate model holds no generation prior; fit one with `colddiff fit-prior`")
        h, w = H >> op.T, W >> op.T
        small = sample_gmm(prior, 1, generator).view(1, C, h, w)
        return F.interpolate(small, size=(h * 2**op.T, w * 2**op.T), mode="nearest")[..., :H, :W].contiguous(), None
    if op.name in ("colour", "noise", "animorph", "blurdiff"):  # x_T = z (blurdiff: ~N(0, I), Abar_T ~ 0)
        hidden = op.draw(torch.zeros(shape), generator)
        return op.apply(torch.zeros(shape), T, hidden), hidden
    raise SamplerError(f"{op.name} does not generate: its x_T keeps information about x0 (generative: {', '.join(GENERATIVE)})")


def generate(restore, op, start, n: int, batch: int, sampler: str, steps, z: str, device):
    """Yield (index of the first image, images) batch by batch; `start(i)` gives image i's
    (x_T, hidden), so image i never depends on n or the batch size."""
    import operators

    for lo in range(0, n, batch):
        starts = [start(i) for i in range(lo, min(lo + batch, n))]
        x_T = torch.cat([x for x, _ in starts]).to(device)
        hidden = operators.cat_hidden([h for _, h in starts])
        hidden = None if hidden is None else {k: v.to(device) for k, v in hidden.items()}
        yield lo, sample(sampler, restore, op, x_T, op.T, hidden, steps, z)
