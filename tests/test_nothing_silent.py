"""Nothing silently wrong (issue #44): each case that gave a traceback, a wrong output with exit 0 or the
wrong words now gives one `colddiff: error:` line with the right words and a non-zero exit, or the
right output."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, run_cli
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_faults import with_hook

import checkpoint

IMG = DATA / "fmnist" / "00000_9.png"


def error_line(r, *words) -> str:
    """The one line of a refusal, checked: exit 1, one stderr line, starting colddiff: error:, saying `words`."""
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and err.startswith("colddiff: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# ----------------------------------------------------------------------------- tracebacks


@pytest.mark.parametrize("command", ["restore", "info"])
def test_a_note_nested_deeper_than_the_stack_is_a_damaged_note(cli, blur_model, tmp_path, command):
    info = PngInfo()
    info.add_text("colddiff", "[" * 100_000 + "]" * 100_000)
    Image.open(IMG).save(tmp_path / "deep.png", pnginfo=info)
    args = [tmp_path / "deep.png", "--model", blur_model, "-o", tmp_path / "r.png"] if command == "restore" else [tmp_path / "deep.png"]
    error_line(cli(command, *args), "note is not colddiff's")


def denied(monkeypatch, *names):
    """Opening a file named among `names`, or anything in a folder named among them, is refused, and
    stat() of what lies in such a folder too: a file of mode 000, a folder without search permission
    (the tests may run as root, which no mode stops)."""
    real_open, real_stat, real_read = pathlib.Path.open, pathlib.Path.stat, pathlib.Path.read_bytes

    def guard(p, itself=True):
        p = pathlib.Path(p)
        if (itself and p.name in names) or any(part in names for part in p.parent.parts):
            raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(pathlib.Path, "open", lambda self, *a, **k: guard(self) or real_open(self, *a, **k))
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: guard(self) or real_read(self))
    monkeypatch.setattr(pathlib.Path, "stat", lambda self, **k: guard(self, itself=False) or real_stat(self, **k))


@pytest.mark.parametrize("command", ["restore", "info", "generate", "train --resume"])
def test_a_model_that_may_not_be_read_is_one_line(cli, blur_model, fmnist_split, tmp_path, monkeypatch, command):
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(blur_model.read_bytes())
    checkpoint.state_path(locked).write_bytes(checkpoint.state_path(blur_model).read_bytes())
    denied(monkeypatch, locked.name, checkpoint.state_path(locked).name)
    args = {"restore": ["restore", IMG, "--model", locked, "-o", tmp_path / "r.png"], "info": ["info", locked],
            "generate": ["generate", "--model", locked, "-o", tmp_path / "g.png"],
            "train --resume": ["train", fmnist_split[0], "-o", locked, "--resume"]}[command]
    error_line(cli(*args), "permission denied")


@pytest.mark.parametrize("command", ["degrade", "restore"])
def test_an_input_in_a_folder_that_may_not_be_searched_is_one_line(cli, blur_model, tmp_path, monkeypatch, command):
    (tmp_path / "closed").mkdir()
    inside = tmp_path / "closed" / "x.png"
    inside.write_bytes(IMG.read_bytes())
    denied(monkeypatch, "closed")
    args = ["--model", blur_model] if command == "restore" else []
    error_line(cli(command, inside, *args, "-o", tmp_path / "o.png"), "permission denied")


def test_a_folder_that_may_not_be_listed_says_so_not_that_it_holds_no_images(cli, tmp_path, monkeypatch):
    (tmp_path / "closed").mkdir()
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if str(p).endswith("closed") else real(p))
    error_line(cli("degrade", tmp_path / "closed", "-o", f"{tmp_path / 'o'}/"), "permission denied", "may not be listed")


# ----------------------------------------------------------------------------- wrong outputs


@pytest.mark.parametrize("args,words", [
    (["degrade", IMG, "--op", "blur", "--param", "sigma=nan"], "must be a finite number"),
    (["degrade", IMG, "--op", "mask", "--param", "std=inf"], "must be a finite number"),
    (["degrade", IMG, "--op", "noise", "--param", "loss_norm=l3"], "loss_norm must be l1 or l2"),
])
def test_a_parameter_out_of_its_range_is_refused(cli, tmp_path, args, words):
    error_line(cli(*args, "-o", tmp_path / "o.png"), words)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("flag", ["--step-noise", "--break-noise"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_generate_refuses_noise_that_is_not_a_finite_number(cli, gen_model, tmp_path, flag, value):
    error_line(cli("generate", "--model", gen_model, flag, value, "-o", tmp_path / "g.png"), "must be at least 0 (and a finite number)")


@pytest.mark.parametrize("decay", ["2", "-1", "nan"])
def test_train_refuses_an_ema_decay_outside_0_to_1(cli, fmnist_split, tmp_path, decay):
    error_line(cli("train", fmnist_split[0], "-o", tmp_path / "m.safetensors", "--ema-decay", decay, "--net", "tiny", "--steps", "1"),
               "--ema-decay must be in 0..1")
    assert not (tmp_path / "m.safetensors").exists()


def test_train_refuses_an_infinite_learning_rate(cli, fmnist_split, tmp_path):
    error_line(cli("train", fmnist_split[0], "-o", tmp_path / "m.safetensors", "--lr", "inf", "--net", "tiny", "--steps", "1"),
               "--lr must be positive (and a finite number)")


def test_a_model_with_non_finite_weights_is_refused_not_restored_to_black(cli, blur_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(blur_model))
    metadata = checkpoint.read_metadata(blur_model)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=metadata)
    error_line(cli("restore", IMG, "--model", tmp_path / "nan.safetensors", "-o", tmp_path / "r.png"), "NaN or infinity", "diverged")
    assert not (tmp_path / "r.png").exists()


def test_a_float_tiff_holding_nan_is_refused_without_numpys_warning(cli, tmp_path):
    v = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    v[3, 4] = np.nan
    Image.fromarray(v, "F").save(tmp_path / "nan.tif")
    err = error_line(cli("degrade", tmp_path / "nan.tif", "-o", tmp_path / "o.png"), "1 of its 1024 pixels are not numbers")
    assert "RuntimeWarning" not in err


def test_a_short_write_to_stdout_is_an_error_not_a_truncated_file(tmp_path):
    """A disk that fills while stdout is redirected to a file: os.write writes part, then nothing."""
    hook = """
