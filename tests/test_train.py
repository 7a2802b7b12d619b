"""Training: it learns, resumes exactly, survives kills and signals, refuses foreign files, runs DDP."""
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

import checkpoint
import operators
import train as T
import unet
from errors import Stop, UserError
from folders import load_folder


def rmse(a, b):
    return float(((a - b) / 2).pow(2).mean().sqrt())


def test_training_learns_blur(blur_model, fmnist_split):
    net, op, meta = checkpoint.load_model(blur_model)
    assert meta["operator"] == {"name": "blur", "params": operators.make_operator("blur", "mnist").params()}
    assert meta["step"] == 300 and meta["image"] == {"channels": 1, "height": 28, "width": 28}
    lines = [json.loads(line) for line in (blur_model.parent / "blur.run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [100, 200, 300]
    assert (blur_model.parent / "blur.run" / "step_00000300.png").exists()
    x0 = load_folder(str(fmnist_split[1]), None, None).float() / 127.5 - 1  # held out
    for t, margin in ((op.T, 0.88), (op.T // 2, 0.8)):
        tt = torch.full((len(x0),), t)
        xt = op.degrade(x0, tt)
        with torch.no_grad():
            direct = net(xt, tt).clamp(-1, 1)
        assert rmse(direct, x0) < margin * rmse(xt, x0), (t, rmse(direct, x0), rmse(xt, x0))


def small_cfg(**kw):
    base = dict(steps=8, batch=4, accumulate=2, lr=1e-3, ema_start=3, ema_every=2, save_every=100, sample_every=100, compile=False)
    return T.TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_resume_is_exact(tmp_path, precision):
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 16, None)[:40]
    op = operators.make_operator("snow", "cifar10")  # hidden randomness, augmentation: every RNG matters
    cfg = functools.partial(small_cfg, precision=precision)
    straight = T.train(data, op, "tiny", str(tmp_path / "a.safetensors"), cfg(), torch.device("cpu"), resume=False, log=lambda m: None).losses
    first = T.train(data, op, "tiny", str(tmp_path / "b.safetensors"), cfg(steps=4), torch.device("cpu"), resume=False, log=lambda m: None).losses
    second = T.train(data, op, "tiny", str(tmp_path / "b.safetensors"), cfg(), torch.device("cpu"), resume=True, log=lambda m: None).losses
    assert len(first) == 4 and len(second) == 4
    assert first + second == pytest.approx(straight, rel=1e-5, abs=1e-6)
    a, _, meta_a = checkpoint.load_model(tmp_path / "a.safetensors")
    b, _, meta_b = checkpoint.load_model(tmp_path / "b.safetensors")
    assert meta_a["step"] == meta_b["step"] == 8 and meta_a["train"]["precision"] == meta_b["train"]["precision"] == precision
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)


def test_cosine_schedule_survives_an_interrupt_exactly(tmp_path):
    cfg = small_cfg(lr_schedule="cosine", sample_every=4)
    lrs = [T.learning_rate(s, cfg) for s in range(1, cfg.steps + 1)]
    assert lrs[0] == cfg.lr and all(a > b for a, b in zip(lrs, lrs[1:])) and 0 < lrs[-1] < 0.05 * cfg.lr
    assert T.learning_rate(cfg.steps // 2 + 1, cfg) == pytest.approx(cfg.lr / 2)
    assert {T.learning_rate(s, small_cfg()) for s in (1, 5, 8)} == {small_cfg().lr}  # the papers': constant
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 16, None)[:40]
    op = operators.make_operator("blur", "mnist")
    straight = T.train(data, op, "tiny", str(tmp_path / "a.safetensors"), cfg, torch.device("cpu"), resume=False, log=lambda m: None)

    def ctrl_c_at_step_4(message):
        if message.startswith("step 4/"):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Stop) as stopped:
        T.train(data, op, "tiny", str(tmp_path / "b.safetensors"), cfg, torch.device("cpu"), resume=False, log=ctrl_c_at_step_4)
    assert stopped.value.code == 128 + signal.SIGINT
    resumed = T.train(data, op, "tiny", str(tmp_path / "b.safetensors"), cfg, torch.device("cpu"), resume=True, log=lambda m: None)
    assert resumed.losses == pytest.approx(straight.losses[4:], rel=1e-5, abs=1e-6)
    for (k, va), vb in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)


