"""Reading a training folder of large photos at a small size: JPEG decoded whole vs at reduced scale.

    python benchmarks/loading.py                       # 20 photos of 4000x3000 to 128 px
    python benchmarks/loading.py --n 50 --size 64 --px 6000x4000

Writes --n JPEGs (quality 92) of --px, each one of --photos (default ../shared/data/photos, else
tests/data/photos) tiled at its own resolution, alternately landscape and portrait, then loads the folder as `colddiff train --size` does, once with every JPEG
decoded whole (SHRINK_MARGIN huge) and once at libjpeg's reduced scales (image_io.SHRINK_MARGIN x the
size kept, and 2x for comparison), each in a fresh process so that its peak memory is its own.
Prints seconds, peak resident memory and the largest and mean difference from the full decode.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_load(folder: str, size: int, margin: float, out: str) -> None:
    """In this (fresh) process: load the folder with SHRINK_MARGIN = margin; seconds, peak RSS, pixels."""
    import resource
    import time

    from safetensors.torch import save_file

    import folders
    import image_io

    image_io.SHRINK_MARGIN = margin
    start = time.perf_counter()
    x = folders.load_folder(folder, size, None)
    seconds = time.perf_counter() - start
    save_file({"images": x}, out)  # safetensors: nothing here is ever unpickled
    print(json.dumps({"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--px", default="4000x3000")
    shared = ROOT.parent / "shared" / "data" / "photos"
    p.add_argument("--photos", default=str(shared if shared.is_dir() else ROOT / "tests" / "data" / "photos"))
    p.add_argument("--one", nargs=3, metavar=("FOLDER", "MARGIN", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return one_load(a.one[0], a.size, float(a.one[1]), a.one[2])

    import torch
    from PIL import Image
    from safetensors.torch import load_file

    import image_io

    w, h = map(int, a.px.split("x"))
    photos = sorted(p for p in Path(a.photos).iterdir() if p.suffix.lower() in (".png", ".jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(a.n):
            tile = Image.open(photos[i % len(photos)]).convert("RGB")
            im = Image.new("RGB", (w, h) if i % 2 == 0 else (h, w))
            for y in range(0, im.height, tile.height):  # tiled at its own resolution: a photo's detail, not an upscale's blur
                for x in range(0, im.width, tile.width):
                    im.paste(tile, (x, y))
            im.save(folder / f"{i:03d}.jpg", quality=92)
        rows = []
        for label, margin in (("whole", 1e9), (f"reduced, margin {image_io.SHRINK_MARGIN}", image_io.SHRINK_MARGIN), ("reduced, margin 2", 2)):
            out = Path(tmp) / f"{margin}.safetensors"
            r = subprocess.run([sys.executable, __file__, "--size", str(a.size), "--one", str(folder), str(margin), str(out)],
                               check=True, capture_output=True, text=True)
            rows.append((label, json.loads(r.stdout.splitlines()[-1]), load_file(out)["images"]))
    full = rows[0][2].int()
    print(f"{a.n} JPEGs of {a.px} loaded at {a.size} px ({torch.get_num_threads()} threads)\n")
    print("| decode | seconds | peak memory | max / mean difference from whole (grey levels) |")
    print("|---|---|---|---|")
    for label, r, x in rows:
        d = (x.int() - full).abs().float()
        print(f"| {label} | {r['seconds']:.2f} | {r['peak_gb']:.2f} GB | {d.max():.0f} / {d.mean():.3f} |")


if __name__ == "__main__":
    main()