import os
_write, _n = os.write, [0]
def write(fd, data):
    if fd == 1:
        _n[0] += 1
        return _write(fd, bytes(data[: len(data) // 2])) if _n[0] == 1 else 0
    return _write(fd, data)
os.write = write
"""
    with open(tmp_path / "out.png", "wb") as out:
        r = subprocess.run([sys.executable, "-m", "colddiff", "degrade", IMG, "--op", "blur", "--t", "3"], stdout=out,
                           stderr=subprocess.PIPE, env=with_hook(tmp_path, hook), cwd=ROOT, timeout=120)
    error_line(r, "standard output: could not write", "No space left on device")


def test_two_commands_writing_into_one_folder_at_once_are_refused_not_interleaved(cli, gen_model, tmp_path):
    from outputs import FileLock

    out = tmp_path / "many"
    with FileLock(out / ".colddiff.lock", "held by the test"):  # stands for a generate running into it
        error_line(cli("generate", "--model", gen_model, "--n", "2", "--steps", "3", "-o", f"{out}/", "--seed", "1"),
                   "another colddiff command is writing into this folder")
    r = cli("generate", "--model", gen_model, "--n", "2", "--steps", "3", "-o", f"{out}/", "-q")
    assert r.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["0_000000.png", "0_000001.png"]  # the lock is gone


# ----------------------------------------------------------------------------- the right words


def test_text_on_stdin_is_not_an_image_in_words_not_an_object(cli):
    err = error_line(cli("degrade", "-", stdin=b"hello, this is text"), "not a readable image (not a format colddiff reads")
    assert "BytesIO" not in err


def test_a_pipe_is_read_and_a_device_is_named(tmp_path):
    r = subprocess.run(["bash", "-c", f"{sys.executable} -m colddiff degrade <(cat {IMG}) --op blur --t 3 -o {tmp_path / 'p.png'}"],
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0 and Image.open(tmp_path / "p.png").size == (28, 28), r.stderr.decode()
    error_line(run_cli("degrade", "/dev/zero", "-o", tmp_path / "z.png"), "is a device or special file")


def test_dev_null_takes_an_output(cli):
    r = cli("degrade", IMG, "--op", "blur", "-o", os.devnull)
    assert r.returncode == 0, r.stderr.decode()


def test_megapixels_under_one_are_said_as_they_are(cli, tmp_path):
    Image.new("RGB", (451, 300)).save(tmp_path / "x.png")
    error_line(cli("--max-megapixels", "0.1", "degrade", tmp_path / "x.png", "-o", tmp_path / "o.png"), "is 0.135 megapixels, over the limit of 0.1")


def test_resume_of_a_model_with_no_state_says_there_is_no_state(cli, blur_model, fmnist_split, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(blur_model.read_bytes())
    err = error_line(cli("train", fmnist_split[0], "-o", foreign, "--resume"), "no training state lies beside it")
    assert "pass --resume" not in err


def test_a_model_whose_metadata_says_an_absurd_T_is_refused_by_its_T(cli, blur_model, tmp_path):
    from safetensors.torch import load_file, save_file

    metadata = checkpoint.read_metadata(blur_model)
    meta = json.loads(metadata["colddiff"])
    meta["operator"]["params"]["T"] = 10**12
    save_file(load_file(str(blur_model)), str(tmp_path / "t.safetensors"), metadata={**metadata, "colddiff": json.dumps(meta)})
    err = error_line(cli("restore", IMG, "--model", tmp_path / "t.safetensors", "-o", tmp_path / "r.png"), "T must be in 1..100000")
    assert "out of memory" not in err


def test_a_newline_in_a_file_name_stays_on_the_one_error_line(cli, tmp_path):
    error_line(cli("degrade", tmp_path / "a\nb.png", "-o", tmp_path / "o.png"), "a\\nb.png: no such file")


def test_info_reports_every_file_and_fails_at_the_end(cli, blur_model, tmp_path):
    r = cli("info", tmp_path / "missing.png", blur_model, tmp_path / "gone.safetensors")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("colddiff: error:") == 2 and "blur" in r.stdout.decode(), err


def test_bare_colddiff_shows_the_help_and_succeeds():
    r = run_cli()
    assert r.returncode == 0 and b"Usage: " in r.stdout and b"degrade" in r.stdout


@pytest.mark.parametrize("command,option", [("train", "--save-every"), ("eval", "--batch"), ("fit-prior", "--gmm-components")])
def test_every_option_says_what_it_does(cli, command, option):
    import colddiff

    click_command = colddiff.typer.main.get_command(colddiff.app).commands[command]
    options = [p for p in click_command.params if p.param_type_name == "option" and not p.hidden]
    assert all(p.help for p in options), [p.name for p in options if not p.help]
    assert option in cli(command, "--help").stdout.decode()


def test_help_paragraphs_read_as_sentences_not_as_the_source_broke_them():
    import colddiff

    for name in ("degrade", "restore"):
        doc = colddiff.typer.main.get_command(colddiff.app).commands[name].help
        assert all("\n" not in paragraph for paragraph in doc.split("\n\n")), doc


def test_progress_under_one_a_second_says_seconds_per_image(capsys):
    from progress import Progress

    now = {"t": 0.0}
    p = Progress("restoring", 6, "images", every=10.0)
    p.clock = lambda: now["t"]
    with p:
        for done in range(1, 7):
            now["t"] += 40  # a 12 MP photo restored in tiles
            p.update(done)
    if p.mode != "lines":
        pytest.skip("stderr is a terminal here")
    lines = capsys.readouterr().err.splitlines()
    assert "1/6 images, 40 s per image, 3 min left" in lines[1] and "images/s" not in "".join(lines[1:-1]), lines


def test_an_input_name_near_the_limit_can_still_be_written_to_a_folder(cli, tmp_path):
    name = "x" * 250 + ".png"  # 254 bytes: legal, and as an output the temporary's name would pass 255
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(IMG.read_bytes())
    r = cli("degrade", tmp_path / "in", "--op", "blur", "--t", "2", "-o", f"{tmp_path / 'out'}/", "-q")
    assert r.returncode == 0 and (tmp_path / "out" / name).exists(), r.stderr.decode()


def test_a_weight_of_the_wrong_shape_is_named(cli, blur_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(blur_model))
    name = sorted(k for k in tensors if tensors[k].ndim == 4)[0]
    tensors[name] = torch.zeros(3, *tensors[name].shape[1:])
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata=checkpoint.read_metadata(blur_model))
    error_line(cli("restore", IMG, "--model", tmp_path / "shape.safetensors", "-o", tmp_path / "r.png"), f"size mismatch for {name}")
