"""The papers' quality figures: SSIM (Gaussian window 11, sigma 1.5, data range 1), RMSE, FID.

Images are (N, C, H, W) in [0, 1]. SSIM follows Wang et al. (K1 = 0.01, K2 = 0.03) with a
separable Gaussian window over 'valid' positions, averaged per image over channels and pixels.
FID uses the pytorch-fid Inception-v3 (`pip install colddiff[fid]`) only when its weights are on
disk: never a download.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from errors import UserError
from seeding import ImageRNG

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


def _window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM, shape (N,)."""
    x, y = x.double(), y.double()
    C = x.shape[1]
    g = _window(size, sigma, x.device)
    if min(x.shape[-2:]) < size:
        raise UserError(f"SSIM needs images of at least {size} px, got {tuple(x.shape[-2:])}")

    def blur(z):
        z = F.conv2d(z, g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        return F.conv2d(z, g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).float()


def rmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image root mean squared error, shape (N,)."""
    return (x.double() - y.double()).pow(2).mean((1, 2, 3)).sqrt().float()


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) of two feature sets (N, D), in float64."""
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    # Tr (S1 S2)^1/2 = sum of sqrt of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, PSD)
    e1, v1 = torch.linalg.eigh(s1)
    r1 = (v1 * e1.clamp(min=0).sqrt()) @ v1.T
    tr_sqrt = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


def fid_weights_path(explicit: str | None = None) -> Path | None:
    """The Inception weights file: --fid-weights, else the torch hub cache, else None."""
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / FID_WEIGHTS
    return hub if hub.is_file() else None


def inception_features(images: torch.Tensor, weights: Path, device, batch: int = 100) -> torch.Tensor:
    """pool3 features (N, 2048) of images in [0, 1], through pytorch-fid's FID Inception."""
    from pytorch_fid.inception import InceptionV3  # optional extra

    # pytorch-fid loads its weights through the torch hub cache: point that cache at `weights`
    with tempfile.TemporaryDirectory() as home:
        ckpt = Path(home) / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        (ckpt / FID_WEIGHTS).symlink_to(Path(weights).resolve())
        old = os.environ.get("TORCH_HOME")
        os.environ["TORCH_HOME"] = home
        try:
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
        finally:
            if old is None:
                os.environ.pop("TORCH_HOME")
            else:
                os.environ["TORCH_HOME"] = old
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device).float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            feats.append(net(x)[0].flatten(1).cpu())
    return torch.cat(feats)


def fid_available(explicit: str | None = None) -> tuple[bool, str]:
    """(usable, why not) without touching the network."""
    import importlib.util

    if importlib.util.find_spec("pytorch_fid") is None:
        return False, "FID needs the optional extra: pip install 'colddiff[fid]'"
    if fid_weights_path(explicit) is None:
        where = f"{explicit} not found" if explicit else f"no {FID_WEIGHTS} in the torch hub cache"
        return False, f"FID needs Inception weights offline ({where}); pass --fid-weights PATH"
    return True, ""


