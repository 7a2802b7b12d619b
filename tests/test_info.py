"""`colddiff info`: what a model file or an image says of how colddiff made it."""
import json
import re

from conftest import DATA, PHOTO, ROOT

BUNDLED = ROOT / "models" / "fmnist-blur-gen.safetensors"
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]


def test_info_of_a_model_names_its_operator_network_training_and_prior(cli, gen_model):
    r = cli("info", BUNDLED, gen_model)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "fmnist-blur-gen.safetensors: colddiff model, step 6000" in out
    assert "blur, preset generation (T=300" in out and "small, 3.62 M parameters" in out and "28x28 grey" in out
    assert "default tacos, 50 steps" in out and "gmm, 1 component(s)" in out
    assert "no training state beside it" in out
    assert "blur, preset generation with T=30 (T=30" in out and "gen.state.safetensors beside it" in out  # the test model
    state = cli("info", gen_model.with_name("gen.state.safetensors"))
    assert state.returncode == 0 and "a colddiff training state at step 100" in state.stdout.decode()
    rows = [json.loads(line) for line in cli("info", "--json", BUNDLED, gen_model).stdout.decode().splitlines()]
    assert rows[0]["operator"]["params"]["T"] == 300 and abs(rows[0]["parameters"] / 3.62e6 - 1) < 0.01
    assert rows[1]["train"]["sampling_steps"] == 10 and rows[1]["file"] == str(gen_model)
    import torch

    assert rows[1]["made_by"] == {"colddiff": VERSION, "torch": torch.__version__, "device": "CPU"}  # the test model's provenance
    assert f"torch={torch.__version__}, device=CPU" in out and "made_by" not in rows[0]  # the bundled model predates it


def test_version_names_colddiff_torch_and_the_device(cli):
    import torch

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.decode() == f"colddiff {VERSION}, torch {torch.__version__}, CPU\n"


def test_help_and_usage_errors_answer_without_importing_torch():
    """torch's import is 2-3 s of colddiff's start: `--help` of every command, a mistyped command
    line and `info` of images must not pay it (benchmarks/startup.py: `colddiff --help` 1.95 s -> 0.18 s)."""
    import subprocess
    import sys

    script = """
import json, sys
from typer.testing import CliRunner
import colddiff
run = CliRunner().invoke
names = [c.name or c.callback.__name__.replace("_", "-") for c in colddiff.app.registered_commands]
helps = [run(colddiff.app, [*name.split(), "--help"]).exit_code for name in ["", *names]]
usage = [run(colddiff.app, ["degrade"]).exit_code, run(colddiff.app, ["restore", "x.png", "--steps", "many"]).exit_code]
info = run(colddiff.app, ["info", sys.argv[1], sys.argv[2]])
print(json.dumps([names, helps, usage, info.exit_code, info.output, [m for m in ("torch", "operators", "unet", "train", "checkpoint") if m in sys.modules]]))
"""
    noted = sorted((DATA / "fmnist").iterdir())[0]  # `info` of images needs no torch either (a model's does)
    r = subprocess.run([sys.executable, "-c", script, str(PHOTO), str(noted)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names, helps, usage, info_code, info, imported = json.loads(r.stdout)
    assert len(names) >= 8 and "train" in names and helps == [0] * (len(names) + 1) and usage == [2, 2]
    assert info_code == 0 and "an image with no colddiff note (192x128 colour)" in info and "(28x28 grey)" in info, info
    assert imported == []


def test_info_of_an_image_is_its_note(cli, tmp_path):
    img = sorted((DATA / "fmnist").iterdir())[0]
    assert cli("degrade", img, "--op", "mask", "--t", "9", "--seed", "2", "-o", tmp_path / "d.png").returncode == 0
    r = cli("info", tmp_path / "d.png", PHOTO)
    out = r.stdout.decode()
    assert r.returncode == 0 and "made by colddiff degrade" in out and "  t           9" in out and "  op          mask" in out
    assert f"{PHOTO}: an image with no colddiff note (192x128 colour)" in out and "  size        28x28 grey" in out
    note = json.loads(cli("info", "--json", tmp_path / "d.png").stdout)
    assert (note["command"], note["t"], note["seed"], note["params"]["T"]) == ("degrade", 9, 2, 50)
    assert note["size"] == {"width": 28, "height": 28, "channels": 1, "bits": 8} and (note["alpha"], note["frames"]) == (False, 1)
    from PIL import Image

    frames = [Image.open(PHOTO).convert("RGBA") for _ in range(2)]
    frames[0].putalpha(128)
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])  # an APNG, half transparent
    Image.open(img).convert("RGB").save(tmp_path / "g.webp", lossless=True)  # as colddiff writes WebP (a lossy one is not exactly grey)
    r = cli("info", tmp_path / "a.png", tmp_path / "g.webp")
    assert "(192x128 colour, with transparency, 2 frames: colddiff reads the first)" in r.stdout.decode(), r.stdout.decode()
    assert "(28x28 grey, stored as colour)" in r.stdout.decode()
    row = json.loads(cli("info", "--json", tmp_path / "a.png").stdout)
    assert (row["alpha"], row["frames"], row["size"]["channels"]) == (True, 2, 3)


