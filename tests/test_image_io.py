"""Loading a folder of training or evaluation images: threaded, into one tensor, errors by name."""
import io

import numpy as np
import pytest
import torch
from conftest import DATA
from PIL import Image

from errors import UserError
from folders import load_folder, resize_square
from image_io import read_image, to_model, to_pixels


def photos(folder, n=150, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:04d}.{'png' if i % 2 else 'jpg'}")
    return folder


def test_threaded_load_equals_one_by_one(tmp_path):
    folder = photos(tmp_path / "p")
    files = sorted(folder.iterdir())
    for size, channels in ((24, None), (16, 1)):
        got = load_folder(str(folder), size, channels)
        slow = torch.stack([resize_square(read_image(str(f), channels or 3), size) for f in files])
        assert got.dtype == torch.uint8 and torch.equal(got, slow)
    assert torch.equal(load_folder(str(folder), 16, 1, limit=10), slow[:10])  # the first 10 by name


def test_the_first_bad_image_by_name_is_the_error(tmp_path):
    folder = photos(tmp_path / "p")
    (folder / "0100.png").write_bytes(b"not an image")
    (folder / "0120.png").write_bytes(b"nor this")
    for _ in range(3):  # whatever thread reaches which image first
        with pytest.raises(UserError, match="0100.png: not a readable image"):
            load_folder(str(folder), 24, None)
    with pytest.raises(UserError, match="differs from .* pass --size"):
        load_folder(str(folder), None, None, limit=20)


def test_a_folder_of_mixed_grey_and_colour_is_the_majoritys_not_the_first_images(tmp_path):
    folder = photos(tmp_path / "p", n=12)
    Image.open(folder / "0000.jpg").convert("L").save(folder / "0000.jpg")  # the first image (by name) grey
    said = []
    x = load_folder(str(folder), 24, None, say=said.append)
    assert x.shape[1] == 3 and "11 images are colour and 1 grey: using them as colour" in said[0]
    assert torch.equal(x[0], resize_square(read_image(str(folder / "0000.jpg"), 3), 24))  # the grey one as 3 equal channels
    for f in sorted(folder.iterdir())[1:8]:
        Image.open(f).convert("L").save(f)  # now 8 of 12 grey
    said.clear()
    assert load_folder(str(folder), 24, None, say=said.append).shape[1] == 1 and "4 images are colour and 8 grey" in said[0]
    said.clear()
    assert load_folder(str(folder), 24, 3, say=said.append).shape[1] == 3  # --channels given (or a model's): told, not asked
    assert said == [f"{folder}: 8 of the 12 images are grey: using them as colour"]


def test_a_jpeg_stored_sideways_is_read_as_it_is_seen(tmp_path):
    """EXIF orientation 6 (the camera was turned 90 degrees): the pixels are stored W x H and shown
    H x W. colddiff's PNG outputs carry no EXIF, so the input must be turned on reading, or a phone
    photo comes back on its side."""
    rng = np.random.default_rng(0)
    shown = np.kron(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 64 x 48, blocky for JPEG
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # orientation 6 = turn 270 to show
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95, subsampling=0)
    x = read_image(str(tmp_path / "phone.jpg"))
    assert tuple(x.shape) == (3, 64, 48)
    assert (x.permute(1, 2, 0).int() - torch.from_numpy(shown).int()).abs().float().mean() < 4


