"""Behaviour fingerprint: the SHA-256 of every output of a fixed set of commands, to show a refactor changed nothing.

    git worktree add /tmp/old OLD_COMMIT
    python benchmarks/hashes.py --code /tmp/old --work /tmp/hashwork > before.json   # the old code
    python benchmarks/hashes.py --work /tmp/hashwork > after.json                   # this checkout's (same --work: notes name paths)
    python benchmarks/hashes.py --compare before.json after.json

Covers every operator (degrade, at t = T/2 and T, fitted to a photo and not), strips, folders,
training (tiny networks, a few steps), every sampler on a model it applies to (restore, one at a
time, a folder, tiles, strips with x0_hat), generate (grid, DIR/, strip) and eval. One thread, so
that the bytes are reproducible.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FMNIST = ROOT / "tests" / "data" / "fmnist"
PHOTO = ROOT / "examples" / "chelsea.png"
OPS = ["blur", "mask", "colour", "pixelate", "desaturate", "noise", "blurdiff", "snow"]
MODELS = {  # name: train options (tiny network, 3 steps at 28 px, on the bundled test images)
    "blur": ["--op", "blur"], "noise": ["--op", "noise"], "gen": ["--op", "blur", "--preset", "generation"],
    "bd": ["--op", "blurdiff"], "pix": ["--op", "pixelate"], "snow": ["--op", "snow"], "mask": ["--op", "mask"],
}
RESTORES = [  # (model, sampler options)
    ("blur", []), ("blur", ["--sampler", "direct"]), ("blur", ["--sampler", "naive"]), ("blur", ["--sampler", "tacos", "--steps", "5"]),
    ("noise", ["--z", "estimated", "--steps", "10"]), ("noise", ["--z", "fixed", "--steps", "10"]),
    ("bd", ["--sampler", "ddim", "--steps", "10"]), ("bd", ["--sampler", "dpmpp_2m", "--eta", "1", "--steps", "10"]),
    ("bd", ["--sampler", "ancestral"]), ("bd", ["--sampler", "reverse"]), ("snow", ["--steps", "10"]), ("mask", ["--steps", "10"]),
    ("pix", []),
]


CODE = ROOT  # the checkout whose colddiff runs (--code)


def cli(work: Path, *args) -> None:
    env = {**os.environ, "PYTHONPATH": str(CODE), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "colddiff", *map(str, args), "--threads", "1", "--quiet"], cwd=work, env=env,
                       capture_output=True)
    if r.returncode:
        raise SystemExit(f"{args}: exit {r.returncode}: {r.stderr.decode()}")


def run(work: Path) -> None:
    images = sorted(FMNIST.iterdir())[:3]
    (work / "in").mkdir()
    for f in images:
        shutil.copy(f, work / "in" / f.name)
    shutil.copy(PHOTO, work / "photo.png")
    shutil.copy(ROOT / "models" / "fmnist-blur-gen.safetensors", work / "bundled.safetensors")  # notes name the model's path
    for op in OPS:
        cli(work, "degrade", images[0], "--op", op, "-o", f"d_{op}_T.png", "--seed", "3")
        cli(work, "degrade", images[0], "--op", op, "--t", "2", "-o", f"d_{op}_2.png", "--seed", "3")
        cli(work, "degrade", "photo.png", "--op", op, "-o", f"d_{op}_photo.png")
    cli(work, "degrade", "photo.png", "--op", "mask", "--no-fit", "-o", "d_mask_nofit.png")
    cli(work, "degrade", images[0], "--op", "snow", "--strip", "-o", "d_snow_strip.png")
    cli(work, "degrade", "photo.png", "--op", "blur", "--strip", "--frames", "4", "-o", "d_blur_strip.png")
    cli(work, "degrade", "in", "--op", "mask", "--t", "20", "-o", "d_folder/")
    for name, opts in MODELS.items():
        cli(work, "train", FMNIST, "-o", f"{name}.safetensors", *opts, "--net", "tiny", "--size", "28", "--steps", "3", "--batch", "4",
            "--accumulate", "1", "--save-every", "3", "--sample-every", "3", "--seed", "1")
    for i, (model, opts) in enumerate(RESTORES):
        op = MODELS[model][1]
        cli(work, "degrade", images[1], "--model", f"{model}.safetensors", "--t", "10" if op != "pixelate" else "2", "-o", f"x_{i}.png")
        cli(work, "restore", f"x_{i}.png", "--model", f"{model}.safetensors", *opts, "-o", f"r_{i}.png")
    cli(work, "restore", "d_folder", "--model", "mask.safetensors", "--steps", "5", "-o", "r_folder/")
    from PIL import Image

    Image.open(PHOTO).convert("L").save(work / "grey.png")  # the models are grey
    cli(work, "degrade", "grey.png", "--model", "blur.safetensors", "--t", "3", "-o", "x_photo.png")
    cli(work, "restore", "x_photo.png", "--model", "blur.safetensors", "--tile", "64", "-o", "r_tiled.png")
    cli(work, "restore", "x_0.png", "--model", "blur.safetensors", "--strip", "--x0-hat", "-o", "r_strip.png")
    for model in ("gen", "noise", "bd"):
        cli(work, "generate", "--model", f"{model}.safetensors", "--n", "4", "--steps", "10", "-o", f"g_{model}.png", "--seed", "2")
    cli(work, "generate", "--model", "gen.safetensors", "--n", "3", "--steps", "10", "-o", "g_dir/")
    cli(work, "generate", "--model", "gen.safetensors", "--n", "2", "--steps", "10", "--strip", "--x0-hat", "-o", "g_strip.png")
    cli(work, "generate", "--model", "bundled.safetensors", "--n", "4", "--steps", "10", "-o", "g_bundled.png")
    cli(work, "eval", "in", "--model", "blur.safetensors", "--n", "3", "-o", "e/")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="an empty folder to run in (removed first)")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout to run (default: this one)")
    ap.add_argument("--compare", nargs=2, type=Path)
    a = ap.parse_args()
    global CODE
    CODE = a.code.resolve()
    if a.compare:
        before, after = (json.loads(p.read_text()) for p in a.compare)
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(f"{len(before)} outputs before, {len(after)} after, {len(differ)} differ" + "".join(f"\n  {k}" for k in differ))
        raise SystemExit(1 if differ else 0)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    run(a.work)
    skip = (".state.safetensors", ".lock")
    files = sorted(p for p in a.work.rglob("*") if p.is_file() and not p.name.endswith(skip) and ".run" not in p.parts[-2])
    digests = {str(p.relative_to(a.work)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    # a model's metadata names the colddiff and torch versions, not behaviour: its tensors are what count
    for p in files:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(p))
            digests[str(p.relative_to(a.work))] = hashlib.sha256(b"".join(tensors[k].numpy().tobytes() for k in sorted(tensors))).hexdigest()
    print(json.dumps(digests, indent=1))


if __name__ == "__main__":
    main()