def test_foreign_and_corrupt_files_rejected(tmp_path, blur_model):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    (tmp_path / "text.safetensors").write_text("hello, not a model")
    good = blur_model.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases = {"foreign": "not a colddiff model", "text": "not a safetensors file", "cut": "not a safetensors file",
             "empty": "not a safetensors file"}
    for name, msg in cases.items():
        with pytest.raises(UserError, match=msg):
            checkpoint.load_model(tmp_path / f"{name}.safetensors")
    with pytest.raises(UserError, match="no such model"):
        checkpoint.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="is a folder, not a model file"):
        checkpoint.load_model(tmp_path)


def test_existing_output_and_operator_mismatch(cli, blur_model, fmnist_split, tmp_path):
    r = cli("train", fmnist_split[0], "-o", blur_model, "--net", "tiny", "--steps", "1")
    assert r.returncode == 1 and b"--resume" in r.stderr
    r = cli("train", fmnist_split[0], "-o", blur_model, "--op", "mask", "--net", "tiny", "--steps", "400", "--resume")
    assert r.returncode == 1 and b"was trained for blur" in r.stderr
    r = cli("train", tmp_path, "-o", tmp_path / "m.safetensors", "--net", "tiny")
    assert r.returncode == 1 and b"folder holds no images" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--net", "huge"], "unknown network preset"),
    (["--size", "0"], "--size must be at least 8"),
    (["--op", "pixelate", "--preset", "celeba", "--size", "8"], "pixelate celeba needs images of at least 16x16, these are 8x8: pass --size 16"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--lr-schedule", "linear"], "unknown --lr-schedule"),
    (["--precision", "fp8"], "unknown --precision 'fp8'; choose from auto, fp32, bf16"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--channels", "2"], "--channels must be 1 or 3"),
    (["--net-param", "width=48"], "KEY one of dim, mults, heads, dim_head"),
    (["--net-param", "dim=0"], "dim: '0' is out of range"),
    (["--net-param", "mults=1,two"], "not like its default"),
    (["--net", "adm-small", "--net-param", "attn_levels=5"], "levels are 0..2"),
    (["--net", "adm-small", "--net-param", "dim=20"], "network adm-small dim=20: num_channels (20) must be divisible"),
])
def test_train_bad_options(cli, tmp_path, args, message):
    r = cli("train", ROOT / "tests" / "data" / "fmnist", "-o", tmp_path / "m.safetensors", *args)
    assert r.returncode == 1 and message in r.stderr.decode(), r.stderr.decode()
    assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr.decode()
    assert not (tmp_path / "m.safetensors").exists()


def test_net_param_builds_and_records_the_network(cli, fmnist_split, tmp_path):
    """--net-param changes the network the model holds, the metadata says so, every command
    rebuilds it from the file alone, and resuming with another network is one clear error."""
    out = tmp_path / "m.safetensors"
    args = ["train", fmnist_split[0], "-o", out, "--net", "tiny", "--batch", "4", "--accumulate", "1", "--no-augment"]
    r = cli(*args, "--steps", "2", "--save-every", "1", "--net-param", "dim=8", "--net-param", "mults=1,2,4")
    assert r.returncode == 0, r.stderr.decode()
    net, _, meta = checkpoint.load_model(out)
    assert meta["network"]["dim"] == 8 and meta["network"]["mults"] == [1, 2, 4] and meta["network_preset"] == "tiny"
    assert unet.count_parameters(net) == unet.count_parameters(unet.build(1, "tiny", dim=8, mults=(1, 2, 4)))
    assert unet.count_parameters(net) != unet.count_parameters(unet.build(1, "tiny"))
    r = cli("restore", sorted(fmnist_split[1].iterdir())[0], "--model", out, "-o", tmp_path / "y.png")
    assert r.returncode == 0 and (tmp_path / "y.png").exists(), r.stderr.decode()
    r = cli(*args, "--steps", "4", "--resume", "--net-param", "dim=8")  # mults back to tiny's 1,2
    err = r.stderr.decode()
    assert r.returncode == 1 and "another network (mults [1, 2, 4] not [1, 2])" in err and len(err.strip().splitlines()) == 1, err
    r = cli(*args, "--steps", "4", "--resume", "--net-param", "dim=8", "--net-param", "mults=1,2,4")
    assert r.returncode == 0 and checkpoint.load_model(out)[2]["step"] == 4, r.stderr.decode()