def test_sixteen_bit_and_float_grey_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG is 0..65535 and a float TIFF 0..1: clipped to 0..255 as PIL's convert does, one
    is white where the other is black."""
    rng = np.random.default_rng(1)
    v = rng.integers(0, 256, (20, 30)).astype(np.uint8)
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray((v / 255).astype(np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(v.astype(np.float32)).save(tmp_path / "f255.tif")
    for name in ("g16.png", "f.tif", "f255.tif"):
        x = read_image(str(tmp_path / name))
        assert tuple(x.shape) == (1, 20, 30), name
        assert torch.equal(x[0], torch.from_numpy(v)), name


def test_sixteen_bit_grey_read_deep_and_written_back_at_sixteen_bits(tmp_path):
    """deep=True (degrade's and restore's read) keeps a 16-bit grey image's 65,536 levels; PNG and
    TIFF write them back exactly, the 8-bit formats get each rounded to the nearest of 256 levels."""
    from image_io import bits_of, eight_bit, encode_image, read_pixels

    rng = np.random.default_rng(2)
    v = rng.integers(0, 65536, (20, 30)).astype(np.uint16)
    v[0, :4] = (0, 128, 129, 65535)  # 128/257 rounds to 0 and 129/257 to 1
    Image.fromarray(v).save(tmp_path / "g16.png")
    px = read_image(str(tmp_path / "g16.png"), deep=True)
    assert px.dtype == torch.uint16 and bits_of(px) == 16 and np.array_equal(px[0].numpy(), v)
    assert read_pixels(str(tmp_path / "g16.png")).dtype == np.uint8  # everything else (training, eval) reads 8 bits
    assert torch.equal(to_pixels(to_model(px), 16), px)  # into the model's [-1, 1] and back: no level lost
    assert torch.allclose(to_model(px), torch.from_numpy(v / 65535 * 2 - 1).float()[None], atol=1e-6, rtol=0)
    for fmt in ("PNG", "TIFF"):
        back = np.asarray(Image.open(io.BytesIO(encode_image(px, fmt))))
        assert back.dtype == np.uint16 and np.array_equal(back, v), fmt
    eight = np.rint(v / 257).astype(np.uint8)
    assert eight[0, :4].tolist() == [0, 0, 1, 255] and np.array_equal(eight_bit(px)[0].numpy(), eight)
    for fmt in ("WEBP", "BMP"):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(px, fmt))).convert("L")), eight), fmt
    small = rng.integers(0, 256, (20, 30)).astype(np.int32)  # 32-bit grey that holds 8-bit values stays 8-bit
    Image.fromarray(small).save(tmp_path / "i32.tif")
    assert read_image(str(tmp_path / "i32.tif"), deep=True).dtype == torch.uint8


def _bradford_d65_to_d50():
    M = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
    d65, d50 = np.array([0.95047, 1.0, 1.08883]), np.array([0.96422, 1.0, 0.82521])
    return np.linalg.inv(M) @ np.diag((M @ d50) / (M @ d65)) @ M


P3_D65 = np.array([[0.4865709, 0.2656677, 0.1982173], [0.2289746, 0.6917385, 0.0792869], [0.0, 0.0451134, 1.0439444]])
SRGB_D65 = np.array([[0.4123908, 0.3575843, 0.1804808], [0.2126390, 0.7151687, 0.0721923], [0.0193308, 0.1191948, 0.9505322]])


def _icc_profile(rgb_to_xyz_d50, gamma: float) -> bytes:
    """A minimal ICC v2 matrix/TRC display profile (Display P3's primaries here, gamma curves)."""
    import struct

    def s15(v):
        return struct.pack(">i", int(round(v * 65536)))

    def xyz(v):
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    text = b"P3 test profile"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" + b"\0" * 8 + b"\0" * 70),
            (b"wtpt", xyz([0.96422, 1.0, 0.82521]))]
    tags += [(tag, xyz(rgb_to_xyz_d50[:, i])) for i, tag in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, int(round(gamma * 256))) + b"\0\0"
    tags += [(tag, curve) for tag in (b"rTRC", b"gTRC", b"bTRC")]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"none" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 24 + struct.pack(">I", 0) + xyz([0.96422, 1.0, 0.82521])[8:] + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def test_a_photo_in_display_p3_is_read_as_srgb(tmp_path):
    """An iPhone photo is Display P3 with its profile embedded; models train on sRGB and a PNG with
    no profile is shown as sRGB, so the pixels are converted on reading. Reference: the profile's
    gamma curve, P3 -> XYZ (D50) -> sRGB matrices and sRGB's transfer curve, in numpy."""
    rng = np.random.default_rng(2)
    p3 = rng.integers(40, 216, (16, 16, 3), dtype=np.uint8)  # inside sRGB's gamut once converted, mostly
    D50 = _bradford_d65_to_d50()
    icc = _icc_profile(D50 @ P3_D65, 2.2)
    Image.fromarray(p3).save(tmp_path / "p3.png", icc_profile=icc)
    Image.fromarray(p3).save(tmp_path / "plain.png")
    lin = (p3 / 255.0) ** (round(2.2 * 256) / 256)
    srgb_lin = np.clip(lin @ (np.linalg.inv(D50 @ SRGB_D65) @ (D50 @ P3_D65)).T, 0, 1)
    ref = np.where(srgb_lin <= 0.0031308, 12.92 * srgb_lin, 1.055 * srgb_lin ** (1 / 2.4) - 0.055) * 255
    x = read_image(str(tmp_path / "p3.png")).permute(1, 2, 0).numpy().astype(float)
    assert np.abs(x - ref).max() <= 1 and np.abs(x - ref).mean() < 0.5  # lcms vs numpy: 0.56 and 0.25 levels
    assert np.abs(p3 - ref).mean() > 5  # read raw, P3 values are 11.8 levels off on average (92 at most)
    assert torch.equal(read_image(str(tmp_path / "plain.png")), torch.from_numpy(p3).permute(2, 0, 1))  # no profile: as stored
    Image.fromarray(p3).save(tmp_path / "damaged.png", icc_profile=b"not a profile")
    assert torch.equal(read_image(str(tmp_path / "damaged.png")), torch.from_numpy(p3).permute(2, 0, 1))


