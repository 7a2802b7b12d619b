"""Blur diffusion (Lee et al.): DCT, one-shot forward vs the Markov chain, DDPM as f = 0,
per-channel blur, and the reverse sampler."""

import pytest
import torch

import blurdiff as BD
import generative as G
import operators as O
import samplers as S
from common import UserError


def test_dct_is_orthonormal_and_inverts_exactly():
    for n in (1, 5, 8, 28):
        C = BD.dct_matrix(n)
        assert torch.allclose(C @ C.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    op = O.make_operator("blurdiff")
    x = torch.rand(2, 3, 12, 9, dtype=torch.float32)
    assert torch.allclose(op.from_dct(op.to_dct(x)), x, atol=1e-6)
    assert torch.allclose(op.to_dct(x).pow(2).sum(), x.pow(2).sum(), rtol=1e-5)  # Parseval


def test_eigenvalues_are_the_sampled_kernel_response():
    op = O.make_operator("blurdiff")
    g = O.gaussian_kernel1d(3, 0.4)
    assert g.tolist() == pytest.approx([0.0404, 0.9192, 0.0404], abs=1e-4)
    d = op.log_d(16, 16, "cpu").exp()
    assert float(d.max()) == pytest.approx(1.0) and 0.69 < float(d.min()) < 0.72
    # one step of the blur matrix, built by convolving with symmetric (edge-repeating) padding, is diagonal in the DCT
    n = 10
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j, w in zip((-1, 0, 1), g.tolist()):
            W[i, min(max(i + j, 0), n - 1)] += w
    C = BD.dct_matrix(n)
    D = C @ W @ C.T
    lam = op.log_lambda(n, "cpu").double().exp()
    assert torch.allclose(D, torch.diag(lam), atol=1e-6)


def test_one_shot_matches_the_markov_chain_per_frequency():
    """Run x_i = U(A_i^1/2 U^T x_{i-1} + B_i^1/2 U^T eps_i) step by step; compare mean and variance."""
    op = O.make_operator("blurdiff", T=100, f_max=2.0)  # strong blur so the frequencies separate
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 6, 6, generator=g) * 2 - 1
    n, t = 20000, 60
    x = x0.expand(n, -1, -1, -1).clone()
    for i in range(1, t + 1):
        A = op.log_a_step(i, 6, 6, "cpu").exp()
        c = A.sqrt() * op.to_dct(x) + (1 - A).sqrt() * op.to_dct(torch.randn(x.shape, generator=g))
        x = op.from_dct(c)
    chain = op.to_dct(x)
    abar = op.log_abar(torch.tensor([t]), 6, 6).exp()[0]
    assert torch.allclose(chain.mean(0), abar.sqrt() * op.to_dct(x0)[0], atol=0.03)
    assert torch.allclose(chain.var(0), 1 - abar, atol=0.03)
    shot = op.to_dct(op.degrade(x0.expand(n, -1, -1, -1), torch.full((n,), t), g))
    assert torch.allclose(shot.mean(0), chain.mean(0), atol=0.04) and torch.allclose(shot.var(0), chain.var(0), atol=0.04)
    assert float((abar.max() / abar.min())) > 2  # the blur really made frequencies decay at different rates


def test_f_zero_is_ddpm():
    op = O.make_operator("blurdiff", "ddpm")
    x0 = torch.rand(3, 3, 10, 7) * 2 - 1
    eps = torch.randn(x0.shape)
    t = torch.tensor([1, 400, 1000])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t - 1].float().view(-1, 1, 1, 1)
    ddpm = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    assert torch.allclose(op.apply(x0, t, {"z": op.to_dct(eps), "seed": torch.zeros(3)}), ddpm, atol=1e-5)


