"""SSIM, RMSE and the Frechet distance against slow, independent implementations."""
import math

import numpy as np
import pytest
import torch

import metrics


def ssim_slow(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. SSIM, one 11x11 Gaussian window (sigma 1.5) at a time, valid positions, data range 1."""
    ax = np.arange(11) - 5
    w = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 17, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    fast = metrics.ssim(x, y)
    for b in range(2):
        assert float(fast[b]) == pytest.approx(ssim_slow(x[b].double().numpy(), y[b].double().numpy()), abs=1e-6)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2))


def test_rmse_matches_definition():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 1, 9, 9, generator=g), torch.rand(3, 1, 9, 9, generator=g)
    for b in range(3):
        d = (x[b] - y[b]).flatten().tolist()
        assert float(metrics.rmse(x, y)[b]) == pytest.approx(math.sqrt(sum(v * v for v in d) / len(d)), rel=1e-6)


def test_frechet_distance_of_gaussians():
    """Two Gaussians with known means and diagonal covariances: FD has a closed form."""
    g = torch.Generator().manual_seed(2)
    n, d = 200_000, 3
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 1.0, 2.0])
    f1 = torch.randn(n, d, generator=g, dtype=torch.float64) * s1.double().sqrt()
    f2 = torch.randn(n, d, generator=g, dtype=torch.float64) * s2.double().sqrt() + 1.0
    expect = d * 1.0 + float((s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    assert metrics.frechet_distance(f1, f2) == pytest.approx(expect, abs=0.03)
    assert metrics.frechet_distance(f1, f1) == pytest.approx(0, abs=1e-6)


def test_fid_never_downloads(cli, blur_model, fmnist_split, tmp_path, monkeypatch):
    """With pytorch-fid importable but no weights on disk, eval says n/a and opens no connection."""
    import socket

    fake = tmp_path / "site" / "pytorch_fid"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "inception.py").write_text("raise RuntimeError('FID code must not run without weights')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-home"))

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    ok, why = metrics.fid_available(None)
    assert not ok and "--fid-weights" in why and "colddiff[fid]" not in why  # the package is there, the weights are not
    assert not metrics.fid_available(str(tmp_path / "nope.pth"))[0]
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "4")
    assert r.returncode == 0, r.stderr.decode()
    assert "n/a" in r.stdout.decode() and "--fid-weights" in r.stderr.decode()


def test_a_paired_difference_counts_only_beyond_two_standard_errors():
    from metrics import paired_verdict

    assert paired_verdict(0.05, 0.01) == "higher" and paired_verdict(-0.05, 0.01) == "lower"
    assert paired_verdict(0.019, 0.01) == paired_verdict(-0.02, 0.01) == "no difference measured"
    assert paired_verdict(0.3, None) == "no difference measured"  # one image: no error to judge by