def test_a_large_jpeg_for_a_small_size_is_decoded_small_to_the_same_pixels(tmp_path, monkeypatch):
    """Training at 32 px on 12 MP photos decoded whole paid for 12 MP per image: libjpeg decodes at
    1/2..1/8 scale instead, never below SHRINK_MARGIN x the size, within a grey level or two of the full decode."""
    import image_io

    src = Image.open(sorted((DATA / "photos").iterdir())[0]).convert("RGB").resize((1024, 768), Image.BICUBIC)
    folder = tmp_path / "big"
    folder.mkdir()
    src.save(folder / "a.jpg", quality=92)
    src.transpose(Image.Transpose.ROTATE_90).save(folder / "b.jpg", quality=92)
    assert tuple(read_image(str(folder / "a.jpg"), shrink_to=32).shape) == (3, 192, 256)  # 1/4: 192 >= 4 x 32 > 96
    assert tuple(read_image(str(folder / "a.jpg"), shrink_to=400).shape) == (3, 768, 1024)  # no smaller scale keeps 4 x 400
    small = load_folder(str(folder), 32, None)
    monkeypatch.setattr(image_io, "SHRINK_MARGIN", 10**9)  # never shrink: the full decode
    full = load_folder(str(folder), 32, None)
    assert (small.int() - full.int()).abs().max() <= 2


def test_images_smaller_than_the_size_are_counted_when_upscaled(tmp_path):
    """--size 64 over a folder with 20 px images stretches them: blurrier training data, so say so."""
    folder = photos(tmp_path / "mixed", n=10, seed=4)  # 20..59 px
    said = []
    x = load_folder(str(folder), 64, None, say=said.append)
    assert tuple(x.shape) == (10, 3, 64, 64)
    assert len(said) == 1 and "10 of the 10 images are smaller than 64 px on the short side and upscaled" in said[0]
    said.clear()
    load_folder(str(folder), 16, None, say=said.append)
    assert said == []  # every image is shrunk: nothing to say


def test_grid_of_uint8_images_is_the_grid_of_their_floats():
    from image_io import grid_image, grid_size, to_model, to_pixels

    u8 = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grid = grid_image(u8, ncol=3)  # generate builds its grid in uint8: a quarter of the memory
    assert grid.dtype == torch.uint8 and tuple(grid.shape[::-1][:2]) == grid_size(7, 3, 5, 4)
    assert torch.equal(grid, to_pixels(grid_image(to_model(u8), ncol=3)))
    assert grid[:, :2].eq(255).all() and grid[:, 2:7, 2:6].equal(u8[0])  # white gutters, image 0 top left


def test_a_folder_of_grey_images_stored_as_colour_loads_as_grey(tmp_path):
    """R = G = B everywhere (what a WebP of a grey image holds): grey, with the same values, and no
    "colour and grey mixed" message; a truly colour image still counts as colour."""
    files = sorted((DATA / "fmnist").iterdir())[:4]
    for i, f in enumerate(files):
        im = Image.open(f)
        (im.convert("RGB") if i % 2 else im).save(tmp_path / f"{i}.png")
    said = []
    x = load_folder(str(tmp_path), None, None, say=said.append)
    assert x.shape == (4, 1, 28, 28) and not said
    assert all(torch.equal(x[i, 0], torch.from_numpy(np.array(Image.open(f)))) for i, f in enumerate(files))
    Image.open(DATA / "photos" / "rocket_small.jpg").convert("RGB").resize((28, 28)).save(tmp_path / "9.png")
    said.clear()
    assert load_folder(str(tmp_path), None, None, say=said.append).shape[1] == 1
    assert said == [f"{tmp_path}: 1 image is colour and 4 grey: using them as grey (--channels chooses)"]


def test_read_alpha_is_upright_with_the_colour_and_none_where_opaque(tmp_path):
    from image_io import read_alpha

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0  # the top rows transparent
    im = Image.fromarray(rgba, "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    im.save(tmp_path / "side.png", exif=exif)
    a, x = read_alpha(str(tmp_path / "side.png")), read_image(str(tmp_path / "side.png"))
    assert a.shape == (1, 30, 20) == (1, *x.shape[-2:]) and a[0, :, -5:].eq(0).all() and a[0, :, :-5].eq(255).all()
    im.convert("RGB").convert("P").save(tmp_path / "key.png", transparency=0)  # palette entry 0 transparent
    assert read_alpha(str(tmp_path / "key.png")) is not None
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((4, 4, 4), 255, np.uint8), "RGBA").save(tmp_path / "opaque.png")
    assert read_alpha(str(tmp_path / "rgb.png")) is None and read_alpha(str(tmp_path / "opaque.png")) is None


