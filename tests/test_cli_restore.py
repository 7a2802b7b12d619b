"""`colddiff restore` and `colddiff eval` end to end on a briefly trained model."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, PHOTO, png
from PIL import Image


def test_eval_table_direct_and_tacos_beat_degraded(cli, blur_model, fmnist_split, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # FID reads n/a even where weights are cached
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "50", "-o", tmp_path / "ev")
    assert r.returncode == 0, r.stderr.decode()
    assert "| test |" in r.stdout.decode() and "n/a" in r.stdout.decode()
    table = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert table["n"] == 50 and table["sampler"] == "tacos"
    d = table["sampled_minus_direct"]  # paired over the same images: its error is that of the differences, not of each column
    assert abs(d["ssim"] - (table["sampled"]["ssim"] - table["direct"]["ssim"])) < 1e-6 and 0 < d["ssim_se"] < 0.05
    assert f"sampled - direct SSIM: {d['ssim']:+.3f} +- {2 * d['ssim_se']:.3f} (2 standard errors over the 50 paired images)" in r.stdout.decode()
    for col in ("direct", "sampled"):
        assert table[col]["ssim"] > table["degraded"]["ssim"] + 0.05, table
        assert table[col]["rmse"] < table["degraded"]["rmse"] - 0.01, table
    grid = Image.open(tmp_path / "ev" / "grid.png")
    assert grid.size == (4 * 30 + 2, 8 * 30 + 2)  # degraded | direct | sampled | original, 8 rows
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "5", "-o", tmp_path / "ev")
    assert r.returncode == 1 and b"--force" in r.stderr
    held_out = tmp_path / "held-out"  # its own -o inside it: the grid is not taken for a held-out image
    shutil.copytree(fmnist_split[1], held_out)
    for _ in range(2):
        assert cli("eval", held_out, "--model", blur_model, "-o", held_out / "ev", "--force").returncode == 0
        assert json.loads((held_out / "ev" / "eval.json").read_text())["n"] == 50
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "5", "--batch", "0")
    assert r.returncode == 1 and b"--batch must be at least 1" in r.stderr
    r = cli("eval", fmnist_split[1], "--model", blur_model, "--n", "5", "-o", tmp_path / "ev.png")  # not a folder named ev.png
    assert r.returncode == 1 and b"ev.png: names an image file, but eval.json and grid.png need an output folder" in r.stderr
    assert not (tmp_path / "ev.png").exists()


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
    Image.new("L", (16400, 12)).save(tmp_path / "long.png")  # WebP's limit is 16383 px: refused before R runs
    r = cli("restore", tmp_path / "long.png", "--model", blur_model, "--t", "1", "-o", tmp_path / "o.webp")
    assert r.returncode == 1 and "WebP holds at most 16383 px a side and this image is 16400x12" in r.stderr.decode()
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.webp").exists()


def test_eval_refuses_colour_images_for_a_grey_model_as_restore_does(cli, blur_model, tmp_path):
    import shutil

    (tmp_path / "c").mkdir()
    shutil.copy(PHOTO, tmp_path / "c" / "p.png")
    r = cli("eval", tmp_path / "c", "--model", blur_model)
    assert r.returncode == 1 and "colour (3-channel)" in r.stderr.decode()


def test_restore_reads_t_and_seed_from_degrades_note_in_a_pipe(cli, cli_process, blur_model, tmp_path):
    """The brief's pipe, `degrade - --op … --t 2 | restore - --model m`, restores from t = 2, not T."""
    img = sorted((DATA / "fmnist").iterdir())[0]
    deg = cli_process("degrade", "-", "--op", "blur", "--t", "5", "--seed", "3", stdin=img.read_bytes())
    assert deg.returncode == 0, deg.stderr.decode()
    piped = cli_process("restore", "-", "--model", blur_model, "--steps", "5", stdin=deg.stdout)
    assert piped.returncode == 0 and b"as if degraded" not in piped.stderr, piped.stderr.decode()
    (tmp_path / "d.png").write_bytes(deg.stdout)
    told = cli("restore", tmp_path / "d.png", "--model", blur_model, "--steps", "5", "--t", "5", "--seed", "3")
    assert told.returncode == 0 and piped.stdout == told.stdout
    at_T = cli("restore", tmp_path / "d.png", "--model", blur_model, "--steps", "5", "--t", "20")
    assert png(at_T.stdout).astype(int).std() != png(told.stdout).astype(int).std()  # t matters: the note was used


