"""Blur diffusion (Lee et al.): DCT, one-shot forward vs the Markov chain, DDPM as f = 0,
per-channel blur, and the reverse sampler."""

import pytest
import torch

import blurdiff as BD
import generative as G
import operators as O
import samplers as S
from errors import UserError


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
    g = BD.gaussian_kernel1d(3, 0.4)
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
    assert float(abar.max() / abar.min()) > 2  # the blur really made frequencies decay at different rates


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
    # the default is the operator's sampler at its eta and steps; a named sampler starts from eta 0
    op = O.OPERATORS["blurdiff"]
    spelled = ["--sampler", op.default_sampler, "--eta", str(op.default_eta), "--steps", str(min(op.default_steps, 50))]
    for name, extra in (("default", []), ("spelled", spelled), ("named", ["--sampler", "ddim"]), ("eta0", ["--sampler", "ddim", "--eta", "0"])):
        r = cli("generate", "--model", out, "--n", "2", *extra, "-o", tmp_path / f"{name}.png")
        assert r.returncode == 0, (extra, r.stderr.decode())
    assert (tmp_path / "default.png").read_bytes() == (tmp_path / "spelled.png").read_bytes()
    assert (tmp_path / "named.png").read_bytes() == (tmp_path / "eta0.png").read_bytes()
    r = cli("generate", "--model", out, "--n", "2", "--sampler", "tacos", "-o", tmp_path / "x.png")
    assert r.returncode == 1 and b"reverse" in r.stderr
    for extra in (["--steps", "5"], ["--sampler", "ddim", "--steps", "7", "--eta", "0.5"], ["--sampler", "ancestral"], ["--sampler", "direct"]):
        r = cli("generate", "--model", out, "--n", "2", *extra, "-o", tmp_path / f"{len(extra)}{extra[1]}.png")
        assert r.returncode == 0, (extra, r.stderr.decode())
    r = cli("generate", "--model", out, "--n", "2", "--sampler", "reverse", "--steps", "5", "-o", tmp_path / "y.png")
    assert r.returncode == 1 and b"reverse runs every step" in r.stderr
    r = cli("generate", "--model", out, "--n", "2", "--sampler", "reverse", "--eta", "0.5", "-o", tmp_path / "y.png")
    assert r.returncode == 1 and b"--eta applies to ddim, dpmpp_2m, not reverse" in r.stderr


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
    x0, eps, z = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, *(torch.randn(2, 1, 8, 8, generator=g) for _ in range(2))
    beta = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - beta, 0)])
    # x_i from an image in [-1, 1], and an eps_hat off the true noise, as a network's would be
    x = (alpha_bar[i].sqrt() * x0 + (1 - alpha_bar[i]).sqrt() * eps).float()
    eps = eps + 0.1 * torch.randn(eps.shape, generator=g) * alpha_bar[i].sqrt()
    xd, epsd, zd = x.double(), eps.double(), z.double()
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


def _network_with(op, x0_hat):
    """eps_hat(x, s) of a network whose x0_hat is x0_hat(x): eps_hat = (x - Abar_s^1/2 x0_hat) / (1 - Abar_s)^1/2 per coefficient."""

    def restore(x, s):
        la = op.log_abar(torch.full((len(x),), s), *x.shape[-2:])
        return op.from_dct((op.to_dct(x) - (0.5 * la).exp() * op.to_dct(x0_hat(x))) / (-torch.expm1(la)).sqrt())

    return restore


def _network(op, seed):
    """A network whose x0_hat is tanh(W x), an image in [-1, 1] (x0_part leaves such alone)."""
    W = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return _network_with(op, lambda x: torch.tanh(W * x))


@pytest.mark.parametrize("sampler, K", [("ddim", 2), ("ddim", 5), ("ddim", 1000), ("dpmpp_2m", 3), ("dpmpp_2m", 10), ("dpmpp_2m", 1000)])
def test_jumps_with_the_exact_score_return_the_data_point(sampler, K):
    """(K = 1 is one jump by a factor Abar^-1/2 ~ e^15 on the most blurred coefficients: float32
    rounding of the score alone moves the result by ~0.2 there.)"""
    op = O.make_operator("blurdiff", "quartic")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    exact_eps = _network_with(op, lambda x: x0)
    x_T, hidden = G.start(op, None, (1, 1, 8, 8), g)
    out = S.sample(sampler, exact_eps, op, x_T, op.T, hidden, steps=K)
    assert float((out - x0).abs().max()) < 1e-3
    with pytest.raises(UserError, match="--eta applies to ddim"):
        S.sample("ancestral", exact_eps, op, x_T, op.T, hidden, eta=0.5)
    with pytest.raises(UserError, match="runs every step"):
        S.sample("ancestral", exact_eps, op, x_T, op.T, hidden, steps=10)


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
def test_dpmpp_2m_without_blur_is_textbook_dpm_solver_pp_2m(eta):
    """f = 0: the multistep loop equals Lu et al.'s Algorithm 2 (DPM-Solver++(2M)), and above eta = 0
    k-diffusion's sample_dpmpp_2m_sde (midpoint), written out in float64 with scalar alpha, sigma,
    lambda and x0_hat formed as the paper forms it."""
    op = O.make_operator("blurdiff", "ddpm")
    beta = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - beta, 0)])
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    restore = _network(op, 2)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    hidden = {"seed": torch.tensor([5, 6])}
    path = S.schedule(1000, 7)
    out = S.sample("dpmpp_2m", restore, op, x_T, 1000, hidden, steps=7, eta=eta)
    lam = torch.log(alpha / sigma)
    noise = S._noise_streams(hidden, x_T)
    x, x0_prev, h_prev = x_T.double(), None, None
    for s, s_next in zip(path, path[1:]):
        x0_hat = (x - sigma[s] * restore(x.float(), s).double()) / alpha[s]
        if s_next == 0:
            x = x0_hat
            break
        h = lam[s_next] - lam[s]
        D = x0_hat if x0_prev is None else (1 + h / (2 * h_prev)) * x0_hat - h / (2 * h_prev) * x0_prev
        x = sigma[s_next] / sigma[s] * torch.exp(-eta * h) * x - alpha[s_next] * torch.expm1(-(1 + eta) * h) * D
        if eta:
            x = x + sigma[s_next] * (-torch.expm1(-2 * eta * h)).sqrt() * op.from_dct(noise()).double()
        x0_prev, h_prev = x0_hat, h
    assert torch.allclose(out.double(), x, atol=1e-4)
    ddim = S.sample("ddim", restore, op, x_T, 1000, hidden, steps=7, eta=eta)
    assert (out - ddim).abs().max() > 1e-3  # second order is not ddim


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp_2m_with_one_or_two_jumps_is_ddim(K, eta):
    """(At eta between 0 and 1 the two interpolate differently: k-diffusion's e^-eta h vs DDIM's sigma.
    From t = 400: a jump from 1,000 to 500 multiplies float32 rounding on the finest coefficients by
    e^23, where the two steps' different but equal formulas part by 3e-4.)"""
    op = O.make_operator("blurdiff", "quartic")
    restore = _network(op, 3)
    x_t = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    a, b = (S.sample(n, restore, op, x_t, 400, {"seed": torch.arange(1)}, steps=K, eta=eta) for n in ("dpmpp_2m", "ddim"))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("preset", ["quartic", "log"])
