"""Image files for colddiff: find them, read them, encode them (with colddiff's note); their formats and limits.

Where outputs go and how they are written (atomically, never over a file silently) is outputs.py.
Images come in as uint8 (C, H, W) tensors, 1 channel for grey and 3 for colour (uint16 for 16-bit
grey where degrade and restore ask for it: deep=True), and go into the model as float in [-1, 1].
Errors are UserError: one line for the user, never a traceback.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path

from errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
STDIO = "-"
# The decompression-bomb guard: a 1 KB PNG can claim 100,000 x 100,000 pixels. 128 megapixels
# passes every camera's photo (a 108 MP phone sensor included); `colddiff --max-megapixels N` raises it.
MAX_PIXELS = 128_000_000
# read_image(shrink_to=S) decodes a large JPEG at a reduced scale whose short side is at least this
# many times S, so that the antialiased resize to S that follows still has pixels to average.
SHRINK_MARGIN = 4  # 12 MP JPEGs to 128 px: 5x faster, within 2 grey levels of a full decode (margin 2: 6x, 7 levels)
# The PNG text chunk in which `colddiff degrade` says how it made an image (operator, parameters,
# t, seed), so that `colddiff restore` needs no --t or --seed, in a pipe too.
NOTE_KEY = "colddiff"
IMAGE_DESCRIPTION = 0x010E  # the EXIF/TIFF tag that carries the note in a WebP or TIFF


def source_name(source: str | bytes) -> str:
    """How an input is named in messages: its path, or <stdin> for the bytes read from `-`."""
    return "<stdin>" if isinstance(source, bytes) else source


def open_image(source: str | bytes):
    """PIL's lazy open (the header only) of a path or of the bytes read from stdin."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # PIL's own guard, replaced by open_upright's (which names the flag)
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def check_reachable(p: Path) -> None:
    """p can be looked at: a folder on its way that may not be searched is one line, not a traceback."""
    try:
        p.stat()
    except PermissionError:
        raise UserError(f"{p}: permission denied (a folder on its path may not be opened)") from None
    except OSError:
        pass  # missing, or a broken link: the caller says which


def special_file(p: Path) -> tuple[bytes, str, bool]:
    """A pipe (bash's <(...), a FIFO) is read whole, as stdin is; a device (/dev/zero) is no image file."""
    import stat

    if not stat.S_ISFIFO(p.stat().st_mode):
        raise UserError(f"{p}: is a device or special file, not an image file")
    data = p.read_bytes()
    if not data:
        raise UserError(f"{p}: the pipe held no image data")
    return data, "pipe.png", False