def test_restore_folder_of_mixed_t_batches_each_t_with_its_own_steps(cli, gen_model, fmnist_split, tmp_path):
    """Images degraded to different t in one folder: each restored from its own t, and the model's
    10 sampling steps cut to t where t < 10 (t = 4 runs 4 jumps, not a --steps error)."""
    files = sorted(fmnist_split[1].iterdir())[:4]
    op = ["--op", "blur", "--preset", "generation", "--param", "T=30", "--no-fit"]  # the model trained on 28 px, unfitted
    for f, t in zip(files, (4, 25, 4, 25)):
        assert cli("degrade", f, *op, "--t", t, "--seed", 7, "-o", tmp_path / "deg" / f.name).returncode == 0
    r = cli("restore", tmp_path / "deg", "--model", gen_model, "--batch", "4", "-o", tmp_path / "out")
    assert r.returncode == 0 and b"as if degraded" not in r.stderr, r.stderr.decode()
    for f, t in zip(files, (4, 25, 4, 25)):
        one = cli("restore", tmp_path / "deg" / f.name, "--model", gen_model, "--t", t, "--seed", 7)
        assert one.returncode == 0 and one.stdout == (tmp_path / "out" / f.name).read_bytes()


def test_restore_refuses_an_image_another_operator_made_unless_told_t(cli, blur_model, tmp_path):
    img = sorted((DATA / "fmnist").iterdir())[0]
    for args, message in ((["--op", "pixelate", "--preset", "mnist", "--t", "2"], "was degraded by pixelate"),
                          (["--op", "blur", "--preset", "celeba", "--t", "2"], "T=200 (the model's: 20)"),
                          (["--op", "blur", "--preset", "mnist", "--param", "padding=reflect", "--t", "2"], "padding=reflect")):
        d = tmp_path / "d.png"
        assert cli("degrade", img, *args, "-o", d, "--force").returncode == 0
        r = cli("restore", d, "--model", blur_model, "-o", tmp_path / "r.png")
        err = r.stderr.decode()
        assert r.returncode == 1 and message in err and "pass --t" in err and err.count("\n") == 1, err
        assert not (tmp_path / "r.png").exists()
        r = cli("restore", d, "--model", blur_model, "--t", "2", "--sampler", "direct")  # told: restores anyway
        assert r.returncode == 0 and png(r.stdout).shape == (28, 28)