def test_info_of_a_folder_is_each_of_its_images_and_models_in_order(cli, gen_model, tmp_path):
    img = sorted((DATA / "fmnist").iterdir())[0]
    assert cli("degrade", img, "--op", "mask", "--t", "9", "-o", tmp_path / "f" / "b" / "d.webp").returncode == 0
    import shutil

    shutil.copy(gen_model, tmp_path / "f" / "a.safetensors")
    shutil.copy(PHOTO, tmp_path / "f" / "c.png")
    (tmp_path / "f" / "notes.txt").write_text("not an image")
    (tmp_path / "f" / "._c.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS's AppleDouble: not an image, left out
    rows = [json.loads(line) for line in cli("info", "--json", tmp_path / "f").stdout.decode().splitlines()]
    assert [r["file"] for r in rows] == [str(tmp_path / "f" / n) for n in ("a.safetensors", "b/d.webp", "c.png")]
    assert rows[0]["step"] == 100 and rows[1]["t"] == 9 and rows[2]["size"]["width"] == 192
    (tmp_path / "empty").mkdir()
    r = cli("info", tmp_path / "empty")
    assert r.returncode == 1 and b"folder holds no images or models" in r.stderr


def test_info_of_anything_else_is_one_line(cli, tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    for path, message in ((ROOT / "README.md", "not a readable image"), (tmp_path / "x.safetensors", "not a safetensors file"),
                          (tmp_path / "none.png", "no such file"), (tmp_path / "none.safetensors", "no such model file")):
        r = cli("info", path)
        err = r.stderr.decode()
        assert r.returncode == 1 and message in err and err.count("\n") == 1 and r.stdout == b"", (path, err)


def test_a_usage_error_is_one_error_line_naming_the_help_to_read(cli, cli_process):
    """An unknown option or command, a missing argument, a value of the wrong type: one `colddiff: error:`
    line and exit 2 (a usage error, as click's), not click's framed box of five lines."""
    for argv, said in [(["info", "--model", "x"], "No such option '--model'"), (["bogus"], "No such command 'bogus'"),
                       (["degrade"], "Missing argument"), (["restore", "x.png", "--steps", "many"], "'many' is not a valid integer")]:
        r = (cli_process if argv[0] == "info" else cli)(*argv)  # `python -m colddiff` too, whose program name is colddiff.py
        err = r.stderr.decode()
        assert r.returncode == 2 and r.stdout == b"", (argv, err)
        assert err.count("\n") == 1 and err.startswith("colddiff: error: ") and said in err, (argv, err)
        assert f"`colddiff{' ' + argv[0] if argv[0] != 'bogus' else ''} --help` lists the options" in err
