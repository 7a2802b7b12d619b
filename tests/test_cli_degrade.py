"""`colddiff degrade` and `colddiff ops` as a user runs them: files, folders, pipes, bad input."""
import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import DATA, FMNIST, PHOTO, png
from PIL import Image

import checkpoint
import operators
from image_io import read_image, read_note, to_model, to_pixels


@pytest.mark.parametrize("op", list(operators.OPERATORS))
def test_every_operator_to_stdout_same_seed_same_bytes(cli, op, tmp_path):
    extra = ["--source", DATA / "photos"] if op == "animorph" else []
    a = cli("degrade", PHOTO, "--op", op, "--t", "2", "--seed", "3", *extra)
    assert a.returncode == 0, a.stderr.decode()
    b = cli("degrade", PHOTO, "--op", op, "--t", "2", "--seed", "3", *extra)
    assert a.stdout == b.stdout
    img = png(a.stdout)
    assert img.shape == (128, 192, 3)
    orig = np.asarray(Image.open(PHOTO))
    assert np.abs(img.astype(int) - orig).max() > 0  # t=2 changed something
    zero = png(cli("degrade", PHOTO, "--op", op, "--t", "0", *extra).stdout)
    assert np.array_equal(zero, orig)  # D(x, 0) = x, byte for byte


def test_snow_seed_changes_pattern(cli):
    a = cli("degrade", PHOTO, "--op", "snow", "--t", "20", "--seed", "1").stdout
    b = cli("degrade", PHOTO, "--op", "snow", "--t", "20", "--seed", "2").stdout
    assert a != b


