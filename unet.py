"""The restoration networks R(x_t, t): the papers' UNets as configs over shared blocks.

    convnext (`paper`, `small`, `tiny`)  the ConvNeXt UNet the cold-diffusion code released,
        block for block (lucidrains' 2022 denoising-diffusion-pytorch): no input convolution (the
        first block runs channels -> dim), two ConvNeXt blocks per level, linear attention at
        every level and in the middle, a final block without time input; 56,615,708 parameters
        for RGB at width 64, multipliers 1,2,4,8. Like the released code the decoder pops only 3
        of the 4 stored skips, so the full-resolution skip is never used.
        variant="colddiff1" is colddiff's first network (an input 7x7 convolution, a norm after
        every block's GELU, softmax on q, full attention in the middle, time input to the final
        block): checkpoints written before `variant` existed rebuild it, and it can be trained
        for comparison (RESULTS.md, "The paper network, released vs colddiff1").
    ddpm (`ddpm`)  Ho et al.'s UNet, which the released code trained for its CIFAR-10 runs:
        128 channels, multipliers 1,2,2,2, two residual blocks per level, attention at the second
        level (16 px for 32 px images), dropout 0.1, GroupNorm 32, swish; 35,746,307 parameters
        for RGB.
    adm (`adm`, `adm-small`)  the guided-diffusion UNet as Lee et al. configured it for blur
        diffusion (their appendix B): 128 channels, multipliers 1,2,3,4, depth 3 (residual
        blocks per level), 4 heads, attention at downsampling 4 and 8 (16 and 8 px for 64 px
        images), no BigGAN up/downsampling, dropout 0, scale-shift norms, zero-initialised output
        layers: 121,060,483 parameters for RGB, their "121M". (Two blocks per level, as SPEC's
        summary has it, would give 92.0 M.) `adm-small` is width 32 for CPUs; `adm-cpu` runs on 2x2
        patches of pixels at widths 96 and 192, where a CPU's convolutions near its matmul rate.

Attention sits at levels (0 = full resolution), so any image size works: the input is padded
(reflect) to a multiple of 2^(levels-1) and cropped back. Norms and softmaxes run in float32 so
bf16 autocast is safe; no data-dependent Python, so torch.compile traces them without graph
breaks. `from_config` rebuilds any of them from a checkpoint's metadata alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "paper": dict(arch="convnext", dim=64, mults=(1, 2, 4, 8)),
    "small": dict(arch="convnext", dim=32, mults=(1, 2, 4), heads=2, dim_head=32),
    "tiny": dict(arch="convnext", dim=16, mults=(1, 2), heads=1, dim_head=16),
    "ddpm": dict(arch="ddpm", dim=128, mults=(1, 2, 2, 2), blocks=2, attn_levels=(1,), dropout=0.1),
    "adm": dict(arch="adm", dim=128, mults=(1, 2, 3, 4), blocks=3, attn_levels=(2, 3), heads=4, resblock_updown=False),
    "adm-small": dict(arch="adm", dim=32, mults=(1, 2, 2), blocks=1, attn_levels=(2,), heads=1, resblock_updown=False),
    # on 2x2 patches, widths 96 and 192: convolutions wide enough to run near a CPU's matmul rate (RESULTS.md, "Training throughput")
    "adm-cpu": dict(arch="adm", dim=96, mults=(1, 2), blocks=2, attn_levels=(1,), heads=1, resblock_updown=False, patch=2),
}


# ----------------------------------------------------------------------------- shared blocks


class SinusoidalEmbedding(nn.Module):
    """Timestep features: sin and cos of t at geometric frequencies. The cold-diffusion and DDPM
    code space them by 1/(half - 1) with sin first; guided diffusion by 1/half with cos first."""

    def __init__(self, dim: int, adm: bool = False):
        super().__init__()
        self.dim, self.adm = dim, adm

    def forward(self, t):
        half = self.dim // 2
        step = math.log(10000) / (half if self.adm else half - 1)
        args = t.float()[:, None] * torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)[None]
        return torch.cat([args.cos(), args.sin()] if self.adm else [args.sin(), args.cos()], dim=-1)


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


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 (guided diffusion's `normalization`, eps 1e-5; DDPM's
    `Normalize`, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(32, channels, eps=eps)

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class Attention(nn.Module):
    """Softmax attention over all pixels: qkv 1x1, heads, out 1x1 (wrapped in PreNormResidual).
    (DDPM's separate q, k, v convolutions have the same parameters as one qkv convolution.)"""

    def __init__(self, dim: int, heads: int, dim_head: int | None = None, zero_out: bool = False):
        super().__init__()
        inner = heads * (dim_head or dim // heads)
        self.heads = heads
        self.to_qkv = nn.Conv2d(dim, inner * 3, 1, bias=dim_head is None)
        self.to_out = nn.Conv2d(inner, dim, 1)
        if zero_out:
            nn.init.zeros_(self.to_out.weight), nn.init.zeros_(self.to_out.bias)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(x).reshape(B, 3, self.heads, -1, H * W).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return self.to_out(out.transpose(-1, -2).reshape(B, -1, H, W))


class PreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.norm, self.fn = norm or ChannelNorm(dim), fn

    def forward(self, x):
        return x + self.fn(self.norm(x))


class Net(nn.Module):
    """What every network shares: pad to a multiple of patch x 2^(levels-1), run, crop back."""

    levels = 1
    patch = 1

    def forward(self, x, t):
        H, W = x.shape[-2:]
        m = self.patch * 2 ** (self.levels - 1)
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
        return self.body(x, t)[..., :H, :W]


# ----------------------------------------------------------------------------- convnext (cold diffusion)


class DepthwiseConv2d(nn.Conv2d):
    """ConvNeXt's 7x7 depthwise convolution, run in channels_last on the CPU: oneDNN's depthwise
    backward is about 4x faster in that layout (44 -> 12 ms for a 32x16x28x28 batch on one thread),
    the same sums in another order. The output keeps the input's layout. `channels_last = False`
    runs it as a plain Conv2d (benchmarks/train.py's before)."""

    channels_last = True

    def forward(self, x):
        if not self.channels_last or x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


class ConvNextBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int | None, mult: int = 2, norm: bool = True, mid_norm: bool = False):
        super().__init__()
        self.time = nn.Sequential(nn.GELU(), nn.Linear(time_dim, dim)) if time_dim else None
        self.ds_conv = DepthwiseConv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            ChannelNorm(dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            ChannelNorm(dim_out * mult) if mid_norm else nn.Identity(),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, temb):
        h = self.ds_conv(x)
        if self.time is not None:
            h = h + self.time(temb)[:, :, None, None].to(x.dtype)
        return self.net(h) + self.res_conv(x)


class LinearAttention(nn.Module):
    """Attention linear in the number of pixels: k softmaxed over pixels, q only scaled (the
    released code; colddiff1 also softmaxed q over features)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32, softmax_q: bool = False):
        super().__init__()
        self.heads, self.scale, self.softmax_q = heads, dim_head**-0.5, softmax_q
        self.to_qkv = nn.Conv2d(dim, heads * dim_head * 3, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.to_qkv(x).reshape(B, 3, self.heads, -1, H * W).unbind(1)
        q = (q.float().softmax(dim=-2) if self.softmax_q else q.float()) * self.scale
        k = k.float().softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v.float())
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(B, -1, H, W).to(x.dtype))


class ConvNeXtUNet(Net):
    def __init__(self, channels=3, dim=64, mults=(1, 2, 4, 8), heads=4, dim_head=32, variant="released"):
        super().__init__()
        if variant not in ("released", "colddiff1"):
            raise ValueError(f"unknown convnext variant {variant!r}")
        self.config = dict(arch="convnext", channels=channels, dim=dim, mults=list(mults), heads=heads, dim_head=dim_head, variant=variant)
        old = variant == "colddiff1"
        dims = [dim * m for m in mults]
        pairs = list(zip([dim if old else channels] + dims[:-1], dims))
        self.levels = len(mults)
        self.init_conv = nn.Conv2d(channels, dim, 7, padding=3) if old else nn.Identity()
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

        def block(d_in, d_out, **kw):
            return ConvNextBlock(d_in, d_out, dim, mid_norm=old, **kw)

        def linear_attention(d):
            return PreNormResidual(d, LinearAttention(d, heads, dim_head, softmax_q=old))

        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.downs.append(nn.ModuleList([
                block(d_in, d_out, norm=i != 0),
                block(d_out, d_out),
                linear_attention(d_out),
                nn.Identity() if last else nn.Conv2d(d_out, d_out, 4, 2, 1),
            ]))
        mid = dims[-1]
        self.mid1 = block(mid, mid)
        self.mid_attn = PreNormResidual(mid, Attention(mid, heads, dim_head)) if old else linear_attention(mid)
        self.mid2 = block(mid, mid)
        self.ups = nn.ModuleList()
        for d_in, d_out in reversed(pairs[1:]):  # every up level upsamples, as in the released code
            self.ups.append(nn.ModuleList([
                block(d_out * 2, d_in),
                block(d_in, d_in),
                linear_attention(d_in),
                nn.ConvTranspose2d(d_in, d_in, 4, 2, 1),
            ]))
        self.final_block = ConvNextBlock(dim, dim, dim if old else None, mid_norm=old)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def body(self, x, t):
        temb = self.time_mlp(t)
        x = self.init_conv(x)
        skips = []
        for block1, block2, attn, down in self.downs:
            x = attn(block2(block1(x, temb), temb))
            skips.append(x)
            x = down(x)
        x = self.mid2(self.mid_attn(self.mid1(x, temb)), temb)
        for block1, block2, attn, up in self.ups:  # pops 3 of 4 skips: skips[0] (full resolution) stays unused
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(attn(block2(block1(x, temb), temb)))
        return self.final_conv(self.final_block(x, temb))


# ----------------------------------------------------------------------------- ddpm and adm (residual UNets)


class ResBlock(nn.Module):
    """norm, swish, conv 3x3 (+ time), norm, swish, dropout, conv 3x3, plus a (1x1) skip.

    scale_shift (ADM): the time embedding gives a scale and shift applied after the second norm.
    resample (ADM's resblock_updown): "down" (2x2 average) or "up" (nearest) inside the block,
    after the first norm and swish, on both the main path and the skip."""

    def __init__(self, c_in, c_out, time_dim, dropout=0.0, scale_shift=False, resample=None, zero_out=False, eps=1e-5):
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.norm1, self.conv1 = GroupNorm32(c_in, eps), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out * (2 if scale_shift else 1))
        self.norm2, self.dropout, self.conv2 = GroupNorm32(c_out, eps), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1)
        if zero_out:
            nn.init.zeros_(self.conv2.weight), nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def _resample(self, x):
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x, temb):
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        x = self._resample(x)
        emb = self.time(F.silu(temb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class Downsample(nn.Module):
    """Conv 3x3 stride 2. DDPM pads (0, 1, 0, 1) as TensorFlow's SAME does; ADM pads 1 all round."""

    def __init__(self, c: int, tf_pad: bool):
        super().__init__()
        self.tf_pad = tf_pad
        self.conv = nn.Conv2d(c, c, 3, 2, padding=0 if tf_pad else 1)

    def forward(self, x, temb=None):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.tf_pad else x)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, temb=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResidualUNet(Net):
    """DDPM's and guided diffusion's UNet: they differ in the flags `arch` sets (ADM: scale-shift
    norms, zero-initialised output layers, cos-first time features, GroupNorm eps 1e-5, and
    optionally BigGAN-style resampling residual blocks, `resblock_updown`)."""

    def __init__(self, channels=3, dim=128, mults=(1, 2, 2, 2), blocks=2, attn_levels=(1,), dropout=0.0, heads=1, arch="ddpm",
                 resblock_updown=False, patch=1):
        super().__init__()
        self.config = dict(arch=arch, channels=channels, dim=dim, mults=list(mults), blocks=blocks, attn_levels=list(attn_levels),
                           dropout=dropout, heads=heads, resblock_updown=resblock_updown)
        if patch != 1:  # left out at 1, so that the metadata of networks saved before it stays as it was
            self.config["patch"] = patch
        self.patch = patch
        adm = arch == "adm"
        updown = adm and resblock_updown
        eps = 1e-5 if adm else 1e-6
        self.levels = len(mults)
        tdim = dim * 4
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim, adm=adm), nn.Linear(dim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))

        def res(c_in, c_out, resample=None):
            return ResBlock(c_in, c_out, tdim, dropout, scale_shift=adm, resample=resample, zero_out=adm, eps=eps)

        def attn(c):
            return PreNormResidual(c, Attention(c, heads, zero_out=adm), GroupNorm32(c, eps))

        ch = dim * mults[0]
        # patch p: the network runs on p x p blocks of pixels as channels (pixel unshuffle), so its
        # widths cost 1/p^2 of the FLOPs, and a CPU can afford widths whose convolutions run nearer its matmul rate
        self.conv_in = nn.Conv2d(channels * patch**2, ch, 3, padding=1)
        self.downs, skip_chans = nn.ModuleList(), [ch]
        for level, mult in enumerate(mults):
            for _ in range(blocks):
                self.downs.append(nn.ModuleList([res(ch, dim * mult)] + ([attn(dim * mult)] if level in attn_levels else [])))
                ch = dim * mult
                skip_chans.append(ch)
            if level != len(mults) - 1:
                self.downs.append(nn.ModuleList([res(ch, ch, "down") if updown else Downsample(ch, tf_pad=not adm)]))
                skip_chans.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])
        self.ups = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(blocks + 1):
                layers = [res(ch + skip_chans.pop(), dim * mult)]
                ch = dim * mult
                if level in attn_levels:
                    layers.append(attn(ch))
                if level and i == blocks:
                    layers.append(res(ch, ch, "up") if updown else Upsample(ch))
                self.ups.append(nn.ModuleList(layers))
        self.norm_out, self.conv_out = GroupNorm32(ch, eps), nn.Conv2d(ch, channels * patch**2, 3, padding=1)
        if adm:
            nn.init.zeros_(self.conv_out.weight), nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(layers, x, temb):
        for layer in layers:
            x = layer(x) if isinstance(layer, PreNormResidual) else layer(x, temb)
        return x

    def body(self, x, t):
        temb = self.time_mlp(t)
        x = self.conv_in(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)  # at 1 it would copy the image
        skips = [x]
        for layers in self.downs:
            x = self._run(layers, x, temb)
            skips.append(x)
        x = self._run(self.mid, x, temb)
        for layers in self.ups:
            x = self._run(layers, torch.cat([x, skips.pop()], dim=1), temb)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x


