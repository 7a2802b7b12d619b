"""Per-image seeding: every random draw comes from a CPU torch.Generator, so the same seed gives
the same bytes on any device. Each image owns a generator (EDM's StackedRandomGenerator idea), so
image i never depends on the batch it is processed in:

    degrade, restore   every image's generator is seeded with --seed itself, so that
                       `restore --seed S` redraws exactly what `degrade --seed S` drew;
    eval, generate     image i's generator is seeded with image_seed(seed, i).

It imports torch inside the functions that use it: the CLI's `--help` needs this module, not torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from errors import check_seed
from machine import to_device

if TYPE_CHECKING:
    import torch


def generator(seed: int) -> torch.Generator:
    """The CPU generator one image's draws come from."""
    import torch

    return torch.Generator().manual_seed(check_seed(seed))


def _mix32(h: int) -> int:
    """The murmur3 finaliser: a bijection of 32-bit integers that scatters neighbours."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def image_seed(seed: int, i: int) -> int:
    """Image i's own 32-bit seed under `seed`: distinct for every i < 2^32, and unlike seed + i,
    neighbouring runs (seed, seed + 1) share no image seeds by accident."""
    return _mix32((_mix32(check_seed(seed)) + i) & 0xFFFFFFFF)


class ImageRNG:
    """One generator per image of a batch: draws are stacked along the batch dimension, and each
    image's values depend on its own seed only."""

    def __init__(self, seeds: list[int]):
        self.generators = [generator(int(s)) for s in seeds]

    @classmethod
    def numbered(cls, seed: int, first: int, n: int) -> ImageRNG:
        """Images first .. first + n - 1 of a run seeded with `seed` (eval, generate)."""
        return cls([image_seed(seed, i) for i in range(first, first + n)])

    def draw(self, op, x0: torch.Tensor):
        """The operator's hidden randomness for the batch x0, image by image."""
        from operator_base import cat_hidden

        return cat_hidden([op.draw(x0[i : i + 1], g) for i, g in enumerate(self.generators)])

    def randn(self, shape, device=None) -> torch.Tensor:
        """(B, *shape) standard normal, row i from image i's generator. Each generator draws on one
        core (64 x 3 x 128 x 128 takes 13 ms here), so large batches are drawn on worker threads, one
        image each; on CUDA straight into pinned memory, so that the copy need not wait for the GPU
        (a sampler's step noise is drawn while the GPU runs the step before)."""
        import torch

        device = torch.device(device or "cpu")
        out = torch.empty((len(self.generators), *shape), pin_memory=device.type == "cuda")

        def fill(i):
            torch.randn(shape, generator=self.generators[i], out=out[i])

        workers = min(len(self.generators), torch.get_num_threads())
        if workers > 1 and out.numel() >= PARALLEL_DRAW:
            list(_pool(workers).map(fill, range(len(self.generators))))
        else:
            for i in range(len(self.generators)):
                fill(i)
        return to_device(out, device)


PARALLEL_DRAW = 1 << 19  # numbers in one ImageRNG.randn from which threads pay (2 cores: 64 x 64 x 64 is as fast alone, 64 x 3 x 128 x 128 1.6x faster on two)
_POOLS: dict = {}


def _pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="colddiff-draw")
    return _POOLS[workers]
