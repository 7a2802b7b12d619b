"""Snow (ImageNet-C snowification), the `snow` operator: procedural, non-cumulative, in torch.
It is an operator like the others (operators.py registers it)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from errors import UserError
from machine import to_device
from operator_base import Operator, _float, _per_image, check_px_scale, register, scaled_taps

SNOW_LEVELS = {
    # c0, c1, c2 (zoom), c4 (motion kernel length), threshold start -> end, motion sigma start -> end
    1: (0.1, 0.3, 3.0, 5, (0.7, 0.3), (0.5, 5.0)),
    2: (0.55, 0.3, 2.5, 11, (1.15, 0.7), (0.05, 12.0)),
    3: (0.55, 0.3, 2.5, 11, (1.15, 0.7), (0.05, 16.0)),
    4: (0.55, 0.3, 2.5, 11, (1.15, 0.55), (0.05, 20.0)),
}


def _ramp(start: float, end: float, t: torch.Tensor, T: int) -> torch.Tensor:
    """Linear over steps 1..T: start at t=1, end at t=T."""
    return start + (end - start) * (t.double() - 1).clamp(min=0) / max(T - 1, 1)


FFT_TAPS = 64  # longer motion blurs (snow fitted to a photo) go through the FFT: conv2d's cost grows with the length


def motion_blur(s: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """s (B, 1, H, W) convolved along `dim` with image b's symmetric kernel g[b] (odd length k),
    replicate padding: one grouped convolution for short kernels, else the linear convolution
    through the rfft of the padded axis (the same sums, in n log n)."""
    B, k = g.shape
    pad = k // 2
    if k <= FFT_TAPS:
        pads, shape = ((pad, pad, 0, 0), (B, 1, 1, k)) if dim == -1 else ((0, 0, pad, pad), (B, 1, k, 1))
        return F.conv2d(F.pad(s.transpose(0, 1), pads, mode="replicate"), g.view(shape), groups=B).transpose(0, 1)
    x = s.movedim(dim, -1)
    n = x.shape[-1]
    x = torch.cat([x[..., :1].expand(*x.shape[:-1], pad), x, x[..., -1:].expand(*x.shape[:-1], pad)], -1)
    L = x.shape[-1] + k - 1  # no wrap-around: a linear convolution
    y = torch.fft.irfft(torch.fft.rfft(x, n=L) * torch.fft.rfft(g, n=L).view(B, 1, 1, -1), n=L)
    return y[..., k - 1 : k - 1 + n].movedim(-1, dim)


@register
@dataclass
class Snow(Operator):
    """ImageNet-C snowification, procedural and non-cumulative, built in torch on x0's device.

    A base layer N(c0, c1) is zoomed by c2 (bilinear, centre crop); step t keeps the values
    above a falling threshold, clips to [0, 1], motion-blurs with a 1-D Gaussian of length c4
    whose sigma rises over the steps (horizontal or vertical, one direction per image), and
    x_t = clip(x0 + s_t + rot180(s_t), 0, 1) in [0, 1] pixels. The hidden randomness (layer and
    direction) is drawn per image from the generator: `--seed` reproduces it."""

    name = "snow"
    DEFAULT_PRESET = "cifar10"
    T: int = 200
    level: int = 3
    px_scale: float = 1.0  # flake zoom, motion-blur length and sigma times this (fit_to: large photos)

    def __post_init__(self):
        if self.level not in SNOW_LEVELS:
            raise UserError(f"snow level must be one of 1..4, got {self.level}")
        check_px_scale(self)

    @property
    def taps(self) -> int:
        """The motion blur's length: c4, its reach scaled by px_scale (kept odd)."""
        return scaled_taps(SNOW_LEVELS[self.level][3], self.px_scale)

    def fit_to(self, c, h, w):
        scale = self.fit_scale(h, w)
        if scale is None:
            return self, None
        fitted = self.refit(px_scale=self.px_scale * scale)
        zoom = SNOW_LEVELS[self.level][2]
        return fitted, (f"snow {self.preset} on {w}x{h}: flakes x{scale:.3g} (zoom {zoom * self.px_scale:.3g} -> {zoom * fitted.px_scale:.3g}, "
                        f"motion blur {self.taps} -> {fitted.taps} px; the preset is for {self.NATIVE[self.preset]} px images; "
                        f"--no-fit keeps its values)")

    def draw(self, x0, generator=None):
        B, _, H, W = x0.shape
        c0, c1, zoom = SNOW_LEVELS[self.level][:3]
        zoom = max(zoom * self.px_scale, 1.0)  # (a zoom below 1 would crop more than the image)
        layer = torch.randn(B, 1, H, W, generator=generator) * c1 + c0
        ch, cw = max(math.ceil(H / zoom), 1), max(math.ceil(W / zoom), 1)
        top, left = (H - ch) // 2, (W - cw) // 2
        crop = layer[..., top : top + ch, left : left + cw]
        zh, zw = max(round(ch * zoom), H), max(round(cw * zoom), W)
        big = F.interpolate(crop, size=(zh, zw), mode="bilinear", align_corners=False)
        top, left = (zh - H) // 2, (zw - W) // 2
        layer = big[..., top : top + H, left : left + W]
        vertical = torch.rand(B, generator=generator) < 0.5
        return {"layer": to_device(layer, x0.device), "vertical": to_device(vertical, x0.device)}

    def snow_layer(self, t: torch.Tensor, hidden) -> torch.Tensor:
        """(B, 1, H, W) snow s_t; zero where t == 0."""
        _, thr, msig = SNOW_LEVELS[self.level][3:]
        k, layer = self.taps, hidden["layer"]
        threshold = _per_image(_ramp(*thr, t, self.T).float())
        s = torch.where(layer > threshold, layer, torch.zeros_like(layer)).clamp(0, 1)
        # per-image 1-D Gaussian kernels
        sig = _ramp(*msig, t, self.T)[:, None] * self.px_scale
        j = torch.arange(k, dtype=torch.float64, device=t.device) - (k - 1) / 2
        g = torch.exp(-(j**2) / (2 * sig**2))
        g = (g / g.sum(1, keepdim=True)).float()  # (B, k)
        s = torch.where(_per_image(hidden["vertical"]), motion_blur(s, g, -2), motion_blur(s, g, -1))
        return s * _per_image(t > 0)

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        s = self.snow_layer(t, self.needs(hidden))
        x = (_float(x0) + 1) / 2
        x = (x + s + s.flip(-2, -1)).clamp(0, 1)
        return torch.where(_per_image(t == 0), _float(x0), x * 2 - 1).to(x0.dtype)


Snow.PRESETS = {
    "cifar10": dict(T=200, level=3),
    "celeba": dict(T=200, level=4),
}
