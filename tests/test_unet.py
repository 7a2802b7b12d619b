"""The restoration networks: the papers' sizes exactly, any image size, bf16, no graph breaks,
and old checkpoints still rebuilt from their metadata."""
import pytest
import torch

import checkpoint
import operators
import train
import unet

# small widths of each architecture: the same blocks as the presets, fast on a CPU
SMALL = {"convnext": ("tiny", {}), "colddiff1": ("tiny", {"variant": "colddiff1"}), "ddpm": ("ddpm", {"dim": 32, "mults": (1, 2)}),
         "adm": ("adm-small", {}), "adm-patch": ("adm-small", {"patch": 2})}


@pytest.mark.parametrize("preset,variant,channels,count", [
    ("paper", "released", 3, 56_615_708),  # the released code's ConvNeXt UNet
    ("paper", "colddiff1", 3, 56_721_987),  # colddiff's first network, kept for its checkpoints
    ("ddpm", None, 3, 35_746_307),  # Ho et al.'s CIFAR-10 UNet
])
def test_parameter_counts(preset, variant, channels, count):
    net = unet.build(channels, preset, **({"variant": variant} if variant else {}))
    assert unet.count_parameters(net) == count


def test_adm_is_lee_et_al_121m():
    assert abs(unet.count_parameters(unet.build(3, "adm")) / 121e6 - 1) < 0.02


def test_flops_of_one_forward():
    assert abs(unet.forward_flops(unet.build(3, "paper").config, 128, 128) / 67.4e9 - 1) < 0.01
    assert abs(unet.forward_flops(unet.build(3, "ddpm").config, 32, 32) / 12.4e9 - 1) < 0.01
    # colddiff1's extra input convolution and norms, and its full middle attention, cost more
    assert unet.forward_flops(unet.build(3, "paper", variant="colddiff1").config, 128, 128) > 69e9


def test_released_block_structure():
    """The issue's five differences, each checked on the module tree."""
    new, old = unet.build(3, "paper"), unet.build(3, "paper", variant="colddiff1")
    assert isinstance(new.init_conv, torch.nn.Identity) and new.downs[0][0].ds_conv.in_channels == 3
    assert old.downs[0][0].ds_conv.in_channels == 64
    assert isinstance(new.downs[0][1].net[3], torch.nn.Identity) and isinstance(old.downs[0][1].net[3], unet.ChannelNorm)
    assert not new.downs[0][2].fn.softmax_q and old.downs[0][2].fn.softmax_q
    assert isinstance(new.mid_attn.fn, unet.LinearAttention) and isinstance(old.mid_attn.fn, unet.Attention)
    assert new.final_block.time is None and old.final_block.time is not None


def test_full_resolution_skip_is_never_used():
    """As in the released code: perturbing the first level's output only through its skip would
    change nothing, so the decoder sees 3 of the 4 stored skips."""
    net = unet.build(1, "tiny", mults=(1, 2, 4, 8)).eval()
    seen = []
    real_cat = torch.cat

    def spy(tensors, dim=0):
        if tensors[1].ndim == 4:  # the decoder's skips (the time features are 2-D)
            seen.append(tensors[1].shape[-1])
        return real_cat(tensors, dim=dim)

    torch.cat = spy
    try:
        net(torch.randn(1, 1, 32, 32), torch.tensor([3]))
    finally:
        torch.cat = real_cat
    assert seen == [4, 8, 16]  # the skips at 1/8, 1/4 and 1/2 resolution; never the 32 px one


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (1, 3, 17, 40), (2, 3, 5, 7)])
def test_any_size_forward_backward_and_bf16(arch, shape):
    preset, kw = SMALL[arch]
    net = unet.build(shape[1], preset, **kw)
    x, t = torch.randn(*shape), torch.tensor([1, 7])[: shape[0]]
    y = net(x, t)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yb = net(x, t)
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb.float()).all()


@pytest.mark.parametrize("arch", list(SMALL))
def test_time_conditioning_matters(arch):
    preset, kw = SMALL[arch]
    net = unet.build(1, preset, **kw)
    if arch.startswith("adm"):  # zero-initialised output layers: give them weights first
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 16, 16)
    assert (net(x, torch.tensor([1])) - net(x, torch.tensor([50]))).abs().max() > 1e-4


@pytest.mark.parametrize("arch", list(SMALL))
def test_compiles_without_graph_breaks(arch):
    preset, kw = SMALL[arch]
    for shape in [(2, 3, 32, 32), (2, 3, 28, 30)]:
        explanation = torch._dynamo.explain(unet.build(3, preset, **kw))(torch.randn(*shape), torch.tensor([1, 5]))
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


