"""Restoring large images in tiles (`colddiff restore --tile N`): cost, and agreement with the whole image.

    python benchmarks/tiles.py                                   # cost: one R call, whole vs tiles, per size
    python benchmarks/tiles.py --model m.safetensors --image photo.png --t 25   # + agreement and quality

Cost: one network call (untrained `--net`, its time does not depend on the weights) on a
1 x C x H x W image, whole and in --tile px tiles, each in a fresh process so that its peak
resident memory is its own. Agreement: a trained model restores --image degraded to --t, whole and
in tiles of several sizes (direct and Algorithm 2); RMSE on [0, 1] between the two and against
the original. The whole image costs memory in proportion to its pixels and time that grows faster
(the middle attention is quadratic in them); tiles cost one tile's memory and time linear in pixels.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import samplers  # noqa: E402
import sampling  # noqa: E402
import tiles  # noqa: E402
import unet  # noqa: E402

SIZES = ["512x512", "1024x1024", "2048x2048", "4000x3000"]


def one_call(a) -> dict:
    """In this (fresh) process: one R call on a random image, whole or tiled; seconds and peak RSS."""
    torch.manual_seed(0)
    w, h = map(int, a.one.split("x"))
    net = unet.build(3, a.net).eval()
    restore = sampling.make_restorer(net, torch.device("cpu"))
    if a.tile:
        restore = tiles.tiled(restore, a.tile)
    x = torch.rand(1, 3, h, w) * 2 - 1
    start = time.perf_counter()
    restore(x, 10)
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def cost(a):
    print(f"\none R call, `{a.net}` network, CPU {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| image | whole s | whole peak GB | tiles | tiled s | tiled peak GB |")
    print("|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        row = []
        for tile in (0, a.tile):
            w, h = map(int, size.split("x"))
            if tile == 0 and w * h > a.whole_max * 1e6:
                row.append(None)
                continue
            p = subprocess.run([sys.executable, __file__, "--one", size, "--tile", str(tile), "--net", a.net],
                               capture_output=True, text=True)
            row.append(json.loads(p.stdout.splitlines()[-1]) if p.returncode == 0 else None)
        whole, tiled = row
        n = tiles.tile_count(h, w, a.tile)
        fmt = lambda r, k: "not run" if r is None else f"{r[k]:.1f}" if k == "seconds" else f"{r[k]:.2f}"
        print(f"| {size} | {fmt(whole, 'seconds')} | {fmt(whole, 'peak_gb')} | {n} x {a.tile} px | {fmt(tiled, 'seconds')} | {fmt(tiled, 'peak_gb')} |")


def agreement(a):
    import checkpoint
    from image_io import read_image, to_model
    from seeding import ImageRNG

    net, op, meta = checkpoint.load_model(a.model, "cpu")
    restore = sampling.make_restorer(net, torch.device("cpu"))
    x0 = to_model(read_image(a.image, channels=meta["image"]["channels"]))[None]
    hidden = ImageRNG([0]).draw(op, x0)
    x_t = op.apply(x0, a.t, hidden)
    rmse = lambda u, v: float(((u.clamp(-1, 1) - v.clamp(-1, 1)) / 2).pow(2).mean().sqrt())
    print(f"\n{a.image} ({x0.shape[-1]}x{x0.shape[-2]}) through {a.model} ({op.name}, T={op.T}), degraded to t = {a.t}: "
          f"RMSE to the original {rmse(x_t, x0):.4f}")
    print("| sampler | tiles | overlap | RMSE tiled vs whole | max abs | RMSE to original, tiled | whole |")
    print("|---|---|---|---|---|---|---|")
    for sampler, steps in (("direct", None), ("tacos", min(a.t, 10))):
        whole = samplers.sample(sampler, restore, op, x_t, a.t, hidden, steps)
        for tile in (64, 128, 256):
            if tile >= max(x0.shape[-2:]):
                continue
            out = samplers.sample(sampler, tiles.tiled(restore, tile), op, x_t, a.t, hidden, steps)
            print(f"| {sampler}{'' if steps is None else f' ({steps} steps)'} | {tile} px | {tiles.tile_overlap(tile)} px | "
                  f"{rmse(out, whole):.4f} | {float(((out.clamp(-1, 1) - whole.clamp(-1, 1)) / 2).abs().max()):.3f} | "
                  f"{rmse(out, x0):.4f} | {rmse(whole, x0):.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="small")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--whole-max", type=float, default=4.5, help="megapixels: larger images run tiled only")
    ap.add_argument("--model"), ap.add_argument("--image"), ap.add_argument("--t", type=int, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_call(a)))
        return
    cost(a)
    if a.model and a.image:
        a.t = a.t if a.t is not None else 10
        agreement(a)


if __name__ == "__main__":
    main()
