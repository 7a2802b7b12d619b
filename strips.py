"""A --strip: the frames of a degradation (x_0 ... x_T) or of a sampler's own states (x_t ... x_0) side by side,
one home for the options, the steps shown, the frames' size and layout, and the recording.

`Strip` is the value commands hand around: empty (falsy) when no strip was asked, so that a
command does not branch on --strip; its frames are shrunk so that a strip is at most STRIP_WIDTH wide.
"""
from __future__ import annotations

from dataclasses import dataclass

from errors import UserError
from image_io import to_model, to_pixels

STRIP_WIDTH = 16383  # WebP's limit (MAX_SIDE) and wider than any screen: --strip shrinks a photo's frames to fit it


def strip_frame_size(n: int, h: int, w: int) -> tuple[int, int]:
    """(height, width) of each of a strip's n frames of an h x w image: its own, or shrunk (aspect
    kept) so that the strip is at most STRIP_WIDTH wide: 11 frames of a 12 MP photo were a 132 MP PNG."""
    if n * w <= STRIP_WIDTH:
        return h, w
    fw = max(1, STRIP_WIDTH // n)
    return max(1, round(h * fw / w)), fw


def shrunk_line(name: str, n: int, h: int, w: int) -> str:
    """What a strip of n frames of an h x w image says where strip_frame_size shrinks them."""
    fh, fw = strip_frame_size(n, h, w)
    return f"{name}: a strip of {n} frames of {w}x{h} would be {n * w} px wide; its frames are shrunk to {fw}x{fh}"


def check_strip(strip: bool, frames: int | None, x0_hat: bool = False) -> None:
    if frames is not None and not strip:
        raise UserError("--frames applies to --strip")
    if x0_hat and not strip:
        raise UserError("--x0-hat applies to --strip")
    if frames is not None and frames < 2:
        raise UserError(f"--frames must be at least 2, got {frames}")


def strip_steps(path: list[int], frames: int | None) -> list[int]:
    """The steps of a --strip: `frames` (check_strip's) of the states `path` (degrade: 0 .. T;
    restore, generate: the sampler's t .. 0) evenly spread, the first and last among them; by
    default every one up to 21, else 11."""
    last = len(path) - 1
    n = last + 1 if frames is None and last <= 20 else min(frames or 11, last + 1)
    return [path[k] for k in sorted({round(i * last / (n - 1)) for i in range(n)})] if n > 1 else list(path)


def strip_frame(x, size, bits: int = 8):
    """The frames of a strip from x (B, C, H, W) in [-1, 1]: uint8 (or 16-bit) on the CPU, shrunk to `size` (h, w)
    where strip_frame_size shrank them (the step itself ran at full size; None: as they are)."""
    import torch.nn.functional as F

    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return to_pixels(x, bits).cpu()


def strip_recording(sampling, steps: list[int], size, x0_hat: bool, bits: int = 8):
    """(sampling, states, predicted): `sampling` recording a --strip's frames as it runs, the states
    x_s at `steps` into `states` and, with --x0-hat, R's x0_hat from each into `predicted` (else
    None), each as strip_frame makes them (uint8 on the CPU, at once: R's output buffer is reused)."""
    states, predicted = [], [] if x0_hat else None
    recorded = sampling.recorded(set(steps), lambda x, s: states.append(strip_frame(x, size, bits)),
                                 (lambda x0, s: predicted.append(strip_frame(x0, size, bits))) if x0_hat else None)
    return recorded, states, predicted


def strip_rows(states: list, predicted: list | None = None):
    """(B, C, h, n w) strips from a strip's n frames, each (B, C, h, w) uint8: the states x_s side by
    side; with `predicted` (R's x0_hat from each state but x_0), a second row of them under the
    first, (B, C, 2 h, n w), blank (black) under x_0, the output, which R never saw."""
    import torch

    top = states[0] if len(states) == 1 else torch.cat(states, dim=-1)  # one frame: no copy
    if predicted is None:
        return top
    return torch.cat([top, torch.cat([*predicted, torch.zeros_like(states[-1])], dim=-1)], dim=-2)


def strip_alpha(alpha, size, n: int, rows: int = 1):
    """An image's alpha (1, H, W) for each of a strip's n frames of `size` in `rows` rows: every frame keeps the image's transparency."""
    import torch.nn.functional as F

    if alpha is None:
        return None
    if size is not None and tuple(size) != tuple(alpha.shape[-2:]):
        alpha = to_pixels(F.interpolate(to_model(alpha)[None], size=tuple(size), mode="bilinear", antialias=True)[0])
    return alpha.repeat(1, rows, n)


@dataclass(frozen=True)
class Strip:
    """What --strip asked for: the steps s of its frames x_s (none: no strip was asked, and the
    value is falsy) and whether a row of R's x0_hat from each lies under them (--x0-hat)."""

    steps: tuple[int, ...] = ()
    x0_hat: bool = False

    @classmethod
    def asked(cls, strip: bool, frames: int | None, path: list[int], x0_hat: bool = False) -> Strip:
        """The strip of `frames` of the states `path` (degrade: 0 .. T; a sampler's: t .. 0), or none."""
        check_strip(strip, frames, x0_hat)
        return cls(tuple(strip_steps(path, frames)), x0_hat) if strip else cls()

    def __bool__(self) -> bool:
        return bool(self.steps)

    @property
    def frames(self) -> int:
        return len(self.steps) or 1

    @property
    def rows(self) -> int:
        return 1 + self.x0_hat

    def frame_size(self, h: int, w: int) -> tuple[int, int] | None:
        """The size each frame of an h x w image is written at (None: as it is, without a strip)."""
        return strip_frame_size(self.frames, h, w) if self else None

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """(width, height) of the output for an h x w image."""
        fh, fw = self.frame_size(h, w) or (h, w)
        return self.frames * fw, self.rows * fh

    def note(self) -> dict:
        """The note's word on it: the steps of its frames, and the x0_hat row."""
        return {"strip": list(self.steps), **({"x0_hat_row": True} if self.x0_hat else {})} if self else {}

    def record(self, sampling, size, bits: int = 8):
        """(sampling, states, predicted): `sampling` recording the frames as it runs (strip_recording),
        or as it is, with nothing to record, without a strip."""
        return strip_recording(sampling, list(self.steps), size, self.x0_hat, bits) if self else (sampling, [], None)

    def images(self, states: list, predicted: list | None, x0, size, bits: int = 8):
        """Each image's strip from the recorded frames and the output x0 (B, C, H, W) in [-1, 1], or x0 itself as pixels."""
        return strip_rows([*states, strip_frame(x0, size, bits)], predicted)

    def alpha(self, alpha, size):
        """An image's alpha repeated under every frame of its strip (strip_alpha)."""
        return strip_alpha(alpha, size, self.frames, self.rows)