def train_process(tmp_path, *extra):
    cmd = [sys.executable, "-m", "colddiff", "train", str(ROOT / "tests" / "data" / "fmnist"), "-o", str(tmp_path / "m.safetensors"),
           "--net", "tiny", "--batch", "2", "--accumulate", "1", "--steps", "100000", "--ema-start", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def wait_for(path, timeout=120):
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_exits(tmp_path, sig, code):
    p = train_process(tmp_path, "--save-every", "1000", "--sample-every", "1")
    wait_for(tmp_path / "m.run" / "metrics.jsonl")  # training is under way
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert "interrupted at step" in last and "--resume" in last and "Traceback" not in err.decode()
    _, _, meta = checkpoint.load_model(tmp_path / "m.safetensors")
    assert meta["step"] >= 1


class Killed(BaseException):
    """Stands for the death of the process at a rename: nothing in colddiff catches it."""


@pytest.mark.parametrize("die_at", [1, 2, 3, 4, 5])
def test_death_between_temp_file_and_rename_keeps_loadable_files(tmp_path, monkeypatch, die_at):
    """The process dies at the die_at-th rename of a checkpoint write (each save renames the state,
    then the model): whatever was renamed before loads, and --resume continues from it."""
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 16, None)[:20]
    op = operators.make_operator("blur")
    out = tmp_path / "m.safetensors"
    real, calls = os.replace, {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(Killed):
        T.train(data, op, "tiny", str(out), small_cfg(steps=10, save_every=1), torch.device("cpu"), resume=False, log=lambda m: None)
    monkeypatch.setattr(os, "replace", real)
    state_step, model_step = (die_at - 1 + 1) // 2, (die_at - 1) // 2  # renames done: state, model, state, ...
    # (Killed is a Python exception, which atomic_write cleans up after; a real kill -9 leaves the
    # temporary, which the next run removes: test_faults.py, "killed between temporary and rename")
    assert out.exists() == (model_step > 0) and checkpoint.state_path(out).exists() == (state_step > 0)
    if model_step:
        assert checkpoint.load_model(out)[2]["step"] == model_step
    if state_step:
        run = T.train(data, op, "tiny", str(out), small_cfg(steps=4, save_every=1), torch.device("cpu"), resume=True, log=lambda m: None)
        assert len(run.losses) == 4 - state_step and checkpoint.load_model(out)[2]["step"] == 4


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 16, None)[:20]
    op = operators.make_operator("blur")
    out = tmp_path / "m.safetensors"
    T.train(data, op, "tiny", str(out), small_cfg(steps=2, save_every=1), torch.device("cpu"), resume=False, log=lambda m: None)
    real = T.loss_fn
    calls = {"n": 0}

    def poisoned(*a):
        calls["n"] += 1
        return real(*a) * (float("nan") if calls["n"] > 2 else 1)

    monkeypatch.setattr(T, "loss_fn", poisoned)
    with pytest.raises(Stop, match="loss became nan at step 4"):
        T.train(data, op, "tiny", str(out), small_cfg(steps=10, save_every=1), torch.device("cpu"), resume=True, log=lambda m: None)
    _, _, meta = checkpoint.load_model(out)
    assert meta["step"] == 3  # the step before the bad one, saved; nothing after it


DDP_WORKER = r"""
import os, sys, torch
sys.path.insert(0, sys.argv[1])
import train as T, operators
from folders import load_folder
data = load_folder(os.path.join(sys.argv[1], "tests", "data", "fmnist"), 16, None)[:32]
cfg = T.TrainConfig(steps=4, batch=4, accumulate=1, lr=1e-3, ema_start=2, ema_every=1, save_every=100, sample_every=100, compile=False)
own, loss_fn = [], T.loss_fn
T.loss_fn = lambda *a: own.append(float(loss := loss_fn(*a))) or loss  # this rank's own loss of each step
run = T.train(data, operators.make_operator("blur"), "tiny", sys.argv[2], cfg, torch.device("cpu"), resume=False, log=lambda m: None)
from safetensors.torch import save_file
save_file({k: v.contiguous() for k, v in run.net.state_dict().items()}, sys.argv[2] + f".rank{os.environ['RANK']}")
import json
open(sys.argv[2] + f".rank{os.environ['RANK']}.json", "w").write(json.dumps({"own": own, "logged": run.losses}))
"""


