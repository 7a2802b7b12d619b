import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
FMNIST = DATA / "fmnist"
PHOTO = ROOT / "examples" / "chelsea.png"

sys.path.insert(0, str(ROOT))

import operators as O  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist, each worker (and every process its tests start) gets its share of the cores:
    two workers' OpenMP threads waiting for each other's busy cores make a step ten times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run under `python -m pytest -m cuda` on a GPU and are skipped without one."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `python -m pytest -m cuda` on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def rand_images(b=3, c=3, h=32, w=28, seed=0):
    import torch

    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gen(seed=0):
    import torch

    return torch.Generator().manual_seed(seed)


def make(name, preset=None, **kw):
    """An operator ready to apply (animorph gets a few random source images)."""
    op = O.make_operator(name, preset, **kw)
    if op.needs_source:
        op.source = rand_images(5, 3, 20, 24, seed=9)
    return op


ALL = [(name, preset) for name, cls in O.OPERATORS.items() for preset in cls.PRESETS]


def png(data: bytes):
    """A PNG's pixels as a numpy array."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def run_cli(*args, stdin: bytes | None = None, cwd=None, env=None):
    """Run `python -m colddiff ARGS` as a user would: real pipes, real exit code."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "colddiff", *map(str, args)],
        input=stdin if stdin is not None else b"", capture_output=True, cwd=cwd, env=e, timeout=600,
    )


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def invoke(*args, stdin: bytes | None = None, env=None):
    """The same command in this process (no 2 s torch import); an exception escaping is a bug."""
    import torch
    from typer.testing import CliRunner

    import colddiff

    threads = torch.get_num_threads()  # commands set it (--threads, or the idle cores): not for the tests after
    try:
        r = CliRunner().invoke(colddiff.app, [str(a) for a in args], input=stdin, env=env, catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    return Result(r.exit_code, r.stdout_bytes, r.stderr_bytes)


@pytest.fixture
def cli():
    return invoke


@pytest.fixture
def cli_process():
    return run_cli


TRAIN_ARGS = ["--op", "blur", "--preset", "mnist", "--net", "tiny", "--steps", "300", "--batch", "16", "--accumulate", "1",
              "--lr", "3e-3", "--lr-schedule", "cosine", "--ema-start", "1000000", "--save-every", "100", "--sample-every", "100",
              "--no-augment", "--seed", "0"]  # cosine: at a constant lr the last step's weights restored with Algorithm 2 no better than x_T


@pytest.fixture(scope="session")
def fmnist_split(tmp_path_factory):
    """The bundled Fashion-MNIST subset split 250 train / 50 held out."""
    import shutil

    root = tmp_path_factory.mktemp("fmnist")
    files = sorted(FMNIST.iterdir())
    for name, part in (("train", files[:250]), ("test", files[250:])):
        (root / name).mkdir()
        for f in part:
            shutil.copy(f, root / name / f.name)
    return root / "train", root / "test"


@pytest.fixture(scope="session")
def blur_model(fmnist_split, tmp_path_factory):
    """A tiny blur model trained for 300 CPU steps through the CLI (~45 s), shared by the tests."""
    out = tmp_path_factory.mktemp("model") / "blur.safetensors"
    r = invoke("train", fmnist_split[0], "-o", out, *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr.decode()
    return out


@pytest.fixture(scope="session")
def gen_model(fmnist_split, tmp_path_factory):
    """A tiny blur-generation model (generation preset shortened to T=30), 100 CPU steps."""
    out = tmp_path_factory.mktemp("gen") / "gen.safetensors"
    r = invoke("train", fmnist_split[0], "-o", out, "--op", "blur", "--preset", "generation", "--param", "T=30",
               "--net", "tiny", "--steps", "100", "--batch", "16", "--accumulate", "1", "--lr", "3e-3", "--ema-start", "1000000",
               "--save-every", "100", "--sample-every", "100", "--no-augment", "--gmm-components", "2",
               "--sampling-steps", "10")
    assert r.returncode == 0, r.stderr.decode()
    return out


@pytest.fixture(params=["dense", "fft"])
def spectral_path(request, monkeypatch):
    """Runs a test on both exact paths of spectral.py: the dense matmul and the FFT."""
    import spectral

    monkeypatch.setattr(spectral, "DENSE_MAX", 10**9 if request.param == "dense" else 0)
    return request.param
