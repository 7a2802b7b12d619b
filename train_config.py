"""A training run's settings with the papers' defaults (TrainConfig), and their checks.

Apart from train.py because `colddiff train` reads its option defaults from here when the app is
built: importing this must not import torch, so that `colddiff --help` and a mistyped command
answer in a fraction of a second, not after torch's 2-3 s import.
"""
from __future__ import annotations

import dataclasses
import math

from errors import UserError

LR_SCHEDULES = ("constant", "cosine")
WEIGHTS = ("fp32", "fp16")  # the model file's weights; the training state and every computation stay float32
PRECISIONS = ("auto", "fp32", "bf16")  # R's arithmetic in training: auto is bf16 on CUDA, float32 on the CPU


@dataclasses.dataclass
class TrainConfig:
    """Every training setting with the papers' defaults; `colddiff train` reads its option
    defaults from here."""

    steps: int = 700_000
    batch: int = 32
    accumulate: int = 2
    lr: float = 2e-5
    lr_schedule: str = "constant"  # the papers'; "cosine" decays to 0 at `steps` (for short budgets)
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    save_every: int = 5000
    sample_every: int = 1000
    augment: bool = True
    seed: int = 0
    compile: bool = True
    gmm_components: int = 1
    sampling_steps: int | None = None  # the model's default sampling steps (None: all T)
    train_noise: float = 0.0  # sigma of N(0, sigma^2) added to every x_t (inverse heat dissipation's)
    step_noise: float | None = None  # the model's default generate --step-noise (None: symmetry_defaults')
    weights: str = "fp32"  # fp16: a model file of half the size (bundled models), read back into float32
    precision: str = "auto"  # bf16 on a CPU with AMX: R's step 1.5-2x faster (RESULTS.md); the weights stay float32

    def check(self, op):
        if not 0 < self.lr < math.inf:
            raise UserError(f"--lr must be positive (and a finite number), got {self.lr}")
        if not 0 <= self.ema_decay <= 1:  # outside, the EMA weights grow without bound (restores are black)
            raise UserError(f"--ema-decay must be in 0..1, got {self.ema_decay}")
        if self.weights not in WEIGHTS:
            raise UserError(f"unknown --weights {self.weights!r}; choose from {', '.join(WEIGHTS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown --lr-schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        for name in ("gmm_components", "steps", "batch", "accumulate", "save_every", "sample_every", "ema_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.sampling_steps is not None and not 1 <= self.sampling_steps <= op.T:
            raise UserError(f"--sampling-steps must be in 1..{op.T}, got {self.sampling_steps}")
        if not 0 <= self.train_noise < 1:
            raise UserError(f"--train-noise must be in [0, 1), got {self.train_noise}")
        if self.train_noise and op.predicts != "x0":
            raise UserError(f"--train-noise applies to cold diffusion (networks that predict x0), not {op.name}")
        if self.step_noise is not None:
            if not 0 <= self.step_noise < 1:
                raise UserError(f"--step-noise must be in [0, 1), got {self.step_noise}")
            if not op.flat_start:
                which = f"{op.name} ({op.preset})" if op.preset else op.name
                raise UserError(f"--step-noise breaks the symmetry of a flat x_T (blur's generation preset); {which} has none")