def test_restore_a_damaged_note_is_one_line(cli, blur_model, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    for text in ("not json", '["a list"]', '{"command": "degrade", "op": "blur", "params": {"T": 20}, "t": 99, "seed": 0}',
                 '{"command": "degrade", "op": "nosuch", "params": {}, "t": 1, "seed": 0}', '{"command": "degrade", "op": "blur"}'):
        info = PngInfo()
        info.add_text("colddiff", text)
        Image.open(sorted((DATA / "fmnist").iterdir())[0]).save(tmp_path / "n.png", pnginfo=info)
        r = cli("restore", tmp_path / "n.png", "--model", blur_model, "-o", tmp_path / "r.png")
        err = r.stderr.decode()
        assert r.returncode == 1 and "note" in err and "pass --t" in err and err.count("\n") == 1, (text, err)
        assert cli("restore", tmp_path / "n.png", "--model", blur_model, "--t", "3", "--sampler", "direct").returncode == 0


def test_degrade_notes_only_single_frames_in_every_format_but_bmp(cli, tmp_path):
    import io

    img = sorted((DATA / "fmnist").iterdir())[0]
    r = cli("degrade", img, "--op", "snow", "--t", "7", "--seed", "11")
    note = json.loads(Image.open(io.BytesIO(r.stdout)).info["colddiff"])
    assert (note["command"], note["op"], note["t"], note["seed"], note["params"]["T"]) == ("degrade", "snow", 7, 11, 200)
    strip = cli("degrade", img, "--op", "snow", "--strip", "--seed", "11")
    said = json.loads(Image.open(io.BytesIO(strip.stdout)).info["colddiff"])  # several frames: no one t, and not "degrade"
    assert said == {"command": "degrade --strip", "op": "snow", "params": note["params"], "strip": [0, *range(20, 201, 20)], "seed": 11}
    assert cli("degrade", img, "--op", "snow", "--t", "7", "--seed", "11", "-o", tmp_path / "d.jpg").returncode == 0
    from image_io import read_note

    assert read_note(str(tmp_path / "d.jpg")) == note  # a JPEG carries it in a comment
    for suffix in ("webp", "tif", "gif"):  # a WebP or TIFF in its ImageDescription, a GIF in a comment
        assert cli("degrade", img, "--op", "snow", "--t", "7", "--seed", "11", "-o", tmp_path / f"d.{suffix}").returncode == 0
        assert read_note(str(tmp_path / f"d.{suffix}")) == note, suffix
    assert cli("degrade", img, "--op", "snow", "--t", "7", "-o", tmp_path / "d.bmp").returncode == 0
    assert read_note(str(tmp_path / "d.bmp")) is None  # no room for it
    Image.open(img).save(tmp_path / "camera.jpg", comment=b"OLYMPUS DIGITAL CAMERA")
    exif = Image.Exif()
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA"
    Image.open(img).save(tmp_path / "camera.webp", exif=exif.tobytes())
    Image.open(img).save(tmp_path / "camera.tif", exif=exif)
    for name in ("camera.jpg", "camera.webp", "camera.tif"):  # another program's comment is not a note
        assert read_note(str(tmp_path / name)) is None, name


def test_restore_and_generate_say_how_they_made_each_png_and_restore_reads_only_degrades(cli, blur_model, gen_model, tmp_path):
    import io

    from image_io import read_note

    img = sorted((DATA / "fmnist").iterdir())[0]
    assert cli("degrade", img, "--op", "blur", "--t", "6", "--seed", "4", "-o", tmp_path / "d.png").returncode == 0
    assert cli("restore", tmp_path / "d.png", "--model", blur_model, "--steps", "3", "-o", tmp_path / "r.png").returncode == 0
    note = json.loads(Image.open(tmp_path / "r.png").info["colddiff"])
    assert note == {"command": "restore", "model": blur_model.name, "sampler": "tacos", "steps": 3, "z": "fixed", "eta": 0.0,
                    "step_noise": 0.0, "t": 6, "seed": 4, "tile": None}
    assert cli("degrade", img, "--op", "blur", "--t", "6", "--seed", "4", "-o", tmp_path / "d.webp").returncode == 0
    r = cli("restore", tmp_path / "d.webp", "--model", blur_model, "--steps", "3", "-o", tmp_path / "r.tif")
    assert r.returncode == 0 and b"as if degraded" not in r.stderr  # a WebP's note read, a TIFF's written
    assert read_note(str(tmp_path / "r.tif")) == note
    again = cli("restore", tmp_path / "r.png", "--model", blur_model, "--steps", "3", "-o", tmp_path / "rr.png")
    assert again.returncode == 0 and b"as if degraded to t = T = 20" in again.stderr  # a restored image is not a degraded one
    r = cli("generate", "-m", gen_model, "--n", "3", "--seed", "5")
    note = json.loads(Image.open(io.BytesIO(r.stdout)).info["colddiff"])
    assert (note["command"], note["model"], note["seed"], note["n"], note["steps"]) == ("generate", gen_model.name, 5, 3, 10)
    assert cli("generate", "-m", gen_model, "--n", "2", "-o", f"{tmp_path / 'g'}/").returncode == 0
    assert json.loads(Image.open(tmp_path / "g" / "0_000001.png").info["colddiff"])["image"] == 1


def test_restore_an_image_degraded_to_t_0_gives_it_back(cli, blur_model, tmp_path):
    """t = 0 from a note (or --t 0) is x_0 itself, for every sampler: no network call, no --steps error."""
    img = sorted((DATA / "fmnist").iterdir())[0]
    assert cli("degrade", img, "--op", "blur", "--t", "0", "-o", tmp_path / "d.png").returncode == 0
    for args in ([], ["--sampler", "naive"], ["--sampler", "direct"], ["--t", "0"]):
        r = cli("restore", tmp_path / "d.png", "--model", blur_model, *args)
        assert r.returncode == 0, (args, r.stderr.decode())
        assert (png(r.stdout) == np.asarray(Image.open(img))).all()
    r = cli("restore", "-", "-", "--model", blur_model, "-o", tmp_path / "o/", stdin=img.read_bytes())
    assert r.returncode == 1 and "standard input) can be given once" in r.stderr.decode()


def test_restore_redraws_the_hidden_randomness_from_the_notes_seed(cli, fmnist_split, tmp_path):
    """Snow's pattern comes from the seed: the note's seed gives the bytes of --seed S, not of seed 0."""
    model = tmp_path / "snow.safetensors"
    r = cli("train", fmnist_split[0], "-o", model, "--op", "snow", "--preset", "cifar10", "--param", "T=20", "--net", "tiny",
            "--steps", "10", "--batch", "8", "--accumulate", "1", "--save-every", "10", "--sample-every", "10", "-q")
    assert r.returncode == 0, r.stderr.decode()
    img = sorted((DATA / "fmnist").iterdir())[0]
    assert cli("degrade", img, "--op", "snow", "--preset", "cifar10", "--param", "T=20", "--t", "12", "--seed", "9",
               "-o", tmp_path / "d.png").returncode == 0
    noted = cli("restore", tmp_path / "d.png", "-m", model, "--steps", "4")
    told = cli("restore", tmp_path / "d.png", "-m", model, "--steps", "4", "--t", "12", "--seed", "9")
    zero = cli("restore", tmp_path / "d.png", "-m", model, "--steps", "4", "--t", "12", "--seed", "0")
    assert noted.returncode == told.returncode == zero.returncode == 0
    assert noted.stdout == told.stdout and (png(noted.stdout) != png(zero.stdout)).any()
    assert cli("degrade", img, "--op", "snow", "--preset", "cifar10", "--param", "T=20", "--t", "12", "--seed", "9",
               "-o", tmp_path / "d.jpg").returncode == 0  # the note in a JPEG's comment: restore reads it too
    jpeg_noted = cli("restore", tmp_path / "d.jpg", "-m", model, "--steps", "4")
    jpeg_told = cli("restore", tmp_path / "d.jpg", "-m", model, "--steps", "4", "--t", "12", "--seed", "9")
    assert jpeg_noted.returncode == 0 and jpeg_noted.stdout == jpeg_told.stdout and "as if degraded" not in jpeg_noted.stderr.decode()


def test_eval_says_when_a_stray_colour_image_is_used_as_grey(cli, blur_model, tmp_path):
    import shutil

    (tmp_path / "c").mkdir()
    for f in sorted((DATA / "fmnist").iterdir())[:5]:
        shutil.copy(f, tmp_path / "c" / f.name)
    Image.open(PHOTO).convert("RGB").resize((28, 28)).save(tmp_path / "c" / "zz.png")  # sorted last: not the checked first
    r = cli("eval", tmp_path / "c", "--model", blur_model, "--n", "6", "--steps", "2")
    assert r.returncode == 0 and "1 of the 6 images are colour: using them as grey" in r.stderr.decode(), r.stderr.decode()


def test_restore_says_it_reads_only_the_first_frame_of_an_animated_input(cli, blur_model, tmp_path):
    frames = [Image.open(f) for f in sorted((DATA / "fmnist").iterdir())[:2]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r = cli("restore", tmp_path / "a.gif", "--model", blur_model, "--t", "3", "--sampler", "direct", "-o", tmp_path / "r.png")
    assert r.returncode == 0 and "a.gif holds 2 frames: colddiff reads only the first" in r.stderr.decode(), r.stderr.decode()


def test_restore_keeps_a_grey_images_transparency(cli, blur_model, tmp_path):
    grey = Image.open(sorted((DATA / "fmnist").iterdir())[0])
    a = np.zeros((28, 28), np.uint8)
    a[4:24, 6:22] = 255
    la = Image.merge("LA", (grey, Image.fromarray(a)))
    la.save(tmp_path / "la.png")
    r = cli("restore", tmp_path / "la.png", "--model", blur_model, "--t", "3", "--sampler", "direct", "-o", tmp_path / "r.png")
    assert r.returncode == 0, r.stderr.decode()
    out = Image.open(tmp_path / "r.png")
    assert out.mode == "LA" and np.array_equal(np.asarray(out)[..., 1], a)
    grey.save(tmp_path / "g.png")
    r = cli("restore", tmp_path / "g.png", "--model", blur_model, "--t", "3", "--sampler", "direct", "-o", tmp_path / "g_r.png")
    assert np.array_equal(np.asarray(out)[..., 0], np.asarray(Image.open(tmp_path / "g_r.png")))  # the grey, as without alpha


def test_skip_existing_finishes_an_interrupted_folder_and_keeps_what_is_there(cli, blur_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    names = [f.name for f in sorted((DATA / "fmnist").iterdir())[:5]]
    for name in names:
        shutil.copy(DATA / "fmnist" / name, src / name)
    for command, args in (("degrade", ["--op", "blur", "--preset", "mnist"]), ("restore", ["--model", blur_model])):
        inputs = src if command == "degrade" else tmp_path / "degrade"
        out = tmp_path / command
        assert cli(command, inputs, *args, "-o", out).returncode == 0
        first = {n: (out / n).read_bytes() for n in names}
        (out / names[0]).unlink()  # as if interrupted before it
        (out / names[3]).unlink()
        (out / names[1]).write_bytes(b"kept as it is")
        r = cli(command, inputs, *args, "-o", out, "--skip-existing")
        assert r.returncode == 0 and "3 of the 5 outputs exist and are kept (--skip-existing); doing the other 2" in r.stderr.decode()
        # degrade's are the same bytes; restore's the same to one grey level: the network's float sums
        # depend on the batch an image is in (oneDNN picks kernels by batch size and CPU model)
        redone = [np.abs(png((out / n).read_bytes()).astype(int) - png(first[n]).astype(int)).max() for n in (names[0], names[3], names[2], names[4])]
        assert max(redone) <= (0 if command == "degrade" else 1), redone
        assert (out / names[1]).read_bytes() == b"kept as it is"
        r = cli(command, inputs, *args, "-o", out, "--skip-existing")
        assert r.returncode == 0 and b"all 5 outputs exist already (--skip-existing): nothing to do" in r.stderr
        (out / names[1]).write_bytes(first[names[1]])  # restore reads degrade's outputs next
        r = cli(command, inputs, *args, "-o", out, "--skip-existing", "--force")
        assert r.returncode == 1 and r.stderr.decode().count("\n") == 1


def test_skip_existing_refuses_to_keep_outputs_another_run_made(cli, blur_model, gen_model, tmp_path):
    """--skip-existing after a change of settings would leave a folder that mixes two runs (half of it at
    t = 10, half at t = 20): a kept output whose note says other settings is one error line, naming them,
    and nothing is written; the same settings (a run finished) still pass."""
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((DATA / "fmnist").iterdir())[:3]:
        shutil.copy(f, src / f.name)

    def unfinished(command, inputs, out, *args):  # a run interrupted after two of its three outputs
        assert cli(command, *inputs, *args, "-o", out).returncode == 0
        gone = sorted(Path(out).iterdir())[0]
        gone.unlink()
        return gone

    def refused(command, inputs, out, *args, said):
        r = cli(command, *inputs, *args, "-o", out, "--skip-existing")
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1 and said in err and "give another -o, or --force" in err, err
        assert len(list(Path(out).iterdir())) == 2

    gone = unfinished("degrade", [src], tmp_path / "d", "--op", "blur", "--preset", "mnist", "--t", "10")
    refused("degrade", [src], tmp_path / "d", "--op", "blur", "--preset", "mnist", "--t", "20", said="made with t=10, not this command's t=20")
    refused("degrade", [src], tmp_path / "d", "--op", "blur", "--preset", "mnist", "--t", "10", "--seed", "3", said="seed=0, not this command's seed=3")
    refused("degrade", [src], tmp_path / "d", "--op", "snow", "--preset", "cifar10", "--t", "10", said="made with op=blur, not this command's op=snow")
    refused("degrade", [src], tmp_path / "d", "--op", "blur", "--preset", "mnist", "--t", "10", "--param", "sigma=2",
            said="not this command's sigma=2")
    refused("degrade", [src], tmp_path / "d", "--op", "blur", "--preset", "mnist", "--strip", said="command=degrade --strip")
    r = cli("degrade", src, "--op", "blur", "--preset", "mnist", "--t", "10", "-o", tmp_path / "d", "--skip-existing")
    assert r.returncode == 0 and gone.exists(), r.stderr.decode()
    # fitted parameters: a preset for 128 px on 28 px images scales its kernels, --no-fit does not
    unfinished("degrade", [src], tmp_path / "f", "--op", "blur", "--preset", "celeba", "--t", "10")
    refused("degrade", [src], tmp_path / "f", "--op", "blur", "--preset", "celeba", "--t", "10", "--no-fit",
            said="not this command's px_scale=its default")
    assert cli("degrade", src, "--op", "blur", "--preset", "celeba", "--t", "10", "-o", tmp_path / "f", "--skip-existing").returncode == 0

    model = ["--model", blur_model]
    gone = unfinished("restore", [tmp_path / "d"], tmp_path / "r", *model, "--steps", "3")
    refused("restore", [tmp_path / "d"], tmp_path / "r", *model, "--steps", "4", said="made with steps=3, not this command's steps=4")
    refused("restore", [tmp_path / "d"], tmp_path / "r", *model, "--sampler", "direct",
            said="sampler=tacos, steps=3, not this command's sampler=direct, steps=none")
    refused("restore", [tmp_path / "d"], tmp_path / "r", *model, "--steps", "3", "--t", "8", said="made with t=10, not this command's t=8")
    r = cli("restore", tmp_path / "d", *model, "--steps", "3", "-o", tmp_path / "r", "--skip-existing")
    assert r.returncode == 0 and gone.exists(), r.stderr.decode()

    gen = ["--model", gen_model, "--n", "3"]
    gone = unfinished("generate", [], f"{tmp_path}/g/", *gen, "--steps", "3")
    refused("generate", [], f"{tmp_path}/g/", *gen, "--steps", "4", said="made with steps=3, not this command's steps=4")
    r = cli("generate", *gen, "--steps", "3", "-o", f"{tmp_path}/g/", "--skip-existing")
    assert r.returncode == 0 and gone.exists(), r.stderr.decode()
    # a kept file with no note (a BMP, another program's) cannot be checked: kept as it is
    one = sorted(src.iterdir())[0]
    assert cli("degrade", one, "--op", "blur", "--preset", "mnist", "--t", "10", "-o", tmp_path / "one.bmp").returncode == 0
    r = cli("degrade", one, "--op", "blur", "--preset", "mnist", "--t", "20", "-o", tmp_path / "one.bmp", "--skip-existing")
    assert r.returncode == 0 and b"the output exists already" in r.stderr, r.stderr.decode()


def test_restore_builds_the_operator_a_folders_notes_name_once(cli, blur_model, tmp_path, monkeypatch):
    """Each degraded image's note names its operator, which restore checks against the model's: built
    per image, a blur's T kernels made that half of restoring 2,000 Fashion-MNIST images (32 s -> 19 s)."""
    import operators

    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((DATA / "fmnist").iterdir())[:6]:
        shutil.copy(f, src / f.name)
    assert cli("degrade", src, "--op", "blur", "--preset", "mnist", "--param", "sigma=1.5", "--t", "5", "-o", tmp_path / "d").returncode == 0
    built = []
    real = operators.operator_from_params
    monkeypatch.setattr(operators, "operator_from_params", lambda *a: built.append(a) or real(*a))
    r = cli("restore", tmp_path / "d", "--model", blur_model, "--t", "5", "-o", tmp_path / "r", "--sampler", "direct")
    assert r.returncode == 0 and len(list((tmp_path / "r").iterdir())) == 6, r.stderr.decode()
    notes = [a for a in built if a[1].get("sigma") == 1.5]
    assert len(notes) <= 1, len(notes)  # once for the folder (or none: built by an earlier test)


def test_eval_and_fit_prior_say_they_resize_images_to_the_models_size(cli, blur_model, gen_model, tmp_path):
    """The size is the model's, not one the user asked for: a folder of 40 px images evaluated by a 28 px
    model is shrunk, and that changes what SSIM measures, so it is said (before, only upscaling was)."""
    (tmp_path / "h").mkdir()
    for i, f in enumerate(sorted((DATA / "fmnist").iterdir())[:6]):
        im = Image.open(f)
        (im.resize((40, 40)) if i < 4 else im).save(tmp_path / "h" / f.name)
    r = cli("eval", tmp_path / "h", "--model", blur_model, "--steps", "2")
    assert r.returncode == 0 and "4 of the 6 images are resized and centre-cropped to 28x28, the model's size" in r.stderr.decode(), r.stderr.decode()
    r = cli("fit-prior", tmp_path / "h", "--model", gen_model, "--gmm-components", "1", "-o", tmp_path / "p.safetensors")
    assert r.returncode == 0 and "4 of the 6 images are resized" in r.stderr.decode(), r.stderr.decode()
    r = cli("eval", tmp_path / "h", "--model", blur_model, "--steps", "2", "--quiet")
    assert r.returncode == 0 and "resized" not in r.stderr.decode()
    for f in (tmp_path / "h").iterdir():
        Image.open(f).resize((28, 28)).save(f)
    r = cli("eval", tmp_path / "h", "--model", blur_model, "--steps", "2")
    assert r.returncode == 0 and "resized" not in r.stderr.decode(), r.stderr.decode()


def test_restore_strip_is_the_samplers_own_states_x_t_to_x_0(cli, blur_model, tmp_path):
    import torch

    import checkpoint
    from image_io import read_image, to_model, to_pixels

    img = sorted((DATA / "fmnist").iterdir())[3]
    assert cli("degrade", img, "--op", "blur", "--t", "20", "-o", tmp_path / "d.png").returncode == 0
    r = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "-o", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr.decode()
    assert cli("restore", tmp_path / "d.png", "--model", blur_model, "-o", tmp_path / "r.png").returncode == 0
    strip = np.asarray(Image.open(tmp_path / "s.png")).astype(int)
    assert strip.shape == (28, 21 * 28)  # T = 20: every state, x_20 .. x_0
    frames = [strip[:, 28 * k : 28 * (k + 1)] for k in range(21)]
    assert np.array_equal(frames[0], np.asarray(Image.open(tmp_path / "d.png")))
    assert np.array_equal(frames[-1], np.asarray(Image.open(tmp_path / "r.png")))  # the strip changes nothing
    # the obvious reference: Algorithm 2 written out, keeping every x_s
    net, op, _ = checkpoint.load_model(blur_model)
    x, expected = to_model(read_image(tmp_path / "d.png"))[None], []
    with torch.no_grad():
        for s in range(20, 0, -1):
            expected.append(to_pixels(x)[0, 0].numpy().astype(int))
            x0_hat = net(x, torch.full((1,), s))
            x = x - op.degrade(x0_hat, torch.full((1,), s)) + op.degrade(x0_hat, torch.full((1,), s - 1))
    expected.append(to_pixels(x)[0, 0].numpy().astype(int))
    diffs = [np.abs(a - b).max() for a, b in zip(frames, expected)]
    assert max(diffs) <= 1 and np.mean([np.abs(a - b).mean() for a, b in zip(frames, expected)]) < 0.01, diffs
    assert len({f.tobytes() for f in frames}) > 15  # it is a trajectory, not one image repeated
    r = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "--frames", "5", "-o", tmp_path / "s5.png")
    five = np.asarray(Image.open(tmp_path / "s5.png")).astype(int)
    assert r.returncode == 0 and np.array_equal(five, np.concatenate([frames[k] for k in (0, 5, 10, 15, 20)], axis=1))
    text = cli("info", tmp_path / "s5.png").stdout.decode()
    assert "  steps       every step\n" in text and "  tile        none, the whole image at once\n" in text  # the note's nulls, in words
    assert "  strip       [20, 15, 10, 5, 0]\n" in text
    note = json.loads(cli("info", "--json", tmp_path / "s5.png").stdout)
    assert note["strip"] == [20, 15, 10, 5, 0] and note["command"] == "restore" and note["t"] == 20
    kept = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "--frames", "5", "-o", tmp_path / "s5.png", "--skip-existing")
    assert kept.returncode == 0
    other = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "-o", tmp_path / "s5.png", "--skip-existing")
    assert other.returncode == 1 and b"give another -o, or --force" in other.stderr
    bad = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "--frames", "1", "-o", tmp_path / "s1.png")
    assert bad.returncode == 1 and bad.stderr.decode().count("\n") == 1 and b"--frames must be at least 2" in bad.stderr
    bad = cli("restore", tmp_path / "d.png", "--model", blur_model, "--frames", "5", "-o", tmp_path / "f.png")
    assert bad.returncode == 1 and bad.stderr == b"colddiff: error: --frames applies to --strip\n"