def evaluate(sampling, x0, seed: int, batch: int, device, fid_weights=None, progress=lambda done: None):
    """The papers' restoration table for clean images x0 (N, C, H, W) in [-1, 1].

    Degrades image i to T with its own hidden randomness (ImageRNG.numbered(seed, i)), restores
    it with `direct` and `sampling` (sampling.Sampling), and scores degraded / sampled / direct
    against the originals. Returns (table, columns); columns hold the images in [0, 1]."""
    import samplers

    op = sampling.op
    xt, direct, sampled = [], [], []
    for i in range(0, len(x0), batch):
        x = x0[i : i + batch].to(device)
        hidden = ImageRNG.numbered(seed, i, len(x)).draw(op, x)
        x_t = op.apply(x, op.T, hidden)
        xt.append(x_t.cpu())
        direct.append(samplers.sample("direct", sampling.restore, op, x_t, op.T, hidden).cpu())
        sampled.append(sampling(x_t, op.T, hidden).cpu())
        progress(i + len(x))
    unit = lambda xs: (torch.cat(xs).float().clamp(-1, 1) + 1) / 2  # noqa: E731
    columns = {"degraded": unit(xt), "sampled": unit(sampled), "direct": unit(direct), "original": unit([x0])}
    fid_ok, why = fid_available(fid_weights)
    if fid_ok:
        weights = fid_weights_path(fid_weights)
        ref_feats = inception_features(columns["original"], weights, device)
    table = {"sampler": sampling.sampler, "steps": sampling.steps, "z": sampling.z, "n": len(x0), "T": op.T, "fid_available": fid_ok, "fid_note": why}
    per_image = {}
    for name in ("degraded", "sampled", "direct"):
        imgs = columns[name]
        fid = frechet_distance(inception_features(imgs, weights, device), ref_feats) if fid_ok else None
        per_image[name] = ssim(imgs, columns["original"])
        table[name] = {"fid": fid, "ssim": float(per_image[name].mean()), "rmse": float(rmse(imgs, columns["original"]).mean())}
    diff = per_image["sampled"] - per_image["direct"]  # paired: the same images, so their spread cancels
    table["sampled_minus_direct"] = {"ssim": float(diff.mean()), "ssim_se": float(diff.std() / len(diff) ** 0.5) if len(diff) > 1 else None}
    return table, columns


def paired_verdict(diff: float, se: float | None) -> str:
    """What a mean paired difference shows: "higher" or "lower" where it lies beyond 2 standard
    errors of 0 (about 95 % confidence), else "no difference measured" (also with no error known)."""
    if se is None or abs(diff) <= 2 * se:
        return "no difference measured"
    return "higher" if diff > 0 else "lower"


def plan_outputs(out: str | None, force: bool) -> list[Path]:
    """`colddiff eval -o DIR`'s eval.json and grid.png ([] without -o), checked before any work."""
    from outputs import check_folder_name, check_writable

    if out:
        check_folder_name(out, "eval.json and grid.png")
    dests = [Path(out) / "eval.json", Path(out) / "grid.png"] if out else []
    if any(p.exists() for p in dests) and not force:
        raise UserError(f"{next(p for p in dests if p.exists())}: output exists; pass --force to overwrite")
    check_writable(dests)
    return dests


def report(table: dict, sampling, name: str, n: int) -> str:
    """The papers' table of evaluate's results, and the sampled - direct SSIM with its verdict."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    d = table["sampled_minus_direct"]
    lines = [
        f"{sampling.op.name} (T={sampling.op.T}), {n} images, sampler {sampling.sampler}" + (f", {sampling.steps} steps" if sampling.steps else ""),
        "|        | degraded FID | SSIM  | RMSE  | sampled FID | SSIM  | RMSE  | direct FID | SSIM  | RMSE  |",
        "|--------|---|---|---|---|---|---|---|---|---|",
        "| " + name + " | " + " | ".join(fmt(table[c][k]) for c in ("degraded", "sampled", "direct") for k in ("fid", "ssim", "rmse")) + " |",
        f"sampled - direct SSIM: {d['ssim']:+.3f}" + ("" if d["ssim_se"] is None else f" +- {2 * d['ssim_se']:.3f} (2 standard errors "
        f"over the {n} paired images)") + f": {paired_verdict(d['ssim'], d['ssim_se'])}",
    ]
    return "\n".join(lines)


def write_outputs(dests: list[Path], table: dict, columns: dict) -> None:
    """eval.json and grid.png (8 images: degraded, direct, sampled, original in a row each), if -o was given."""
    import json

    from image_io import encode_image, grid_image, to_pixels
    from outputs import atomic_write

    if not dests:
        return
    k = min(8, len(columns["original"]))
    rows = torch.stack([columns[c][:k] for c in ("degraded", "direct", "sampled", "original")], 1).flatten(0, 1)
    atomic_write(dests[1], encode_image(to_pixels(grid_image(rows * 2 - 1, ncol=4))))
    atomic_write(dests[0], (json.dumps(table, indent=2) + "\n").encode())