def find_images(inputs: list[str], skip: str | None = None) -> list[tuple[str | bytes, str, bool]]:
    """Expand the command line into (source, relative output name, came from a folder).

    The source is a path, or the bytes read from stdin for `-`. skip: the command's output folder
    (or file); where it lies inside an input folder, what it holds is not input, so that a second
    run reads what the first read, not also what the first wrote (a grid, a model's samples)."""
    items = []
    if inputs.count(STDIO) > 1:
        raise UserError("- (standard input) can be given once")
    for arg in inputs:
        if arg == STDIO:
            data = sys.stdin.buffer.read()
            if not data:
                raise UserError("<stdin>: no image data on standard input")
            items.append((data, "stdin.png", False))
            continue
        p = Path(arg)
        check_reachable(p)
        if p.is_dir():
            found = scan(p, IMAGE_EXTS, skip)
            if not found:
                raise UserError(f"{arg}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            items += [(str(q), str(q.relative_to(p)), True) for q in found]
        elif p.is_file():
            items.append((arg, p.name, False))
        elif p.exists():
            items.append(special_file(p))
        else:
            raise UserError(f"{arg}: no such file or folder")
    if not items:
        raise UserError("no input images given")
    return items


def scan(folder: Path, exts, skip: str | None = None) -> list[Path]:
    """The files under `folder` (recursive, sorted) whose suffix is one of `exts`, any case, but for
    those a scan leaves out, as `ls` and shell globs do: a dot-file or one in a dot-folder
    (.ipynb_checkpoints/, .thumbnails/), and macOS's AppleDouble companions (._IMG_1.jpg, __MACOSX/),
    which carry an image's name and no image (an unzipped archive would fail as unreadable); and
    what lies in `skip` (find_images)."""
    inner = _inside(skip, folder)
    found = []
    try:
        os.listdir(folder)
    except PermissionError:
        raise UserError(f"{folder}: permission denied (the folder may not be listed)") from None
    for q in folder.rglob("*"):
        rel = q.relative_to(folder).parts
        if (q.suffix.lower() in exts and not any(part.startswith(".") or part == "__MACOSX" for part in rel)
                and (inner is None or rel[: len(inner)] != inner) and q.is_file()):
            found.append(q)
    return sorted(found)


def _inside(skip: str | None, folder: Path) -> tuple[str, ...] | None:
    """skip's path below `folder`, as parts, where it lies strictly inside it (else None: an output
    folder that is the input folder itself is an in-place rewrite, which --force allows)."""
    if skip is None or skip == STDIO:
        return None
    try:
        inner = Path(skip).resolve().relative_to(folder.resolve()).parts
    except ValueError:
        return None
    return inner or None


def read_image(source: str | bytes, channels: int | None = None, shrink_to: int | None = None, deep: bool = False):
    """uint8 tensor (C, H, W), C = 1 (grey) or 3 (colour) unless `channels` forces one.
    shrink_to: the short side the caller will resize to; a JPEG much larger than that is decoded
    at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling), never below SHRINK_MARGIN x shrink_to.
    deep: a 16-bit grey image as uint16 (1, H, W), at its own 65,536 levels, not rounded to 256."""
    import torch

    return torch.from_numpy(read_pixels(source, channels, shrink_to, deep))


def read_pixels(source: str | bytes, channels: int | None = None, shrink_to: int | None = None, deep: bool = False):
    """read_image's pixels as a numpy array, without torch (`colddiff info` needs no torch)."""
    import numpy as np
    from PIL import Image

    im = open_upright(source, shrink_to)
    grey = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16")
    if not grey and im.info.get("icc_profile"):
        im = to_srgb(im, im.info["icc_profile"])
    if channels is None:
        channels = 1 if grey else 3
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        # 16-bit grey (I;16, or I with values over 255) is 0..65535; float grey is [0, 1] where it
        # fits in it (else 0..255, as PIL's own conversion takes it)
        v = np.asarray(im).astype(np.float64)
        if not np.isfinite(v).all():  # a float TIFF's NaN would turn black silently
            bad = int((~np.isfinite(v)).sum())
            raise UserError(f"{source_name(source)}: {bad} of its {v.size} pixels are not numbers (NaN or infinity)")
        hi = v.max(initial=0)
        if im.mode == "F":
            scale = 255 if hi <= 1 else 1
        else:
            scale = 1 if im.mode == "I" and hi <= 255 else 255 / 65535
            if deep and scale != 1 and channels == 1:
                return np.clip(v, 0, 65535).astype(np.uint16)[None]
        im = Image.fromarray(np.clip(np.rint(v * scale), 0, 255).astype(np.uint8))
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy()


def open_upright(source: str | bytes, shrink_to: int | None = None):
    """The decoded PIL image, turned upright by its EXIF orientation (read_image's first half)."""
    from PIL import ImageOps, UnidentifiedImageError

    name = source_name(source)
    try:
        im = open_image(source)
        w, h = im.size
        if w * h > MAX_PIXELS:
            mp = lambda v: f"{v / 1e6:,.0f}" if v >= 1e7 else f"{v / 1e6:.3g}"  # noqa: E731 (under 10: its digits, not 0)
            raise UserError(f"{name}: {w}x{h} is {mp(w * h)} megapixels, over the limit of {mp(MAX_PIXELS)} "
                            f"that guards against decompression bombs; for a genuinely huge image raise it with "
                            f"`colddiff --max-megapixels N ...`")
        if shrink_to and im.format == "JPEG":
            scale = SHRINK_MARGIN * shrink_to / min(w, h)
            if scale < 0.5:
                im.draft(im.mode, (math.ceil(w * scale), math.ceil(h * scale)))
        im.load()
    except PermissionError:
        raise UserError(f"{name}: permission denied (the file may not be read)") from None
    except UnidentifiedImageError:  # PIL's words name an object, not the file
        raise UserError(f"{name}: not a readable image (not a format colddiff reads: {', '.join(sorted(e[1:] for e in IMAGE_EXTS))})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name}: not a readable image ({e})") from None
    try:  # a phone's JPEG stores its pixels sideways and says so in EXIF: restore it as it is seen
        im = ImageOps.exif_transpose(im)
    except Exception:  # a damaged EXIF block is no reason to refuse the pixels
        pass
    return im


def read_alpha(source: str | bytes, dest: str | None = None):
    """An image's transparency as uint8 (1, H, W), upright as read_image reads it, or None where it
    has none, is opaque everywhere, or `dest` cannot hold it (keeps_alpha: then nothing is decoded).
    The models see colour only; degrade and restore hand it back to outputs that can hold it (PNG,
    WebP, TIFF), so that a logo keeps its transparent background."""
    import torch

    a = alpha_pixels(source, dest)
    return None if a is None else torch.from_numpy(a)[None]


def alpha_pixels(source: str | bytes, dest: str | None = None):
    """read_alpha's transparency as a numpy array (H, W), or None; without torch."""
    import numpy as np

    if dest is not None and not keeps_alpha(dest):
        return None
    try:
        with open_image(source) as header:
            if header.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in header.info:
                return None  # known from the header: no second decode
    except OSError:
        return None  # read_image says what is wrong with the file
    im = open_upright(source)
    a = np.asarray(im.convert("LA" if im.mode in ("LA", "La", "L") else "RGBA").getchannel("A"))
    return None if a.min() == 255 else a.copy()


def frame_count(source: str | bytes) -> int:
    """Frames in an image file (an animated GIF or WebP, a multi-page TIFF), of which colddiff reads
    the first; 1 for anything else, unreadable files included (read_image says what is wrong)."""
    try:
        with open_image(source) as im:
            return getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
    except (OSError, ValueError, SyntaxError):
        return 1


def to_srgb(im, icc: bytes):
    """A colour image with an embedded profile (a phone's Display P3, a camera's Adobe RGB, a
    print CMYK) as sRGB, what models are trained on and what a PNG without a profile is shown as:
    read raw, a P3 photo comes back duller. A damaged profile leaves the pixels as they are."""
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(profile).lower():
            return im  # already sRGB: no transform to pay
        if im.mode not in ("RGB", "CMYK"):
            im = im.convert("RGB")
        return ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im


def to_model(px):
    """uint8, or 16-bit grey's uint16, (..., C, H, W) -> float32 in [-1, 1]."""
    return px.float() / ((2 ** bits_of(px) - 1) / 2) - 1


def to_pixels(x, bits: int = 8):
    """float in [-1, 1] -> uint8 (bits 8) or uint16 (bits 16), rounding to nearest."""
    import torch

    return ((x.float().clamp(-1, 1) + 1) * ((2**bits - 1) / 2)).round().to(torch.uint8 if bits == 8 else torch.uint16)


def bits_of(px) -> int:
    """8 or 16: the depth of pixels read_image or read_pixels read (uint8 or uint16; torch or numpy)."""
    return 8 * px.itemsize


def eight_bit(px):
    """Pixels at 8 bits: 16-bit ones rounded to the nearest of 256 levels (65535 = 255 x 257)."""
    import torch

    return px if bits_of(px) == 8 else (px.float() / 257).round().to(torch.uint8)


def grid_size(n: int, ncol: int, h: int, w: int, pad: int = 2) -> tuple[int, int]:
    """(width, height) of grid_image's grid of n h x w images."""
    return ncol * (w + pad) + pad, -(-n // ncol) * (h + pad) + pad


def grid_image(x, ncol: int, pad: int = 2):
    """(N, C, H, W) in [-1, 1], or uint8 -> one (C, H', W') image, `ncol` per row, white gutters."""
    import torch

    N, C, H, W = x.shape
    width, height = grid_size(N, ncol, H, W, pad)
    out = torch.full((C, height, width), 255 if x.dtype == torch.uint8 else 1, dtype=x.dtype, device=x.device)
    for i in range(N):
        r, c = divmod(i, ncol)
        out[:, pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = x[i]
    return out


def encode_image(u8, fmt: str = "PNG", note: dict | None = None) -> bytes:
    """The image file's bytes, carrying `note` (JSON): a PNG in its NOTE_KEY text chunk, a JPEG or GIF
    in a comment and a WebP or TIFF in its ImageDescription, both behind the key; a BMP has no room.
    16-bit grey (uint16) stays 16-bit in a PNG or TIFF and is rounded to 8 bits for the rest."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if bits_of(u8) == 16 and fmt not in ("PNG", "TIFF"):  # the formats that hold 16-bit grey
        u8 = eight_bit(u8)
    arr = u8.cpu().numpy()  # 1, 3 channels, or with alpha 2 (LA) or 4 (RGBA); 16-bit grey: PIL's I;16
    im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    extra = {}
    text = None if note is None else json.dumps(note, sort_keys=True)  # ASCII: EXIF's text is
    if text is not None and fmt == "PNG":
        extra["pnginfo"] = PngInfo()
        extra["pnginfo"].add_text(NOTE_KEY, text)
    elif text is not None and fmt in ("JPEG", "GIF"):  # a comment, behind the key: cameras write comments too
        extra["comment"] = f"{NOTE_KEY} {text}".encode()
    elif text is not None and fmt in ("WEBP", "TIFF"):  # EXIF's ImageDescription (TIFF's own tag), behind the key
        exif = Image.Exif()
        exif[IMAGE_DESCRIPTION] = f"{NOTE_KEY} {text}"
        extra["exif"] = exif.tobytes() if fmt == "WEBP" else exif
    # PIL's defaults are lossy enough to move SSIM (JPEG quality 75 with 4:2:0 chroma, WebP 80):
    # JPEG at 95 with full chroma, WebP lossless, as close to the pixels as each format goes
    extra |= {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **extra)
    except (ValueError, OSError) as e:  # an encoder's own limit or failure, as one line
        raise UserError(f"could not encode the {im.width}x{im.height} image as {fmt} ({e})") from None
    return buf.getvalue()


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF"}
# the largest side each format can store (PNG, BMP and TIFF: none an image here reaches)
MAX_SIDE = {"WEBP": ("WebP", 16383), "JPEG": ("JPEG", 65535), "GIF": ("GIF", 65535)}


def check_suffix(dest: str) -> str:
    """An output file's name must say its format: PNG bytes named .gif or with no suffix mislead."""
    if Path(dest).suffix.lower() not in _FORMATS:
        raise UserError(f"{dest}: name an output file with one of {', '.join(sorted(_FORMATS))} (or a folder ending in /)")
    return dest


def format_of(dest: str) -> str:
    """The format an output is written in: its suffix's (check_suffix), PNG on stdout (and /dev/null)."""
    return "PNG" if dest in (STDIO, os.devnull) else _FORMATS[Path(check_suffix(dest)).suffix.lower()]


def check_size(dest: str, width: int, height: int) -> None:
    """An image of width x height fits the format dest names: checked before the work, not after it."""
    fmt = format_of(dest)
    name, limit = MAX_SIDE.get(fmt, (fmt, math.inf))
    if max(width, height) > limit:
        raise UserError(f"{dest}: {name} holds at most {limit} px a side and this image is {width}x{height}; name a .png")


def keeps_alpha(dest: str) -> bool:
    """Whether dest's format holds transparency: PNG (stdout too), WebP and TIFF; not JPEG, BMP or GIF's one-colour key."""
    return format_of(dest) in ("PNG", "WEBP", "TIFF")


def read_note(source: str | bytes) -> dict | None:
    """The note encode_image wrote, or None (another format, another program, or no note).
    Only the header is read: the note precedes the pixels, so the image is not decoded."""
    name = source_name(source)
    try:
        with open_image(source) as im:
            text, comment = im.info.get(NOTE_KEY), im.info.get("comment")
            if im.format in ("WEBP", "TIFF"):
                comment = im.getexif().get(IMAGE_DESCRIPTION)
    except OSError:
        return None  # read_image says what is wrong with the file
    comment = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else comment
    if text is None and isinstance(comment, str) and comment.startswith(f"{NOTE_KEY} "):
        text = comment[len(NOTE_KEY) + 1:]
    if text is None:
        return None
    try:
        note = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        note = None
    if not isinstance(note, dict):
        raise UserError(f"{name}: its {NOTE_KEY!r} note is not colddiff's (not a JSON object); pass --t to restore it anyway")
    return note


def neutral(u8) -> bool:
    """A colour image whose channels are all equal (R = G = B): grey, whatever the file stores (a WebP
    holds no grey mode). Models take it as grey, losslessly: its 1-channel read has the same values."""
    return u8.shape[0] == 3 and bool((u8 == u8[:1]).all())


