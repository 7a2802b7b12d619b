"""A model opened for sampling: R as a function (bf16 and CUDA graphs on CUDA), its operator and
metadata, and the sampler chosen, every choice checked before any work (open_model).

The samplers' maths is samplers.py's; this module reads the model file (checkpoint.py) and wraps R
for what the commands need: from another t, recording a --strip's states, progress per call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import samplers
from machine import autocast


def make_restorer(net, device, compile: bool = False):
    """R as a function of (x, s): bf16 autocast on CUDA, optionally compiled with CUDA graphs."""
    import torch

    cuda = device.type == "cuda"
    model = net
    if cuda:
        model = net.to(memory_format=torch.channels_last)
        if compile:
            # "reduce-overhead" captures each fixed-shape call in a CUDA graph
            model = torch.compile(model, mode="reduce-overhead")

    @torch.no_grad()
    def restore(x, s: int):
        with autocast(device):
            out = model(x, samplers.step_tensor(x, s))
        # a copy: CUDA-graph replays overwrite their output buffer on the next call
        return out.to(torch.float32, copy=True)

    return restore


@dataclass
class Sampling:
    """A model opened for sampling: its operator and metadata, R, and the chosen sampler."""

    op: object
    meta: dict
    restore: object
    sampler: str
    steps: int | None
    z: str
    eta: float = 0.0
    step_noise: float = 0.0

    def __call__(self, x_t, t: int, hidden):
        return samplers.sample(self.sampler, self.restore, self.op, x_t, t, hidden, self.steps, self.z, self.eta, self.step_noise)

    def at(self, t: int, steps: int | None = None) -> Sampling:
        """This sampling from step t (restoring images degraded less than T): --steps, else the
        model's steps cut to t; checked, a UserError before any work."""
        steps = samplers.steps_for(self.sampler, self.op, self.meta, t, steps)
        samplers.check(self.sampler, self.op, t, self.z, self.eta, steps, self.step_noise)
        return dataclasses.replace(self, steps=steps)

    def describe(self) -> dict:
        """The choices that make its images, for the note in each output PNG."""
        return {"sampler": self.sampler, "steps": self.steps, "z": self.z, "eta": self.eta, "step_noise": self.step_noise}

    def path(self, t: int) -> list[int]:
        """The steps s of the states x_s that sampling from x_t passes through (samplers.path)."""
        return samplers.path(self.sampler, t, self.steps)

    def calls(self, t: int) -> int:
        """Network calls per batch from step t: 1 (direct), the jumps, or every step."""
        return len(self.path(t)) - 1

    def recorded(self, keep, record, record_x0_hat=None) -> Sampling:
        """This sampling, calling record(x_s, s) with each state x_s handed to R at a step s in
        `keep` (the frames of a --strip: the sampler's own states, whatever it is), and
        record_x0_hat(x0_hat, s) with R's prediction from it (the released code's X_0s)."""
        def restore(x, s):
            if s in keep:
                record(x, s)
            out = self.restore(x, s)
            if s in keep and record_x0_hat:
                record_x0_hat(self.op.x0_hat(x, samplers.step_tensor(x, s), out), s)
            return out

        return dataclasses.replace(self, restore=restore)

    def watched(self, after_call) -> Sampling:
        """This sampling, calling after_call() after every network call (progress within a batch)."""
        def restore(x, s):
            out = self.restore(x, s)
            after_call()
            return out

        return dataclasses.replace(self, restore=restore)


@dataclass(frozen=True)
class Choices:
    """What a user may choose about sampling a model (None: the model's or its operator's default)."""

    sampler: str | None = None
    steps: int | None = None
    z: str | None = None
    eta: float | None = None
    t: int | None = None  # the step sampling starts from (default T): what --steps is checked against
    source: str | None = None  # animorph's folder of z images
    compile: bool = True  # torch.compile + CUDA graphs, on CUDA only


def open_model(path: str, device, choices: Choices = Choices()) -> Sampling:
    """A model ready to sample (Sampling), every choice checked before any work:
    the operator's default sampler (with its default eta) and z mode unless given; for samplers
    that jump, --steps, else the model's recommended steps, else the operator's default (at most t)."""
    sampler, steps, z, eta, t, source, compile = (choices.sampler, choices.steps, choices.z, choices.eta, choices.t,
                                                  choices.source, choices.compile)
    import checkpoint
    from folders import attach_source

    net, op, meta = checkpoint.load_model(path, device)
    attach_source(op, source, device)
    if eta is None:
        eta = op.default_eta if sampler is None else 0.0
    sampler = sampler or op.default_sampler
    z = z or op.z_modes[0]
    t = op.T if t is None else t
    samplers.check(sampler, op, t, z, eta, steps)
    restore = make_restorer(net, device, compile and device.type == "cuda")
    return Sampling(op, meta, restore, sampler, samplers.steps_for(sampler, op, meta, t, steps), z, eta)


def batches(items, batch: int, key):
    """Lists of consecutive `items` that share key(item), at most `batch` long: the images of one
    sampling call. Lazy: an item is taken when the batch before it is full or differs."""
    group: list = []
    for item in items:
        if group and (key(group[0]) != key(item) or len(group) == batch):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
