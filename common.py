"""What every colddiff module shares: the one error the user can cause, and per-image seeding.

UserError is everything a user can get wrong (a bad option, image, model file, operator
parameter or sampler choice). The CLI turns it into one `colddiff: error: ...` line and exit 1;
anything else escaping is a bug.

Seeding: every random draw comes from a CPU torch.Generator, so the same seed gives the same bytes
on any device. Each image owns a generator (EDM's StackedRandomGenerator idea), so image i never
depends on the batch it is processed in:

    degrade, restore   every image's generator is seeded with --seed itself, so that
                       `restore --seed S` redraws exactly what `degrade --seed S` drew;
    eval, generate     image i's generator is seeded with image_seed(seed, i).
"""
from __future__ import annotations

import torch


class UserError(Exception):
    """A problem the user caused: reported as one line, exit code 1."""


class Stop(Exception):
    """A run that ended early (a signal, a non-finite loss): one line and an exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def check_seed(seed: int) -> int:
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in 0..{2**32 - 1}, got {seed}")  # mt19937 keeps 32 bits
    return seed


def generator(seed: int) -> torch.Generator:
    """The CPU generator one image's draws come from."""
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
    def numbered(cls, seed: int, first: int, n: int) -> "ImageRNG":
        """Images first .. first + n - 1 of a run seeded with `seed` (eval, generate)."""
        return cls([image_seed(seed, i) for i in range(first, first + n)])

    def draw(self, op, x0: torch.Tensor):
        """The operator's hidden randomness for the batch x0, image by image."""
        from operators import cat_hidden

        return cat_hidden([op.draw(x0[i : i + 1], g) for i, g in enumerate(self.generators)])

    def randn(self, shape, device=None) -> torch.Tensor:
        """(B, *shape) standard normal, row i from image i's generator."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(device)