def test_dpmpp_2m_is_second_order_on_gaussian_data(preset):
    """Data with independent N(0, v_kl) DCT coefficients: the probability-flow ODE keeps every
    coefficient's x / (Abar v + 1 - Abar)^1/2 fixed, so its solution from T to s_end is known in closed
    form. With the exact score, halving the jump size cuts DPM-Solver++(2M)'s error about four times
    (second order) and ddim's about two times (first order). (s_end > 0: the last jump into 0 is first order in both.)"""
    op = O.make_operator("blurdiff", preset)
    H = W = 8
    v = torch.linspace(0.05, 1.0, H * W).reshape(1, 1, H, W)  # per-coefficient data variance

    def la(i):
        return op.log_abar(torch.full((1,), i), H, W).double()

    def exact_eps(x, i):  # E[eps | x_i] per coefficient
        a = la(i).exp()
        return op.from_dct((op.to_dct(x).double() * (1 - a).sqrt() / (a * v + 1 - a)).float())

    x_T = torch.randn(4, 1, H, W, generator=torch.Generator().manual_seed(0))
    s_end = 100
    want = op.to_dct(x_T).double() * ((la(s_end).exp() * v + 1 - la(s_end).exp()) / (la(1000).exp() * v + 1 - la(1000).exp())).sqrt()

    def error(step, K):
        path = [round(1000 - (1000 - s_end) * j / K) for j in range(K + 1)]
        x, prev = x_T, None
        for s, s_next in zip(path, path[1:]):
            if step == "ddim":
                x = op.ddim_step(x, exact_eps(x, s), s, s_next)
            else:
                x, prev = op.dpmpp_2m_step(x, exact_eps(x, s), s, s_next, prev)
        return float((op.to_dct(x).double() - want).abs().max())

    e2 = [error("dpmpp_2m", K) for K in (36, 72)]
    e1 = [error("ddim", K) for K in (36, 72)]
    assert e2[1] < e1[1] / 4
    assert e2[0] / e2[1] > 3 and 1.7 < e1[0] / e1[1] < 2.3  # (measured: 3.4-3.6 and 2.0)


def test_x0_part_holds_x0_hat_to_what_an_image_can_have():
    op = O.make_operator("blurdiff", "log")
    la = op.log_abar_at(1000, 8, 8, "cpu")  # down to -738 on the finest frequency: Abar^1/2 underflows
    la_to = op.log_abar_at(980, 8, 8, "cpu")
    u = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 1e-3
    part = op.x0_part(u, la, la_to)
    plain = (0.5 * (la_to.double() - la.double())).exp() * u.double()  # Abar_to^1/2 / Abar^1/2 u
    bound = (0.5 * la_to.double()).exp() * 8  # Abar_to^1/2 (HW)^1/2
    assert torch.isfinite(part).all()
    held = plain.abs() > bound
    assert held.any() and (~held).any()
    assert torch.allclose(part.double()[~held], plain[~held], rtol=1e-4)
    assert torch.allclose(part.double()[held].abs(), bound.expand_as(plain)[held], rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_few_jumps_on_the_log_preset_stay_finite_and_find_the_data_point(sampler):
    """The log preset blurs its finest frequencies to Abar ~ e^-738: a 20-jump x0_hat there is
    float32 rounding times e^21, which drew 6e4 (dpmpp_2m) before x0_part and NaN at 10 jumps."""
    op = O.make_operator("blurdiff", "log")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 1, 28, 28, generator=g) * 2 - 1
    exact_eps = _network_with(op, lambda x: x0)
    x_T, hidden = G.start(op, None, (1, 1, 28, 28), g)
    assert float((S.sample(sampler, exact_eps, op, x_T, op.T, hidden, steps=20) - x0).abs().max()) < 1e-3
    assert torch.isfinite(S.sample(sampler, exact_eps, op, x_T, op.T, hidden, steps=5)).all()
