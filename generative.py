"""Unconditional generation (SPEC section 4): the fitted prior over x_T, and the generation loop.

Generative operators (op.generation) draw x_T themselves (`op.start`); those whose x_T still has
a distribution to learn (blur's flat colour, pixelate's low-resolution image; op.prior) get it
from a Gaussian mixture fitted at training time on `op.prior_features` and stored in the model.
Image i of a run draws everything from its own generator, seeded with image_seed(seed, i), so it
is the same whatever --n or --batch.
"""
from __future__ import annotations

import math

import torch

from errors import UserError
from machine import to_device
from seeding import ImageRNG


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared
    distance from the nearest centre chosen so far."""
    centres = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(k - 1):
        d2 = torch.cdist(x, centres).pow(2).amin(1)
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1 / len(x))
        centres = torch.cat([centres, x[torch.multinomial(p.cpu(), 1, generator=g).to(x.device)]])
    return centres


def _em(x: torch.Tensor, centres: torch.Tensor, iters: int, reg: float) -> tuple[dict, float]:
    """EM from `centres`, after a few k-means (Lloyd) steps: each component starts as its
    cluster's mean, covariance and share, not as one broad Gaussian that can swallow two modes."""
    N, D = x.shape
    k = len(centres)
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    for _ in range(20):
        label = torch.cdist(x, centres).argmin(1)
        centres = torch.stack([x[label == j].mean(0) if bool((label == j).any()) else centres[j] for j in range(k)])
    resp = torch.nn.functional.one_hot(torch.cdist(x, centres).argmin(1), k).to(x.dtype)
    last = -math.inf
    for _ in range(iters + 1):
        # M step (from the k-means assignment first), then the E step's responsibilities
        nk = resp.sum(0) + 1e-12
        weights = nk / N
        means = resp.T @ x / nk[:, None]
        d = x[:, None, :] - means[None]
        covs = torch.einsum("nk,nkd,nke->kde", resp, d, d) / nk[:, None, None] + reg * eye
        logp = torch.distributions.MultivariateNormal(means, covs).log_prob(x[:, None, :]) + weights.log()
        ll = torch.logsumexp(logp, 1)
        resp = (logp - ll[:, None]).exp()
        if float(ll.mean()) - last < 1e-9:
            break
        last = float(ll.mean())
    return {"weights": weights.tolist(), "means": means.tolist(), "covs": covs.tolist()}, float(ll.mean())


def fit_gmm(x: torch.Tensor, k: int = 1, seed: int = 0, iters: int = 200, reg: float = 1e-6, restarts: int = 8) -> dict:
    """Gaussian mixture with full covariances fitted by EM on (N, D) features, in float64.

    EM finds a local optimum only: it starts `restarts` times from k-means++ seeds and keeps the
    fit of the highest log-likelihood. Deterministic for a seed. Runs where x lives."""
    x = x.double()
    N, D = x.shape
    if N < max(k, 2):
        raise UserError(f"a {k}-component mixture (--gmm-components) needs at least {max(k, 2)} images, got {N}")
    g = torch.Generator().manual_seed(seed)
    fits = [_em(x, _kmeans_pp(x, k, g), iters, reg) for _ in range(restarts if k > 1 else 1)]
    return max(fits, key=lambda fit: fit[1])[0]


def sample_gmm(gmm: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, D) float32 draws from a mixture stored as `fit_gmm` returns it."""
    w = torch.tensor(gmm["weights"], dtype=torch.float64)
    means = torch.tensor(gmm["means"], dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.tensor(gmm["covs"], dtype=torch.float64))
    comp = torch.multinomial(w, n, replacement=True, generator=generator)
    z = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
    return (means[comp] + (chol[comp] @ z[..., None])[..., 0]).float()


def fit_prior(op, data: torch.Tensor, components: int, seed: int, device) -> dict | None:
    """The generation prior fitted on uint8 training images (None if the operator needs none):
    a Gaussian mixture over op.prior_features, stored in the model's metadata."""
    if op.prior is None:
        return None
    feats = [op.prior_features(data[i : i + 4096].to(device).float() / 127.5 - 1) for i in range(0, len(data), 4096)]
    gmm = fit_gmm(torch.cat(feats), components, seed)
    return {"kind": "gmm", "components": components, "features": op.prior, **gmm}


def start(op, prior: dict | None, shape, generator: torch.Generator, break_noise: float = 0.0):
    """(x_T, hidden) of one image of `shape` (1, C, H, W), every draw from `generator`. hidden
    always holds a "seed": the image's own stream of sampling noise (samplers.py, step noise)."""
    features = None
    if op.prior is not None:
        if prior is None:
            raise UserError(f"this {op.name} model holds no generation prior; fit one with `colddiff fit-prior`")
        features = sample_gmm(prior, 1, generator)
    x_T, hidden = op.start(shape, generator, features, break_noise)
    if hidden is None or "seed" not in hidden:  # drawn last: the draws before it stay as they were
        hidden = {**(hidden or {}), "seed": torch.randint(2**31, (1,), generator=generator)}
    return x_T, hidden


