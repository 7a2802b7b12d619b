"""Signs of life on stderr for work that can take more than a few seconds, and durations in words."""
from __future__ import annotations


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
        # under one a second (a photo restored in minutes), seconds per one: "0.01 images/s" says little
        speed = f"{rate:,.2f} {self.unit}/s" if rate >= 1 or rate <= 0 else f"{duration(1 / rate)} per {self.unit.rstrip('s')}"
        return f"{self.what}: {int(self.done):,}/{self.total:,} {self.unit}, {speed}{eta}" + (f", {self.info}" if self.info else "")

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
