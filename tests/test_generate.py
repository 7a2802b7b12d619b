"""Generation: the GMM prior, symmetry breaking, per-image seeds, `colddiff generate`."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import FMNIST, png

import checkpoint
import generative as G
import operators as O
import samplers as S
import sampling
from errors import UserError
from image_io import read_note


def test_gmm_recovers_a_known_mixture():
    g = torch.Generator().manual_seed(0)
    n = 30000
    w_true = [0.25, 0.75]
    mu_true = torch.tensor([[0.6, -0.2, 0.1], [-0.4, 0.3, -0.5]])
    L = torch.tensor([[[0.1, 0, 0], [0.05, 0.08, 0], [0, 0.02, 0.05]], [[0.05, 0, 0], [0, 0.1, 0], [0.03, 0, 0.07]]])
    comp = (torch.rand(n, generator=g) < w_true[0]).long().mul(-1).add(1)  # 0 w.p. 0.25
    x = mu_true[comp] + (L[comp] @ torch.randn(n, 3, 1, generator=g))[..., 0]
    gmm = G.fit_gmm(x, 2, seed=3)
    order = sorted(range(2), key=lambda k: gmm["means"][k][0], reverse=True)  # component 0 has the larger first mean
    for k_true, k in enumerate(order):
        assert gmm["weights"][k] == pytest.approx(w_true[k_true], abs=0.01)
        assert torch.allclose(torch.tensor(gmm["means"][k]).float(), mu_true[k_true], atol=0.01)
        assert torch.allclose(torch.tensor(gmm["covs"][k]).float(), L[k_true] @ L[k_true].T, atol=2e-3)
    assert G.fit_gmm(x, 2, seed=3) == gmm  # deterministic
    draws = G.sample_gmm(gmm, 20000, torch.Generator().manual_seed(1))
    assert torch.allclose(draws.mean(0), x.mean(0), atol=0.01)


@pytest.mark.parametrize("seed", range(10))
def test_gmm_finds_every_mode_for_every_seed(seed):
    g = torch.Generator().manual_seed(100 + seed)
    means_1d = torch.tensor([-1.5, 0.0, 0.3])
    x = means_1d[torch.randint(3, (3000,), generator=g)][:, None] + 0.05 * torch.randn(3000, 1, generator=g)
    found = sorted(m[0] for m in G.fit_gmm(x, 3, seed=seed)["means"])
    assert all(abs(f - t) < 0.05 for f, t in zip(found, means_1d.tolist())), found
    means_3d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 1.0]])
    x = means_3d[torch.randint(3, (3000,), generator=g)] + 0.1 * torch.randn(3000, 3, generator=g)
    found = torch.tensor(G.fit_gmm(x, 3, seed=seed)["means"], dtype=torch.float64)
    assert torch.cdist(means_3d.double(), found).amin(1).max() < 0.05


def test_gmm_needs_enough_images():
    with pytest.raises(UserError, match="needs at least 3 images, got 2"):
        G.fit_gmm(torch.zeros(2, 1), 3)
    with pytest.raises(UserError, match="needs at least 2 images, got 1"):
        G.fit_gmm(torch.zeros(1, 4), 1)


def test_model_default_sampling_steps(cli, gen_model):
    _, _, meta = checkpoint.load_model(gen_model)
    assert meta["train"]["sampling_steps"] == 10
    default = cli("generate", "--model", gen_model, "--n", "2").stdout
    assert default == cli("generate", "--model", gen_model, "--n", "2", "--steps", "10").stdout
    assert default != cli("generate", "--model", gen_model, "--n", "2", "--steps", "30").stdout


def test_prior_is_stored_and_reloaded(gen_model):
    _, op, meta = checkpoint.load_model(gen_model)
    prior = meta["prior"]
    assert prior["kind"] == "gmm" and prior["components"] == 2 and len(prior["means"]) == 2 and len(prior["covs"][0]) == 1
    assert op.flat_last and op.T == 30


def test_starts_of_every_generative_operator():
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    col = O.make_operator("colour", T=40)
    x_T, hidden = G.start(col, None, (1, 3, 16, 12), g())
    assert torch.equal(x_T, hidden["z"]) and x_T.std((-2, -1)).max() == 0
    noise = O.make_operator("noise")
    x_T, hidden = G.start(noise, None, (1, 3, 64, 64), g())
    assert abs(float(x_T.std()) - 1) < 0.05 and (x_T - hidden["z"]).abs().max() < 1e-3
    pix = O.make_operator("pixelate", "mnist")
    data = torch.rand(50, 1, 32, 32, generator=g()) * 2 - 1
    prior = G.fit_gmm(pix.prior_features(data), 1)
    x_T, _ = G.start(pix, prior, (1, 1, 32, 32), g())
    assert x_T.shape == (1, 1, 32, 32) and len(x_T.unique()) <= 16  # a 4x4 image, upsampled
    with pytest.raises(UserError, match="does not generate"):
        G.start(O.make_operator("snow"), None, (1, 3, 8, 8), g())
    with pytest.raises(UserError, match="--preset generation"):
        G.start(O.make_operator("blur", "mnist"), None, (1, 3, 8, 8), g())


@pytest.mark.parametrize("H,W", [(28, 28), (30, 32), (32, 28), (100, 100)])
def test_pixelate_generation_fits_the_chains_last_small_image_and_returns_full_size(H, W):
    op = O.make_operator("pixelate", "mnist")
    x0 = torch.rand(6, 1, H, W, generator=torch.Generator().manual_seed(H)) * 2 - 1
    x = x0
    for i in range(1, op.T + 1):  # the released chain, step by step
        small = torch.nn.functional.interpolate(x, size=(H >> i, W >> i), mode="bicubic", align_corners=False)
        x = torch.nn.functional.interpolate(small, size=(H, W), mode="nearest-exact")
    feats = op.prior_features(x0)
    assert feats.shape == (6, (H >> op.T) * (W >> op.T)) and torch.allclose(feats, small.flatten(1), atol=1e-6)
    x_T, hidden = op.start((1, 1, H, W), None, feats[2:3])
    assert hidden is None and x_T.shape == (1, 1, H, W)
    assert torch.allclose(x_T, op.apply(x0[2:3], torch.tensor([op.T])), atol=1e-6)  # x_T is D(x0, T) itself


def test_perfect_symmetry_collapses_broken_symmetry_diversifies(gen_model):
    net, op, meta = checkpoint.load_model(gen_model)
    restore = sampling.make_restorer(net, torch.device("cpu"))
    one_colour = {"weights": [1.0], "means": [meta["prior"]["means"][0]], "covs": [[[1e-12]]]}
    out = {}
    for symmetry in ("perfect", "broken"):
        starts = [G.start(op, one_colour, (1, 1, 28, 28), torch.Generator().manual_seed(i), 0.002 if symmetry == "broken" else 0.0)[0] for i in range(8)]
        out[symmetry] = S.sample("tacos", restore, op, torch.cat(starts), op.T)
    assert out["perfect"].std(0).max() < 1e-4  # identical colours: identical images
    assert out["broken"].std(0).mean() > 20 * max(float(out["perfect"].std(0).mean()), 1e-4)
    assert out["broken"].std(0).mean() > 0.002  # more than the break noise itself: the sampler amplified it


def test_broken_symmetry_defaults_spread_samples_from_one_colour(gen_model):
    """Symmetry alone: every sample starts from the same flat colour (a one-point prior). Perfect
    symmetry then gives one image; the chosen default (N(0, 0.025^2) after every tacos step) spreads
    the samples' per-pixel std at least twice as far as the released code's one-off nudge of x_T."""
    from sampling import open_model

    sampling = open_model(str(gen_model), torch.device("cpu"))
    assert G.model_symmetry(sampling.meta, sampling.op) == {"method": "step-noise", "train_noise": 0.0, "step_noise": 0.025, "break_noise": 0.0}
    sampling.meta = {**sampling.meta, "prior": {"weights": [1.0], "means": [sampling.meta["prior"]["means"][0]], "covs": [[[1e-12]]]}}

    def spread(symmetry, **noise):
        x_T_noise = G.break_symmetry(sampling, symmetry, **noise)
        images = torch.cat([x for _, x in G.generate(sampling, 16, 8, 0, torch.device("cpu"), x_T_noise)])
        return float(images.std(0).mean())  # per pixel, across the samples

    perfect, broken = spread("perfect"), spread("broken")
    assert sampling.step_noise == 0.025
    nudge = spread("broken", break_noise=G.NUDGE, step_noise=0.0)
    assert perfect < 1e-4 and broken >= 2 * nudge and broken >= 0.05, (perfect, nudge, broken)


@pytest.mark.parametrize("args,method,step", [
    (["--op", "blur", "--preset", "generation", "--train-noise", "0.04"], "ihdm", 0.05),
    (["--op", "noise"], "none", 0.0),
])
def test_symmetry_method_is_stored_in_the_model(cli, fmnist_split, tmp_path, args, method, step):
    out = tmp_path / "m.safetensors"
    r = cli("train", fmnist_split[0], "-o", out, *args, "--net", "tiny", "--steps", "1", "--size", "16", "--batch", "2")
    assert r.returncode == 0, r.stderr.decode()
    stored = checkpoint.load_model(str(out))[2]["symmetry"]
    assert stored["method"] == method and stored["step_noise"] == pytest.approx(step)


def test_generate_cli_seeds_grid_and_folder(cli, gen_model, tmp_path):
    a = cli("generate", "--model", gen_model, "--n", "6", "--seed", "5")
    assert a.returncode == 0, a.stderr.decode()
    grid = png(a.stdout)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)  # 6 images, 3 columns, 2 px gutters
    assert cli("generate", "--model", gen_model, "--n", "6", "--seed", "5").stdout == a.stdout
    assert cli("generate", "--model", gen_model, "--n", "6", "--seed", "6").stdout != a.stdout
    r = cli("generate", "--model", gen_model, "--n", "5", "--batch", "2", "-o", f"{tmp_path}/big/")
    assert r.returncode == 0, r.stderr.decode()
    r = cli("generate", "--model", gen_model, "--n", "2", "--batch", "2", "-o", f"{tmp_path}/small/")
    names = sorted(p.name for p in (tmp_path / "big").iterdir())
    assert names == [f"0_{i:06d}.png" for i in range(5)]
    for name in ("0_000000.png", "0_000001.png"):
        x, y = png((tmp_path / "big" / name).read_bytes()).astype(int), png((tmp_path / "small" / name).read_bytes()).astype(int)
        assert np.abs(x - y).max() <= 1  # image i does not depend on --n (at most a rounding step)
    r = cli("generate", "--model", gen_model, "--n", "2", "-o", f"{tmp_path}/small/")
    assert r.returncode == 1 and b"--force" in r.stderr
    # an interrupted folder: --skip-existing makes the missing images, the same ones, and keeps the rest
    first = {n: (tmp_path / "big" / n).read_bytes() for n in names}
    (tmp_path / "big" / names[1]).unlink()
    (tmp_path / "big" / names[4]).unlink()
    (tmp_path / "big" / names[2]).write_bytes(b"kept")
    r = cli("generate", "--model", gen_model, "--n", "5", "--batch", "2", "-o", f"{tmp_path}/big/", "--skip-existing")
    assert r.returncode == 0 and b"3 of the 5 images exist" in r.stderr and b"generating the other 2" in r.stderr, r.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == names and (tmp_path / "big" / names[2]).read_bytes() == b"kept"
    for name in (names[1], names[4]):
        x, y = png((tmp_path / "big" / name).read_bytes()).astype(int), png(first[name]).astype(int)
        assert np.abs(x - y).max() <= 1
    r = cli("generate", "--model", gen_model, "--n", "5", "-o", f"{tmp_path}/big/", "--skip-existing")
    assert r.returncode == 0 and b"all 5 images exist already" in r.stderr
    r = cli("generate", "--model", gen_model, "--n", "5", "-o", tmp_path / "grid.png", "--skip-existing")
    assert r.returncode == 1 and b"not to a grid" in r.stderr


def test_generate_strip_shows_each_images_states_from_x_T_to_the_image(cli, gen_model, tmp_path):
    plain = png(cli("generate", "--model", gen_model, "--n", "3", "--seed", "4").stdout).astype(int)
    r = cli("generate", "--model", gen_model, "--n", "3", "--seed", "4", "--strip")
    assert r.returncode == 0, r.stderr.decode()
    grid = png(r.stdout).astype(int)
    assert grid.shape == (3 * 30 + 2, 11 * 30 + 2)  # T = 30 in the model's 10 steps: 11 states a row, one row an image
    cell = lambda g, row, col: g[2 + 30 * row : 30 * (row + 1), 2 + 30 * col : 30 * (col + 1)]  # noqa: E731
    for i in range(3):
        frames = [cell(grid, i, k) for k in range(11)]
        assert np.array_equal(frames[-1], cell(plain, i // 2, i % 2))  # x_0: what generate makes without --strip
        assert frames[0].std() == 0 and frames[1].std() > 0  # the flat x_T, then the step noise that breaks its symmetry
    r = cli("generate", "--model", gen_model, "--n", "2", "--seed", "4", "--strip", "--frames", "4", "-o", f"{tmp_path}/g/")
    assert r.returncode == 0, r.stderr.decode()
    one = png((tmp_path / "g" / "4_000001.png").read_bytes()).astype(int)
    row = [cell(grid, 1, k) for k in (0, 3, 7, 10)]  # states s = 30, 21, 9, 0 of the path 30, 27, ..., 0
    assert one.shape == (28, 4 * 28) and np.array_equal(one, np.concatenate(row, axis=1))
    note = json.loads(cli("info", "--json", tmp_path / "g" / "4_000001.png").stdout)
    assert note["strip"] == [30, 21, 9, 0] and note["image"] == 1



def test_generate_strip_x0_hat_puts_Rs_prediction_under_each_state(cli, gen_model, tmp_path):
    """generate --strip --x0-hat: two grid rows per image, its states and under them R's x0_hat from
    each (the released code's X_0s), blank under x_0; the states are the plain strip's."""
    plain = png(cli("generate", "--model", gen_model, "--n", "2", "--seed", "4", "--strip", "--frames", "4").stdout).astype(int)
    r = cli("generate", "--model", gen_model, "--n", "2", "--seed", "4", "--strip", "--frames", "4", "--x0-hat")
    assert r.returncode == 0, r.stderr.decode()
    grid = png(r.stdout).astype(int)
    assert grid.shape == (4 * 30 + 2, 4 * 30 + 2)
    cell = lambda g, row, col: g[2 + 30 * row : 30 * (row + 1), 2 + 30 * col : 30 * (col + 1)]  # noqa: E731
    for i in range(2):
        for k in range(4):
            assert np.array_equal(cell(grid, 2 * i, k), cell(plain, i, k))
        assert not cell(grid, 2 * i + 1, 3).any()  # nothing under x_0
        guesses = [cell(grid, 2 * i + 1, k) for k in range(3)]
        assert all(g.std() > 0 for g in guesses) and np.abs(guesses[0] - guesses[2]).max() > 10  # an image already at x_T, refined
    net, op, _ = checkpoint.load_model(gen_model)
    x_T = torch.from_numpy(cell(grid, 0, 0).astype(np.float32))[None, None] / 127.5 - 1
    with torch.no_grad():  # the first guess is R(x_T, T) (x_T flat: its uint8 cell is exact)
        first = ((net(x_T, torch.full((1,), op.T)).clamp(-1, 1) + 1) * 127.5).round()[0, 0].numpy()
    assert np.abs(cell(grid, 1, 0) - first).max() <= 1
    r = cli("generate", "--model", gen_model, "--n", "2", "--seed", "4", "--strip", "--x0-hat", "--frames", "4", "-o", f"{tmp_path}/g/")
    one = png((tmp_path / "g" / "4_000001.png").read_bytes()).astype(int)
    assert r.returncode == 0 and one.shape == (56, 4 * 28)
    assert np.array_equal(one, np.concatenate([np.concatenate([cell(grid, row, k) for k in range(4)], axis=1) for row in (2, 3)]))

@pytest.mark.parametrize("args,message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--n", "-3"], "--n must be at least 1"),
    (["--symmetry", "partial"], "broken or perfect"),
    (["--sampler", "euler"], "unknown sampler"),
    (["--ncol", "0"], "--ncol must be at least 1"),
    (["--seed", "-3"], "--seed must be in 0.."),
    (["--break-noise", "-1"], "--break-noise must be at least 0"),
    (["--step-noise", "-1"], "--step-noise must be at least 0"),
    (["--symmetry", "perfect", "--step-noise", "0.1"], "--symmetry perfect adds no noise"),
    (["--sampler", "direct", "--step-noise", "0.1"], "--step-noise applies to naive, tacos, not direct"),
    (["--steps", "0"], "--steps must be in 1..30,"),
    (["--steps", "31"], "--steps must be in 1..30,"),
    (["--strip", "--ncol", "3"], "leave --ncol out"),
    (["--strip", "--frames", "1"], "--frames must be at least 2"),
    (["--frames", "5"], "--frames applies to --strip"),
    (["--x0-hat"], "--x0-hat applies to --strip"),
])
def test_generate_bad_options(cli, gen_model, args, message, tmp_path):
    r = cli("generate", "--model", gen_model, *args, "-o", tmp_path / "g.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and message in err and err.count("\n") == 1, err  # refused before any work starts


def test_generate_needs_an_output_name_that_says_its_format(cli, gen_model, tmp_path):
    r = cli("generate", "--model", gen_model, "--n", "2", "-o", tmp_path / "grid")
    assert r.returncode == 1 and b"name an output file" in r.stderr and not (tmp_path / "grid").exists()


def test_generate_refuses_a_restoration_model(cli, blur_model, tmp_path):
    r = cli("generate", "--model", blur_model, "-o", tmp_path / "g.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and "--preset generation" in err and err.count("\n") == 1, err  # before any work starts
    assert not (tmp_path / "g.png").exists()


def test_fit_prior_command(cli, gen_model, fmnist_split, tmp_path):
    out = tmp_path / "refit.safetensors"
    r = cli("fit-prior", fmnist_split[0], "--model", gen_model, "--gmm-components", "3", "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    _, _, meta = checkpoint.load_model(out)
    assert meta["prior"]["components"] == 3 and len(meta["prior"]["weights"]) == 3
    assert math.isclose(sum(meta["prior"]["weights"]), 1, rel_tol=1e-9)
    r = cli("fit-prior", fmnist_split[0], "--model", gen_model)
    assert r.returncode == 1 and b"--force" in r.stderr
    r = cli("fit-prior", fmnist_split[0], "--model", gen_model, "-o", tmp_path / "refit.png")  # a model is never written as an image's name
    assert r.returncode == 1 and r.stderr.decode().endswith("refit.png: model files end in .safetensors\n") and not (tmp_path / "refit.png").exists()


def test_bundled_models_are_picked_by_name_listed_by_ops_and_a_file_wins(cli, tmp_path, monkeypatch):
    """`--model NAME` is models/NAME.safetensors unless a file of that name is in the way; ops lists
    every bundled model and marks generate's default; an unknown name is one line naming the bundled."""
    import bundled

    names = bundled.names()
    assert bundled.DEFAULT in names and "fmnist-blur-gen" in names
    rows = cli("ops").stdout.decode().split("# bundled models")[1].splitlines()[2:]
    assert [r.split("\t")[0].removesuffix(" (default)") for r in rows] == names and f"{bundled.DEFAULT} (default)\t" in "\n".join(rows)
    r = cli("generate", "--model", "fmnist-blur-gen", "--n", "2", "--steps", "5", "-o", tmp_path / "g.png")
    assert r.returncode == 0 and read_note(tmp_path / "g.png")["model"] == "fmnist-blur-gen.safetensors", r.stderr
    r = cli("degrade", sorted(FMNIST.iterdir())[0], "--model", "fmnist-blur-gen", "--t", "100", "-o", tmp_path / "d.png")
    assert r.returncode == 0 and read_note(tmp_path / "d.png")["params"]["T"] == 300, r.stderr
    r = cli("restore", tmp_path / "d.png", "--model", "fmnist-blur-gen", "--steps", "5", "-o", tmp_path / "r.png")
    assert r.returncode == 0 and read_note(tmp_path / "r.png")["t"] == 100, r.stderr
    r = cli("generate", "--model", "fmnist-blue-gen", "-o", tmp_path / "x.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "fmnist-blue-gen: no such model file, nor a bundled model" in err
    assert bundled.model_path("fmnist-blur-gen") == str(bundled.MODELS / "fmnist-blur-gen.safetensors")
    with pytest.raises(UserError, match="--model is empty"):
        bundled.model_path(" ")
    assert bundled.model_path("./fmnist-blur-gen") == "./fmnist-blur-gen"  # a path: opened (and refused) as a file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist-blur-gen").write_text("mine")
    assert bundled.model_path("fmnist-blur-gen") == "fmnist-blur-gen"
