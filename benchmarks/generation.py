"""Quality and diversity of generated Fashion-MNIST images, without Inception weights.

    python benchmarks/generation.py --train fmnist-train --test fmnist-test \
        --model a.safetensors --model b.safetensors:perfect --n 500

The quality figure is FCD, a Frechet distance in the 128-d penultimate features of a small CNN
trained here on the Fashion-MNIST train split (labels from the NNNNN_LABEL.png names that
shared/tools/fashion_mnist.py writes), between N generated images and N test images; lower is
better, and the test split against the train split gives its floor. A second reference row scores the
train split as `colddiff train --augment` shows it to the network (resized 1.12x, randomly cropped and
flipped): on Fashion-MNIST, where garments face one way, that alone is far from the test split, so a
model trained with it cannot score below that row. Diversity is the mean per-pixel
standard deviation across the generated images (the test images' value for scale); shape diversity
the same after each image's mean brightness is taken away.
`MODEL:perfect` generates with perfect symmetry, `MODEL:nudge` with the released code's one-off
N(0, 0.002^2) on x_T, `MODEL:step_noise=D` / `MODEL:break_noise=B` with those noises (default: what
the model stores), `MODEL:fixed` with fixed z, `MODEL:steps=K` with K sampling steps,
`MODEL:sampler=NAME` and `MODEL:eta=E` choose the sampler, `MODEL:seed=S` the generation seed;
options combine (`m.safetensors:perfect:steps=50`, `bd.safetensors:sampler=ddim:steps=20`).
--classes adds how the classifier labels each set: images per class, its mean top probability, and
the part of the FCD that the distance between the feature means makes alone.
"""
import argparse
import sys
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import checkpoint  # noqa: E402
import generative  # noqa: E402
import metrics  # noqa: E402
from folders import load_folder  # noqa: E402
from image_io import encode_image, grid_image, to_pixels  # noqa: E402
from sampling import Choices, open_model  # noqa: E402
from train import augment  # noqa: E402


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


def diversity(images):
    """(diversity, shape diversity): the mean per-pixel std across images, and the same after each
    image's own mean is taken away, so that a spread of brightness alone (a flat x_T's colour) does
    not count as a spread of shapes."""
    centred = images - images.mean((-2, -1), keepdim=True)
    return float(images.std(0).mean()), float(centred.std(0).mean())


@torch.no_grad()
def features(net, images):
    return torch.cat([net.features(x) for x in images.split(500)])


def class_balance(clf, images, ref):
    """How the classifier labels `images`: images per class, its mean top probability, and
    |mu - mu_ref|^2, the part of the Frechet distance that the feature means make alone."""
    with torch.no_grad():
        p = torch.cat([clf(x) for x in images.split(500)]).softmax(1)
        mean_term = float((features(clf, images).mean(0) - ref.mean(0)).pow(2).sum())
    return torch.bincount(p.argmax(1), minlength=10).tolist(), float(p.max(1).values.mean()), mean_term


def generate(spec, n, device):
    """n images of `colddiff generate --seed S` (default 0) with the options of `spec` (MODEL:opt:opt...)."""
    path, *opts = spec.split(":")
    o = {"symmetry": "broken", "z": None, "steps": None, "sampler": None, "eta": None, "break_noise": None, "step_noise": None, "seed": 0}
    for opt in opts:
        key, _, value = opt.partition("=")
        if opt == "perfect":
            o["symmetry"] = "perfect"
        elif opt == "nudge":  # the released code's way, whatever the model stores
            o["break_noise"], o["step_noise"] = generative.NUDGE, 0.0
        elif opt in ("fixed", "estimated"):
            o["z"] = opt
        elif key in ("steps", "sampler", "eta", "break_noise", "step_noise", "seed"):
            o[key] = {"steps": int, "seed": int, "sampler": str}.get(key, float)(value)
        else:
            raise SystemExit(f"unknown option {opt!r} in {spec}")
    sampling = open_model(path, device, Choices(sampler=o["sampler"], steps=o["steps"], z=o["z"], eta=o["eta"], compile=False))
    x_T_noise = generative.break_symmetry(sampling, o["symmetry"], o["break_noise"], o["step_noise"])
    out = [imgs.cpu() for _, imgs in generative.generate(sampling, n, 100, o["seed"], device, x_T_noise)]
    return (torch.cat(out).clamp(-1, 1) + 1) / 2, sampling.meta


