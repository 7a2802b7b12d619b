"""Signs of life: progress on stderr for every long command (lines in a pipe, none with --quiet),
the training estimate, and the thread count."""
import os
import shutil

import pytest
import torch
from conftest import run_cli

import machine
from progress import Progress


def test_progress_lines_in_a_pipe_come_every_interval(capsys, monkeypatch):
    now = {"t": 0.0}
    p = Progress("restoring", 100, "images", every=10.0)
    p.clock = lambda: now["t"]
    with p:
        for done in range(1, 101):
            now["t"] += 0.5  # 2 images/s: a line at most every 10 s
            p.update(done, info="batch 4")
    if p.mode != "lines":
        pytest.skip("stderr is a terminal here")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "colddiff: restoring: started, 100 images"
    assert 4 <= len(lines) - 2 <= 5 and all("images/s" in ln and "batch 4" in ln for ln in lines[1:-1])
    assert "20/100 images, 2.00 images/s, 40 s left" in lines[1]
    assert lines[-1].startswith("colddiff: restoring: done, 100/100 images") and lines[-1].endswith("in 50 s")


def test_quiet_progress_prints_nothing(capsys):
    with Progress("x", 3, "images", quiet=True) as p:
        p.update(3)
    assert capsys.readouterr().err == ""


def test_restore_and_degrade_folders_show_progress_in_a_pipe_and_quiet_silences(blur_model, fmnist_split, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for f in sorted(fmnist_split[1].iterdir())[:6]:
        shutil.copy(f, folder / f.name)
    r = run_cli("restore", folder, "-m", blur_model, "-o", tmp_path / "out/", "--batch", "2", "--no-compile")
    err = r.stderr.decode()
    assert r.returncode == 0 and "colddiff: restoring: started, 6 images" in err and "restoring: done, 6/6 images" in err, err
    r = run_cli("degrade", folder, "--op", "blur", "-o", tmp_path / "deg/")
    assert r.returncode == 0 and "degrading: done, 6/6 images" in r.stderr.decode()
    one = sorted(folder.iterdir())[0]
    r = run_cli("degrade", one, "--op", "blur", "--strip", "-o", tmp_path / "strip.png")  # a strip counts its frames
    assert r.returncode == 0 and "degrading: started, 21 frames" in r.stderr.decode() and "done, 21/21 frames" in r.stderr.decode()
    r = run_cli("degrade", one, "--op", "blur", "-o", tmp_path / "one.png")
    assert r.returncode == 0 and r.stderr == b""  # one x_t: nothing to count
    r = run_cli("restore", folder, "-m", blur_model, "-o", tmp_path / "out2/", "--quiet")
    assert r.returncode == 0 and r.stderr == b""


def test_train_in_a_pipe_estimates_then_shows_progress(fmnist_split, tmp_path):
    r = run_cli("train", fmnist_split[0], "-o", tmp_path / "m.safetensors", "--net", "tiny", "--steps", "20", "--batch", "4",
                "--accumulate", "1", "--no-augment")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "20 steps x 4 images of 28x28 through a 0.2 M-parameter network: roughly" in err
    assert "colddiff: training: started, 20 steps" in err and "training: done, 20/20 steps" in err and "img/s" in err
    r = run_cli("train", fmnist_split[0], "-o", tmp_path / "n.safetensors", "--net", "tiny", "--steps", "2", "--batch", "4", "--quiet")
    assert r.returncode == 0 and r.stderr == b""


def test_the_readme_training_line_on_a_cpu_warns(cli, fmnist_split, tmp_path, monkeypatch):
    """The paper network for 700,000 steps at 128 px on a CPU: an estimate in years, a warning,
    before anything is trained (interrupted here at its first step)."""
    import train

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "make_step", stop)
    r = cli("train", fmnist_split[0], "-o", tmp_path / "m.safetensors", "--op", "blur", "--preset", "celeba", "--size", "128",
            "--device", "cpu")
    err = r.stderr.decode()
    assert "700,000 steps x 64 images of 128x128 through a 56.6 M-parameter network: roughly" in err and "days" in err
    assert "warning: that is" in err and "--net (small, tiny)" in err


