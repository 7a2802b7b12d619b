"""The one error a user can cause, the ends of a run, and the checks of the numbers users give.

UserError is everything a user can get wrong (a bad option, image, model file, operator
parameter or sampler choice). The CLI turns it into one `colddiff: error: ...` line and exit 1;
anything else escaping is a bug. Stop ends a run early with its own line and exit code;
Terminated is SIGTERM, raised as Ctrl-C raises KeyboardInterrupt.
"""
from __future__ import annotations


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
