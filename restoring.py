"""restore's work: each input's plan (the t and seed it was degraded with, whole or in tiles), checked
before anything is written, and the batches of images restored by one sampling call each."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from errors import UserError


class Plan(NamedTuple):
    """How restore runs one image: from step t (`at`: the sampling from there, `strip` its --strip),
    with the hidden randomness of seed, whole or in tiles of `tile` px."""

    t: int
    seed: int
    tile: int | None
    at: object
    strip: object


class Planner:
    """inputs.plan's check for restore: each input's Plan, and what is worth saying of them all (said())."""

    def __init__(self, sampling, model: str, t: int | None, seed: int | None, steps: int | None, tile: int | None, batch: int, device,
                 strip_at):
        self.sampling, self.model, self.t, self.seed, self.steps, self.tile, self.batch, self.device = \
            sampling, model, t, seed, steps, tile, batch, device
        self.strip_at = strip_at  # (sampling, t) -> the Strip of an image restored from t
        self.at_t: dict = {}  # t -> (sampling from t, its strip): each checked once, before any work
        self.unsaid, self.tiled, self.shrunk = 0, None, None
        self.flops, self.calls, self.largest = 0, 0, (0, 0)  # the network work planned (said() estimates its time)
        self.call_flops: dict = {}  # (h, w) -> FLOPs of one forward of one image (or tile)

    def __call__(self, src, u8, n: int):
        import notes
        from image_io import source_name
        from inputs import check_input
        from machine import check_fits
        from strips import shrunk_line

        name, (h, w), op = source_name(src), u8.shape[-2:], self.sampling.op
        check_input(u8, self.sampling.meta["image"]["channels"], op, src, self.model)
        tile_px = check_fits(self.sampling, name, h, w, min(self.batch, n), self.device, self.tile)
        if tile_px and not self.tile and not self.tiled:
            self.tiled = f"{name}: {w}x{h} cannot fit in memory whole; restoring it in {tile_px} px tiles (--tile N chooses, --tile 0 refuses)"
        t, seed, said = notes.degradation_of(src, name, op, self.model, self.t, self.seed)
        self.unsaid += self.t is None and not said
        if t not in self.at_t:  # steps default to at most t: each t its own
            try:
                at = self.sampling.at(t, self.steps)
            except UserError as e:
                raise UserError(f"{name}: degraded to t = {t} (its colddiff note): {e}") from None
            self.at_t[t] = at, self.strip_at(at, t)
        at, strip = self.at_t[t]
        if strip and strip.frame_size(h, w)[1] != w and not self.shrunk:
            self.shrunk = shrunk_line(name, strip.frames, h, w)
        self.add_work(h, w, at.calls(t), tile_px)
        return Plan(t, seed, tile_px, at, strip), strip.out_size(h, w)

    def add_work(self, h: int, w: int, calls: int, tile_px: int | None) -> None:
        """Count an h x w image's passes through the network and their FLOPs (in tiles: each tile's)."""
        import unet
        from tiles import tile_count

        tiles, size = (tile_count(h, w, tile_px), (min(h, tile_px), min(w, tile_px))) if tile_px else (1, (h, w))
        if size not in self.call_flops:
            self.call_flops[size] = unet.forward_flops(self.sampling.meta["network"], *size)
        self.flops += calls * tiles * self.call_flops[size]
        self.calls += calls * tiles
        self.largest = max(self.largest, (h, w), key=lambda s: s[0] * s[1])

    def said(self, n: int) -> list[str]:
        """The lines worth saying once every input is planned (after every check: an error stays the only line)."""
        which = "" if self.unsaid == n else f" the {self.unsaid} images that carry no colddiff note"
        unsaid = (f"restoring{which} as if degraded to t = T = {self.sampling.op.T}; pass --t if the images were degraded less"
                  if self.unsaid else None)
        return [line for line in (unsaid, self.tiled, self.shrunk, self.estimate(n)) if line]

    def estimate(self, n: int) -> str | None:
        """A rough time for a restore long enough to wait for (a minute or more), as train says its own."""
        from machine import rough_seconds
        from progress import duration

        seconds, where = rough_seconds(self.flops, self.device)
        if seconds < LONG:
            return None
        (h, w), images = self.largest, f"{n:,} image{'s' * (n != 1)}"
        return (f"restoring {images} ({self.calls:,} passes through the network, on images of up to {w}x{h}): roughly "
                f"{duration(seconds)} on {where}")


LONG = 60  # seconds of an estimate worth saying


class Input(NamedTuple):
    """An input image ready to restore: x_t (1, C, H, W) on the device, its plan, output, alpha and depth."""

    x: object
    plan: Plan
    dest: str
    alpha: object
    bits: int


def load(src, dest: str, plan: Plan, channels: int, device) -> Input:
    from image_io import bits_of, read_alpha, read_image, to_model

    px = read_image(src, channels, deep=True)  # 16-bit grey stays 16-bit
    return Input(to_model(px)[None].to(device), plan, dest, read_alpha(src, dest), bits_of(px))


def batch_key(image: Input) -> tuple:
    """What the images of one sampling call share: size, t, tiles and depth."""
    return image.x.shape, image.plan.t, image.plan.tile, image.bits


def restore_batch(images: list[Input], model: str, progress, done: int, write) -> None:
    """Restore a batch (batch_key's: one size, t, tiling and depth) and write each image with its note;
    progress moves within it by the share of its network calls made (a photo in tiles takes minutes)."""
    import torch

    import notes
    from seeding import ImageRNG
    from tiles import tile_count, tiled

    first = images[0].plan
    x_t, at, strip, bits = torch.cat([im.x for im in images]), first.at, first.strip, images[0].bits
    calls = at.calls(first.t) * (tile_count(*x_t.shape[-2:], first.tile) if first.tile else 1)
    sampling = at.watched(lambda: progress.update(min(done + len(images), progress.done + len(images) / calls)))
    if first.tile:
        sampling = dataclasses.replace(sampling, restore=tiled(sampling.restore, first.tile))
    size = strip.frame_size(*x_t.shape[-2:])
    sampling, states, predicted = strip.record(sampling, size, bits)
    x0_hat = sampling(x_t, first.t, ImageRNG([im.plan.seed for im in images]).draw(at.op, x_t))
    out = strip.images(states, predicted, x0_hat, size, bits)
    made = notes.made("restore", model, at, t=first.t, tile=first.tile, **strip.note())
    for i, im in enumerate(images):
        write(out[i], im.dest, {**made, "seed": im.plan.seed}, strip.alpha(im.alpha, size))