def test_restore_strip_x0_hat_row_is_R_from_each_state(cli, blur_model, tmp_path):
    """--x0-hat: under each state x_s, R's x0_hat from it (what the released code saves as X_0s), against
    Algorithm 2 written out; the states' row is the plain strip's, and x_0, which R never saw, has a
    blank cell. A plain output never keeps such a strip (--skip-existing)."""
    import torch

    import checkpoint
    from image_io import read_image, to_model, to_pixels

    img = sorted((DATA / "fmnist").iterdir())[3]
    assert cli("degrade", img, "--op", "blur", "--t", "20", "-o", tmp_path / "d.png").returncode == 0
    for name, extra in (("s.png", []), ("x.png", ["--x0-hat"])):
        r = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "--frames", "5", *extra, "-o", tmp_path / name)
        assert r.returncode == 0, r.stderr.decode()
    plain, both = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("s.png", "x.png"))
    assert both.shape == (56, 5 * 28) and np.array_equal(both[:28], plain)
    predicted = [both[28:, 28 * k : 28 * (k + 1)] for k in range(5)]
    assert not predicted[-1].any()  # under x_0
    net, op, _ = checkpoint.load_model(blur_model)
    x, expected = to_model(read_image(tmp_path / "d.png"))[None], {}
    with torch.no_grad():
        for s in range(20, 0, -1):
            x0_hat = net(x, torch.full((1,), s))
            expected[s] = to_pixels(x0_hat)[0, 0].numpy().astype(int)
            x = x - op.degrade(x0_hat, torch.full((1,), s)) + op.degrade(x0_hat, torch.full((1,), s - 1))
    diffs = [np.abs(predicted[k] - expected[s]) for k, s in enumerate((20, 15, 10, 5))]
    assert max(d.max() for d in diffs) <= 1 and np.mean([d.mean() for d in diffs]) < 0.01, [d.max() for d in diffs]
    assert np.abs(predicted[0] - predicted[3]).max() > 10  # R's guess changes along the path
    text = cli("info", tmp_path / "x.png").stdout.decode()
    assert "  x0_hat_row  yes: under each frame, R's x0_hat from it\n" in text, text
    again = cli("restore", tmp_path / "d.png", "--model", blur_model, "--strip", "--frames", "5", "-o", tmp_path / "x.png", "--skip-existing")
    assert again.returncode == 1 and b"made with x0_hat_row=True" in again.stderr, again.stderr
    for name in ("s.png", "x.png"):  # a strip is never what a plain restore would write
        kept = cli("restore", tmp_path / "d.png", "--model", blur_model, "-o", tmp_path / name, "--skip-existing")
        assert kept.returncode == 1 and b"made with strip=[20, 15, 10, 5, 0]" in kept.stderr, kept.stderr
    bad = cli("restore", tmp_path / "d.png", "--model", blur_model, "--x0-hat", "-o", tmp_path / "f.png")
    assert bad.returncode == 1 and bad.stderr == b"colddiff: error: --x0-hat applies to --strip\n"

