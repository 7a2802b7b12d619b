"""generate's outputs: one grid of the images (a row of frames per image with --strip), or a file per
image (-o DIR/), planned and checked before any work, written as the batches come."""
from __future__ import annotations

import math

from errors import UserError


class Generated:
    """Where images 0 .. n - 1 of `colddiff generate --seed S` go, each made `made`-noted (its number
    added): `numbers` are those still to make (--skip-existing keeps the rest); add(numbers, images)
    takes each batch as it is made, finish() writes the grid."""

    def __init__(self, out: str | None, n: int, seed: int, ncol: int | None, strip, size: tuple[int, int], made: dict,
                 force: bool, skip_existing: bool, say):
        from image_io import check_size, grid_size
        from outputs import check_skip_existing, plan_grid_or_folder, still_to_write

        check_skip_existing(force, skip_existing)
        self.folder, self.names = plan_grid_or_folder(out, [f"{seed}_{i:06d}.png" for i in range(n)], force or skip_existing)
        if skip_existing and not self.folder:
            raise UserError("--skip-existing applies to -o DIR/ (a file per image), not to a grid")
        if strip and ncol is not None:
            raise UserError("--strip lays out one image's frames per grid row: leave --ncol out")
        self.n, self.strip, self.made, self.size, self.results = n, strip, made, size, []
        # image i draws from its own seed, whatever else is made
        self.numbers = (still_to_write(self.names, say, "images", "generating", f" in {out}", lambda i: {**made, "image": i})
                        if skip_existing else list(range(n)))
        width, height = strip.out_size(*size)
        if self.folder:
            for name in self.names:
                check_size(name, width, height)
        else:
            self.ncol = strip.frames if strip else ncol or math.ceil(math.sqrt(n))
            fh, fw = strip.frame_size(*size) or size
            check_size(self.names[0], *grid_size(n * strip.frames * strip.rows, self.ncol, fh, fw))

    def add(self, numbers: list[int], images, write) -> None:
        if self.folder:
            for i, image in zip(numbers, images):
                write(image, self.names[i], {**self.made, "image": i})
        else:
            self.results.append(images)

    def finish(self) -> None:
        """The grid, one image (or its strip's frames) per row, in uint8 (a quarter of float's memory)."""
        import torch

        from image_io import grid_image
        from outputs import write_image

        if self.folder:
            return
        fh, fw = self.strip.frame_size(*self.size) or self.size
        # strips (N, C, rows fh, frames fw) -> their frames (N rows frames, C, fh, fw), a grid row each
        frames = torch.cat(self.results).unflatten(-2, (self.strip.rows, fh)).unflatten(-1, (self.strip.frames, fw))
        write_image(grid_image(frames.permute(0, 2, 4, 1, 3, 5).flatten(0, 2), ncol=self.ncol), self.names[0], {**self.made, "n": self.n})
