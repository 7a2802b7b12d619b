"""The cold operators of Bansal et al. (Cold Diffusion): blur, mask, colour, pixelate, desaturate,
noise and animorph, one small class each (operator_base.py says what an operator is).

Images are (B, C, H, W) in [-1, 1]; one call handles the whole batch: no Python loop over the
batch or over diffusion steps (pixelate's fixed chain of at most log2(size) resizes is the one
exception, see there). Arithmetic is float32 whatever the input dtype; the result has the input's dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

import spectral
from errors import UserError
from machine import to_device
from operator_base import Operator, _float, _per_image, check_px_scale, register, scaled_taps
from spectral import AxisBlur, gaussian_kernel1d

# ----------------------------------------------------------------------------- blur



def blur_sigmas(schedule: str, s: float, T: int) -> list[float]:
    i = torch.arange(1, T + 1, dtype=torch.float64)
    sig = {
        "constant": lambda: torch.full_like(i, s),
        "linear": lambda: s * i,
        "exponential": lambda: torch.exp(s * (i - 1)),
        "cifar": lambda: 0.35 + (i - 1) / 100,
    }
    if schedule not in sig:
        raise UserError(f"unknown blur schedule {schedule!r}; choose from {', '.join(sig)}")
    return sig[schedule]().tolist()


@register
@dataclass
class Blur(Operator):
    """Gaussian deblurring: D(x0, t) = G_t * ... * G_1 * x0, in one shot.

    Each step is a linear shift-invariant filter with a symmetric kernel, so along each axis
    all steps share one eigenbasis (DCT-I for reflect padding, real Fourier for circular) and t
    steps are one product of eigenvalues. The 2-D Gaussian is separable: one filter along the
    rows, one along the columns (spectral.AxisBlur: a dense matmul on short axes, the FFT on
    long ones), each scaling image b's coefficients by a row of a (T+1, n) table."""

    name = "blur"
    DEFAULT_PRESET = "mnist"
    T: int = 20
    kernel_size: int = 11
    schedule: str = "constant"
    sigma: float = 7.0
    padding: str = "circular"
    flat_last: bool = False  # the generation preset: x_T is the per-channel mean
    px_scale: float = 1.0  # every kernel's sigma and reach times this (fit_to: photos larger than the preset's images)

    def __post_init__(self):
        if self.padding not in ("circular", "reflect"):
            raise UserError(f"blur padding must be circular or reflect, got {self.padding!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise UserError(f"blur kernel_size must be odd and positive, got {self.kernel_size}")
        check_px_scale(self)
        sigmas = blur_sigmas(self.schedule, self.sigma, self.T)
        if min(sigmas) <= 0:
            raise UserError(f"blur sigmas must be positive; {self.schedule} with sigma={self.sigma} gives {min(sigmas)}")
        self.kernels = [gaussian_kernel1d(self.taps, s * self.px_scale) for s in sigmas]
        self._axes: dict = {}

    @property
    def taps(self) -> int:
        """The kernels' length: kernel_size, its reach scaled by px_scale (kept odd)."""
        return scaled_taps(self.kernel_size, self.px_scale)

    def fit_to(self, c, h, w):
        scale = self.fit_scale(h, w)
        if scale is None:
            return self, None
        fitted = self.refit(px_scale=self.px_scale * scale)
        last = blur_sigmas(self.schedule, self.sigma, self.T)[-1]
        return fitted, (f"blur {self.preset} on {w}x{h}: kernels x{scale:.3g} ({self.taps} -> {fitted.taps} taps, last sigma "
                        f"{last * self.px_scale:.3g} -> {last * fitted.px_scale:.3g} px; the preset is for "
                        f"{self.NATIVE[self.preset]} px images; --no-fit keeps its values)")

    def axis(self, n: int, device) -> AxisBlur:
        key = (n, str(device), n <= spectral.DENSE_MAX)
        if key not in self._axes:
            self._axes[key] = AxisBlur(self.kernels, n, self.padding, device)
        return self._axes[key]

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        x = _float(x0)
        H, W = x.shape[-2:]
        # flat_last: step T replaces x_{T-1} by its per-channel mean (= x0's mean with circular padding)
        steps = t.clamp(max=self.T - 1) if self.flat_last else t
        xt = self.axis(W, x.device)(x, steps)
        xt = self.axis(H, x.device)(xt.transpose(-1, -2), steps).transpose(-1, -2)
        if self.flat_last:
            xt = torch.where(_per_image(t == self.T), xt.mean((-2, -1), keepdim=True), xt)
        return torch.where(_per_image(t == 0), x, xt).to(x0.dtype)

    generation = "a colour from a Gaussian mixture over the per-channel means (generation preset)"

    @property
    def prior(self):
        return "channel_means" if self.flat_last else None

    @property
    def flat_start(self) -> bool:
        return self.flat_last

    def prior_features(self, x0):
        # x_T of the generation preset is the per-channel mean: the prior is fitted to x_T itself
        return x0.float().mean((-2, -1)) if self.flat_last else None

    def start(self, shape, generator, features=None, break_noise=0.0):
        if not self.flat_last:
            raise UserError("blur generation needs a model trained with --preset generation (its x_T is a flat colour)")
        x_T = features.view(1, shape[1], 1, 1).expand(shape).clone()
        if break_noise > 0:
            x_T = x_T + break_noise * torch.randn(x_T.shape, generator=generator)  # added once, to x_T only
        return x_T, None


Blur.PRESETS = {
    "mnist": dict(T=20, kernel_size=11, schedule="constant", sigma=7.0, padding="circular"),
    "cifar10": dict(T=50, kernel_size=11, schedule="cifar", sigma=0.0, padding="reflect"),
    "celeba": dict(T=200, kernel_size=15, schedule="exponential", sigma=0.01, padding="reflect"),
    "generation": dict(T=300, kernel_size=27, schedule="exponential", sigma=0.01, padding="circular", flat_last=True),
}


# ----------------------------------------------------------------------------- mask, colour


@register
@dataclass
class Mask(Operator):
    """Gaussian-mask inpainting: D(x0, t) = x0 * m_1 * ... * m_t (masked pixels go to 0, mid-grey).

    m_i = 1 - exp(-d^2 / (2 sigma_i^2)), sigma_i = std (i - 1 + init) pixels, d the distance to the
    centre: the image centre or, with `random_centre`, a pixel drawn per image. The product
    depends on d^2 alone, an integer, so it is tabulated once over d^2 = 0..Q-1 and gathered per
    pixel: memory grows with the image, not with T times it. Beyond d^2 = 80 sigma_T^2 every
    factor is exactly 1.0 in float64, so Q never exceeds that whatever the image size; a large
    image's table holds only the d^2 that occur in it."""

    name = "mask"
    DEFAULT_PRESET = "mnist"
    T: int = 50
    std: float = 0.1
    init: float = 11.0
    random_centre: bool = True
    TABLE_MAX: ClassVar[int] = 2**23  # entries of the (T+1, Q) table kept between calls (32 MB)

    def __post_init__(self):
        if self.std <= 0 or self.init <= 0:  # sigma_i = std (i - 1 + init) must be positive
            raise UserError(f"{self.name} needs std > 0 and init > 0, got std={self.std}, init={self.init}")
        self._tables: dict = {}

    def cumulative(self, t: torch.Tensor, centre: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 1, h, w) m_1 ... m_t around each image's centre (B, 2) (row, col); 1 where t = 0."""
        sigma_T = self.std * (self.T - 1 + self.init)
        Q = min(math.ceil(80 * sigma_T**2), (h - 1) ** 2 + (w - 1) ** 2) + 1
        dy = torch.arange(h, device=t.device) - centre[:, :1]
        dx = torch.arange(w, device=t.device) - centre[:, 1:]
        d2 = (dy[:, :, None] ** 2 + dx[:, None, :] ** 2).clamp_(max=Q - 1)
        key = (Q, str(t.device))
        if key not in self._tables and (self.T + 1) * Q <= self.TABLE_MAX:  # small (training: one size, every t): keep it all
            self._tables[key] = self._rows(torch.arange(self.T + 1), torch.arange(Q)).to(t.device)
        if key in self._tables:  # a plain gather: no host sync in a training step
            return self._tables[key][t[:, None, None], d2][:, None]
        # a large image: the rows at the d^2 that occur in it alone, a sixth of the integers up to the
        # largest (few are sums of two squares): a 12 MP photo's fitted mask in 0.85 s, not 3.9 s
        steps, row = torch.unique(t, return_inverse=True)
        occurs = torch.zeros(Q, dtype=torch.bool, device=t.device)
        occurs[d2] = True
        column = occurs.cumsum(0, dtype=torch.int32) - 1  # d^2 -> its column of the rows
        rows = self._rows(steps.cpu(), occurs.nonzero()[:, 0].cpu()).to(t.device)
        return rows[row[:, None, None], column[d2].long()][:, None]

    def _rows(self, want: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """(len(want), len(d2)) float32 on the CPU: m_1 ... m_t at each squared distance in d2
        (ascending) for each t in `want`, computed over chunks of d2 so that the float64 work
        stays at 2^22 numbers however large the image."""
        last = int(want.max())  # factors past the largest t asked for are never used
        two_sigma2 = 2 * (self.std * (torch.arange(last, dtype=torch.float64) + self.init)) ** 2
        out = torch.ones(len(want), len(d2))
        chunk = max(1, 2**22 // max(last, 1))
        for a in range(0, len(d2), chunk):
            q = d2[a : a + chunk].double()
            # factors with 80 sigma_i^2 <= q[0] differ from 1 by under 1e-17 on the whole chunk: skip them
            first = int(torch.searchsorted(40 * two_sigma2, q[:1], right=True))
            if first >= last:
                break
            log_m = torch.log1p(-torch.exp(-q / two_sigma2[first:, None])).clamp_(min=-1e4)  # m_i(0) = 0
            log_cum = torch.cat([torch.zeros(1, len(q), dtype=torch.float64), log_m.cumsum(0)])
            out[:, a : a + len(q)] = log_cum[(want - first).clamp(min=0)].exp()
        return out

    def alpha(self, t: torch.Tensor, centre: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 1, h, w) how much of x0 each pixel keeps: inpainting keeps the product itself."""
        return self.cumulative(t, centre, h, w)

    def fit_to(self, c, h, w):
        scale = self.fit_scale(h, w)
        if scale is None:
            return self, None
        native = self.NATIVE[self.preset]
        fitted = self.refit(std=self.std * scale)
        sig = lambda op: op.std * (op.T - 1 + op.init)  # noqa: E731
        return fitted, (f"{self.name} {self.preset} on {w}x{h}: std {self.std:g} -> {fitted.std:.3g} (sigma_T {sig(self):.3g} -> "
                        f"{sig(fitted):.3g} px; the preset is for {native} px images; --no-fit keeps its values)")

    def draw(self, x0, generator=None):
        B, _, h, w = x0.shape
        if not self.random_centre:
            centre = torch.tensor([h // 2, w // 2]).expand(B, 2)
        else:
            u = torch.rand(B, 2, generator=generator, dtype=torch.float64)
            centre = (u * torch.tensor([h, w])).long()
        return {"centre": to_device(centre, x0.device)}

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        x = _float(x0)
        return (x * self.alpha(t, self.needs(hidden)["centre"], *x.shape[-2:])).to(x0.dtype)


Mask.PRESETS = {
    "mnist": dict(T=50, std=0.1, init=11.0, random_centre=True),
    "cifar10": dict(T=50, std=0.1, init=11.0, random_centre=True),
    "celeba": dict(T=100, std=0.2, init=1.0, random_centre=False),
}


@register
@dataclass
class Colour(Mask):
    """Mask filled with a random colour, for generation: D = alpha_t x0 + (1 - alpha_t) c.

    c is one colour per image, uniform in [-0.5, 0.5) per channel. The released generation
    schedule: alpha_t = 1 - m_1 ... m_{T-t} for t >= 1, so the centre (where every m_i is 0) stays
    visible until t = T, the visible disc shrinks smoothly toward it as t grows, and alpha_T = 0
    (the empty product) makes x_T the flat colour; alpha_0 = 1, so D(x0, 0) = x0. Generation
    grows the image outward from the centre."""

    name = "colour"
    DEFAULT_PRESET = "generation"
    z_modes = ("fixed", "estimated")
    generation = "a random flat colour"
    T: int = 750
    std: float = 0.05
    init: float = 1.0
    random_centre: bool = False

    def alpha(self, t, centre, h, w):
        a = 1 - self.cumulative(self.T - t, centre, h, w)  # alpha_t = 1 - m_1 ... m_{T-t}
        return torch.where(_per_image(t == 0), torch.ones_like(a), a)

    def draw(self, x0, generator=None):
        hidden = super().draw(x0, generator)
        c = torch.rand(x0.shape[0], x0.shape[1], 1, 1, generator=generator) - 0.5
        return {**hidden, "z": to_device(c, x0.device).expand_as(x0).float()}

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        hidden = self.needs(hidden)
        a = self.alpha(t, hidden["centre"], *x0.shape[-2:])
        return (a * _float(x0) + (1 - a) * hidden["z"]).to(x0.dtype)

    def coefficients(self, t, x0, hidden):
        """(a, b) with D = a x0 + b z, for the samplers' estimated-z update."""
        a = self.alpha(t, hidden["centre"], *x0.shape[-2:])
        return a, 1 - a


Colour.PRESETS = {
    "generation": dict(T=750, std=0.05, init=1.0, random_centre=False),
}


# ----------------------------------------------------------------------------- pixelate


@register
@dataclass
class Pixelate(Operator):
    """Super-resolution: step i downsamples to size/2^i (bicubic, no antialias) and upsamples
    back (nearest-exact), each step from the previous one as the released code does.

    That chain has no closed form, so all T <= log2(size) levels are computed for the whole
    batch (T resizes, never a loop over images or over a per-image t) and gathered. Fitted to a
    photo (px_scale > 1), step i's image is size/(2^i px_scale): the same few blocks across as
    the preset's images have."""

    name = "pixelate"
    DEFAULT_PRESET = "mnist"
    generation = "a low-resolution image from a Gaussian mixture over the downsampled images"
    prior = "downsampled"
    T: int = 3
    px_scale: float = 1.0  # every level's pixels this many times larger (fit_to: photos larger than the preset's images)

    def __post_init__(self):
        check_px_scale(self)

    def min_size(self):
        return math.ceil(2**self.T * self.px_scale)  # T halvings (of pixels px_scale wide)

    def level_size(self, H: int, W: int, i: int) -> tuple[int, int]:
        """(h, w) of step i's small image: the released H >> i, or fitted, H / (2^i px_scale)."""
        if self.px_scale == 1.0:
            return H >> i, W >> i
        return int(H / (2**i * self.px_scale)), int(W / (2**i * self.px_scale))

    def fit_to(self, c, h, w):
        scale = self.fit_scale(h, w)
        if scale is None or scale < 1:  # smaller images: the released halvings already leave few blocks
            return self, None
        fitted = self.refit(px_scale=self.px_scale * scale)
        (h0, w0), (h1, w1) = self.level_size(h, w, self.T), fitted.level_size(h, w, self.T)
        return fitted, (f"pixelate {self.preset} on {w}x{h}: pixels x{scale:.3g} (at t = T {w0}x{h0} -> {w1}x{h1} blocks; the preset "
                        f"is for {self.NATIVE[self.preset]} px images; --no-fit keeps its values)")

    def chain(self, x: torch.Tensor, t_max: int):
        """The released chain x_0 .. x_{t_max} (all at full size) and the last step's small image."""
        H, W = x.shape[-2:]
        if min(self.level_size(H, W, self.T)) < 1:
            raise UserError(f"pixelate with T={self.T} needs images of at least {self.min_size()} px, got {W}x{H}")
        # fitted, a step shrinks by 2 px_scale or more: without antialias bicubic would sample 4 of every so many pixels
        antialias = self.px_scale != 1.0
        levels, small = [x], None
        for i in range(1, t_max + 1):
            small = F.interpolate(levels[-1], size=self.level_size(H, W, i), mode="bicubic", align_corners=False, antialias=antialias)
            levels.append(F.interpolate(small, size=(H, W), mode="nearest-exact"))
        return levels, small

    def apply(self, x0, t, hidden=None):
        steps = self.check_t(x0, t)
        last = t if isinstance(t, int) else int(torch.as_tensor(t).max())  # from where t came: an int or the CPU needs no wait
        x = _float(x0)
        out = x
        for i, level in enumerate(self.chain(x, last)[0][1:], 1):
            out = torch.where(_per_image(steps == i), level, out)
        return out.to(x0.dtype)

    def prior_features(self, x0):
        # the chain's real last small image, level_size(H, W, T) whatever H and W are
        return self.chain(x0.float(), self.T)[1].flatten(1)

    def start(self, shape, generator, features=None, break_noise=0.0):
        C, H, W = shape[1:]
        small = features.view(1, C, *self.level_size(H, W, self.T))
        return F.interpolate(small, size=(H, W), mode="nearest-exact"), None  # D's own last upsample


Pixelate.PRESETS = {
    "mnist": dict(T=3),
    "cifar10": dict(T=3),
    "celeba": dict(T=4),
}


# ----------------------------------------------------------------------------- desaturate


@register
@dataclass
class Desaturate(Operator):
    """Colour removal: x_t = x0 + (t/T) (mean_c - x0); colour falls linearly, grey at T."""

    name = "desaturate"
    DEFAULT_PRESET = "default"
    T: int = 20

    def fit_to(self, c, h, w):
        return self, ("warning: desaturating a grey image changes nothing" if c == 1 else None)

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        x = _float(x0)
        grey = x.mean(1, keepdim=True)
        return (x + _per_image(t.float() / self.T) * (grey - x)).to(x0.dtype)


Desaturate.PRESETS = {"default": dict(T=20)}


# ----------------------------------------------------------------------------- noise, animorph


def cosine_alpha_bar(T: int, s: float = 0.008) -> torch.Tensor:
    """(T+1,) alpha_bar_t of the cosine schedule (Nichol & Dhariwal), alpha_bar_0 = 1."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0]).clamp(0, 1)


LOSS_NORMS = ("l1", "l2")


@register
@dataclass
class Noise(Operator):
    """Deterministic noise ('hot' baseline): D = sqrt(abar_t) x0 + sqrt(1 - abar_t) z, z ~ N(0, I)
    drawn once per image (the hidden randomness)."""

    name = "noise"
    DEFAULT_PRESET = "default"
    z_modes = ("estimated", "fixed")  # estimated: the DDIM choice
    generation = "z ~ N(0, I)"
    T: int = 200
    cosine_s: float = 0.008
    # l1: the papers' |R - x0|, whose minimiser is the posterior's per-pixel median; l2: the squared
    # error, whose minimiser is the posterior mean E[x0 | x_t] that DDIM's estimated z assumes
    loss_norm: str = "l1"

    def __post_init__(self):
        self._abar: dict = {}
        if self.loss_norm not in LOSS_NORMS:
            raise UserError(f"{self.name} parameter loss_norm must be {' or '.join(LOSS_NORMS)}, got {self.loss_norm!r}")

    def loss(self, pred, x0, hidden):
        """L1 on x0 (the papers'), or with loss_norm=l2 the squared error."""
        return super().loss(pred, x0, hidden) if self.loss_norm == "l1" else (pred - x0).pow(2).mean()

    def coefficients(self, t, x0, hidden=None):
        """(a, b) with D = a x0 + b z, for the samplers' estimated-z update."""
        key = str(t.device)
        if key not in self._abar:  # kept on the device: a copy per call would wait for the GPU
            self._abar[key] = cosine_alpha_bar(self.T, self.cosine_s).float().to(t.device)
        abar = self._abar[key][t]
        return _per_image(abar.sqrt()), _per_image((1 - abar).sqrt())

    def draw(self, x0, generator=None):
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        return {"z": to_device(z, x0.device)}

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        a, b = self.coefficients(t, x0)
        return (a * _float(x0) + b * self.needs(hidden)["z"]).to(x0.dtype)


Noise.PRESETS = {"default": dict(T=200, cosine_s=0.008)}


@register
@dataclass
class Animorph(Noise):
    """Noise whose z is an image of a second set (faces into animals and back).

    `source` is a (N, C, H, W) tensor of those images in [-1, 1]; `draw` picks one per image."""

    name = "animorph"
    needs_source = True
    generation = "an image of --source"
    source: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def params(self):
        p = super().params()
        p.pop("source")
        return p

    def draw(self, x0, generator=None):
        if self.source is None or len(self.source) == 0:
            raise UserError("animorph needs a folder of source images (--source DIR)")
        idx = torch.randint(len(self.source), (x0.shape[0],), generator=generator)
        z = self.source[to_device(idx, self.source.device)].float()
        if z.shape[1] != x0.shape[1]:  # grey <-> colour
            z = z.mean(1, keepdim=True).expand(-1, x0.shape[1], -1, -1)
        if z.shape[-2:] != x0.shape[-2:]:
            z = F.interpolate(z, size=x0.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return {"z": to_device(z, x0.device)}


Animorph.PRESETS = {"default": dict(T=200, cosine_s=0.008)}