def test_restore_strip_of_a_wide_image_shrinks_its_frames(cli, blur_model, tmp_path):
    img = sorted((DATA / "fmnist").iterdir())[3]
    Image.open(img).resize((1700, 28), Image.BICUBIC).save(tmp_path / "wide.png")
    r = cli("restore", tmp_path / "wide.png", "--model", blur_model, "--t", "20", "--strip", "-o", tmp_path / "s.png")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert err.count("a strip of 21 frames of 1700x28 would be 35700 px wide; its frames are shrunk to 780x13") == 1, err
    assert Image.open(tmp_path / "s.png").size == (21 * 780, 13)


def test_a_degrade_strip_says_what_it_is_restore_refuses_it_and_skip_existing_checks_it(cli, blur_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((DATA / "fmnist").iterdir())[:2]:
        shutil.copy(f, src / f.name)
    assert cli("degrade", src, "--op", "blur", "--strip", "--frames", "5", "-o", tmp_path / "s").returncode == 0
    strip = tmp_path / "s" / sorted(p.name for p in src.iterdir())[0]
    r = cli("restore", strip, "--model", blur_model, "-o", tmp_path / "r.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "is a strip of 5 frames (degrade --strip), not one degraded image" in err, err
    assert cli("restore", strip, "--model", blur_model, "--t", "20", "-o", tmp_path / "r.png").returncode == 0  # told: it is the user's
    text = cli("info", strip).stdout.decode()
    assert f"{strip}: made by colddiff degrade --strip" in text and "  strip       [0, 5, 10, 15, 20]\n" in text
    # --skip-existing: the same strips are kept; strips of other frames, or fitted otherwise, are refused
    for out, args in ((tmp_path / "k0", []), (tmp_path / "k1", ["--preset", "celeba"])):  # celeba on 28 px images: kernels fitted
        assert cli("degrade", src, "--op", "blur", *args, "--strip", "--frames", "5", "-o", out).returncode == 0
        sorted(out.iterdir())[0].unlink()
        r = cli("degrade", src, "--op", "blur", *args, "--strip", "--frames", "5", "-o", out, "--skip-existing")
        assert r.returncode == 0 and len(list(out.iterdir())) == 2, r.stderr.decode()
    r = cli("degrade", src, "--op", "blur", "--strip", "--frames", "3", "-o", tmp_path / "k0", "--skip-existing")
    assert r.returncode == 1 and b"give another -o, or --force" in r.stderr
    r = cli("degrade", src, "--op", "blur", "--preset", "celeba", "--no-fit", "--strip", "--frames", "5", "-o", tmp_path / "k1", "--skip-existing")
    assert r.returncode == 1 and b"px_scale" in r.stderr, r.stderr.decode()


def test_restore_keeps_a_sixteen_bit_grey_image_sixteen_bit(cli, blur_model, tmp_path):
    """A 16-bit grey image degraded by colddiff is restored to 16 bits: R's output to the level (the
    obvious reference: R and Algorithm 2 by hand on the 16-bit pixels). In a folder with an 8-bit
    image of the same size each keeps its own depth, and the 8-bit one is what it is restored alone."""
    import torch

    import checkpoint
    from image_io import read_image, to_model, to_pixels

    rng = np.random.default_rng(4)
    img = np.asarray(Image.open(sorted((DATA / "fmnist").iterdir())[5])).astype(np.float64)
    v = np.clip(np.rint(img * 257 + rng.normal(0, 40, img.shape)), 0, 65535).astype(np.uint16)  # 16-bit: levels between 8-bit ones
    (tmp_path / "in").mkdir()
    Image.fromarray(v).save(tmp_path / "in" / "a16.png")
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "in" / "b8.png")
    assert cli("degrade", tmp_path / "in", "--op", "blur", "--t", "20", "-o", tmp_path / "deg/").returncode == 0
    r = cli("restore", tmp_path / "deg", "--model", blur_model, "--steps", "4", "-o", tmp_path / "out/")
    assert r.returncode == 0, r.stderr.decode()
    a = np.asarray(Image.open(tmp_path / "out" / "a16.png"))
    assert a.dtype == np.uint16 and np.asarray(Image.open(tmp_path / "out" / "b8.png")).dtype == np.uint8
    assert cli("restore", tmp_path / "deg" / "b8.png", "--model", blur_model, "--steps", "4", "-o", tmp_path / "b8.png").returncode == 0
    assert (tmp_path / "b8.png").read_bytes() == (tmp_path / "out" / "b8.png").read_bytes()
    net, op, _ = checkpoint.load_model(blur_model)
    x = to_model(read_image(tmp_path / "deg" / "a16.png", deep=True))[None]
    with torch.no_grad():
        for s, s_next in zip((20, 15, 10, 5), (15, 10, 5, 0)):  # 4 steps from 20
            x0_hat = net(x, torch.full((1,), s))
            x = x - op.degrade(x0_hat, torch.full((1,), s)) + op.degrade(x0_hat, torch.full((1,), s_next))
    expected = to_pixels(x, 16)[0, 0].numpy().astype(int)
    assert np.abs(a.astype(int) - expected).max() <= 1 and len(np.unique(a % 257)) > 50  # 16-bit levels, not 8-bit ones x 257


def test_a_long_restore_says_its_estimate_first_and_a_short_one_does_not(blur_model, tmp_path):
    """Planned before any work: each image's passes through the network times one forward's FLOPs
    (unet.forward_flops) at machine.rough_seconds' rate; said at a minute or more."""
    import torch

    import restoring
    import unet
    from machine import rough_seconds
    from sampling import Choices, open_model
    from strips import Strip

    sampling = open_model(str(blur_model), torch.device("cpu"), Choices(None, None, None, None, None, None, False))
    Image.new("L", (2000, 1500)).save(tmp_path / "big.png")
    Image.new("L", (28, 28)).save(tmp_path / "small.png")

    def said(*names):
        planner = restoring.Planner(sampling, str(blur_model), None, None, None, None, 16, torch.device("cpu"), lambda at, t: Strip())
        for name in names:
            w, h = Image.open(tmp_path / name).size
            planner(tmp_path / name, torch.zeros(1, h, w, dtype=torch.uint8), len(names))
        return planner, planner.said(len(names))

    calls = sampling.at(sampling.op.T).calls(sampling.op.T)
    planner, lines = said("big.png", "small.png")
    flops = calls * (unet.forward_flops(sampling.meta["network"], 1500, 2000) + unet.forward_flops(sampling.meta["network"], 28, 28))
    assert planner.flops == flops and rough_seconds(flops, "cpu")[0] >= restoring.LONG
    assert f"restoring 2 images ({2 * calls:,} passes through the network, on images of up to 2000x1500): roughly" in lines[-1]
    assert not any("roughly" in line for line in said("small.png")[1])
