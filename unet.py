"""The restoration network R(x_t, t): the ConvNeXt UNet of the cold-diffusion papers.

Width `dim`, multipliers `mults`, two ConvNeXt blocks per level, linear attention at every level,
full attention in the middle, sinusoidal time embedding (dim -> 4 dim -> dim). The `paper`
preset is the released network (~56.6 M parameters for RGB); like it, the decoder never uses the
full-resolution skip (there is one fewer up level than down levels).
Any image size works: the input is padded (reflect) to a multiple of 2^(levels-1) and cropped back.
Norms and softmaxes run in float32 so bf16 autocast is safe; no data-dependent Python, so
torch.compile traces it without graph breaks.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "paper": dict(dim=64, mults=(1, 2, 4, 8)),
    "small": dict(dim=32, mults=(1, 2, 4), heads=2, dim_head=32),
    "tiny": dict(dim=16, mults=(1, 2), heads=1, dim_head=16),
}


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ChannelNorm(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) map, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x):
        # layer_norm over a channels-last view: 3x faster than var_mean over dim 1 on CPU
        y = F.layer_norm(x.float().permute(0, 2, 3, 1), (x.shape[1],), self.g.view(-1), self.b.view(-1), self.eps)
        return y.permute(0, 3, 1, 2).to(x.dtype)


class ConvNextBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int, mult: int = 2, norm: bool = True):
        super().__init__()
        self.time = nn.Sequential(nn.GELU(), nn.Linear(time_dim, dim))
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            ChannelNorm(dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            ChannelNorm(dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, temb):
        h = self.ds_conv(x) + self.time(temb)[:, :, None, None].to(x.dtype)
        return self.net(h) + self.res_conv(x)


class LinearAttention(nn.Module):
    """Attention linear in the number of pixels (softmax over features for q, pixels for k)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Conv2d(dim, heads * dim_head * 3, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(x).reshape(B, 3, self.heads, -1, H * W).unbind(1)
        q = q.float().softmax(dim=-2) * self.scale
        k = k.float().softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v.float())
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(B, -1, H, W).to(x.dtype))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Conv2d(dim, heads * dim_head * 3, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(x).reshape(B, 3, self.heads, -1, H * W).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return self.to_out(out.transpose(-1, -2).reshape(B, -1, H, W))


class PreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = ChannelNorm(dim), fn

    def forward(self, x):
        return x + self.fn(self.norm(x))


class UNet(nn.Module):
    def __init__(self, channels: int = 3, dim: int = 64, mults=(1, 2, 4, 8), heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.config = dict(channels=channels, dim=dim, mults=list(mults), heads=heads, dim_head=dim_head)
        dims = [dim * m for m in mults]
        pairs = list(zip([dim] + dims[:-1], dims))
        self.levels = len(mults)
        self.init_conv = nn.Conv2d(channels, dim, 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.downs.append(nn.ModuleList([
                ConvNextBlock(d_in, d_out, dim, norm=i != 0),
                ConvNextBlock(d_out, d_out, dim),
                PreNormResidual(d_out, LinearAttention(d_out, heads, dim_head)),
                nn.Identity() if last else nn.Conv2d(d_out, d_out, 4, 2, 1),
            ]))
        mid = dims[-1]
        self.mid1 = ConvNextBlock(mid, mid, dim)
        self.mid_attn = PreNormResidual(mid, Attention(mid, heads, dim_head))
        self.mid2 = ConvNextBlock(mid, mid, dim)
        self.ups = nn.ModuleList()
        for d_in, d_out in reversed(pairs[1:]):  # every up level upsamples, as in the released code
            self.ups.append(nn.ModuleList([
                ConvNextBlock(d_out * 2, d_in, dim),
                ConvNextBlock(d_in, d_in, dim),
                PreNormResidual(d_in, LinearAttention(d_in, heads, dim_head)),
                nn.ConvTranspose2d(d_in, d_in, 4, 2, 1),
            ]))
        self.final_block = ConvNextBlock(dim, dim, dim)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def forward(self, x, t):
        H, W = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
        temb = self.time_mlp(t)
        x = self.init_conv(x)
        skips = []
        for block1, block2, attn, down in self.downs:
            x = attn(block2(block1(x, temb), temb))
            skips.append(x)
            x = down(x)
        x = self.mid2(self.mid_attn(self.mid1(x, temb)), temb)
        for block1, block2, attn, up in self.ups:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(attn(block2(block1(x, temb), temb)))
        x = self.final_conv(self.final_block(x, temb))
        return x[..., :H, :W]


def build(channels: int, preset: str = "paper", **overrides) -> UNet:
    if preset not in PRESETS:
        from common import UserError

        raise UserError(f"unknown network preset {preset!r}; choose from {', '.join(PRESETS)}")
    return UNet(channels=channels, **{**PRESETS[preset], **overrides})


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
