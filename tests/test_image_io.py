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
