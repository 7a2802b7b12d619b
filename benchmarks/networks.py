"""The `paper` network, released blocks vs colddiff1 (colddiff's first variant), at one budget.

    python benchmarks/networks.py                                  # small widths, 600 steps, CPU
    python benchmarks/networks.py --net paper --steps 20000 --device cuda

Trains both variants of the ConvNeXt UNet on the same Fashion-MNIST images in the same order
(same seed), blur (mnist preset, T = 20), then restores held-out images degraded to T with
`direct` and with `tacos` (Algorithm 2, every step) and scores SSIM and RMSE against the originals
(metrics.evaluate). Training img/s is measured over the run. Prints one table.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import checkpoint  # noqa: E402
import metrics  # noqa: E402
import operators  # noqa: E402
import train as T  # noqa: E402
import unet  # noqa: E402
from folders import load_folder  # noqa: E402
from image_io import to_model  # noqa: E402
from sampling import Sampling, make_restorer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "fashion-mnist-2k"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA), help="a folder of images; the last --held images are held out")
    ap.add_argument("--held", type=int, default=200)
    ap.add_argument("--net", default="small", help="convnext preset whose widths both variants use (default small)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "runs" / "networks"))
    a = ap.parse_args()
    device = torch.device(a.device)
    images = load_folder(a.data, None, 1)
    train_set, held = images[: -a.held], to_model(images[-a.held :])
    op = operators.make_operator("blur", "mnist")
    cfg = T.TrainConfig(steps=a.steps, batch=a.batch, accumulate=1, lr=a.lr, lr_schedule="cosine", ema_start=a.steps // 5,
                        save_every=a.steps, sample_every=a.steps, augment=False, compile=device.type == "cuda")
    rows = []
    for variant in ("released", "colddiff1"):
        out = Path(a.out) / f"{variant}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        for p in (out, checkpoint.state_path(out)):
            p.unlink(missing_ok=True)
        start = time.perf_counter()
        run = T.train(train_set, op, a.net, str(out), cfg, device, resume=False, log=lambda m: None, net_overrides={"variant": variant})
        rate = a.steps * a.batch / (time.perf_counter() - start)
        net, op_, meta = checkpoint.load_model(out, device)
        sampling = Sampling(op_, meta, make_restorer(net, device), "tacos", None, "fixed")
        table, _ = metrics.evaluate(sampling, held, seed=0, batch=100, device=device)
        rows.append((variant, unet.count_parameters(run.net), unet.forward_flops(net.config, 28, 28) / 1e9, rate,
                     sum(run.losses[-50:]) / 50, table))
    print(f"\nblur mnist (T=20), {len(train_set)} train / {a.held} held-out Fashion-MNIST images, 28 px; {a.net} widths, "
          f"{a.steps} steps x {a.batch}, Adam {a.lr} cosine; {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| variant | parameters | GFLOP/fwd | train img/s | final loss | degraded SSIM / RMSE | direct SSIM / RMSE | tacos SSIM / RMSE |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, n, gf, rate, loss, t in rows:
        cells = " | ".join(f"{t[c]['ssim']:.3f} / {t[c]['rmse']:.4f}" for c in ("degraded", "direct", "sampled"))
        print(f"| {variant} | {n:,} | {gf:.3f} | {rate:,.1f} | {loss:.4f} | {cells} |")


if __name__ == "__main__":
    main()
