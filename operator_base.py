"""What an operator is: the base class every degradation D(x0, t) extends, and the registry.

An operator is the unit of a method: it says how images degrade, what the network R predicts
and how R is trained, which samplers apply, and, for generative operators, how x_T is drawn.
This module is the base class and the registry, a leaf that every operator file imports: an
operator in a file of its own is that file, with its class under @register, plus one import line
in operators.py. samplers.py, train.py, generation.py and colddiff.py hold no operator names.

    op.T, op.name, op.params()          plain data, saved in checkpoints
    hidden = op.draw(x0, generator)     the operator's hidden randomness per image (or None)
    x_t = op.apply(x0, t, hidden)       deterministic given `hidden`; a random operator
                                        refuses to run without it (no silent global draws)
    x_t = op.degrade(x0, t, generator)  = op.apply(x0, t, op.draw(x0, generator))

    op.predicts, op.loss(pred, x0, hidden), op.x0_hat(x_t, t, pred)
                                        what R predicts ("x0", or "eps" for blurdiff), the
                                        training loss, and x0 recovered from R's output
    op.default_sampler, op.default_steps, op.default_eta, op.z_modes
                                        the sampler used when none is named (the samplers whose
                                        `predicts` matches apply), its steps when neither --steps
                                        nor the model names any, and the z modes it accepts
                                        (the first is the default)
    op.min_size()                       the smallest image side D accepts (restore asks 8 px
                                        of any: inputs.check_input)
    op.train_defaults                   training settings of its paper that differ from cold
                                        diffusion's (blurdiff: network, lr, EMA, batch)
    op.needs_source                     animorph: z images come from a folder (--source)
    op.generation, op.prior             generative operators: how x_T is drawn (for help
                                        texts) and what the fitted GMM prior is over (or None)
    op.prior_features(x0), op.start(shape, generator, features, break_noise)
                                        the prior's training features, and (x_T, hidden)

Images are (B, C, H, W) in [-1, 1]; `t` is one step for the batch (an int) or a long tensor with
one step per image (best on the CPU: check_t reads it there, never waiting for the GPU). One call
handles the whole batch: no Python loop over the batch or over diffusion steps (pixelate's
fixed chain of at most log2(size) resizes is the one exception, see there). Arithmetic is
float32 whatever the input dtype; the result has the input's dtype.
Samplers call `apply` with a fixed `hidden` so that every D(., s) of one sample shares the
same snow pattern, mask centre, noise or colour.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from errors import UserError
from machine import to_device

Hidden = dict[str, torch.Tensor] | None


@dataclass
class Operator:
    name = "operator"
    PRESETS: ClassVar[dict[str, dict]] = {}
    DEFAULT_PRESET = ""
    predicts = "x0"
    default_sampler = "tacos"
    released_sampler: ClassVar[str] = "tacos"  # the sampler of the method's released code (reproduce.py runs it)
    default_steps: ClassVar[int | None] = None  # sampling steps when neither --steps nor the model names any (None: t)
    default_eta: ClassVar[float] = 0.0  # --eta of the default sampler (an explicit --sampler starts from 0)
    z_modes: ClassVar[tuple[str, ...]] = ("fixed",)  # interpolation operators add "estimated"
    needs_source = False
    generation: ClassVar[str | None] = None
    prior: ClassVar[str | None] = None
    train_defaults: ClassVar[dict] = {}  # the method's own training settings (network, lr, ...) where it has them
    preset: ClassVar[str | None] = None  # set by make_operator; not a parameter (checkpoints keep the values)
    T: int = 1

    # parameters added after models were first saved: left out at these values, so that an older
    # model's metadata and the notes in its outputs stay as they were
    LATER_PARAMS: ClassVar[dict] = {"px_scale": 1.0, "loss_norm": "l1"}

    def params(self) -> dict:
        p = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: v for k, v in p.items() if k not in self.LATER_PARAMS or v != self.LATER_PARAMS[k]}

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> Hidden:
        return None

    def apply(self, x0: torch.Tensor, t: torch.Tensor, hidden: Hidden = None) -> torch.Tensor:
        raise NotImplementedError

    def degrade(self, x0, t, generator=None):
        return self.apply(x0, t, self.draw(x0, generator))

    def needs(self, hidden: Hidden) -> dict:
        """`hidden`, or a TypeError: a forgotten draw must not fall back to the global RNG."""
        if hidden is None:
            raise TypeError(f"{self.name}.apply needs its hidden randomness: pass hidden=op.draw(x0, generator)")
        return hidden

    def check_t(self, x0: torch.Tensor, t) -> torch.Tensor:
        """t (an int, a list or a tensor) as one long step per image on x0's device, each in 0..T.
        An int or a CPU tensor is checked on the host before it moves, so the samplers' and the
        training step's calls never wait for the GPU; a tensor already on the GPU is checked there,
        which does."""
        B = x0.shape[0]
        if isinstance(t, int):
            if not 0 <= t <= self.T:
                raise UserError(f"t must be in 0..{self.T} for {self.name}, got {t}")
            return torch.full((B,), t, device=x0.device, dtype=torch.long)
        t = torch.as_tensor(t, dtype=torch.long)  # a tensor stays where it is
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise UserError(f"t must hold one step per image, got shape {tuple(t.shape)}")
        if bool(((t < 0) | (t > self.T)).any()):
            raise UserError(f"t must be in 0..{self.T} for {self.name}, got {t.tolist()}")
        return to_device(t, x0.device)

    def min_size(self) -> int:
        return 1

    @property
    def flat_start(self) -> bool:
        """x_T is one flat colour per image (blur's generation preset): only noise can break its symmetry."""
        return False

    # px the presets were made for (SPEC: the papers resized MNIST to 32)
    NATIVE: ClassVar[dict] = {"mnist": 32, "cifar10": 32, "celeba": 128, "generation": 128}

    def fit_to(self, c: int, h: int, w: int) -> tuple[Operator, str | None]:
        """(operator, note) for degrading a c-channel h x w image: operators whose parameters are
        sizes in pixels scale them from the preset's native size (`NATIVE`) when the image is more
        than twice as large or small, and the note says what changed (or warns, where the image
        makes the operator a no-op). The others are returned as they are."""
        return self, None

    def fit_scale(self, h: int, w: int) -> float | None:
        """min(h, w) over the preset's native size, or None where it is within 2x (or unknown)."""
        native = self.NATIVE.get(self.preset)
        scale = min(h, w) / native if native else 1.0
        return None if 0.5 <= scale <= 2 else scale

    def refit(self, **changes) -> Operator:
        """A copy with `changes` (fit_to's scaled lengths), under the same preset name; made once per
        scale, since a folder's images mostly share one (a blur's T kernels are ~8 ms to build)."""
        fitted = self.__dict__.setdefault("_refits", {})
        key = tuple(sorted(changes.items()))
        if key not in fitted:
            fitted[key] = dataclasses.replace(self, **changes)
            fitted[key].preset = self.preset
        return fitted[key]

    def loss(self, pred: torch.Tensor, x0: torch.Tensor, hidden: Hidden) -> torch.Tensor:
        """Cold diffusion's training loss: |R(D(x0, t), t) - x0|, L1 on x0."""
        return (pred - x0).abs().mean()

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return pred

    def prior_features(self, x0: torch.Tensor) -> torch.Tensor | None:
        """(N, D) features the generation prior is fitted to, or None when x_T needs no fit."""
        return None

    def start(self, shape, generator: torch.Generator, features=None, break_noise: float = 0.0):
        """(x_T, hidden) for one generated image of `shape` (1, C, H, W), every draw from
        `generator`. The default suits operators whose x_T = D(0, T) forgets x0 entirely."""
        if self.generation is None:
            names = ", ".join(n for n, c in OPERATORS.items() if c.generation)
            raise UserError(f"{self.name} does not generate: its x_T keeps information about x0 (generative: {names})")
        zeros = torch.zeros(shape)
        hidden = self.draw(zeros, generator)
        return self.apply(zeros, torch.full((1,), self.T), hidden), hidden


OPERATORS: dict[str, type[Operator]] = {}


def register(cls):
    """The registry entry of an operator class: `--op NAME` finds it, checkpoints rebuild it."""
    OPERATORS[cls.name] = cls
    return cls


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def check_px_scale(op) -> None:
    """fit_to's scale of an operator's lengths in pixels (blur, snow, pixelate): positive, and not absurd."""
    if not 0 < op.px_scale <= 1000:
        raise UserError(f"{op.name} px_scale must be in (0, 1000], got {op.px_scale}")


def scaled_taps(k: int, scale: float) -> int:
    """An odd kernel length k with its reach (k - 1) / 2 scaled by `scale` (rounded up; k itself at 1)."""
    return k if scale == 1 else 2 * math.ceil((k - 1) / 2 * scale) + 1


def cat_hidden(hiddens: list[Hidden]) -> Hidden:
    """Concatenate the hidden randomness of several batches (None stays None)."""
    if hiddens[0] is None:
        return None
    return {k: torch.cat([h[k] for h in hiddens]) for k in hiddens[0]}