def test_a_run_too_short_for_its_ema_is_warned_of_with_the_share_the_ema_really_keeps(cli, fmnist_split, tmp_path, monkeypatch):
    """blurdiff's EMA (0.9999 every step from step 0) over 1,200 steps: the saved model would be
    mostly the untrained network. The share the warning states is the one update_ema keeps (run here
    on a one-parameter net), and the decay it suggests clears the warning."""
    import re

    import train

    cfg = train.TrainConfig(steps=1200, ema_decay=0.9999, ema_every=1, ema_start=400)
    start, net = torch.nn.Linear(1, 1, bias=False).requires_grad_(False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(start.weight), torch.nn.init.zeros_(net.weight)
    for step in range(cfg.ema_start + 1, cfg.steps + 1):  # the weights of step 400 are 1, every later step's 0
        train.update_ema(start, net, step, cfg)
    warning = train.ema_warning(cfg)
    assert f"{float(start.weight):.0%} the weights of step 400" in warning
    suggested = float(re.search(r"--ema-decay \(to ([0-9.]+) or less\)", warning).group(1))
    assert train.ema_warning(train.TrainConfig(steps=1200, ema_decay=suggested, ema_every=1, ema_start=400)) is None
    assert train.ema_warning(train.TrainConfig(steps=700_000, ema_decay=0.9999, ema_every=1, ema_start=0)) is None
    assert train.ema_warning(train.TrainConfig(steps=300, ema_start=2000)) is None  # ends before the EMA starts: its last weights

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "make_step", stop)
    r = cli("train", fmnist_split[0], "-o", tmp_path / "m.safetensors", "--op", "blurdiff", "--net", "tiny", "--steps", "1200",
            "--device", "cpu")
    assert "the saved model will be 89% the weights of step 0" in r.stderr.decode()


def test_threads_option_and_default(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= machine.default_threads() <= (os.cpu_count() or 1)
    for told, threads in (("3", 3), ("1", 1), ("", None), ("x", None), ("0", None)):  # set: it wins over the probe
        monkeypatch.setenv("OMP_NUM_THREADS", told)
        assert machine.default_threads() == threads or threads is None and 1 <= machine.default_threads() <= (os.cpu_count() or 1)
    before = torch.get_num_threads()
    try:
        from PIL import Image

        Image.new("L", (16, 16)).save(tmp_path / "x.png")
        machine.pick_device("cpu", 1)
        assert torch.get_num_threads() == 1
        r = cli("degrade", tmp_path / "x.png", "--op", "blur", "--threads", "1", "-o", tmp_path / "o.png")
        assert r.returncode == 0
        r = cli("degrade", tmp_path / "x.png", "--op", "blur", "--threads", "0", "-o", tmp_path / "p.png")
        assert r.returncode == 1 and b"--threads must be at least 1" in r.stderr
    finally:
        torch.set_num_threads(before)


def test_generate_progress_moves_within_a_batch(gen_model):
    """One batch of generate is every sampling step: progress counts the network calls (the model
    stores 10 steps), and watching changes no image."""
    import generative
    from sampling import open_model

    sampling = open_model(str(gen_model), torch.device("cpu"))
    assert sampling.calls(sampling.op.T) == 10
    seen = []
    watched = sampling.watched(lambda: seen.append(1))
    a = torch.cat([x for _, x in generative.generate(watched, 4, 4, 0, torch.device("cpu"))])
    b = torch.cat([x for _, x in generative.generate(sampling, 4, 4, 0, torch.device("cpu"))])
    assert len(seen) == 10 and torch.equal(a, b)
    r = run_cli("generate", "-m", gen_model, "--n", "3")  # the grid to stdout, a pipe here
    assert r.returncode == 0 and "colddiff: generating: done, 3/3 images" in r.stderr.decode()


def test_restore_progress_moves_within_an_image_in_tiles(cli, blur_model, tmp_path, monkeypatch):
    """A photo in tiles is one image for minutes: progress counts its network calls, tile by tile."""
    import numpy as np
    from PIL import Image

    import progress

    seen, update = [], progress.Progress.update

    def spy(self, done, info=""):
        seen.append(done)
        update(self, done, info)

    monkeypatch.setattr(progress.Progress, "update", spy)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150), dtype=np.uint8)).save(tmp_path / "x.png")
    r = cli("restore", tmp_path / "x.png", "-m", blur_model, "--tile", "64", "--steps", "5", "-o", tmp_path / "r.png")
    assert r.returncode == 0, r.stderr.decode()
    assert len(seen) == 5 * 6 + 1  # 5 jumps x 6 tiles (2 x 3 of 64 px over 100 x 150), then the image written
    assert seen == sorted(seen) and 0 < seen[0] < 0.05 and seen[-2] == pytest.approx(1) and seen[-1] == 1
