"""Blur diffusion (Lee et al., Progressive Deblurring of Diffusion Models): the `blurdiff` operator.

Its whole method lives here: the forward process in the DCT basis, what R predicts (eps) and its
loss, x0 recovered from eps, and the reverse steps the samplers take (samplers.py: reverse,
ancestral, ddim, dpmpp_2m). It is an operator like the others (operators.py registers it).

In the DCT basis every coefficient is a 1-D Gaussian diffusion with its own per-step factor A_i
and cumulative Abar_i, so the exact reverse step is DDPM's posterior coefficient by coefficient and
DDIM's deterministic jumps apply as they are (gDDIM, Zhang et al., ICLR 2023). Every step below
works on DCT coefficients and uses expm1 for 1 - Abar, which float32 would otherwise round away
near i = 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from errors import UserError
from machine import to_device
from operator_base import Operator, _float, _per_image, register
from spectral import dct, dct_matrix, gaussian_kernel1d, idct  # noqa: F401 (dct_matrix: tests)


@register
@dataclass
class BlurDiff(Operator):
    """Blur diffusion (Lee et al., Progressive Deblurring of Diffusion Models).

    A Gaussian diffusion in the orthonormal 2-D DCT basis U, where blur with symmetric
    boundaries is diagonal: d_kl = lambda_k lambda_l, lambda_k = sum_j g_j cos(j pi k / n), g the
    sampled 3-tap Gaussian of sigma 0.4 px. A_i = (1 - beta_i) d^(2 f(i)), Abar_t = prod A_i, and
    x_t = U(Abar_t^1/2 . U^T x0 + (1 - Abar_t)^1/2 . z), z = U^T eps, in one shot for any t (log Abar_t is
    a per-image scalar pair applied to log d). The same U acts on every channel, so colour is
    blurred identically per channel. f = 0 (`ddpm`) is plain DDPM. The network predicts eps."""

    name = "blurdiff"
    DEFAULT_PRESET = "quartic"
    predicts = "eps"
    released_sampler = "reverse"  # Lee et al.'s published step, every one of the T steps
    # chosen by measurement (RESULTS.md, "Blur diffusion samplers"): 50 jumps, a twentieth of the
    # time of the 1,000-step ancestral sampler for +12 % FCD (100 jumps are within 10 %, but there
    # blur no longer beats DDPM); the stochastic variant is ahead of the deterministic one and of
    # ddim at twice the calls on the mean of two seeds
    default_sampler = "dpmpp_2m"
    default_eta = 1.0
    default_steps = 50
    generation = "N(0, I)"
    # Lee et al.'s training (SPEC section 6; their appendix B prints lr 1e-5): the guided-diffusion
    # UNet, and ADM's EMA, updated every step from the start
    train_defaults = dict(net="adm", lr=5e-5, ema_decay=0.9999, ema_every=1, ema_start=0, batch=16, accumulate=1)
    T: int = 1000
    schedule: str = "quartic"
    f_max: float = 0.14
    beta_start: float = 1e-4
    beta_end: float = 0.02
    blur_sigma: float = 0.4

    def __post_init__(self):
        if self.schedule not in ("log", "quartic"):
            raise UserError(f"blurdiff schedule must be log or quartic, got {self.schedule!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise UserError(f"blurdiff needs 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not (self.f_max >= 0 and self.blur_sigma > 0):
            raise UserError(f"blurdiff needs f_max >= 0 and blur_sigma > 0, got {self.f_max}, {self.blur_sigma}")
        i = torch.arange(1, self.T + 1, dtype=torch.float64)
        betas = torch.linspace(self.beta_start, self.beta_end, self.T, dtype=torch.float64)
        f = self.f_max * (torch.log(i) / math.log(self.T) if self.schedule == "log" else (i / self.T) ** 4)
        zero = torch.zeros(1, dtype=torch.float64)
        self.log_alpha = torch.log1p(-betas)  # per step
        self.f = f
        self.cum_log_alpha = torch.cat([zero, torch.cumsum(self.log_alpha, 0)])  # (T+1,)
        self.cum_f = torch.cat([zero, torch.cumsum(f, 0)])
        # the same numbers as Python floats, for the samplers' per-step scalars (no tensor read per step)
        self._steps = {k: getattr(self, k).tolist() for k in ("log_alpha", "f", "cum_log_alpha", "cum_f")}
        self._axes: dict = {}
        self._tables: dict = {}

    def log_lambda(self, n: int, device):
        """(n,) log of the blur's eigenvalues along an axis of length n."""
        key = (n, str(device))
        if key not in self._axes:
            g = gaussian_kernel1d(3, self.blur_sigma)
            lam = g[1] + 2 * g[0] * torch.cos(math.pi * torch.arange(n, dtype=torch.float64) / n)
            self._axes[key] = lam.log().float().to(device)
        return self._axes[key]

    def to_dct(self, x):
        return dct(dct(x, -2), -1)

    def from_dct(self, c):
        return idct(idct(c, -1), -2)

    def log_d(self, h: int, w: int, device):
        """(h, w) log d_kl = log lambda_k + log lambda_l."""
        return self.log_lambda(h, device)[:, None] + self.log_lambda(w, device)[None, :]

    def log_abar(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 1, h, w) log Abar_t per frequency."""
        key = str(t.device)
        if key not in self._tables:  # kept on the device: a copy per call would wait for the GPU
            self._tables[key] = (self.cum_log_alpha.float().to(t.device), self.cum_f.float().to(t.device))
        a, f = (table[t] for table in self._tables[key])
        return (a[:, None, None] + 2 * f[:, None, None] * self.log_d(h, w, t.device))[:, None]

    def log_a_step(self, i: int, h: int, w: int, device) -> torch.Tensor:
        """(h, w) log A_i of step i (1..T)."""
        return self._steps["log_alpha"][i - 1] + 2 * self._steps["f"][i - 1] * self.log_d(h, w, device)

    def log_abar_at(self, i: int, h: int, w: int, device) -> torch.Tensor:
        """(h, w) log Abar_i of a single step i (0..T)."""
        return self._steps["cum_log_alpha"][i] + 2 * self._steps["cum_f"][i] * self.log_d(h, w, device)

    def lee_step(self, x, eps_hat, i: int, noise=None):
        """Lee et al.'s published step (SPEC section 5), first order in the blur:
        x_{i-1} = x_i + H(x_i) - U(B_i (1 - Abar_i)^-1/2 U^T eps_hat) + U(B_i^1/2 U^T z),
        H(x) = x - U(A_i^1/2 U^T x). `noise` is U^T z (None on the last step)."""
        H, W = x.shape[-2:]
        A = self.log_a_step(i, H, W, x.device).exp()
        B = 1 - A
        one_minus_abar = 1 - self.log_abar(torch.full((x.shape[0],), i, device=x.device), H, W).exp()
        c = (2 - A.sqrt()) * self.to_dct(x) - B / one_minus_abar.sqrt() * self.to_dct(eps_hat)
        if noise is not None:
            c = c + B.sqrt() * noise
        return self.from_dct(c)

    def posterior_step(self, x, eps_hat, i: int, noise=None, variance: str = "lee"):
        """The exact step: a draw from q(x_{i-1} | x_i, x0_hat) per coefficient, x0_hat from eps_hat.

        mean = A_i^-1/2 (x_i - B_i (1 - Abar_i)^-1/2 eps_hat), which equals
        Abar_{i-1}^1/2 B_i / (1 - Abar_i) x0_hat + A_i^1/2 (1 - Abar_{i-1}) / (1 - Abar_i) x_i;
        variance B_i (Lee et al.'s choice, "lee") or the posterior's B_i (1 - Abar_{i-1}) / (1 - Abar_i)
        ("posterior"). Where A_i = 1 - beta_i everywhere (f = 0) this is textbook DDPM. x0_hat is held
        in range by x0_part (ddim's jumps share it, so ddim at eta 1 over every step stays this)."""
        H, W = x.shape[-2:]
        log_a = self.log_a_step(i, H, W, x.device)
        la, la_prev = self.log_abar_at(i, H, W, x.device), self.log_abar_at(i - 1, H, W, x.device)
        B, one_minus_abar, one_minus_prev = -torch.expm1(log_a), -torch.expm1(la), -torch.expm1(la_prev)
        c = self.to_dct(x)
        u = c - one_minus_abar.sqrt() * self.to_dct(eps_hat)  # Abar_i^1/2 x0_hat
        c = (B * self.x0_part(u, la, la_prev) + (0.5 * log_a).exp() * one_minus_prev * c) / one_minus_abar
        if noise is not None:
            var = B if variance == "lee" else B * one_minus_prev / one_minus_abar
            c = c + var.sqrt() * noise
        return self.from_dct(c)

    def ddim_step(self, x, eps_hat, s: int, s_next: int, eta: float = 0.0, noise=None):
        """DDIM's jump s -> s_next < s per coefficient: x_{s'} = Abar_{s'}^1/2 x0_hat
        + (1 - Abar_{s'} - sigma^2)^1/2 eps_hat + sigma z, with x0_hat from eps_hat (held in range by
        x0_part, eps_hat re-derived from it) and sigma^2 = eta^2 (1 - Abar_{s'}) / (1 - Abar_s)
        (1 - Abar_s / Abar_{s'}). eta = 0 is deterministic; eta = 1 with s' = s - 1 is the exact
        posterior step with the posterior variance."""
        H, W = x.shape[-2:]
        la, la_next = self.log_abar_at(s, H, W, x.device), self.log_abar_at(s_next, H, W, x.device)
        c = self.to_dct(x)
        sigma, one_minus_next = (-torch.expm1(la)).sqrt(), -torch.expm1(la_next)
        u = c - sigma * self.to_dct(eps_hat)  # Abar_s^1/2 x0_hat
        var = eta**2 * one_minus_next / (sigma * sigma) * -torch.expm1(la - la_next)
        eps = (c - self.x0_part(u, la, la)) / sigma
        c_next = self.x0_part(u, la, la_next) + (one_minus_next - var).clamp(min=0).sqrt() * eps
        if noise is not None and eta > 0:
            c_next = c_next + var.sqrt() * noise
        return self.from_dct(c_next)

    def dpmpp_2m_step(self, x, eps_hat, s: int, s_next: int, prev=None, eta: float = 0.0, noise=None):
        """DPM-Solver++(2M)'s jump s -> s_next < s (Lu et al., 2022, Algorithm 2) per coefficient, each in
        its own log-SNR lambda = log(Abar^1/2 / (1 - Abar)^1/2): x_{s'} = sigma_{s'}/sigma_s x_s
        + alpha_{s'} (1 - e^-h) D, h = lambda_{s'} - lambda_s, D = (1 + 1/2r) x0_hat_s - 1/2r x0_hat_prev,
        r = (lambda_s - lambda_prev) / h. With no previous step, or into s' = 0, D = x0_hat_s: ddim's
        jump at eta 0. eta > 0 is the SDE variant (k-diffusion's dpmpp_2m_sde, midpoint):
        sigma_{s'}/sigma_s e^(-eta h) x_s + alpha_{s'} (1 - e^-(1 + eta) h) D + sigma_{s'} (1 - e^(-2 eta h))^1/2 z,
        which at eta = 1 without a previous step is ddim's jump at eta 1. Returns x_{s'} and what the
        next jump needs: (s, alpha_s x0_hat_s in DCT)."""
        H, W = x.shape[-2:]
        la, la_next = self.log_abar_at(s, H, W, x.device), self.log_abar_at(s_next, H, W, x.device)
        c, sigma = self.to_dct(x), (-torch.expm1(la)).sqrt()
        u = c - sigma * self.to_dct(eps_hat)  # alpha_s x0_hat_s, as ddim_step forms it
        D = self.x0_part(u, la, la_next)  # alpha_{s'} x0_hat_s
        if s_next == 0:
            return self.from_dct(D), (s, u)
        log_sigma, log_sigma_next = sigma.log(), 0.5 * torch.log(-torch.expm1(la_next))
        lam = 0.5 * la - log_sigma
        h = 0.5 * la_next - log_sigma_next - lam
        if prev is not None:
            s_prev, u_prev = prev
            la_prev = self.log_abar_at(s_prev, H, W, x.device)
            half_over_r = 0.5 * h / (lam - 0.5 * la_prev + 0.5 * torch.log(-torch.expm1(la_prev)))
            D = (1 + half_over_r) * D - half_over_r * self.x0_part(u_prev, la_prev, la_next)
        c_next = (log_sigma_next - log_sigma - eta * h).exp() * c - torch.expm1(-(1 + eta) * h) * D
        if eta > 0 and noise is not None:
            c_next = c_next + (log_sigma_next.exp() * (-torch.expm1(-2 * eta * h)).sqrt()) * noise
        return self.from_dct(c_next), (s, u)

    @staticmethod
    def x0_part(u, la, la_to):
        """Abar_to^1/2 x0_hat from u = Abar^1/2 x0_hat (DCT coefficients; la, la_to: log Abar of u's
        step and of the target), with every coefficient of x0_hat held to (HW)^1/2, the most an image in
        [-1, 1] can have. Where Abar is tiny, u / Abar^1/2 is the network's error (or float32's
        rounding) blown up, by up to e^369 on the log preset's finest frequencies, and a long jump
        would carry it into x_{s'}: the `log` model's 10-step ddim drew NaN without the bound. Computed
        in logs, as Abar^-1/2 alone overflows float32 there."""
        log_bound = 0.5 * la_to + 0.5 * math.log(u.shape[-1] * u.shape[-2])
        return torch.sign(u) * torch.minimum(torch.log(u.abs()) + 0.5 * (la_to - la), log_bound).exp()

    def draw(self, x0, generator=None):
        """z: the noise's DCT coefficients U^T eps. U is orthonormal, so they are i.i.d. N(0, 1) as eps
        is and are drawn as such: x_t then costs one transform pair less (a third of D at 12 MP),
        and eps = U z is formed only where training needs it as the target."""
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        seed = torch.randint(2**31, (x0.shape[0],), generator=generator)  # the reverse sampler's noise
        return {"z": to_device(z, x0.device), "seed": seed}  # seeds are read on the host only: they stay there

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        x = _float(x0)
        abar = self.log_abar(t, *x.shape[-2:]).exp()
        c = self.to_dct(x).mul_(abar.sqrt()).addcmul_(self.needs(hidden)["z"], (1 - abar).sqrt())
        xt = self.from_dct(c)
        # in place: no second full-size image, and no host sync (a .any() would be one per training step)
        return torch.where(_per_image(t == 0), x, xt, out=xt).to(x0.dtype)

    def loss(self, pred, x0, hidden):
        """Lee et al.'s eq. 18: the plain MSE between R's eps and the noise that made x_t."""
        return (pred.float() - self.from_dct(hidden["z"])).pow(2).mean()

    def x0_hat(self, x_t, t, pred):
        """x0_hat = U(Abar^-1/2 (U^T x_t - (1 - Abar)^1/2 U^T eps)), clipped to [-1, 1]."""
        abar = self.log_abar(t, *x_t.shape[-2:]).exp()
        c = (self.to_dct(x_t) - (1 - abar).sqrt() * self.to_dct(pred)) / abar.sqrt().clamp(min=1e-3)
        return self.from_dct(c).clamp(-1, 1)


BlurDiff.PRESETS = {
    "quartic": dict(T=1000, schedule="quartic", f_max=0.14),
    "log": dict(T=1000, schedule="log", f_max=0.6),
    "ddpm": dict(T=1000, schedule="quartic", f_max=0.0),
}
