"""Large images: both exact paths of every transform, the mask without a T x area table, and
memory that stays bounded at 4096 x 4096."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import gen, rand_images
from test_operators import mask_reference

import cold
import operators as O
import spectral

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 28, 31, 400, 401])
def test_dct_fft_path_equals_the_matrix(n, monkeypatch):
    monkeypatch.setattr(spectral, "DENSE_MAX", 0)
    x = torch.randn(2, 3, 4, n, generator=gen(n))
    C = spectral.dct_matrix(n).float()
    for dim in (-1, -2):
        xd = x if dim == -1 else x.transpose(-1, -2).contiguous()
        ref = x @ C.T if dim == -1 else C @ xd
        c = spectral.dct(xd, dim)
        assert (c - ref).abs().max() < 1e-4 * max(1, n**0.5)
        assert (spectral.idct(c, dim) - xd).abs().max() < 1e-5 * max(1, n**0.5)


@pytest.mark.parametrize("preset", ["quartic", "ddpm"])
def test_blurdiff_fft_path_equals_dense(preset, monkeypatch):
    op = O.make_operator("blurdiff", preset)
    x = rand_images(2, 3, 19, 24)
    t = torch.tensor([500, 1000])
    hidden = op.draw(x, gen(1))
    dense = op.apply(x, t, hidden)
    monkeypatch.setattr(spectral, "DENSE_MAX", 0)
    assert (op.apply(x, t, hidden) - dense).abs().max() < 1e-5


@pytest.mark.parametrize("keep", [True, False])
def test_mask_far_beyond_its_sigmas_and_without_the_kept_table(keep, monkeypatch):
    """80 x 90 px against mnist's sigma_T = 6 px: distances past the 80 sigma^2 cut-off, random
    centres at the corners; the rows-only path (a large image's) gives the same masks."""
    if not keep:
        monkeypatch.setattr(cold.Mask, "TABLE_MAX", 0)
    op = O.make_operator("mask", "mnist")
    x = rand_images(3, 1, 80, 90)
    hidden = {"centre": torch.tensor([[0, 0], [79, 89], [40, 3]])}
    for t in (1, 17, op.T):
        y = op.apply(x, torch.tensor([t, op.T, 1]), hidden)
        for b, tb in enumerate((t, op.T, 1)):
            ref = x[b] * mask_reference(op, 80, 90, hidden["centre"][b].tolist(), tb).float()
            assert (y[b] - ref).abs().max() < 1e-5
    assert bool(op._tables) == keep


def test_large_mask_computes_only_the_distances_that_occur(monkeypatch):
    """A large image's rows are computed at the squared distances its pixels have (a sixth of the
    integers up to the largest), not at every integer below Q, and are gathered back to the right pixels."""
    monkeypatch.setattr(cold.Mask, "TABLE_MAX", 0)
    asked = []
    rows = cold.Mask._rows
    monkeypatch.setattr(cold.Mask, "_rows", lambda self, want, d2: asked.append(d2) or rows(self, want, d2))
    op = O.make_operator("mask", "celeba")  # centred, sigma_T = 20 px: Q = 32,001 > the 60 x 80 image's 9,842
    x = rand_images(2, 1, 60, 80)
    centre = torch.tensor([[30, 40], [0, 79]])
    y = op.apply(x, torch.tensor([op.T, 7]), {"centre": centre})
    d2 = lambda c: ((torch.arange(60)[:, None] - c[0]) ** 2 + (torch.arange(80) - c[1]) ** 2).flatten()  # noqa: E731
    assert torch.equal(asked[0], torch.cat([d2(c) for c in centre.tolist()]).unique())
    assert len(asked[0]) < 59**2 + 79**2 + 1
    for b, tb in enumerate((op.T, 7)):
        ref = x[b] * mask_reference(op, 60, 80, centre[b].tolist(), tb).float()
        assert (y[b] - ref).abs().max() < 1e-5


def peak_mb(code: str) -> float:
    """Run `code` in a fresh process and return the growth of its peak resident memory in MB."""
    script = textwrap.dedent(f"""
        import resource, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        torch.set_num_threads(2)
        import operators as O
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    """) + textwrap.dedent(code) + "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]) / 1024


@pytest.mark.parametrize("name,params", [("mask", "T=10, std=0.5, init=1.0"), ("blur", "T=10, padding='reflect', kernel_size=5")])
def test_4096_square_in_bounded_memory(name, params):
    """One grey 4096 x 4096 image (64 MB as float32): the old mask table alone was T x 4 x area
    float64 (5.4 GB at T = 10); the FFT blur and the table-free mask stay within a few copies."""
    grown = peak_mb(f"""
        op = O.make_operator({name!r}, **dict({params}))
        x = torch.rand(1, 1, 4096, 4096) * 2 - 1
        y = op.degrade(x, torch.tensor([op.T]), torch.Generator().manual_seed(0))
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert (y - x).abs().max() > 0.1  # it did something
    """)
    assert grown < 700, f"{name}: peak grew by {grown:.0f} MB"