def test_training_target_is_the_pixel_noise_that_made_x_t():
    """draw() holds the noise's DCT coefficients z; the loss's target must be eps = U z, the eps of
    x_t = U(Abar^1/2 U^T x0) + U((1 - Abar)^1/2 U^T eps), written with dense DCT matrices."""
    op = O.make_operator("blurdiff", "quartic")
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 3, 9, 6, generator=g) * 2 - 1
    hidden, t = op.draw(x0, g), torch.tensor([7, 900])
    x_t = op.apply(x0, t, hidden).double()
    Ch, Cw = BD.dct_matrix(9), BD.dct_matrix(6)
    fwd, inv = (lambda x: Ch @ x @ Cw.T), (lambda c: Ch.T @ c @ Cw)  # noqa: E731
    abar = op.log_abar(t, 9, 6).exp().double()
    eps = inv((fwd(x_t) - abar.sqrt() * fwd(x0.double())) / (1 - abar).sqrt())
    assert float(op.loss(eps.float(), x0, hidden)) < 1e-9
    assert abs(float(eps.std()) - 1) < 0.15  # and it is unit noise


@pytest.mark.parametrize("size", [(9, 9), (12, 12)])
def test_rgb_impulse_is_the_same_isotropic_blur_in_every_channel(size):
    """The released code lays eigenvalues out channel-major under a channel-interleaved transform:
    a bright pixel in one channel then blurs differently per channel. Here it must not."""
    op = O.make_operator("blurdiff", "quartic")
    H, W = size
    t = torch.tensor([1000])
    responses = []
    for ch in range(3):
        x0 = torch.zeros(1, 3, H, W)
        x0[0, ch, H // 2, W // 2] = 1
        mean = op.apply(x0, t, {"z": torch.zeros_like(x0), "seed": torch.zeros(1)})  # E[x_t] = U(Abar^1/2 U^T x0)
        others = [c for c in range(3) if c != ch]
        assert mean[0, others].abs().max() < 1e-6  # no leak into other channels
        responses.append(mean[0, ch])
    for r in responses[1:]:
        assert torch.allclose(r, responses[0], atol=1e-6)
    r = responses[0]
    if H % 2:  # centred impulse on an odd grid: isotropic means symmetric under transpose and flips
        assert torch.allclose(r, r.T, atol=1e-6) and torch.allclose(r, r.flip(0), atol=1e-6)
    assert float(r.max()) == float(r[H // 2, W // 2]) and float(r[H // 2, W // 2]) < 0.99


@pytest.mark.parametrize("preset", ["ddpm", "quartic"])
def test_reverse_sampler_with_the_exact_score_returns_the_data_point(preset):
    """Data = one image x0: the exact eps is (x_i - U(Abar^1/2 U^T x0)) / (1 - Abar)^1/2 per frequency."""
    op = O.make_operator("blurdiff", preset)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1

    def exact_eps(x, i):
        abar = op.log_abar(torch.full((len(x),), i), 8, 8).exp()
        return op.from_dct((op.to_dct(x) - abar.sqrt() * op.to_dct(x0)) / (1 - abar).sqrt())

    x_T, hidden = G.start(op, None, (1, 1, 8, 8), g)
    x_T2, hidden2 = torch.cat([x_T, x_T]), {"z": torch.cat([hidden["z"]] * 2), "seed": torch.tensor([3, 4])}
    out = S.sample("reverse", exact_eps, op, x_T2, op.T, hidden2)
    assert float((out - x0).pow(2).mean().sqrt()) < 0.03
    with pytest.raises(UserError, match="reverse"):
        S.sample("tacos", exact_eps, op, x_T2, op.T, hidden2)
    with pytest.raises(UserError, match="reverse"):
        S.sample("reverse", exact_eps, O.make_operator("blur"), x_T2, 5, None)


def test_train_and_generate_blurdiff_end_to_end(cli, fmnist_split, tmp_path):
    out = tmp_path / "bd.safetensors"
    r = cli("train", fmnist_split[0], "-o", out, "--op", "blurdiff", "--param", "T=50", "--net", "tiny", "--steps", "20",
            "--batch", "8", "--accumulate", "1", "--lr", "3e-3", "--sample-every", "10", "--save-every", "20", "--size", "16")
    assert r.returncode == 0, r.stderr.decode()
    import json

    lines = [json.loads(line) for line in (tmp_path / "bd.run" / "metrics.jsonl").read_text().splitlines()]
    assert 0.1 < lines[0]["loss"] < 3  # an MSE on unit-variance eps
    a = cli("generate", "--model", out, "--n", "3", "--batch", "2", "-o", f"{tmp_path}/g/")
    assert a.returncode == 0, a.stderr.decode()
    b = cli("generate", "--model", out, "--n", "3", "--batch", "3", "-o", f"{tmp_path}/h/")
    assert b.returncode == 0, b.stderr.decode()
    for i in range(3):  # per-image noise streams: the batch does not matter
        assert (tmp_path / "g" / f"0_{i:06d}.png").read_bytes() == (tmp_path / "h" / f"0_{i:06d}.png").read_bytes()
    r = cli("generate", "--model", out, "--n", "2", "--sampler", "tacos", "-o", tmp_path / "x.png")
    assert r.returncode == 1 and b"reverse" in r.stderr
    for extra in (["--steps", "5"], ["--sampler", "ddim", "--steps", "7", "--eta", "0.5"], ["--sampler", "ancestral"], ["--sampler", "direct"]):
        r = cli("generate", "--model", out, "--n", "2", *extra, "-o", tmp_path / f"{len(extra)}{extra[1]}.png")
        assert r.returncode == 0, (extra, r.stderr.decode())
    r = cli("generate", "--model", out, "--n", "2", "--sampler", "reverse", "--steps", "5", "-o", tmp_path / "y.png")
    assert r.returncode == 1 and b"reverse runs every step" in r.stderr
    r = cli("generate", "--model", out, "--n", "2", "--sampler", "reverse", "--eta", "0.5", "-o", tmp_path / "y.png")
    assert r.returncode == 1 and b"--eta applies to ddim, not reverse" in r.stderr


# ----------------------------------------------------------------------------- the exact step and DDIM


def coefficients(op, x, i):
    """(Abar_i, A_i) per DCT coefficient in float64, straight from the schedule's definition."""
    H, W = x.shape[-2:]
    log_d = op.log_d(H, W, "cpu").double()
    abar = lambda j: torch.exp(op.cum_log_alpha[j] + 2 * op.cum_f[j] * log_d)  # noqa: E731
    return abar, torch.exp(op.log_alpha[i - 1] + 2 * op.f[i - 1] * log_d)


@pytest.mark.parametrize("preset", list(O.OPERATORS["blurdiff"].PRESETS))
@pytest.mark.parametrize("i", [1, 2, 10, 300, 1000])
def test_exact_step_mean_is_the_true_posterior_mean(preset, i):
    """With the oracle eps (the one that made x_i from x0) the step's mean is
    Abar_{i-1}^1/2 B_i/(1 - Abar_i) x0 + A_i^1/2 (1 - Abar_{i-1})/(1 - Abar_i) x_i, per coefficient."""
    op = O.make_operator("blurdiff", preset)
    g = torch.Generator().manual_seed(i)
    x0 = torch.rand(2, 3, 12, 10, generator=g) * 2 - 1
    hidden = op.draw(x0, g)
    x_i = op.apply(x0, torch.full((2,), i), hidden)
    abar, A = coefficients(op, x0, i)
    c0, ci = op.to_dct(x0).double(), op.to_dct(x_i).double()
    true = abar(i - 1).sqrt() * (1 - A) / (1 - abar(i)) * c0 + A.sqrt() * (1 - abar(i - 1)) / (1 - abar(i)) * ci
    post_std = ((1 - A) * (1 - abar(i - 1)) / (1 - abar(i))).sqrt()
    eps = op.from_dct(hidden["z"])  # the oracle: the noise that made x_i
    exact = op.to_dct(op.posterior_step(x_i, eps, i)).double()
    assert (exact - true).abs().max() < 2e-5 * max(1.0, float(true.abs().max()))  # float32 arithmetic
    if i > 1:  # (at i = 1 the posterior is a point)
        assert ((exact - true).abs() / post_std).max() < 2e-3
    if preset == "log" and i == 2:  # Lee et al.'s first-order step misses it by most of a posterior std here
        lee = op.to_dct(op.lee_step(x_i, eps, i)).double()
        assert ((lee - true).abs() / post_std).max() > 0.5


@pytest.mark.parametrize("i", [1, 2, 500, 1000])
def test_with_no_blur_one_step_is_textbook_ddpm(i):
    op = O.make_operator("blurdiff", "ddpm")
    g = torch.Generator().manual_seed(3)
    x, eps, z = (torch.randn(2, 1, 8, 8, generator=g) for _ in range(3))
    xd, epsd, zd = x.double(), eps.double(), z.double()
    beta = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - beta, 0)])
    a, ab, ab_prev = 1 - beta[i - 1], alpha_bar[i], alpha_bar[i - 1]
    ancestral = (xd - beta[i - 1] / (1 - ab).sqrt() * epsd) / a.sqrt() + beta[i - 1].sqrt() * zd
    noise = op.to_dct(z)  # the steps take U^T z
    assert torch.allclose(op.posterior_step(x, eps, i, noise).double(), ancestral, atol=1e-5)
    posterior = (xd - beta[i - 1] / (1 - ab).sqrt() * epsd) / a.sqrt() + (beta[i - 1] * (1 - ab_prev) / (1 - ab)).sqrt() * zd
    assert torch.allclose(op.posterior_step(x, eps, i, noise, variance="posterior").double(), posterior, atol=1e-5)
    x0_hat = (xd - (1 - ab).sqrt() * epsd) / ab.sqrt()
    for s_next in {i - 1, i // 2}:
        ddim = alpha_bar[s_next].sqrt() * x0_hat + (1 - alpha_bar[s_next]).sqrt() * epsd
        assert torch.allclose(op.ddim_step(x, eps, i, s_next).double(), ddim, atol=1e-4 * max(1, float(ddim.abs().max())))


def test_ddim_every_step_eta_1_is_ancestral_with_the_posterior_variance():
    op = O.make_operator("blurdiff", "quartic", T=60)
    g = torch.Generator().manual_seed(5)
    W = torch.randn(1, 1, 8, 8, generator=g) * 0.3
    restore = lambda x, s: torch.tanh(x * W + s / 60)  # noqa: E731  (any fixed function of (x, s))
    x_T, hidden = G.start(op, None, (1, 1, 8, 8), g)
    hidden = {k: torch.cat([v, v]) for k, v in hidden.items()}
    hidden["seed"] = torch.tensor([11, 12])
    x_T = torch.cat([x_T, x_T])
    ddim = S.sample("ddim", restore, op, x_T, op.T, hidden, steps=op.T, eta=1.0)
    noise, x = S._noise_streams(hidden, x_T), x_T
    for i in range(op.T, 0, -1):
        x = op.posterior_step(x, restore(x, i), i, noise() if i > 1 else None, variance="posterior")
    assert torch.allclose(ddim, x, atol=1e-4)
    assert not torch.allclose(ddim[0], ddim[1], atol=1e-2)  # each image its own noise


@pytest.mark.parametrize("K", [2, 5, 1000])
def test_ddim_with_the_exact_score_returns_the_data_point(K):
    """(K = 1 is one jump by a factor Abar^-1/2 ~ e^15 on the most blurred coefficients: float32
    rounding of the score alone moves the result by ~0.2 there.)"""
    op = O.make_operator("blurdiff", "quartic")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1

    def exact_eps(x, i):
        la = op.log_abar(torch.full((len(x),), i), 8, 8)
        return op.from_dct((op.to_dct(x) - (0.5 * la).exp() * op.to_dct(x0)) / (-torch.expm1(la)).sqrt())

    x_T, hidden = G.start(op, None, (1, 1, 8, 8), g)
    out = S.sample("ddim", exact_eps, op, x_T, op.T, hidden, steps=K)
    assert float((out - x0).abs().max()) < 1e-3
    with pytest.raises(UserError, match="--eta applies to ddim"):
        S.sample("ancestral", exact_eps, op, x_T, op.T, hidden, eta=0.5)
    with pytest.raises(UserError, match="runs every step"):
        S.sample("ancestral", exact_eps, op, x_T, op.T, hidden, steps=10)