def test_real_pipe_between_two_processes(cli_process, tmp_path):
    first = cli_process("degrade", PHOTO, "--op", "pixelate", "--t", "2")
    assert first.returncode == 0 and first.stdout.startswith(b"\x89PNG")
    second = cli_process("degrade", "-", "--op", "snow", "--t", "20", stdin=first.stdout)
    assert second.returncode == 0 and png(second.stdout).shape == (128, 192, 3)
    bad = cli_process("degrade", "-", "--op", "snow", stdin=b"garbage")
    err = bad.stderr.decode()
    assert bad.returncode == 1 and err.startswith("colddiff: error: <stdin>: not a readable image")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_pipe_stdin_to_file_and_grey_stays_grey(cli, tmp_path):
    src = sorted(FMNIST.iterdir())[0]
    r = cli("degrade", "-", "--op", "pixelate", "--t", "2", "-o", tmp_path / "p.png", stdin=src.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    out = np.asarray(Image.open(tmp_path / "p.png"))
    assert out.shape == (28, 28)
    r = cli("degrade", "-", "--op", "blur", stdin=b"")
    assert r.returncode != 0 and b"no image data" in r.stderr


def test_folder_to_folder_recursive_case_insensitive(cli, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    files = sorted(FMNIST.iterdir())[:3]
    shutil.copy(files[0], src / "a.png")
    shutil.copy(files[1], src / "sub" / "b.PNG")
    shutil.copy(DATA / "photos" / "rocket_small.jpg", src / "sub" / "c.JPG")
    (src / "notes.txt").write_text("not an image")
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"  # an AppleDouble file: an image's name, no image
    (src / "._a.png").write_bytes(junk)
    for hidden in ("__MACOSX/sub/._b.PNG", ".ipynb_checkpoints/a-checkpoint.png"):
        (src / hidden).parent.mkdir(parents=True)
        (src / hidden).write_bytes(junk)
    r = cli("degrade", src, "--op", "mask", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr.decode()
    got = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == ["a.png", "sub/b.PNG", "sub/c.JPG"]
    # again without --force: refused, nothing touched
    before = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    r = cli("degrade", src, "--op", "mask", "-o", tmp_path / "out")
    assert r.returncode != 0 and b"--force" in r.stderr
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == before
    assert cli("degrade", src, "--op", "mask", "-o", tmp_path / "out", "--force").returncode == 0


def test_strip_shows_every_step(cli, tmp_path):
    r = cli("degrade", PHOTO, "--op", "pixelate", "--strip", "-o", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr.decode()
    s = np.asarray(Image.open(tmp_path / "s.png"))
    assert s.shape == (128, 192 * 4, 3)  # x_0 .. x_3
    assert np.array_equal(s[:, :192], np.asarray(Image.open(PHOTO)))
    r = cli("degrade", PHOTO, "--op", "blur", "--preset", "celeba", "--strip", "-o", tmp_path / "c.png")
    assert np.asarray(Image.open(tmp_path / "c.png")).shape[1] == 192 * 11  # T=200: 11 frames


def test_strip_of_a_wide_image_shrinks_its_frames(cli, tmp_path):
    # 11 frames of a 1700 px wide image would be 18,700 px: each frame is D at full size, then shrunk
    wide = tmp_path / "wide.png"
    Image.open(PHOTO).resize((1700, 60), Image.BICUBIC).save(wide)
    r = cli("degrade", wide, "--op", "blur", "--preset", "cifar10", "--no-fit", "--strip", "-o", tmp_path / "s.webp")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert err.count("frames are shrunk to 1489x53") == 1, err
    s = np.asarray(Image.open(tmp_path / "s.webp")).astype(int)
    assert s.shape == (53, 11 * 1489, 3) and s.shape[1] <= 16383

    def shrunk(u8):  # the obvious reference: the full-size image, scaled down on its own
        x = torch.from_numpy(u8.transpose(2, 0, 1).copy())[None].float()
        return torch.nn.functional.interpolate(x, size=(53, 1489), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()

    last = png(cli("degrade", wide, "--op", "blur", "--preset", "cifar10", "--no-fit", "--t", "50").stdout)
    assert np.abs(s[:, :1489] - shrunk(np.asarray(Image.open(wide)))).max() <= 1  # x_0
    assert np.abs(s[:, -1489:] - shrunk(last)).max() <= 1  # x_T, as `degrade --t T` makes it
    assert np.abs(s[:, :1489] - s[:, -1489:]).mean() > 3  # and the frames differ


def test_an_animated_or_multi_page_input_says_only_its_first_frame_is_read(cli, tmp_path):
    frames = [Image.open(PHOTO).rotate(90 * i) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "b.tif", save_all=True, append_images=frames[1:2])
    shutil.copy(PHOTO, tmp_path / "c.png")
    r = cli("degrade", tmp_path / "a.gif", "--op", "blur", "--t", "0", "--no-fit", "-o", tmp_path / "a.png")
    assert r.returncode == 0 and r.stderr.decode() == f"colddiff: {tmp_path / 'a.gif'} holds 3 frames: colddiff reads only the first\n"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "a.gif").convert("RGB")))  # frame 0
    r = cli("degrade", tmp_path / "a.gif", tmp_path / "b.tif", tmp_path / "c.png", "--op", "blur", "-o", tmp_path / "out/")
    assert r.returncode == 0 and r.stderr.decode().count("holds 3 frames (and 1 more such input): colddiff reads only the first of each") == 1
    r = cli("degrade", tmp_path / "c.png", "--op", "blur", "--no-fit", "-o", tmp_path / "c2.png")
    assert r.returncode == 0 and r.stderr == b""


def test_transparency_passes_through_to_outputs_that_hold_it(cli, tmp_path):
    from PIL import ImageDraw

    logo = Image.new("RGBA", (96, 64), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse((16, 8, 80, 56), fill=(200, 30, 40, 255))
    logo.save(tmp_path / "logo.png")
    logo.convert("RGB").save(tmp_path / "flat.png")  # what the models see: the colour, alpha dropped
    alpha = np.asarray(logo)[..., 3]
    args = ["--op", "blur", "--preset", "cifar10", "--t", "10"]
    assert cli("degrade", tmp_path / "logo.png", *args, "-o", tmp_path / "d.png").returncode == 0
    assert cli("degrade", tmp_path / "flat.png", *args, "-o", tmp_path / "f.png").returncode == 0
    d = np.asarray(Image.open(tmp_path / "d.png"))
    assert d.shape == (64, 96, 4) and np.array_equal(d[..., 3], alpha)  # the transparency, untouched
    assert np.array_equal(d[..., :3], np.asarray(Image.open(tmp_path / "f.png")))  # the colour, as without it
    assert cli("degrade", tmp_path / "logo.png", *args, "--strip", "-o", tmp_path / "s.webp").returncode == 0
    s = np.asarray(Image.open(tmp_path / "s.webp"))
    assert s.shape == (64, 96 * 11, 4) and all(np.array_equal(s[:, i * 96 : (i + 1) * 96, 3], alpha) for i in range(11))
    assert cli("degrade", tmp_path / "logo.png", *args, "-o", tmp_path / "d.jpg").returncode == 0
    assert Image.open(tmp_path / "d.jpg").mode == "RGB"  # JPEG holds no alpha
    Image.new("RGBA", (40, 30), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    assert cli("degrade", tmp_path / "opaque.png", *args, "-o", tmp_path / "o.png").returncode == 0
    assert Image.open(tmp_path / "o.png").mode == "RGB"  # alpha 255 everywhere: nothing to keep


def test_outputs_too_large_for_their_format_are_refused_before_the_work(cli, tmp_path):
    Image.new("L", (17000, 4)).save(tmp_path / "long.png")
    r = cli("degrade", tmp_path / "long.png", "--op", "blur", "--t", "1", "-o", tmp_path / "x.webp")
    err = r.stderr.decode()
    assert r.returncode == 1 and "WebP holds at most 16383 px a side and this image is 17000x4" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.webp").exists()
    assert cli("degrade", tmp_path / "long.png", "--op", "blur", "--t", "1", "-o", tmp_path / "x.png").returncode == 0
    r = cli("generate", "--n", "9000", "--ncol", "9000", "-o", tmp_path / "g.webp")  # 270,002 px wide
    assert r.returncode == 1 and b"WebP holds at most 16383" in r.stderr and b"generating" not in r.stderr, r.stderr


def test_ops_as_json_holds_both_tables(cli):
    tables = json.loads(cli("ops", "--json").stdout)
    assert [r["operator"] for r in tables["operators"]][:2] == ["blur", "blur"] and tables["samplers"][0]["sampler"] == "direct"


def test_ops_lists_everything(cli):
    r = cli("ops", env={"COLUMNS": "200"})
    assert r.returncode == 0
    text = r.stdout.decode()
    for name, cls in operators.OPERATORS.items():
        assert name in text
        for preset in cls.PRESETS:
            assert preset in text
    assert "300" in text and "750" in text
    # every parameter that --param takes is named, those left out of a model's params() at their default too
    for line in text.split("# samplers (")[0].splitlines():
        cells = line.split("\t")
        if cells[0] in operators.OPERATORS:
            fields = {f.name for f in dataclasses.fields(operators.OPERATORS[cells[0]]) if f.init} - {"T", "source"}
            assert {kv.split("=")[0] for kv in cells[4].split(", ") if kv} == fields, line
    assert "loss_norm=l1" in text and "px_scale=1.0" in text
    # piped: tab-separated rows, whole (no box cut to 80 columns)
    assert {line.split("\t")[3] for line in text.splitlines() if line.startswith("blur\t")} == {"32 px", "128 px"}
    from samplers import SAMPLERS

    samplers = text.split("# samplers (")[1].split("\n# ")[0]
    rows = {cells[0]: cells[1:] for line in samplers.splitlines()[2:] for cells in [line.split("\t")]}
    assert list(rows) == list(SAMPLERS)  # every sampler, what it applies to, what it takes, what it does (its docstring's first sentence)
    assert rows["direct"][:2] == ["all", "-"] and rows["tacos"][:2] == ["all but blurdiff", "--steps, --step-noise"]
    assert rows["tacos"][2].startswith("Algorithm 2") and rows["tacos"][2].endswith("The default.")
    assert rows["dpmpp_2m"][:2] == ["blurdiff", "--steps, --eta"] and rows["dpmpp_2m"][2].endswith("The default for blurdiff.")
    assert "op." not in text.split("samplers (")[1]  # the user's words, not the code's


@pytest.mark.parametrize("args,message", [
    (["--op", "sharpen"], "unknown operator 'sharpen'"),
    (["--op", "blur", "--preset", "imagenet"], "unknown preset 'imagenet'"),
    (["--op", "blur", "--t", "21"], "--t must be in 0..20"),
    (["--op", "blur", "--t", "-1"], "--t must be in 0..20"),
    (["--op", "blur", "--param", "sigma=big"], "sigma must be a finite number"),
    (["--op", "animorph"], "--source"),
    (["--op", "mask", "--param", "std=0"], "std > 0"),
    (["--op", "blur", "--param", "sigma=0"], "sigmas must be positive"),
    (["--device", "mps"], "--device must be auto, cpu or cuda"),
    (["--device", "meta"], "--device must be auto, cpu or cuda"),
    (["--device", "gpu"], "--device must be auto, cpu or cuda"),
    (["--device", "cuda:x"], "--device must be auto, cpu or cuda"),
])
def test_bad_options_one_line(cli, args, message, tmp_path):
    r = cli("degrade", PHOTO, *args, "-o", tmp_path / "x.png")
    err = r.stderr.decode()
    assert r.returncode != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_bad_inputs_one_line_nothing_written(cli, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    (tmp_path / "cut.png").write_bytes(PHOTO.read_bytes()[:2000])
    (tmp_path / "empty").mkdir()
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(PHOTO, good / "a.png")
    (good / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cases = [
        ([tmp_path / "junk.png"], "junk.png: not a readable image"),
        ([tmp_path / "cut.png"], "cut.png: not a readable image"),
        ([tmp_path / "empty"], "folder holds no images"),
        ([tmp_path / "missing.png"], "no such file"),
        ([good], "z.png: not a readable image"),
    ]
    for inputs, message in cases:
        out = tmp_path / "out"
        r = cli("degrade", *inputs, "-o", out)
        err = r.stderr.decode()
        assert r.returncode != 0 and message in err and "Traceback" not in err, err
        assert not out.exists()  # a bad file anywhere: nothing written at all
    r = cli("degrade", PHOTO, PHOTO)
    assert r.returncode != 0 and b"-o DIR" in r.stderr



def test_an_image_too_small_for_the_operator_is_refused_before_anything_is_written(cli, tmp_path):
    """pixelate halves an image T times: a 20x6 one in a folder is named, in one line, before the
    folder's first output (it was an unnamed error after the others had been written). D of the
    other operators runs at any size, so blur takes the same folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "a.png")
    Image.new("RGB", (20, 6), (90, 120, 30)).save(folder / "z_strip.png")
    r = cli("degrade", folder, "--op", "pixelate", "-o", tmp_path / "out")
    err = r.stderr.decode()
    last = err.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("colddiff: error: ") and last.endswith("in/z_strip.png: 20x6 is too small for pixelate (at least 8x8)"), err
    assert not (tmp_path / "out").exists()
    r = cli("degrade", folder, "--op", "blur", "-o", tmp_path / "blurred")
    assert r.returncode == 0 and png((tmp_path / "blurred" / "z_strip.png").read_bytes()).shape == (6, 20, 3)

def test_outputs_that_would_collide_or_mislead_are_refused(cli, tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        shutil.copy(sorted(FMNIST.iterdir())[0], tmp_path / d / "x.png")
    r = cli("degrade", tmp_path / "d1" / "x.png", tmp_path / "d2" / "x.png", "--op", "blur", "--t", "5", "-o", tmp_path / "out")
    assert r.returncode == 1 and b"would both be written" in r.stderr and not (tmp_path / "out").exists()
    r = cli("degrade", tmp_path / "d1" / "x.png", "--op", "blur", "-o", tmp_path / "noext")
    assert r.returncode == 1 and b"name an output file" in r.stderr
    for inputs in ([tmp_path / "d1"], [tmp_path / "d1" / "x.png", tmp_path / "d2"]):  # several outputs, or a folder's: not a folder named o.png
        r = cli("degrade", *inputs, "--op", "blur", "-o", tmp_path / "o.png")
        assert r.returncode == 1 and f"o.png: names an image file, but {'a folder' if len(inputs) == 1 else '2'}".encode() in r.stderr, r.stderr
        assert f"give -o {tmp_path / 'o'}/ (a name ending in /)".encode() in r.stderr and not (tmp_path / "o.png").exists()
    (tmp_path / "made.png").mkdir()  # a folder of that name that exists is one
    assert cli("degrade", tmp_path / "d1", "--op", "blur", "-o", tmp_path / "made.png").returncode == 0
    assert (tmp_path / "made.png" / "x.png").is_file()
    r = cli("degrade", tmp_path / "d1" / "x.png", "--op", "blur", "--strip", "--frames", "0", "-o", tmp_path / "s.png")
    assert r.returncode == 1 and b"--frames must be at least 2" in r.stderr
    r = cli("degrade", tmp_path / "d1" / "x.png", "--op", "blur", "--frames", "5", "-o", tmp_path / "f.png")
    assert r.returncode == 1 and r.stderr == b"colddiff: error: --frames applies to --strip\n" and not (tmp_path / "f.png").exists()
    from PIL import Image

    Image.open(tmp_path / "d1" / "x.png").save(tmp_path / "a.gif")
    r = cli("degrade", tmp_path / "a.gif", "--op", "blur", "-o", tmp_path / "b.gif")
    assert r.returncode == 0 and Image.open(tmp_path / "b.gif").format == "GIF"


@pytest.mark.parametrize("param", ["f_max=-1", "beta_end=2", "beta_start=0", "blur_sigma=0"])
def test_blurdiff_parameters_are_validated(cli, param, tmp_path):
    r = cli("degrade", PHOTO, "--op", "blurdiff", "--param", param, "-o", tmp_path / "o.png")
    assert r.returncode == 1 and b"blurdiff needs" in r.stderr and not (tmp_path / "o.png").exists()


def test_mask_and_colour_fit_their_pixel_sizes_to_the_image(cli, tmp_path):
    """A 300 px photo with the celeba preset (made for 128 px): the sigmas scale by 300/128,
    said once, so the mask covers the same share of the image; --no-fit keeps the preset's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(60, 200, (300, 451, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    Image.fromarray(rng.integers(60, 200, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    r = cli("degrade", tmp_path / "p.png", "--op", "mask", "--preset", "celeba", "-o", tmp_path / "fit.png")
    assert r.returncode == 0 and r.stderr.decode().count("std 0.2 -> 0.469") == 1, r.stderr
    r = cli("degrade", tmp_path / "p.png", "--op", "mask", "--preset", "celeba", "--no-fit", "-o", tmp_path / "raw.png")
    assert r.returncode == 0 and r.stderr == b""
    grey = lambda f: (np.abs(np.asarray(Image.open(tmp_path / f), dtype=float) - 127.5) < 3).all(-1).mean()  # noqa: E731
    assert grey("fit.png") > 4 * grey("raw.png") > 0
    r = cli("degrade", tmp_path / "n.png", "--op", "mask", "--preset", "celeba", "-o", tmp_path / "native.png")
    assert r.returncode == 0 and r.stderr == b""  # its own size: nothing to fit
    r = cli("degrade", tmp_path / "p.png", "--op", "colour", "-o", tmp_path / "c.png", "--t", "375")
    assert r.returncode == 0 and b"colour generation on 451x300: std 0.05 -> 0.117" in r.stderr


def test_desaturating_a_grey_image_says_so(cli, tmp_path):
    from PIL import Image

    Image.new("L", (20, 20), 100).save(tmp_path / "g.png")
    r = cli("degrade", tmp_path / "g.png", "--op", "desaturate", "-o", tmp_path / "o.png")
    assert r.returncode == 0 and b"warning: desaturating a grey image changes nothing" in r.stderr


def test_blur_fits_its_kernels_to_the_image(cli, tmp_path):
    """Blur's sigmas and kernel reach are pixels too: on an image 4x the preset's size every kernel is
    the same sampled Gaussian 4x as wide (the slow reference), so the blur spreads an impulse 4x as far."""
    from cold import blur_sigmas, gaussian_kernel1d

    op = operators.make_operator("blur", "celeba")
    assert op.fit_to(3, 128, 140) == (op, None) and "px_scale" not in op.params()  # as older models store it
    fitted, note = op.fit_to(3, 512, 600)
    assert fitted.px_scale == 4 and fitted.taps == 57 and "15 -> 57 taps" in note and "--no-fit" in note
    for g, s in zip(fitted.kernels, blur_sigmas("exponential", 0.01, 200)):
        assert torch.allclose(g, gaussian_kernel1d(57, 4 * s))
    assert operators.make_operator("blur", **fitted.params()).kernels[-1].equal(fitted.kernels[-1])

    def spread(o, n):
        x = torch.zeros(1, 1, n, n)
        x[0, 0, n // 2, n // 2] = 1
        row = o.apply(x, torch.tensor([60]))[0, 0, n // 2].double()
        j = torch.arange(n, dtype=torch.float64) - n // 2
        return float(((row / row.sum()) * j**2).sum().sqrt())

    assert spread(fitted, 512) == pytest.approx(4 * spread(op, 128), rel=0.05)
    r = cli("degrade", PHOTO, "--op", "blur", "--preset", "mnist", "--t", "3", "-o", tmp_path / "b.png")
    assert r.returncode == 0 and r.stderr.decode().count("blur mnist on ") == 1, r.stderr


def test_pixelate_fits_its_blocks_to_the_image(cli, tmp_path):
    """A 512 px photo with the mnist preset (made for 32 px): at t = T it is 4x4 blocks as a 32 px image
    is, said once; --no-fit keeps the released halvings (64x64 blocks, so little changes); the
    note records the fitted scale."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    r = cli("degrade", tmp_path / "p.png", "--op", "pixelate", "-o", tmp_path / "fit.png")
    assert r.returncode == 0 and r.stderr.decode().count("pixelate mnist on 512x512: pixels x16 (at t = T 64x64 -> 4x4 blocks") == 1, r.stderr
    r = cli("degrade", tmp_path / "p.png", "--op", "pixelate", "--no-fit", "-o", tmp_path / "raw.png")
    assert r.returncode == 0 and r.stderr == b""
    blocks = lambda f: len(np.unique(np.asarray(Image.open(tmp_path / f)).reshape(-1, 3), axis=0))  # noqa: E731
    assert blocks("fit.png") <= 16 < 64 * 64 * 0.9 < blocks("raw.png")
    note = read_note(tmp_path / "fit.png")
    assert note["params"] == {"T": 3, "px_scale": 16.0} and note["t"] == 3


def test_snow_fits_its_flakes_to_the_image():
    """Snow's zoom and motion blur are pixels: fitted to an image 4x the preset's size, its layer is
    the preset's layer zoomed 4x further and its streaks 4x as long."""
    op = operators.make_operator("snow", "cifar10")
    fitted, note = op.fit_to(3, 128, 160)
    assert fitted.px_scale == 4 and fitted.taps == 41 and "motion blur 11 -> 41 px" in note and "px_scale" not in op.params()
    x = torch.zeros(1, 3, 128, 160)
    layer = fitted.draw(x, torch.Generator().manual_seed(0))["layer"]
    raw = op.draw(x, torch.Generator().manual_seed(0))["layer"]
    roughness = lambda a: float((a[..., 1:, :] - a[..., :-1, :]).abs().mean())  # noqa: E731
    assert roughness(layer) < roughness(raw) / 2.5  # flakes several times larger: neighbours alike
    y = fitted.apply(x, torch.tensor([200]), fitted.draw(x, torch.Generator().manual_seed(0)))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_jpeg_and_webp_outputs_keep_the_pixels(cli, tmp_path):
    """-o x.jpg at PIL's default quality 75 (4:2:0 chroma) moved this image's pixels 3.6 levels on average (now 1.5)
    and SSIM with them; outputs are JPEG 95 at full chroma and lossless WebP."""
    for suffix in ("png", "jpg", "webp"):
        r = cli("degrade", PHOTO, "--op", "pixelate", "--t", "1", "-o", tmp_path / f"d.{suffix}")
        assert r.returncode == 0, r.stderr.decode()
    ref = np.asarray(Image.open(tmp_path / "d.png")).astype(int)
    jpeg = Image.open(tmp_path / "d.jpg")
    assert jpeg.format == "JPEG" and np.abs(np.asarray(jpeg).astype(int) - ref).mean() < 2.2
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.webp")), ref)


def test_an_output_folder_inside_the_input_folder_is_not_read_again(cli, tmp_path):
    """degrade photos/ -o photos/out twice: the second run reads the photos, not also the first's outputs."""
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(FMNIST.iterdir())[:3]:
        shutil.copy(f, src / f.name)
    for _ in range(2):
        r = cli("degrade", src, "--op", "blur", "--preset", "mnist", "-o", src / "out", "--force")
        assert r.returncode == 0, r.stderr.decode()
        assert b"3 images" in r.stderr, r.stderr.decode()
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png")) == sorted(
        [f.name for f in sorted(FMNIST.iterdir())[:3]] + [f"out/{f.name}" for f in sorted(FMNIST.iterdir())[:3]])
    # the folder itself as its output is an in-place rewrite (--force), not an empty input
    r = cli("degrade", src / "out", "--op", "blur", "--preset", "mnist", "--t", "1", "-o", src / "out", "--force")
    assert r.returncode == 0 and b"3 images" in r.stderr, r.stderr.decode()


def test_degrade_with_a_models_operator_gives_what_restore_takes(cli, gen_model, tmp_path):
    """--op blur --preset generation fits the preset's 128 px kernels to a 28 px image, which a model
    trained at 28 px on the preset as it is then refuses to restore; --model degrades with the model's
    operator exactly (T=30 here), so that restore reads the note and needs nothing more."""
    img = sorted((DATA / "fmnist").iterdir())[0]
    fitted = cli("degrade", img, "--op", "blur", "--preset", "generation", "--param", "T=30", "--t", "20", "-o", tmp_path / "f.png")
    assert fitted.returncode == 0
    r = cli("restore", tmp_path / "f.png", "--model", gen_model, "--steps", "3", "-o", tmp_path / "fr.png")
    assert r.returncode == 1 and "px_scale" in r.stderr.decode()
    assert cli("degrade", img, "--model", gen_model, "--t", "20", "-o", tmp_path / "m.png").returncode == 0
    note = read_note(str(tmp_path / "m.png"))
    _, op, _ = checkpoint.load_model(gen_model)
    assert note["op"] == "blur" and note["params"] == json.loads(json.dumps(op.params())) and note["t"] == 20
    r = cli("restore", tmp_path / "m.png", "--model", gen_model, "--steps", "3", "-o", tmp_path / "mr.png")
    assert r.returncode == 0 and "as if degraded" not in r.stderr.decode(), r.stderr.decode()
    assert read_note(str(tmp_path / "mr.png"))["t"] == 20
    x0 = to_model(read_image(str(img)))[None]
    assert np.array_equal(png((tmp_path / "m.png").read_bytes()), to_pixels(op.apply(x0, torch.tensor([20])))[0, 0].numpy())
    for args, said in ((["--op", "snow"], "give --op, or --model"), (["--no-fit"], "give --no-fit, or --model"),
                       (["--t", "31"], "--t must be in 0..30 for blur")):
        r = cli("degrade", img, "--model", gen_model, *args, "-o", tmp_path / "x.png")
        assert r.returncode == 1 and r.stderr.decode().count("\n") == 1 and said in r.stderr.decode(), r.stderr.decode()
    r = cli("degrade", PHOTO, "--model", gen_model, "-o", tmp_path / "x.png")
    assert r.returncode == 1 and "is colour (3-channel) but" in r.stderr.decode()
    assert not (tmp_path / "x.png").exists()


def sixteen_bit_grey(path, seed=0):
    """A smooth 16-bit grey image (40 x 56) whose levels an 8-bit file cannot hold, as a scientific camera writes it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :56]
    v = 30000 + 20000 * np.sin(xx / 7) * np.cos(yy / 5) + rng.normal(0, 300, (40, 56))
    Image.fromarray(np.clip(np.rint(v), 0, 65535).astype(np.uint16)).save(path)
    return np.asarray(Image.open(path))


def test_degrade_keeps_a_sixteen_bit_grey_image_sixteen_bit(cli, tmp_path):
    """A 16-bit grey PNG comes out of degrade as 16-bit PNG (file and pipe) or TIFF: t = 0 gives every
    one of its levels back, and x_t is D's float result to the level, 256 times finer than 8 bits.
    The 8-bit formats it is asked for get 8 bits."""
    v = sixteen_bit_grey(tmp_path / "g.png")
    assert cli("degrade", tmp_path / "g.png", "--op", "blur", "--t", "0", "-o", tmp_path / "t0.png").returncode == 0
    back = np.asarray(Image.open(tmp_path / "t0.png"))
    assert back.dtype == np.uint16 and np.array_equal(back, v)  # D(x, 0) = x, every level
    op = operators.make_operator("blur").fit_to(1, 40, 56)[0]  # as degrade fits it to the image
    exact = (op.apply(torch.from_numpy(v / 32767.5 - 1).float()[None, None], torch.tensor([5]))[0, 0].numpy() + 1) / 2  # on [0, 1]
    r = cli("degrade", tmp_path / "g.png", "--op", "blur", "--t", "5")
    assert r.returncode == 0, r.stderr.decode()
    out = np.asarray(Image.open(io.BytesIO(r.stdout)))
    assert out.dtype == np.uint16 and np.abs(out / 65535 - exact).max() <= 1 / 65535
    for name, bits in (("t5.tif", 16), ("t5.jpg", 8), ("t5.webp", 8)):
        assert cli("degrade", tmp_path / "g.png", "--op", "blur", "--t", "5", "-o", tmp_path / name).returncode == 0
        im = Image.open(tmp_path / name)
        assert (np.asarray(im).dtype.itemsize * 8, im.size) == (bits, (56, 40)), name
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t5.tif")), out)
    assert "16-bit grey" in cli("info", tmp_path / "t5.tif").stdout.decode()
    strip = cli("degrade", tmp_path / "g.png", "--op", "blur", "--strip", "--frames", "3")
    frames = np.asarray(Image.open(io.BytesIO(strip.stdout)))
    assert frames.dtype == np.uint16 and np.array_equal(frames[:, :56], v)
