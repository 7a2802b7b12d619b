"""Quality and diversity of generated Fashion-MNIST images, without Inception weights.

    python benchmarks/generation.py --train fmnist-train --test fmnist-test \
        --model a.safetensors --model b.safetensors:perfect --n 500

The quality figure is FCD, a Frechet distance in the 128-d penultimate features of a small CNN
trained here on the Fashion-MNIST train split (labels from the NNNNN_LABEL.png names that
shared/tools/fashion_mnist.py writes), between N generated images and N test images; lower is
better, and the test split against the train split gives its floor. Diversity is the mean per-pixel
standard deviation across the generated images (the test images' value for scale).
`MODEL:perfect` generates with perfect symmetry, `MODEL:fixed` with fixed z, `MODEL:steps=K` with
K sampling steps, `MODEL:sampler=NAME` and `MODEL:eta=E` choose the sampler; options combine
(`m.safetensors:perfect:steps=50`, `bd.safetensors:sampler=ddim:steps=20`).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import checkpoint  # noqa: E402
import generative  # noqa: E402
import metrics  # noqa: E402
from colddiff import open_model  # noqa: E402
from image_io import load_folder  # noqa: E402


class Classifier(nn.Module):
    def __init__(self, size=28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x))


def load_labelled(folder, n=None, size=None):
    """Images in [0, 1] (resized to size x size if given) and labels from NNNNN_LABEL.png names."""
    files = sorted(Path(folder).glob("*.png"))[:n]
    images = load_folder(str(folder), size, 1)[: len(files)].float() / 255  # sorted like `files`
    labels = torch.tensor([int(f.stem.split("_")[-1]) for f in files])
    return images, labels


def train_classifier(images, labels, epochs, seed=0):
    torch.manual_seed(seed)
    net = Classifier(images.shape[-1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=g).split(128):
            loss = F.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def features(net, images):
    return torch.cat([net.features(x) for x in images.split(500)])


def generate(spec, n, device):
    """n images of `colddiff generate --seed 0` with the options of `spec` (MODEL:opt:opt...)."""
    path, *opts = spec.split(":")
    symmetry, z, steps, sampler, eta = "broken", None, None, None, 0.0
    for o in opts:
        if o == "perfect":
            symmetry = "perfect"
        elif o in ("fixed", "estimated"):
            z = o
        elif o.startswith("steps="):
            steps = int(o[6:])
        elif o.startswith("sampler="):
            sampler = o[8:]
        elif o.startswith("eta="):
            eta = float(o[4:])
    sampling = open_model(path, device, sampler=sampler, steps=steps, z=z, compile=False, eta=eta)
    out = [imgs.cpu() for _, imgs in generative.generate(sampling, n, 100, 0, device, 0.002 if symmetry == "broken" else 0.0)]
    return (torch.cat(out).clamp(-1, 1) + 1) / 2, sampling.meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=None, help="classifier training images (default: all)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    t0 = time.time()
    # Score at the models' size (they must share one): the classifier sees real images resized to it.
    size = checkpoint.load_model(a.model[0].split(":")[0])[2]["image"]["height"] if a.model else None
    tr_x, tr_y = load_labelled(a.train, a.train_images, size)
    te_x, te_y = load_labelled(a.test, None, size)
    clf = train_classifier(tr_x, tr_y, a.epochs)
    with torch.no_grad():
        acc = float((clf(te_x).argmax(1) == te_y).float().mean())
    ref = features(clf, te_x[: a.n])
    floor = metrics.frechet_distance(features(clf, tr_x[: a.n]), ref)
    print(f"classifier: {a.epochs} epochs on {len(tr_x)} images, test accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
    rows = [("test split vs train split (floor)", floor, float(te_x[: a.n].std(0).mean()), 0.0)]
    for spec in a.model:
        t1 = time.time()
        images, meta = generate(spec, a.n, device)
        fcd = metrics.frechet_distance(features(clf, images.float()), ref)
        rows.append((spec, fcd, float(images.std(0).mean()), time.time() - t1))
    print(f"\n{a.n} images each, torch {torch.__version__}, {device}")
    print("| images | FCD (lower is better) | diversity (pixel std) | generation s |")
    print("|---|---|---|---|")
    for name, fcd, div, secs in rows:
        print(f"| {name} | {fcd:.2f} | {div:.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
