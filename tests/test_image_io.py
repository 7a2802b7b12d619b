"""Loading a folder of training or evaluation images: threaded, into one tensor, errors by name."""
import numpy as np
import pytest
import torch
from PIL import Image

from common import UserError
from image_io import load_folder, read_image, resize_square


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