def print_tables(a, rows, labelled, clf, ref, device):
    """The FCD table, and with --classes how the classifier labels each set."""
    print(f"\n{a.n} images each, torch {torch.__version__}, {device}")
    print("| images | FCD (lower is better) | diversity (pixel std) | shape diversity | generation s |")
    print("|---|---|---|---|---|")
    for name, fcd, div, shape, secs in rows:
        print(f"| {name} | {fcd:.2f} | {div:.3f} | {shape:.3f} | {secs:.0f} |")
    if a.classes:
        print("\n| images | images per class (0-9) | mean top probability | FCD from the means alone |\n|---|---|---|---|")
        for name, x in labelled:
            counts, top, mean_term = class_balance(clf, x, ref)
            print(f"| {name} | {' '.join(map(str, counts))} | {top:.3f} | {mean_term:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=None, help="classifier training images (default: all)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--classifier", help="a .safetensors file: load the classifier from it, or train it and save it there")
    ap.add_argument("--grids", help="a folder: write each model's first 64 images there as a grid")
    ap.add_argument("--classes", action="store_true", help="also print how the classifier labels each set: images per "
                    "class, its mean top probability, and the FCD's share from the feature means alone")
    a = ap.parse_args()
    device = torch.device(a.device)
    t0 = time.time()
    # Score at the models' size (they must share one): the classifier sees real images resized to it.
    size = checkpoint.load_model(a.model[0].split(":")[0])[2]["image"]["height"] if a.model else None
    cached = a.classifier and Path(a.classifier).exists()
    tr_x, tr_y = load_labelled(a.train, a.n if cached else a.train_images, size)  # a cached classifier needs the floor's only
    te_x, te_y = load_labelled(a.test, None, size)
    if cached:
        clf = Classifier(tr_x.shape[-1])
        clf.load_state_dict(safetensors.torch.load_file(a.classifier))
        clf.eval()
    else:
        clf = train_classifier(tr_x, tr_y, a.epochs)
        if a.classifier:
            safetensors.torch.save_file(clf.state_dict(), a.classifier)
    with torch.no_grad():
        acc = float((clf(te_x).argmax(1) == te_y).float().mean())
    ref = features(clf, te_x[: a.n])
    floor = metrics.frechet_distance(features(clf, tr_x[: a.n]), ref)
    how = f"loaded from {a.classifier}" if cached else f"{a.epochs} epochs on {len(tr_x)} images"
    print(f"classifier: {how}, test accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
    augmented = (augment(tr_x[: a.n] * 2 - 1, torch.Generator().manual_seed(0)) + 1) / 2
    rows = [("test split vs train split (floor)", floor, *diversity(te_x[: a.n]), 0.0),
            ("train split with --augment (resize 1.12x, crop, flip)", metrics.frechet_distance(features(clf, augmented), ref),
             *diversity(augmented), 0.0)]
    labelled = [("test split", te_x[: a.n])]
    for spec in a.model:
        t1 = time.time()
        images, meta = generate(spec, a.n, device)
        fcd = metrics.frechet_distance(features(clf, images.float()), ref)
        if a.grids:
            name = Path(spec.split(":")[0]).stem + "".join("_" + o.replace("=", "") for o in spec.split(":")[1:])
            Path(a.grids).mkdir(parents=True, exist_ok=True)
            Path(a.grids, f"{name}.png").write_bytes(encode_image(to_pixels(grid_image(images[:64] * 2 - 1, ncol=8))))
        rows.append((spec, fcd, *diversity(images), time.time() - t1))
        labelled.append((spec, images.float()))
    print_tables(a, rows, labelled, clf, ref, device)


if __name__ == "__main__":
    main()
