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

It imports torch inside the functions that use it: the CLI's `--help` needs this module, not torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class UserError(Exception):
    """A problem the user caused: reported as one line, exit code 1."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt (colddiff.main), so that
    a file being written is cleaned up as it is on Ctrl-C, not left as a temporary."""


class Stop(Exception):
    """A run that ended early (a signal, a non-finite loss): one line and an exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def check_seed(seed: int) -> int:
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in 0..{2**32 - 1}, got {seed}")  # mt19937 keeps 32 bits
    return seed


def at_least(value: int, flag: str, low: int = 1) -> int:
    if value < low:
        raise UserError(f"{flag} must be at least {low}, got {value}")
    return value


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
    def numbered(cls, seed: int, first: int, n: int) -> "ImageRNG":
        """Images first .. first + n - 1 of a run seeded with `seed` (eval, generate)."""
        return cls([image_seed(seed, i) for i in range(first, first + n)])

    def draw(self, op, x0: torch.Tensor):
        """The operator's hidden randomness for the batch x0, image by image."""
        from operators import cat_hidden

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


def versions(device=None) -> dict:
    """colddiff's and torch's versions and the device: what a bug report or a model's provenance needs."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        own = version("colddiff")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "not installed"
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"colddiff": own, "torch": torch.__version__, "device": name}


def bf16(device):
    """bf16 autocast on CUDA; elsewhere nothing (the CPU computes in float32)."""
    import contextlib

    import torch

    return torch.autocast("cuda", torch.bfloat16) if torch.device(device).type == "cuda" else contextlib.nullcontext()


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """x (drawn on the CPU) on `device`, without making the host wait. A plain .to("cuda") of
    pageable memory waits until every kernel already queued has run, so a step's draws on the CPU
    (t, crops, noise, ...) could not overlap the GPU's work on the step before; on CUDA the copy
    goes through pinned memory instead, which the caching host allocator keeps until the copy is done."""
    import torch

    device = torch.device(device)
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        x = x.contiguous().pin_memory()
    return x.to(device, non_blocking=True)  # from the host that is always safe: the device waits for the copy


class Progress:
    """Signs of life on stderr for work that can take more than a few seconds.

    On a terminal: a rich bar. In a pipe or a log: a start line, then a plain line at most every
    `every` seconds (done/total, rate, time left, and the caller's `info`), and a last line.
    quiet: nothing. `update(done, info=...)` is cheap enough to call per step; done may be
    fractional (generate: the share of a batch's network calls made)."""

    def __init__(self, what: str, total: int, unit: str, quiet: bool = False, every: float = 10.0):
        import sys
        import time

        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.mode = "off" if quiet or sys.stderr is None else ("bar" if sys.stderr.isatty() else "lines")
        self.clock = time.perf_counter
        self.done, self.start_done, self.info = 0, 0, ""

    def __enter__(self):
        self.start = self.last = self.clock()
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                           TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.what, total=self.total, info="")
        elif self.mode == "lines":
            self._line(f"{self.what}: started, {self.total:,} {self.unit[:-1] if self.total == 1 else self.unit}")  # "1 image"
        return self

    def begin_at(self, done: int):
        """A resumed run: count from `done`, and measure the rate from here."""
        self.done = done
        self.start_done, self.start = done, self.clock()
        if self.mode == "bar":
            self.bar.update(self.task, completed=done)

    def update(self, done: int, info: str = ""):
        self.done, self.info = done, info
        if self.mode == "bar":
            self.bar.update(self.task, completed=done, info=info)
        elif self.mode == "lines" and self.clock() - self.last >= self.every:
            self.last = self.clock()
            self._line(self._status())

    def _status(self) -> str:
        elapsed = self.clock() - self.start
        rate = (self.done - self.start_done) / max(elapsed, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f", {duration(left)} left" if left == left and self.done < self.total else ""
        return f"{self.what}: {int(self.done):,}/{self.total:,} {self.unit}, {rate:,.2f} {self.unit}/s{eta}" + (f", {self.info}" if self.info else "")

    def _line(self, text: str):
        import sys

        print(f"colddiff: {text}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.mode == "bar":
            self.bar.__exit__(*exc)
        elif self.mode == "lines" and exc[0] is None:
            self._line(self._status().replace(f"{self.what}:", f"{self.what}: done,", 1) + f" in {duration(self.clock() - self.start)}")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