def test_the_writer_writes_every_image_raises_a_failed_write_and_drops_the_rest_on_ctrl_c(tmp_path, monkeypatch):
    import threading
    import time

    import outputs

    images = [torch.full((1, 8, 8), 10 * i, dtype=torch.uint8) for i in range(10)]
    with outputs.Writer() as writer:
        for i, im in enumerate(images):
            writer.write(im, str(tmp_path / "all" / f"{i}.png"))
    assert [int(np.asarray(Image.open(tmp_path / "all" / f"{i}.png")).max()) for i in range(10)] == [10 * i for i in range(10)]

    real = outputs.write_image

    def failing_at_3(u8, dest, *rest):
        if dest.endswith("3.png"):
            raise UserError(f"{dest}: could not write (No space left on device); nothing was written there")
        real(u8, dest, *rest)

    monkeypatch.setattr(outputs, "write_image", failing_at_3)
    with pytest.raises(UserError, match="3.png: could not write"):
        with outputs.Writer() as writer:
            for i, im in enumerate(images):
                writer.write(im, str(tmp_path / "fail" / f"{i}.png"))

    # Ctrl-C at a known point: the writes under way blocked in write_image, the rest queued; they are
    # let go only once the queued ones are cancelled (or running), so exactly those under way finish
    started, release = threading.Event(), threading.Event()

    def blocked(u8, dest, *rest):
        started.set()
        assert release.wait(60)
        real(u8, dest, *rest)

    def release_once_cancelled(futures):
        while not all(f.cancelled() or f.running() or f.done() for f in futures):
            time.sleep(0.001)  # a state awaited, not a time
        release.set()

    monkeypatch.setattr(outputs, "write_image", blocked)
    with pytest.raises(KeyboardInterrupt):
        with outputs.Writer() as writer:
            for i, im in enumerate(images):
                writer.write(im, str(tmp_path / "stop" / f"{i}.png"))
            assert started.wait(60)
            threading.Thread(target=release_once_cancelled, args=([f for f, _ in writer.waiting],)).start()
            raise KeyboardInterrupt
    written = sorted((tmp_path / "stop").iterdir())
    assert 1 <= len(written) <= writer.pool._max_workers < 10  # those under way finished, whole; the rest dropped
    assert all(p.suffix == ".png" for p in written)


def test_the_writer_keeps_at_most_its_bound_of_images_waiting(tmp_path, monkeypatch):
    """Writes slower than the work: the images waiting stay under WAITING bytes (each write waits for
    the oldest), counted as they come and go, not summed again over the whole queue at each write."""
    import time

    import outputs

    real = outputs.write_image
    monkeypatch.setattr(outputs, "write_image", lambda *a: (time.sleep(0.02), real(*a)))
    monkeypatch.setattr(outputs.Writer, "WAITING", 5 * 64)
    seen = []
    with outputs.Writer() as writer:
        for i in range(40):
            writer.write(torch.full((1, 8, 8), i, dtype=torch.uint8), str(tmp_path / f"{i}.png"))
            seen.append((writer.bytes, sum(n for _, n in writer.waiting)))
    assert all(counted == queued <= 5 * 64 for counted, queued in seen), seen
    assert max(counted for counted, _ in seen) == 5 * 64 and writer.bytes == 0  # the bound was reached; all written
    assert sorted(int(p.stem) for p in tmp_path.iterdir()) == list(range(40))


def test_check_kept_compares_a_kept_outputs_note_setting_by_setting(tmp_path):
    from outputs import check_kept, write_image

    u8 = torch.zeros((1, 4, 4), dtype=torch.uint8)
    note = {"command": "degrade", "op": "blur", "params": {"T": 20, "sigma": 7.0}, "t": 5, "seed": 0}
    write_image(u8, str(tmp_path / "a.png"), note)
    check_kept(str(tmp_path / "a.png"), lambda: note)
    check_kept(str(tmp_path / "a.png"), lambda: {**note, "params": {"sigma": 7.0, "T": 20}})  # order is not a setting
    with pytest.raises(UserError, match=r"made with t=5, seed=0, not this command's t=6, seed=1;"):
        check_kept(str(tmp_path / "a.png"), lambda: {**note, "t": 6, "seed": 1})
    with pytest.raises(UserError, match=r"made with px_scale=its default, not this command's px_scale=0.5;"):
        check_kept(str(tmp_path / "a.png"), lambda: {**note, "params": {**note["params"], "px_scale": 0.5}})
    write_image(u8, str(tmp_path / "b.png"), {**note, "params": "damaged"})
    with pytest.raises(UserError, match="made with T=its default, sigma=its default"):
        check_kept(str(tmp_path / "b.png"), lambda: note)
    write_image(u8, str(tmp_path / "c.bmp"), note)  # a BMP holds no note: nothing to compare, kept
    check_kept(str(tmp_path / "c.bmp"), lambda: {**note, "t": 6})
