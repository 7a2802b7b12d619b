"""The sampling loops and the training step never make the host wait for the GPU.

A read of a GPU tensor on the host (bool(), .item(), .tolist(), a shape that depends on values)
waits for every kernel queued before it, and so does a plain .to("cuda") of pageable memory: the
host can then no longer queue step s + 1 (or draw its noise) while the GPU runs step s. On the CPU
neither shows, so these tests run the loops on the meta device, whose tensors have shapes but no
values: any read of one raises. A spy catches the copies to the device that would block.
tests/test_cuda.py checks the same on a real GPU with torch.cuda.set_sync_debug_mode.
"""
import pytest
import torch
from conftest import ALL, make
from torch.overrides import TorchFunctionMode

import checkpoint
import generative
import samplers as S
import tiles
import train as T
import unet
from sampling import Sampling, make_restorer
from seeding import ImageRNG

META = torch.device("meta")


class BlockingCopies(TorchFunctionMode):
    """Counts copies to another device that are not non_blocking; `loss_reads` lets float() of a
    meta tensor (the training step's one deliberate wait, its loss) return 0.0 and counts them."""

    def __init__(self):
        super().__init__()
        self.blocking, self.loss_reads = [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__float__" and args[0].device == META:
            self.loss_reads += 1
            return 0.0
        if name in ("to", "cuda"):
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
            if target is not None and torch.device(target) != args[0].device and not kwargs.get("non_blocking", False):
                self.blocking.append(f"{name}({args[0].device} -> {target})")
        if name in ("tensor", "as_tensor") and kwargs.get("device") not in (None, "cpu", torch.device("cpu")):
            self.blocking.append(f"{name}(device={kwargs['device']})")
        return func(*args, **kwargs)


def meta_restorer(op, channels):
    net = unet.build(channels, "tiny").to(META).eval()
    return make_restorer(net, META)


CASES = [(name, preset, sampler) for name, preset in ALL for sampler in S.applicable(make(name, preset))]


@pytest.mark.parametrize("name,preset,sampler", CASES)
def test_every_sampler_runs_where_no_value_can_be_read(name, preset, sampler):
    """Every operator with every sampler that applies, every z mode, step noise and eta where they
    apply: restored on the meta device, with the hidden randomness each image draws on the host."""
    fn = S.SAMPLERS[sampler]
    every_step = not fn.steps and sampler != "direct"  # blurdiff's reverse, ancestral: T cut to 12
    op = make(name, preset, **({"T": 12} if every_step else {}))
    if op.needs_source:
        op.source = op.source.to(META)
    x0 = torch.zeros(2, 3, 32, 32, device=META)
    hidden = ImageRNG([1, 2]).draw(op, x0)
    hidden = {**(hidden or {}), "seed": torch.tensor([1, 2])}
    restore = meta_restorer(op, 3)
    for z in op.z_modes:
        for _first in (True, False):  # the first call builds the operator's tables on the device, once
            with BlockingCopies() as spy:
                x_t = op.apply(x0, op.T, hidden)
                out = S.sample(sampler, restore, op, x_t, op.T, hidden, steps=min(op.T, 4) if fn.steps else None, z=z,
                               eta=0.5 if fn.eta else 0.0, step_noise=0.01 if fn.step_noise else 0.0)
        assert out.shape == x0.shape and out.device == META
        assert spy.blocking == []


def test_generate_with_step_noise_runs_where_no_value_can_be_read():
    """`colddiff generate`'s loop (the bundled model, its prior, its step noise) on the meta device."""
    net, op, meta = checkpoint.load_model("models/fmnist-blur-gen.safetensors", torch.device("cpu"))
    sampling = Sampling(op, meta, make_restorer(net.to(META), META), "tacos", 6, "fixed", 0.0, 0.0125)
    list(generative.generate(sampling, 1, 1, 0, META))  # builds the operator's tables on the device
    with BlockingCopies() as spy:
        batches = list(generative.generate(sampling, 5, 3, 0, META))
    assert [len(x) for _, x in batches] == [3, 2] and batches[0][1].device == META
    assert spy.blocking == []


def test_tiled_restore_runs_where_no_value_can_be_read():
    """`restore --tile`'s loop over tiles and its blending weights stay on the device."""
    op = make("blur", "celeba")
    x_t = torch.zeros(2, 3, 150, 97, device=META)
    restore = tiles.tiled(meta_restorer(op, 3), 64)
    with BlockingCopies():
        op.apply(x_t, op.T)  # builds the operator's tables on the device, once
    with BlockingCopies() as spy:
        out = S.sample("tacos", restore, op, x_t, op.T, None, steps=3)
    assert out.shape == x_t.shape and out.device == META
    assert spy.blocking == []


TRAINED = [("blur", "mnist"), ("blur", "generation"), ("mask", "mnist"), ("colour", "generation"), ("pixelate", "mnist"),
           ("snow", "cifar10"), ("noise", "default"), ("desaturate", "default"), ("animorph", "default"), ("blurdiff", "quartic")]


@pytest.mark.parametrize("name,preset", TRAINED)
@pytest.mark.parametrize("data_on_device", [True, False])
def test_training_step_waits_only_for_its_loss(name, preset, data_on_device):
    """make_step (batch indices, augmentation, t, the operator's draws, --train-noise, backward,
    Adam) on the meta device: the one read of a device value is the loss it returns, once a step.
    The data may sit on the device (uint8) or stay in CPU memory."""
    op = make(name, preset)
    if op.needs_source:
        op.source = op.source.to(META)
    net = unet.build(3, "tiny").to(META)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    cfg = T.TrainConfig(batch=4, accumulate=2, augment=True, train_noise=0.01 if op.predicts == "x0" else 0.0)
    step = T.make_step(net, opt, op, cfg, META)
    data = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    rng = torch.Generator().manual_seed(0)
    data = data.to(META) if data_on_device else data
    with BlockingCopies():
        step(data, rng)  # builds the operator's tables on the device
    with BlockingCopies() as spy:
        for _ in range(3):
            step(data, rng)
    assert spy.loss_reads == 3
    assert [c for c in spy.blocking if "uint8" not in c] == []
