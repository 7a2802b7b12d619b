"""Every CUDA path against its eager CPU/fp32 counterpart. `python -m pytest -m cuda` runs these on a
GPU; without one they are skipped (conftest.py)."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TRAIN_ARGS, run_cli

import checkpoint
import operators
import samplers
import sampling
import tiles
import train as T
import unet
from folders import load_folder

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def flat_grads(net):
    return torch.cat([p.grad.flatten().float().cpu() for p in net.parameters()])


def test_compiled_bf16_channels_last_fused_step_matches_eager_fp32():
    """One make_step on CUDA (compile, bf16 autocast, channels_last, fused Adam) and one on the
    CPU in fp32, same weights, same batch: the loss and the gradient agree to bf16 accuracy."""
    op = operators.make_operator("blur", "mnist")
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 32, None)[:64]
    ref = unet.build(1, "small")
    fast = copy.deepcopy(ref).to(CUDA).to(memory_format=torch.channels_last)
    cfg = T.TrainConfig(batch=16, accumulate=2, augment=True, lr=1e-4)
    opt_fast = torch.optim.Adam(fast.parameters(), lr=cfg.lr, fused=True)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=cfg.lr)
    loss_fast = T.make_step(torch.compile(fast), opt_fast, op, cfg, CUDA)(data.to(CUDA), torch.Generator().manual_seed(3))
    loss_ref = T.make_step(ref, opt_ref, op, cfg, torch.device("cpu"))(data, torch.Generator().manual_seed(3))
    assert loss_fast == pytest.approx(loss_ref, rel=2e-2)
    assert cosine(flat_grads(fast), flat_grads(ref)) > 0.99
    moved = [(pf.detach().float().cpu() - pr.detach()).abs().max() for pf, pr in zip(fast.parameters(), ref.parameters())]
    assert max(moved) < 3 * cfg.lr  # both took one Adam step of about lr from the same weights


def test_resumed_cuda_run_equals_a_straight_one(tmp_path):
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 16, None)[:40]
    op = operators.make_operator("blur")
    cfg = dict(steps=8, batch=8, accumulate=1, lr=1e-3, ema_start=2, ema_every=1, save_every=4, sample_every=100, augment=True)
    straight = T.train(data, op, "tiny", str(tmp_path / "a.safetensors"), T.TrainConfig(**cfg), CUDA, resume=False, log=lambda m: None)
    T.train(data, op, "tiny", str(tmp_path / "b.safetensors"), T.TrainConfig(**{**cfg, "steps": 4}), CUDA, resume=False, log=lambda m: None)
    second = T.train(data, op, "tiny", str(tmp_path / "b.safetensors"), T.TrainConfig(**cfg), CUDA, resume=True, log=lambda m: None)
    assert second.losses == pytest.approx(straight.losses[4:], rel=1e-3)
    a, _, _ = checkpoint.load_model(tmp_path / "a.safetensors")
    b, _, _ = checkpoint.load_model(tmp_path / "b.safetensors")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-4, rtol=1e-3), k


def test_cuda_graph_restorer_matches_eager_over_a_whole_algorithm_2_loop():
    op = operators.make_operator("blur", "mnist")
    net = unet.build(1, "small").to(CUDA).eval()
    x0 = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x_t = op.apply(x0, torch.full((4,), op.T)).to(CUDA)
    graphed = samplers.tacos(sampling.make_restorer(net, CUDA, compile=True), op, x_t, op.T)
    eager = samplers.tacos(sampling.make_restorer(net, CUDA, compile=False), op, x_t, op.T)
    cpu = samplers.tacos(sampling.make_restorer(copy.deepcopy(net).cpu(), torch.device("cpu")), op, x_t.cpu(), op.T)
    assert (graphed - eager).abs().max() < 2e-2  # same bf16 arithmetic, fused differently
    assert (graphed.cpu() - cpu).abs().mean() < 2e-2  # bf16 against fp32 over 20 calls
    again = samplers.tacos(sampling.make_restorer(net, CUDA, compile=True), op, x_t, op.T)
    assert torch.equal(again, graphed)  # replays are deterministic and nothing aliases a reused buffer


def test_train_restore_eval_generate_end_to_end_on_cuda(fmnist_split, tmp_path):
    model = tmp_path / "m.safetensors"
    args = [a if a != "300" else "60" for a in TRAIN_ARGS]
    r = run_cli("train", fmnist_split[0], "-o", model, *args, "--device", "cuda")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert checkpoint.load_model(model)[2]["step"] == 60
    deg = tmp_path / "deg"
    assert run_cli("degrade", fmnist_split[1], "--op", "blur", "-o", deg, "--device", "cuda").returncode == 0
    r = run_cli("restore", deg, "--model", model, "--device", "cuda", "--steps", "5", "-o", tmp_path / "res")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert len(list((tmp_path / "res").iterdir())) == len(list(deg.iterdir()))
    # --strip records the sampler's states from a CUDA-graphed R: its last frame is the plain output
    one = sorted(deg.iterdir())[0]
    r = run_cli("restore", one, "--model", model, "--device", "cuda", "--steps", "5", "--strip", "-o", tmp_path / "strip.png")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    from conftest import png

    strip, plain = png((tmp_path / "strip.png").read_bytes()).astype(int), png((tmp_path / "res" / one.name).read_bytes()).astype(int)
    assert strip.shape == (plain.shape[0], 6 * plain.shape[1]) and abs(strip[:, -plain.shape[1]:] - plain).mean() < 0.5
    # --x0-hat from a CUDA-graphed R: one guess per state (a replay's reused output buffer would make them one image)
    r = run_cli("restore", one, "--model", model, "--device", "cuda", "--steps", "5", "--strip", "--x0-hat", "-o", tmp_path / "x.png")
    both = png((tmp_path / "x.png").read_bytes()).astype(int)
    h, w = plain.shape[:2]
    guesses = [both[h:, k * w : (k + 1) * w] for k in range(5)]
    assert r.returncode == 0 and both.shape == (2 * h, 6 * w) and abs(both[:h] - strip).mean() < 0.5, r.stderr.decode()[-2000:]
    assert len({g.tobytes() for g in guesses}) >= 4 and not both[h:, 5 * w :].any()  # aliased, they would be one image
    r = run_cli("eval", fmnist_split[1], "--model", model, "--n", "16", "--device", "cuda", "--no-compile", "-o", tmp_path / "ev")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    r = run_cli("generate", "--n", "8", "--device", "cuda", "--no-compile", "-o", tmp_path / "g.png")
    assert r.returncode == 0 and (tmp_path / "g.png").stat().st_size > 0, r.stderr.decode()[-2000:]
    # the bundled model gives the same images on CUDA as on the CPU, to bf16 rounding
    cpu = run_cli("generate", "--n", "8", "--device", "cpu", "-o", tmp_path / "c.png")
    diff = png((tmp_path / "g.png").read_bytes()).astype(int) - png((tmp_path / "c.png").read_bytes()).astype(int)
    assert cpu.returncode == 0 and abs(diff).mean() < 8


def test_one_process_torchrun_ddp_with_nccl(fmnist_split, tmp_path):
    model = tmp_path / "m.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", "29531", "-m", "colddiff",
                        "train", str(fmnist_split[0]), "-o", str(model), "--net", "tiny", "--steps", "6", "--batch", "8", "--accumulate", "1",
                        "--save-every", "3", "--sample-every", "3", "--device", "cuda"], capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    _, _, meta = checkpoint.load_model(model)
    assert meta["step"] == 6 and meta["train"]["world_size"] == 1 and meta["train"]["distributed"] == "nccl"



def test_operators_fitted_to_a_photo_match_the_cpu():
    """D of a 2000x1500 photo on CUDA, operators fitted to its size as `colddiff degrade` fits them:
    the mask's rows at the d^2 that occur (not kept: too many), blur's FFT path with fitted kernels,
    every preset's table on the device; two images at two t, against the CPU."""
    x = torch.rand(2, 3, 1500, 2000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name, preset in [("mask", "celeba"), ("mask", "mnist"), ("colour", "generation"), ("blur", "celeba"), ("snow", "celeba")]:
        op = operators.make_operator(name, preset).fit_to(3, 1500, 2000)[0]
        hidden = op.draw(x, torch.Generator().manual_seed(1))
        t = torch.tensor([op.T // 3, op.T])
        cpu = op.apply(x, t, hidden)
        gpu = op.apply(x.to(CUDA), t, None if hidden is None else {k: v.to(CUDA) for k, v in hidden.items()})
        tolerance = 2e-2 if name == "snow" else 1e-3  # cuDNN convolves (snow's motion blur) in TF32 by default
        assert (gpu.cpu() - cpu).abs().max() < tolerance and (gpu.cpu() - cpu).abs().mean() < 1e-4, (name, preset)

def test_graphed_algorithm_2_with_step_noise_never_waits_for_the_gpu():
    """After a warm-up (compilation, graph capture, the operator's tables, pinned buffers), a whole
    Algorithm 2 loop with step noise makes no call that synchronises: the host queues step s + 1 and
    draws its noise while the GPU runs step s (tests/test_host_sync.py checks the same on the CPU)."""
    op = operators.make_operator("blur", "generation", T=30)
    restore = sampling.make_restorer(unet.build(3, "small").to(CUDA).eval(), CUDA, compile=True)
    x_t = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(CUDA) * 2 - 1

    def run():
        return samplers.tacos(restore, op, x_t, op.T, {"seed": torch.arange(8)}, steps=10, step_noise=0.01)

    warm = run()
    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out, warm)  # the same noise streams, the same images


def test_graphed_tiled_restore_matches_the_cpu_and_never_waits_for_the_gpu():
    """`restore --tile`: every tile one shape, so one CUDA graph replays for all of them; the tiled
    loop matches the CPU's fp32 one to bf16 rounding and makes no call that synchronises."""
    op = operators.make_operator("blur", "celeba", T=20)
    net = unet.build(3, "small").eval()
    x_t = torch.rand(2, 3, 150, 200, generator=torch.Generator().manual_seed(0)) * 2 - 1
    restore = tiles.tiled(sampling.make_restorer(copy.deepcopy(net).to(CUDA), CUDA, compile=True), 64, 8)
    cpu = samplers.tacos(tiles.tiled(sampling.make_restorer(net, torch.device("cpu")), 64, 8), op, x_t, op.T, steps=5)
    x_dev = x_t.to(CUDA)
    warm = samplers.tacos(restore, op, x_dev, op.T, steps=5)
    samplers.tacos(restore, op, x_dev, op.T, steps=5)  # graphs are recorded on a later call than the first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = samplers.tacos(restore, op, x_dev, op.T, steps=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out, warm)
    assert (warm.cpu() - cpu).abs().mean() < 2e-2


def test_compiled_training_step_waits_once_for_its_loss():
    """A compiled bf16 training step (data on the GPU, augmentation, fused Adam) synchronises once:
    float() of the loss it returns."""
    import warnings

    op = operators.make_operator("blur", "mnist")
    net = unet.build(1, "small").to(CUDA).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    step = T.make_step(torch.compile(net), opt, op, T.TrainConfig(batch=16, accumulate=2, augment=True, train_noise=0.01), CUDA)
    data = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8, device=CUDA)
    rng = torch.Generator().manual_seed(0)
    step(data, rng), step(data, rng)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(3):
                step(data, rng)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in seen if "synchroniz" in str(w.message)]
    assert len(syncs) == 3, syncs