def test_ddp_two_processes_gloo_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    out = tmp_path / "m.safetensors"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                        str(script), str(ROOT), str(out)], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    from safetensors.torch import load_file

    w0, w1 = load_file(f"{out}.rank0"), load_file(f"{out}.rank1")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # the ranks saw different data, and the model moved from its initialisation
    _, _, meta = checkpoint.load_model(out)
    assert meta["train"]["world_size"] == 2 and meta["step"] == 4
    # every rank logs the mean of the ranks' losses, not its own half batch's
    r0, r1 = (json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["logged"] == r1["logged"] and r0["own"] != r1["own"]
    assert r0["logged"] == pytest.approx([(a + b) / 2 for a, b in zip(r0["own"], r1["own"])], rel=1e-6)
    fresh = unet.build(1, "tiny")
    assert any(not torch.equal(fresh.state_dict()[k], w0[k]) for k in w0)


def test_torchrun_train_speaks_once_and_names_its_processes(fmnist_split, tmp_path):
    """Under torchrun only rank 0 prints: the estimate names the processes and the backend, and the
    model is said to be written once."""
    out = tmp_path / "m.safetensors"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518",
                        str(ROOT / "colddiff.py"), "train", str(fmnist_split[0]), "-o", str(out), "--net", "tiny", "--steps", "2",
                        "--batch", "4", "--accumulate", "1", "--size", "16", "--threads", "1"], capture_output=True, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 0, err[-3000:]
    assert err.count(f"wrote {out}") == 1 and err.count("images of 16x16") == 1, err
    assert "x 8 images of 16x16" in err and "on 1 CPU thread in each of 2 processes (gloo)" in err, err


def test_non_finite_weights_are_never_written(cli, fmnist_split, tmp_path, monkeypatch):
    """Weights that turn NaN (an overflow an infinite --lr used to cause; --lr is refused now) stop the
    run at the save, and nothing is written."""
    real = T.make_step

    def overflowing(model, opt, *args):
        step = real(model, opt, *args)

        def then_nan(data, rng):
            loss = step(data, rng)
            with torch.no_grad():
                next(iter(model.parameters())).fill_(float("nan"))
            return loss

        return then_nan

    monkeypatch.setattr(T, "make_step", overflowing)
    out = tmp_path / "m.safetensors"
    r = cli("train", fmnist_split[0], "-o", out, "--net", "tiny", "--steps", "3", "--batch", "4", "--accumulate", "1",
            "--save-every", "1", "--no-augment")
    assert r.returncode == 1 and b"non-finite" in r.stderr and not out.exists()


def test_resume_past_steps_says_there_is_nothing_to_do(cli, fmnist_split, tmp_path):
    out = tmp_path / "m.safetensors"
    args = ["train", fmnist_split[0], "-o", out, "--net", "tiny", "--batch", "4", "--accumulate", "1", "--save-every", "2", "--no-augment"]
    assert cli(*args, "--steps", "4").returncode == 0
    before = out.read_bytes()
    r = cli(*args, "--steps", "3", "--resume")
    assert r.returncode == 0 and b"nothing to do" in r.stderr and b"wrote" not in r.stderr
    assert out.read_bytes() == before
    # a finished run takes other sampling defaults, which change no weight, into its model file
    r = cli("train", fmnist_split[0], "-o", out, "--resume", "--sampling-steps", "7")
    assert r.returncode == 0 and b"stored --sampling-steps 7 in it, nothing to train" in r.stderr, r.stderr
    _, _, meta = checkpoint.load_model(out)
    assert meta["train"]["sampling_steps"] == 7 and meta["step"] == 4
    from safetensors.torch import load

    old, new = load(before), load(out.read_bytes())
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    r = cli("train", fmnist_split[0], "-o", out, "--resume", "--sampling-steps", "7")
    assert r.returncode == 0 and b"nothing to do" in r.stderr


