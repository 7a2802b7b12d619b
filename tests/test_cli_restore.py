"""`colddiff restore` and `colddiff eval` end to end on a briefly trained model."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, PHOTO


def test_eval_table_direct_and_tacos_beat_degraded(cli, blur_model, fmnist_split, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # FID reads n/a even where weights are cached
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "50", "-o", tmp_path / "ev")
    assert r.returncode == 0, r.stderr.decode()
    assert "| test |" in r.stdout.decode() and "n/a" in r.stdout.decode()
    table = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert table["n"] == 50 and table["sampler"] == "tacos"
    for col in ("direct", "sampled"):
        assert table[col]["ssim"] > table["degraded"]["ssim"] + 0.05, table
        assert table[col]["rmse"] < table["degraded"]["rmse"] - 0.01, table
    grid = Image.open(tmp_path / "ev" / "grid.png")
    assert grid.size == (4 * 30 + 2, 8 * 30 + 2)  # degraded | direct | sampled | original, 8 rows
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "5", "-o", tmp_path / "ev")
    assert r.returncode == 1 and b"--force" in r.stderr
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "5", "--batch", "0")
    assert r.returncode == 1 and b"--batch must be at least 1" in r.stderr


def test_restore_folder_pipe_and_same_seed(cli, cli_process, blur_model, fmnist_split, tmp_path):
    deg = tmp_path / "deg"
    r = cli("degrade", fmnist_split[1], "--op", "blur", "-o", deg)
    assert r.returncode == 0
    for sampler in ("direct", "naive", "tacos"):
        r = cli("restore", deg, "--model", blur_model, "--sampler", sampler, "--steps", "5" if sampler != "direct" else "20",
                "-o", tmp_path / sampler)
        assert r.returncode == 0, r.stderr.decode()
        assert len(list((tmp_path / sampler).iterdir())) == 50
    first = sorted(deg.iterdir())[0].name
    a = np.asarray(Image.open(tmp_path / "tacos" / first))
    assert a.shape == (28, 28)
    # stdin -> stdout in a real pipe gives the same bytes as the folder run
    src = (deg / first).read_bytes()
    p = cli_process("restore", "-", "--model", blur_model, "--sampler", "tacos", "--steps", "5", stdin=src)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == (tmp_path / "tacos" / first).read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--sampler", "euler"], "unknown sampler"),
    (["--z", "estimated"], "applies to colour, noise, animorph, not blur"),
    (["--t", "99"], "0..20"),
    (["--steps", "50"], "1..20"),
])
def test_restore_bad_options(cli, blur_model, args, message, tmp_path):
    img = sorted((DATA / "fmnist").iterdir())[0]
    r = cli("restore", img, "--model", blur_model, *args, "-o", tmp_path / "o.png")
    assert r.returncode == 1 and message in r.stderr.decode(), r.stderr.decode()
    assert not (tmp_path / "o.png").exists()


def test_restore_wrong_inputs(cli, blur_model, tmp_path):
    r = cli("restore", PHOTO, "--model", blur_model, "-o", tmp_path / "o.png")
    assert r.returncode == 1 and "colour (3-channel)" in r.stderr.decode() and "grey" in r.stderr.decode()
    Image.new("L", (5, 5)).save(tmp_path / "small.png")
    r = cli("restore", tmp_path / "small.png", "--model", blur_model, "-o", tmp_path / "o.png")
    assert r.returncode == 1 and "too small" in r.stderr.decode()
    (tmp_path / "notmodel.safetensors").write_text("nope")
    r = cli("restore", PHOTO, "--model", tmp_path / "notmodel.safetensors", "-o", tmp_path / "o.png")
    assert r.returncode == 1 and "not a safetensors file" in r.stderr.decode()
    r = cli("restore", PHOTO, "--model", PHOTO, "-o", tmp_path / "o.png")
    assert r.returncode == 1 and "not a safetensors file" in r.stderr.decode()
    assert not (tmp_path / "o.png").exists()


def test_eval_refuses_colour_images_for_a_grey_model_as_restore_does(cli, blur_model, tmp_path):
    import shutil

    (tmp_path / "c").mkdir()
    shutil.copy(PHOTO, tmp_path / "c" / "p.png")
    r = cli("eval", tmp_path / "c", "--model", blur_model)
    assert r.returncode == 1 and "colour (3-channel)" in r.stderr.decode()
