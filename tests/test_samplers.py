"""Samplers: an oracle restorer inverts every operator exactly; Algorithm 2 stays stable on blur."""
import pytest
import torch
from conftest import ALL, make, rand_images

import operators as O
import samplers as S
import sampling
import tiles
from errors import UserError

COLD = [(name, preset) for name, preset in ALL if O.OPERATORS[name].predicts == "x0"]


def oracle(x0):
    return lambda x, s: x0


@pytest.mark.parametrize("name,preset", COLD)
@pytest.mark.parametrize("sampler", ["naive", "tacos"])
def test_oracle_restorer_reproduces_x0(name, preset, sampler):
    op = make(name, preset)
    x0 = rand_images(3, 3, 32, 24)
    hidden = op.draw(x0, torch.Generator().manual_seed(2))
    for t, steps in ((op.T, None), (op.T, max(op.T // 7, 1)), (max(op.T // 2, 1), None)):
        x_t = op.apply(x0, torch.full((3,), t), hidden)
        modes = op.z_modes
        for z in modes:
            out = S.sample(sampler, oracle(x0), op, x_t, t, hidden, steps, z)
            assert (out - x0).abs().max() < 1e-4, (t, steps, z)


def test_oracle_visits_every_intermediate_state():
    """Algorithm 2 with the true x0 walks exactly through x_s = D(x0, s)."""
    op = O.make_operator("blur", "celeba")
    x0 = rand_images(2, 3, 20, 20)
    seen = []

    def restore(x, s):
        seen.append((s, (x - op.apply(x0, torch.full((2,), s))).abs().max()))
        return x0

    S.tacos(restore, op, op.apply(x0, torch.full((2,), 50)), 50, steps=10)
    assert [s for s, _ in seen] == [50, 45, 40, 35, 30, 25, 20, 15, 10, 5]
    assert max(err for _, err in seen) < 1e-5


@pytest.mark.parametrize("preset", ["mnist", "celeba", "generation"])
def test_tacos_error_stays_bounded_with_a_wrong_restorer(preset):
    """R = x0 + eps * fresh noise at every call: the trajectory never drifts from D(x0, s)."""
    op = O.make_operator("blur", preset)
    x0 = rand_images(4, 3, 32, 32)
    eps, g = 0.05, torch.Generator().manual_seed(1)
    drift = []

    def wrong(x, s):
        drift.append(float((x - op.apply(x0, torch.full((4,), s))).pow(2).mean().sqrt()))
        return x0 + eps * torch.randn(x0.shape, generator=g)

    out = S.tacos(wrong, op, op.apply(x0, torch.full((4,), op.T)), op.T)
    final = float((out - x0).pow(2).mean().sqrt())
    # errors that simply accumulated would reach eps * sqrt(T) = 0.22 .. 0.87
    assert max(drift) < eps / 2, max(drift)
    assert final < 1.2 * eps, final


def test_schedule_and_errors():
    assert S.schedule(10, None) == list(range(10, -1, -1))
    assert S.schedule(200, 4) == [200, 150, 100, 50, 0]
    assert S.schedule(7, 3) == [7, 5, 2, 0]
    with pytest.raises(UserError, match="1..20"):
        S.schedule(20, 21)
    op = O.make_operator("blur")
    x = rand_images()
    with pytest.raises(UserError, match="applies to colour, noise, animorph, not blur"):
        S.sample("tacos", oracle(x), op, x, 5, None, None, "estimated")
    with pytest.raises(UserError, match="unknown sampler"):
        S.sample("ddpm", oracle(x), op, x, 5)
    assert torch.equal(S.sample("tacos", oracle(x * 0), op, x, 0), x)  # t = 0: nothing to undo


def test_restore_seed_redraws_the_degrade_seeds_snow():
    """`restore --seed S` must redraw exactly the snow that `degrade --seed S` made."""
    from conftest import PHOTO

    from image_io import read_image, to_model
    from seeding import generator as seeded

    x0 = to_model(read_image(str(PHOTO)))[None]
    op = O.make_operator("snow")
    x_t = op.degrade(x0, torch.tensor([150]), seeded(7))  # as `colddiff degrade --seed 7 --t 150`
    same = S.tacos(oracle(x0), op, x_t, 150, op.draw(x_t, seeded(7)), steps=10)
    other = S.tacos(oracle(x0), op, x_t, 150, op.draw(x_t, seeded(8)), steps=10)
    assert (same - x0).abs().max() < 1e-5
    assert (other - x0).abs().max() > 0.5


@pytest.mark.parametrize("sampler", ["naive", "tacos"])
def test_step_noise_is_added_after_every_jump_but_the_last(sampler):
    """Inverse heat dissipation's sampling noise, against the obvious loop: x_{s'} = (the sampler's
    update) + delta z_s for s' > 0, z_s drawn in turn from each image's own generator."""
    op = O.make_operator("blur", "generation", T=20)
    x0 = rand_images(2, 1, 12, 12)
    restore = lambda x, s: 0.8 * x + s / 100  # noqa: E731  (any fixed function of (x, s))
    x_T, hidden, delta = op.apply(x0, torch.full((2,), 20)), {"seed": torch.tensor([5, 6])}, 0.03
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    x = x_T
    for s, s_next in zip(range(20, 0, -4), range(16, -1, -4)):
        x0_hat, at = restore(x, s), lambda k: torch.full((2,), k)  # noqa: E731
        x = op.apply(x0_hat, at(s_next)) if sampler == "naive" else x - op.apply(x0_hat, at(s)) + op.apply(x0_hat, at(s_next))
        if s_next > 0:
            x = x + delta * torch.stack([torch.randn(x.shape[1:], generator=q) for q in gens])
    out = S.sample(sampler, restore, op, x_T, 20, hidden, steps=5, step_noise=delta)
    assert torch.allclose(out, x, atol=1e-6)
    plain = S.sample(sampler, restore, op, x_T, 20, hidden, steps=5)
    assert torch.equal(S.sample(sampler, restore, op, x_T, 20, hidden, steps=5, step_noise=0.0), plain)
    assert (out - plain).abs().mean() > delta / 4  # the noise really went in
    alone = S.sample(sampler, restore, op, x_T[1:], 20, {"seed": hidden["seed"][1:]}, steps=5, step_noise=delta)
    assert torch.allclose(alone, out[1:], atol=1e-6)  # image 1 does not depend on its batch


def test_step_noise_is_checked():
    op, x = O.make_operator("blur", "generation", T=20), rand_images(1, 1, 8, 8)
    with pytest.raises(UserError, match="--step-noise must be at least 0"):
        S.sample("tacos", oracle(x), op, x, 20, {"seed": torch.tensor([1])}, step_noise=-0.1)
    with pytest.raises(UserError, match="--step-noise applies to naive, tacos, not direct"):
        S.sample("direct", oracle(x), op, x, 20, None, step_noise=0.1)
    with pytest.raises(UserError, match="noise seed"):
        S.sample("tacos", oracle(x), op, x, 20, None, step_noise=0.1)


@pytest.mark.parametrize("n,tile,overlap", [(150, 64, 8), (64, 64, 8), (65, 64, 8), (1000, 256, 32), (97, 40, 5)])
def test_tiles_cover_every_pixel_with_the_overlap_asked(n, tile, overlap):
    starts = tiles.tile_starts(n, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(n - tile, 0) and starts == sorted(set(starts))
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap by >= overlap
    covered = torch.zeros(n)
    for s in starts:
        covered[s : s + tile] += tiles.tile_ramp(min(n, tile), overlap, s == starts[0], s == starts[-1])
    assert covered.min() > 0.99  # the ramps of neighbours add up to at least a whole weight everywhere


@pytest.mark.parametrize("shape,tile", [((2, 3, 150, 97), 64), ((1, 1, 40, 300), 64), ((1, 3, 64, 64), 64), ((1, 1, 129, 130), 32)])
def test_tiled_restore_of_a_pointwise_R_is_the_whole_images(shape, tile):
    """R with no context (pixel by pixel) gives the same output tiled or whole: the blend's weights
    sum to one at every pixel, whatever the tiles' overlaps. (A real R differs near tile edges.)"""
    x = rand_images(*shape)
    calls = []

    def restore(x, s):
        calls.append(tuple(x.shape))
        return torch.tanh(1.7 * x + 0.1 * s)

    out = tiles.tiled(restore, tile)(x, 3)
    assert torch.allclose(out, torch.tanh(1.7 * x + 0.3), atol=1e-6)
    sizes = {c[-2:] for c in calls}
    assert len(sizes) == 1 and max(*sizes.pop()) <= tile  # every call one fixed shape (one CUDA graph), no larger than a tile
    assert len(calls) == tiles.tile_count(shape[2], shape[3], tile)


def test_tiled_restore_of_an_image_within_one_tile_is_the_whole_call():
    import unet

    net = unet.build(1, "tiny").eval()
    restore = sampling.make_restorer(net, torch.device("cpu"))
    x = rand_images(2, 1, 48, 40)
    assert torch.equal(tiles.tiled(restore, 64, 8)(x, 5), restore(x, 5))
