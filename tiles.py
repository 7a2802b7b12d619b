"""R over overlapping tiles of a large image, blended by linear ramps: the memory of one tile, time
linear in the pixels (README, "Large images")."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` px start along an axis of n px: evenly spread, overlapping by at least
    `overlap`, the first at 0 and the last ending at n (every tile the same size: one CUDA graph)."""
    if n <= tile:
        return [0]
    k = -(-(n - tile) // (tile - overlap))  # strides
    return [round(i * (n - tile) / k) for i in range(k + 1)]


def tile_ramp(n: int, overlap: int, first: bool, last: bool, device=None) -> torch.Tensor:
    """A tile's blending weight along one axis: 1 inside, falling linearly over `overlap` px at an edge
    that a neighbour overlaps (not at the image's own edges, which no other tile covers). Made on
    the device: a host copy would wait for the GPU."""
    import torch

    w = torch.ones(n, device=device)
    ramp = (torch.arange(overlap, device=device) + 0.5) / overlap
    if not first:
        w[:overlap] = ramp
    if not last:
        w[n - overlap :] = torch.minimum(w[n - overlap :], ramp.flip(0))
    return w


def tile_overlap(tile: int) -> int:
    """colddiff's overlap of N px tiles: N/8 (measured: README, "Large images")."""
    return max(8, tile // 8)


def tile_count(h: int, w: int, tile: int) -> int:
    """Network calls per R call on an h x w image in tiles of `tile` px."""
    return len(tile_starts(h, tile, tile_overlap(tile))) * len(tile_starts(w, tile, tile_overlap(tile)))


def tiled(restore, tile: int, overlap: int | None = None):
    """R over overlapping tile x tile windows, blended by linear ramps: peak memory that of one tile
    and time linear in the pixels (the whole image costs memory in proportion to its pixels, and time
    quadratic in them in the middle attention). Images no larger than a tile go through whole."""
    import torch

    overlap = tile_overlap(tile) if overlap is None else overlap
    layouts: dict = {}  # (H, W, device) -> the tiles' windows and weights, and their sum: once, not every step

    def layout(H: int, W: int, device):
        tops, lefts = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
        h, w = min(H, tile), min(W, tile)
        tiles, weight = [], torch.zeros(H, W, device=device)
        for i, top in enumerate(tops):
            wy = tile_ramp(h, overlap, i == 0, i == len(tops) - 1, device)
            for j, left in enumerate(lefts):
                wt = wy[:, None] * tile_ramp(w, overlap, j == 0, j == len(lefts) - 1, device)
                window = (..., slice(top, top + h), slice(left, left + w))
                tiles.append((window, wt))
                weight[window[1:]] += wt
        return tiles, weight

    def restore_tiled(x, s: int):
        H, W = x.shape[-2:]
        if H <= tile and W <= tile:
            return restore(x, s)
        key = (H, W, x.device)
        if key not in layouts:
            layouts[key] = layout(H, W, x.device)
        tiles, weight = layouts[key]
        out = torch.zeros(x.shape, device=x.device)
        for window, wt in tiles:
            out[window] += restore(x[window].contiguous(), s) * wt
        return out / weight

    return restore_tiled