def check(sampling) -> None:
    """A UserError now, before any work or progress line, if this model cannot generate (an operator
    whose x_T keeps x0, blur without the generation preset, a missing prior): one throwaway x_T."""
    meta = sampling.meta
    start(sampling.op, meta.get("prior"), (1, meta["image"]["channels"], meta["image"]["height"], meta["image"]["width"]),
          torch.Generator().manual_seed(0))


def generate(sampling, n: int, batch: int, seed: int, device, break_noise: float = 0.0, numbers: list[int] | None = None):
    """Yield (the images' numbers, images) batch by batch, with `sampling` (sampling.Sampling): images
    0 .. n - 1, or those `numbers` of them (image i draws from its own seed, whatever else is made)."""
    from operator_base import cat_hidden
    from seeding import image_seed

    op, meta = sampling.op, sampling.meta
    shape = (1, meta["image"]["channels"], meta["image"]["height"], meta["image"]["width"])
    numbers = list(range(n)) if numbers is None else numbers
    for lo in range(0, len(numbers), batch):
        chunk = numbers[lo : lo + batch]
        rng = ImageRNG([image_seed(seed, i) for i in chunk])
        starts = [start(op, meta.get("prior"), shape, g, break_noise) for g in rng.generators]
        x_T = to_device(torch.cat([x for x, _ in starts]), device)
        hidden = cat_hidden([h for _, h in starts])
        # the noise seeds are read on the host (samplers.py): only the rest moves
        hidden = None if hidden is None else {k: v if k == "seed" else to_device(v, device) for k, v in hidden.items()}
        yield chunk, sampling(x_T, op.T, hidden)


# Breaking the symmetry of a flat x_T (blur's generation preset), chosen by measurement (RESULTS.md,
# "Breaking symmetry"): N(0, delta^2) after every tacos step, delta = STEP_NOISE, beats the released
# code's one-off nudge of x_T (NUDGE) on FCD and diversity. Models trained with --train-noise sigma
# (inverse heat dissipation, Rissanen et al.) take IHDM's delta = 1.25 sigma instead.
STEP_NOISE = 0.025
STEP_NOISE_PER_TRAIN_NOISE = 1.25
NUDGE = 0.002


def symmetry_defaults(train_noise: float, flat_start: bool, step_noise: float | None = None) -> dict:
    """How a model breaks the symmetry of its x_T by default (stored in its metadata): "step-noise"
    (delta = STEP_NOISE), "ihdm" (trained with sigma, delta = 1.25 sigma), or "none" where x_T is
    not flat and there is no symmetry to break. `step_noise` (train --step-noise) sets delta
    instead: the delta that suits a model depends on how much it has learnt, so it is measured."""
    if not flat_start:
        return {"method": "none", "train_noise": train_noise, "step_noise": 0.0, "break_noise": 0.0}
    ihdm = train_noise > 0
    if step_noise is None:
        step_noise = STEP_NOISE_PER_TRAIN_NOISE * train_noise if ihdm else STEP_NOISE
    return {"method": "ihdm" if ihdm else "step-noise", "train_noise": train_noise if ihdm else 0.0, "step_noise": step_noise, "break_noise": 0.0}


def model_symmetry(meta: dict, op) -> dict:
    """A model's symmetry breaking: as stored, else (models from before it was stored, the bundled
    one among them: all trained without noise) the default for its operator."""
    return meta.get("symmetry") or symmetry_defaults(0.0, op.flat_start)


def break_symmetry(sampling, symmetry: str, break_noise: float | None = None, step_noise: float | None = None) -> float:
    """Set up `sampling` for --symmetry broken or perfect; returns the noise to add once to x_T.
    Unset noises come from the model's metadata; its step noise applies where the sampler takes it."""
    from samplers import SAMPLERS, check

    for name, value in (("--break-noise", break_noise), ("--step-noise", step_noise)):
        if value is not None and not 0 <= value < math.inf:
            raise UserError(f"{name} must be at least 0 (and a finite number), got {value}")
    if symmetry not in ("broken", "perfect"):
        raise UserError(f"--symmetry must be broken or perfect, got {symmetry!r}")
    if symmetry == "perfect":
        if break_noise or step_noise:
            raise UserError("--symmetry perfect adds no noise: leave --break-noise and --step-noise out")
        sampling.step_noise = 0.0
        return 0.0
    stored = model_symmetry(sampling.meta, sampling.op)
    if step_noise is None:
        step_noise = stored["step_noise"] if SAMPLERS[sampling.sampler].step_noise else 0.0
    check(sampling.sampler, sampling.op, sampling.op.T, sampling.z, sampling.eta, sampling.steps, step_noise)
    sampling.step_noise = step_noise
    return stored["break_noise"] if break_noise is None else break_noise