def test_old_checkpoints_rebuild_their_network(tmp_path):
    """A checkpoint written before `arch` and `variant` existed names only the ConvNeXt widths:
    it is colddiff1, and loads with identical outputs (the first bundled model was one of them)."""
    old = unet.build(1, "tiny", variant="colddiff1").eval()
    meta = {"version": 1, "operator": {"name": "blur", "params": operators.make_operator("blur").params()},
            "network": {k: v for k, v in old.config.items() if k not in ("arch", "variant")}, "image": {"channels": 1}}
    checkpoint.save_model(tmp_path / "old.safetensors", old, meta)
    net, _, _ = checkpoint.load_model(tmp_path / "old.safetensors")
    x, t = torch.randn(2, 1, 20, 20), torch.tensor([3, 9])
    assert net.config["variant"] == "colddiff1" and torch.equal(net(x, t), old(x, t))
    for preset, kw in (("ddpm", {"dim": 32}), ("adm-small", {}), ("adm-small", {"patch": 2})):  # the new ones round-trip too
        net = unet.build(1, preset, **kw).eval()
        checkpoint.save_model(tmp_path / "n.safetensors", net, {**meta, "network": net.config})
        again = checkpoint.load_model(tmp_path / "n.safetensors")[0]
        assert torch.equal(again(x, t), net(x, t))


def test_a_patch_network_is_the_plain_network_on_blocks_of_pixels():
    """patch=2 is, exactly, the patch-1 network with the same weights run on each 2x2 block of
    pixels as 4 channels (pixel unshuffle) and put back (pixel shuffle); at patch 1 the metadata
    has no `patch`, as networks saved before it had none."""
    patched = unet.build(1, "adm-small", patch=2).eval()
    plain = unet.build(4, "adm-small").eval()
    for p in patched.parameters():  # zero-initialised output layers: give them weights first
        torch.nn.init.normal_(p, std=0.05)
    plain.load_state_dict(patched.state_dict())
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 40])
    with torch.no_grad():
        want = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), t), 2)
        assert torch.allclose(patched(x, t), want, atol=1e-5)
    assert patched.config["patch"] == 2 and "patch" not in plain.config
    assert unet.forward_flops(patched.config, 32, 32) < unet.forward_flops(unet.build(1, "adm-small").config, 32, 32) / 3


def test_blurdiff_trains_with_lee_et_al_settings_unless_told_otherwise():
    bd, blur = operators.make_operator("blurdiff"), operators.make_operator("blur")
    unset = {"net": None, "lr": None, "ema_decay": None, "ema_every": None, "ema_start": None, "batch": None, "accumulate": None}
    got = train.method_defaults(bd, unset)
    assert got == {"net": "adm", "lr": 5e-5, "ema_decay": 0.9999, "ema_every": 1, "ema_start": 0, "batch": 16, "accumulate": 1}
    assert train.method_defaults(bd, {**unset, "net": "tiny", "lr": 1e-3})["net"] == "tiny"
    cold = train.method_defaults(blur, unset)
    assert cold == {"net": "paper", "lr": 2e-5, "ema_decay": 0.995, "ema_every": 10, "ema_start": 2000, "batch": 32, "accumulate": 2}
    for name in ("blur", "mask", "pixelate", "snow"):  # the released code's CIFAR-10 runs used the DDPM UNet
        assert train.method_defaults(operators.make_operator(name, "cifar10"), unset)["net"] == "ddpm"
    assert train.method_defaults(operators.make_operator("blur", "cifar10"), {**unset, "net": "small"})["net"] == "small"


def test_the_depthwise_convolution_in_channels_last_is_the_plain_one():
    """ConvNeXt's depthwise 7x7 runs in channels_last on the CPU for speed: the same output (in the
    input's layout) and the same gradients as nn.Conv2d's, to float32 rounding."""
    fast = unet.DepthwiseConv2d(16, 16, 7, padding=3, groups=16)
    plain = torch.nn.Conv2d(16, 16, 7, padding=3, groups=16)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(4, 16, 13, 10, generator=torch.Generator().manual_seed(0))
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [fast(xs[0]), plain(xs[1])]
    assert ys[0].is_contiguous() and not ys[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ys[0], ys[1], atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ys[0])
    for y in ys:
        y.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad, atol=1e-4, rtol=1e-5)
    assert isinstance(unet.build(1, "tiny").downs[0][0].ds_conv, unet.DepthwiseConv2d)


def test_the_adm_cpu_preset_is_the_network_the_throughput_table_measured():
    """`adm-cpu` names `adm-small` with the overrides RESULTS.md timed (dim=96 patch=2 mults=1,2 blocks=2
    attn_levels=1), so a model trained either way has the same metadata, weights and outputs."""
    given = unet.parse_overrides("adm-small", ["dim=96", "patch=2", "mults=1,2", "blocks=2", "attn_levels=1"])
    a, b = unet.build(1, "adm-cpu"), unet.build(1, "adm-small", **given)
    assert a.config == b.config and a.config["patch"] == 2 and a.state_dict().keys() == b.state_dict().keys()
    widths = {m.out_channels for m in a.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
    assert a.conv_in.in_channels == 4 and widths == {4, 96, 192}  # conv_out gives back the 4 pixels of each patch