# ----------------------------------------------------------------------------- building


def from_config(config: dict) -> Net:
    """The network a checkpoint's metadata describes. Metadata without `arch` (written before
    there was a choice) is the ConvNeXt UNet, and without `variant` its colddiff1 variant."""
    config = dict(config)
    arch = config.pop("arch", "convnext")
    if arch == "convnext":
        config.setdefault("variant", "colddiff1")
        return ConvNeXtUNet(**config)
    if arch in ("ddpm", "adm"):
        return ResidualUNet(arch=arch, **config)
    raise ValueError(f"unknown network architecture {arch!r}")


def build(channels: int, preset: str = "paper", **overrides) -> Net:
    from errors import UserError

    if preset not in PRESETS:
        raise UserError(f"unknown network preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = {**PRESETS[preset], **overrides, "channels": channels}
    if config["arch"] == "convnext":
        config.setdefault("variant", "released")
    try:
        return from_config(config)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, IndexError) as e:
        given = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in overrides.items())
        raise UserError(f"network {preset} {given}: {str(e).splitlines()[0][:100]}") from None


def parse_overrides(preset: str, pairs: list[str]) -> dict:
    """`--net-param KEY=VALUE` pairs as typed overrides of `preset` (dim=48, mults=1,2,4,8): each
    value takes the type of the architecture's default, and integers must be positive."""
    import inspect

    from errors import UserError

    if preset not in PRESETS:
        raise UserError(f"unknown network preset {preset!r}; choose from {', '.join(PRESETS)}")
    cls = ConvNeXtUNet if PRESETS[preset]["arch"] == "convnext" else ResidualUNet
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if k not in ("channels", "arch", "variant")}
    defaults |= {k: v for k, v in PRESETS[preset].items() if k in defaults}
    overrides = {}
    for pair in pairs:
        key, eq, value = (part.strip() for part in pair.partition("="))
        if not eq or key not in defaults:
            raise UserError(f"--net-param takes KEY=VALUE with KEY one of {', '.join(defaults)} ({preset}), got {pair!r}")
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                parsed = value.lower() in ("true", "1")
            elif isinstance(default, (tuple, list)):
                parsed = tuple(int(v) for v in value.split(",")) if value else ()
            else:
                parsed = type(default)(value)
        except ValueError:
            raise UserError(f"--net-param {key}: {value!r} is not like its default {default!r}") from None
        if key == "dropout":
            fits = 0 <= parsed < 1
        elif key == "attn_levels":
            fits = all(v >= 0 for v in parsed)
        elif isinstance(parsed, tuple):
            fits = bool(parsed) and all(v >= 1 for v in parsed)
        else:
            fits = isinstance(parsed, bool) or parsed >= 1
        if not fits:
            raise UserError(f"--net-param {key}: {value!r} is out of range")
        overrides[key] = parsed
    levels = len(overrides.get("mults", defaults["mults"]))
    if any(v >= levels for v in overrides.get("attn_levels", ())):
        raise UserError(f"--net-param attn_levels: levels are 0..{levels - 1}")
    return overrides


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def forward_flops(config: dict, height: int, width: int) -> int:
    """FLOPs of one forward of one image (torch.utils.flop_counter: 2 per multiply-add in
    convolutions, matmuls and attention), counted on the meta device: no memory, no time."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = from_config(config)
        x, t = torch.zeros(1, config["channels"], height, width), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, t)
    return counter.get_total_flops()