def test_a_finished_run_stores_its_weights_in_fp16_and_they_load_back_into_float32(cli, fmnist_split, tmp_path):
    """--weights fp16 (the bundled models'): half the file, each weight float32's rounded to float16, the
    training state still float32, and the model samples as one made with those weights in float32."""
    out = tmp_path / "m.safetensors"
    args = ["train", fmnist_split[0], "-o", out, "--net", "tiny", "--batch", "4", "--accumulate", "1", "--steps", "3", "--no-augment"]
    assert cli(*args).returncode == 0
    full, state = out.read_bytes(), checkpoint.state_path(out).read_bytes()
    r = cli("train", fmnist_split[0], "-o", out, "--resume", "--weights", "fp16")
    assert r.returncode == 0 and b"stored --weights fp16 in it, nothing to train" in r.stderr, r.stderr
    from safetensors.torch import load

    old, new = load(full), load(out.read_bytes())
    assert old.keys() == new.keys() and all(new[k].dtype == torch.float16 and torch.equal(new[k], old[k].half()) for k in old)
    assert len(out.read_bytes()) < 0.55 * len(full) and checkpoint.state_path(out).read_bytes() == state
    net, _, meta = checkpoint.load_model(out)
    assert meta["train"]["weights"] == "fp16" and all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(p, old[k].half().float()) for k, p in net.state_dict().items())
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out), "pt") as f:  # the same rounded weights, stored as float32
        save_file({k: v.float() for k, v in new.items()}, str(tmp_path / "f32.safetensors"), metadata=f.metadata())
    img = sorted(Path(fmnist_split[0]).rglob("*.png"))[0]
    a, b = (cli("restore", img, "--model", m, "--t", "10", "-o", tmp_path / f"{m.stem}.png") for m in (out, tmp_path / "f32.safetensors"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    from conftest import png

    assert (png((tmp_path / "m.png").read_bytes()) == png((tmp_path / "f32.png").read_bytes())).all()
    bad = cli("train", fmnist_split[0], "-o", out, "--resume", "--weights", "fp8")
    assert bad.returncode == 1 and b"unknown --weights 'fp8'; choose from fp32, fp16" in bad.stderr


def test_fp16_weights_beyond_its_range_are_refused_not_made_infinite(tmp_path):
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = 1e6
    with pytest.raises(UserError, match="exceeds float16's range"):
        checkpoint.save_model(tmp_path / "m.safetensors", net, {"train": {"weights": "fp16"}})
    assert not (tmp_path / "m.safetensors").exists()
    checkpoint.save_model(tmp_path / "m.safetensors", net, {"train": {"weights": "fp32"}})


def test_train_noise_is_added_to_what_the_network_sees():
    """--train-noise sigma: R is trained on D(x0, t) + sigma eps, and the loss still targets x0."""
    op = operators.make_operator("blur", "generation", T=20)
    x0 = torch.rand(64, 1, 16, 16) * 2 - 1
    seen = {}

    def net(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    for sigma in (0.0, 0.05):
        loss = T.loss_fn(net, op, x0, torch.Generator().manual_seed(0), sigma)
        clean = op.apply(x0, seen["t"])
        assert abs(float((seen["x_t"] - clean).std()) - sigma) < 0.003
        assert float(loss) == pytest.approx(float(x0.abs().mean()))  # L1 of R's (zero) output against x0


def test_ema_is_the_papers_copy_then_decay():
    """update_ema's multi-tensor calls give exactly the per-tensor formula: a copy until
    --ema-start, then ema + (1 - decay)(net - ema) every --ema-every steps, else nothing."""
    import copy

    cfg = T.TrainConfig(ema_start=5, ema_every=2, ema_decay=0.9)
    net, ema = unet.build(1, "tiny"), unet.build(1, "tiny").requires_grad_(False)
    for step, what in ((3, "copy"), (7, "none"), (8, "lerp")):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(step)))
        before = copy.deepcopy(ema.state_dict())
        T.update_ema(ema, net, step, cfg)
        for k, v in ema.state_dict().items():
            want = {"copy": net.state_dict()[k], "none": before[k], "lerp": before[k].lerp(net.state_dict()[k], 0.1)}[what]
            assert torch.equal(v, want), (step, k)


@pytest.mark.parametrize("precision,autocast", [("bf16", True), ("auto", False), ("fp32", False)])
@pytest.mark.parametrize("name,preset", [("blur", "mnist"), ("blurdiff", "quartic"), ("mask", "mnist")])
def test_only_the_network_runs_in_bf16(name, preset, precision, autocast):
    """A training step's bf16 autocast (CUDA's, or --precision bf16 on the CPU) covers R alone: x_t = D(x0, t)
    and the loss are float32, exactly as without autocast (blur's and blurdiff's matmuls would round).
    On the CPU, auto is float32."""
    op = operators.make_operator(name, preset)
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x_t, t):
            seen.update(x_t=x_t, t=t, autocast=torch.is_autocast_enabled("cpu"))
            return self.conv(x_t)  # autocast runs it in bf16

    net = Spy()
    data = torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8)
    cfg = T.TrainConfig(batch=4, accumulate=1, augment=False, precision=precision)
    loss = T.make_step(net, torch.optim.Adam(net.parameters()), op, cfg, torch.device("cpu"))(data, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the step's draws again, outside autocast: batch, t, hidden
    x0 = data[torch.randint(len(data), (4,), generator=g)].float() / 127.5 - 1
    t = torch.randint(1, op.T + 1, (4,), generator=g)
    exact = op.apply(x0, t, op.draw(x0, g))
    assert seen["autocast"] == autocast and torch.equal(seen["t"], t)
    assert seen["x_t"].dtype == torch.float32 and torch.equal(seen["x_t"], exact)
    assert math.isfinite(loss)


@pytest.mark.parametrize("args,message", [
    (["--op", "blur", "--preset", "generation", "--train-noise", "-0.1"], "--train-noise must be in [0, 1)"),
    (["--op", "blurdiff", "--train-noise", "0.02"], "--train-noise applies to cold diffusion"),
    (["--op", "blur", "--preset", "generation", "--step-noise", "-0.1"], "--step-noise must be in [0, 1)"),
    (["--op", "blur", "--step-noise", "0.01"], "--step-noise breaks the symmetry of a flat x_T"),
])
def test_train_and_step_noise_are_checked(cli, fmnist_split, tmp_path, args, message):
    r = cli("train", fmnist_split[0], "-o", tmp_path / "m.safetensors", *args, "--net", "tiny", "--steps", "1")
    assert r.returncode == 1 and message in r.stderr.decode() and not (tmp_path / "m.safetensors").exists()


def test_train_step_noise_is_the_models_default_and_generate_can_override_it(cli, fmnist_split, tmp_path):
    """train --step-noise DELTA stores the model's own symmetry-breaking noise; generate uses it
    unless told otherwise, and it changes the samples (0 gives what --symmetry perfect gives)."""
    import generative as G
    from sampling import open_model

    outs = {}
    for delta in ("0", "0.01"):
        out = outs[delta] = tmp_path / f"m{delta}.safetensors"
        r = cli("train", fmnist_split[0], "-o", out, "--op", "blur", "--preset", "generation", "--param", "T=10",
                "--net", "tiny", "--steps", "2", "--batch", "4", "--accumulate", "1", "--no-augment", "--step-noise", delta)
        assert r.returncode == 0, r.stderr.decode()
        sampling = open_model(str(out), torch.device("cpu"))
        assert G.model_symmetry(sampling.meta, sampling.op) == {"method": "step-noise", "train_noise": 0.0, "step_noise": float(delta), "break_noise": 0.0}
        G.break_symmetry(sampling, "broken")
        assert sampling.step_noise == float(delta)
    grids = {}
    for name, model, extra in (("zero", outs["0"], []), ("zero-perfect", outs["0"], ["--symmetry", "perfect"]),
                               ("delta", outs["0"], ["--step-noise", "0.01"])):
        grids[name] = tmp_path / f"{name}.png"
        r = cli("generate", "--model", model, "--n", "4", "-o", grids[name], *extra)
        assert r.returncode == 0, r.stderr.decode()
    assert grids["zero"].read_bytes() == grids["zero-perfect"].read_bytes()
    assert grids["zero"].read_bytes() != grids["delta"].read_bytes()


def test_a_folder_of_mixed_sizes_trains_at_the_presets_size_or_asks_for_size(cli, tmp_path):
    """The brief's `colddiff train data/faces --op blur --preset celeba -o faces.safetensors`: photos
    of many sizes train at 128 px, the size the celeba preset is made for (the papers' CelebA), and
    the user is told; an operator whose preset names no size asks for --size as before."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(150, 120), (90, 200), (300, 300)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    small = ["--net", "tiny", "--steps", "1", "--batch", "2", "--accumulate", "1"]
    r = cli("train", folder, "--op", "blur", "--preset", "celeba", "-o", tmp_path / "faces.safetensors", *small)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "the images differ in size" in err and "centre-cropping them to 128 px, the size the blur celeba preset is made for" in err
    _, _, meta = checkpoint.load_model(tmp_path / "faces.safetensors")
    assert meta["image"] == {"channels": 3, "height": 128, "width": 128}
    r = cli("train", folder, "--op", "noise", "-o", tmp_path / "noise.safetensors", *small)
    assert r.returncode == 1 and "differs from" in r.stderr.decode() and "pass --size to resize all" in r.stderr.decode()
    assert not (tmp_path / "noise.safetensors").exists()


def test_resume_alone_continues_the_run_as_it_was_and_reads_none_of_its_outputs(cli, tmp_path):
    """`--resume` with nothing but --steps takes the run's operator, network, size and settings (a model
    written inside its data folder leaves its sample grids there, in MODEL.run/: they are not data),
    and gives the straight run's weights; a setting typed again is named; another size is refused."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for f in sorted((ROOT / "tests" / "data" / "fmnist").iterdir())[:12]:
        shutil.copy(f, data / f.name)
    settings = ["--op", "snow", "--preset", "cifar10", "--net", "tiny", "--net-param", "dim=8", "--size", "24", "--batch", "4",
                "--accumulate", "1", "--lr", "1e-3", "--ema-start", "2", "--ema-every", "1", "--save-every", "2", "--sample-every", "2",
                "--seed", "3"]
    assert cli("train", data, "-o", tmp_path / "straight.safetensors", *settings, "--steps", "6").returncode == 0
    assert cli("train", data, "-o", data / "m.safetensors", *settings, "--steps", "3").returncode == 0
    assert (data / "m.run" / "step_00000002.png").exists()
    r = cli("train", data, "-o", data / "m.safetensors", "--resume", "--steps", "6")
    assert r.returncode == 0, r.stderr.decode()
    assert "resuming from step 3\n" in r.stderr.decode()  # nothing differs: not the images, not a setting
    a, op_a, meta_a = checkpoint.load_model(tmp_path / "straight.safetensors")
    b, op_b, meta_b = checkpoint.load_model(data / "m.safetensors")
    assert meta_b["step"] == 6 and meta_b["network"] == meta_a["network"] and op_b.params() == op_a.params()
    assert meta_b["image"] == {"channels": 1, "height": 24, "width": 24} and meta_b["train"]["images"] == 12
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)
    shutil.copy(sorted((ROOT / "tests" / "data" / "fmnist").iterdir())[-1], data / "new.png")
    r = cli("train", data, "-o", data / "m.safetensors", "--resume", "--steps", "7", "--batch", "2")
    assert r.returncode == 0 and "than its last run: batch 4 -> 2, images 12 -> 13" in r.stderr.decode(), r.stderr.decode()
    r = cli("train", data, "-o", data / "m.safetensors", "--resume", "--steps", "8", "--size", "28")
    assert r.returncode == 1 and "trains on 24x24 grey images" in r.stderr.decode(), r.stderr.decode()
    assert len(r.stderr.decode().strip().splitlines()) == 1


def test_bf16_on_a_cpu_without_it_warns_that_it_is_emulated(tmp_path, monkeypatch):
    """--precision bf16 on a CPU with neither AMX nor AVX512-BF16 trains (emulated), and says it is slower."""
    data = load_folder(str(ROOT / "tests" / "data" / "fmnist"), 16, None)[:8]
    op = operators.make_operator("blur", "mnist")
    for native, precision in [(False, "bf16"), (True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(T, "native_bf16", lambda native=native: native)
        lines = []
        T.train(data, op, "tiny", str(tmp_path / f"{native}{precision}.safetensors"), small_cfg(steps=1, precision=precision),
                torch.device("cpu"), resume=False, log=lines.append)
        warned = [line for line in lines if "no bf16 arithmetic" in line]
        assert len(warned) == (not native and precision == "bf16"), lines
