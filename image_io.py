"""Image files for colddiff: find them, read them, encode them (with colddiff's note), load a folder.

Where outputs go and how they are written (atomically, never over a file silently) is outputs.py.
Images come in as uint8 (C, H, W) tensors, 1 channel for grey and 3 for colour (uint16 for 16-bit
grey where degrade and restore ask for it: deep=True), and go into the model as float in [-1, 1]. Errors are UserError: one line for the user, never a traceback.
"""
from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

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


from common import UserError


def source_name(source: str | bytes) -> str:
    """How an input is named in messages: its path, or <stdin> for the bytes read from `-`."""
    return "<stdin>" if isinstance(source, bytes) else source


def open_image(source: str | bytes):
    """PIL's lazy open (the header only) of a path or of the bytes read from stdin."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # PIL's own guard, replaced by open_upright's (which names the flag)
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


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
        if p.is_dir():
            found = scan(p, IMAGE_EXTS, skip)
            if not found:
                raise UserError(f"{arg}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            items += [(str(q), str(q.relative_to(p)), True) for q in found]
        elif p.is_file():
            items.append((arg, p.name, False))
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
            raise UserError(f"{name}: {w}x{h} is {w * h / 1e6:,.0f} megapixels, over the limit of {MAX_PIXELS / 1e6:,.0f} "
                            f"that guards against decompression bombs; for a genuinely huge image raise it with "
                            f"`colddiff --max-megapixels N ...`")
        if shrink_to and im.format == "JPEG":
            scale = SHRINK_MARGIN * shrink_to / min(w, h)
            if scale < 0.5:
                im.draft(im.mode, (math.ceil(w * scale), math.ceil(h * scale)))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
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


def say_first_frames(items, say) -> None:
    """One line for the inputs that hold several frames: only the first is used, which is no surprise once said."""
    many = [(source_name(src), n) for src, _, _ in items if (n := frame_count(src)) > 1]
    if many:
        others = f" (and {len(many) - 1} more such input{'s' * (len(many) > 2)})" if len(many) > 1 else ""
        say(f"{many[0][0]} holds {many[0][1]} frames{others}: colddiff reads only the first{' of each' if others else ''}")


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


STRIP_WIDTH = 16383  # WebP's limit (MAX_SIDE) and wider than any screen: --strip shrinks a photo's frames to fit it


def strip_frame_size(n: int, h: int, w: int) -> tuple[int, int]:
    """(height, width) of each of a strip's n frames of an h x w image: its own, or shrunk (aspect
    kept) so that the strip is at most STRIP_WIDTH wide: 11 frames of a 12 MP photo were a 132 MP PNG."""
    if n * w <= STRIP_WIDTH:
        return h, w
    fw = max(1, STRIP_WIDTH // n)
    return max(1, round(h * fw / w)), fw


def shrunk_line(name: str, n: int, h: int, w: int) -> str:
    """What a strip of n frames of an h x w image says where strip_frame_size shrinks them."""
    fh, fw = strip_frame_size(n, h, w)
    return f"{name}: a strip of {n} frames of {w}x{h} would be {n * w} px wide; its frames are shrunk to {fw}x{fh}"


def check_strip(strip: bool, frames: int | None, x0_hat: bool = False) -> None:
    if frames is not None and not strip:
        raise UserError("--frames applies to --strip")
    if x0_hat and not strip:
        raise UserError("--x0-hat applies to --strip")
    if frames is not None and frames < 2:
        raise UserError(f"--frames must be at least 2, got {frames}")


def strip_steps(path: list[int], frames: int | None) -> list[int]:
    """The steps of a --strip: `frames` (check_strip's) of the states `path` (degrade: 0 .. T;
    restore, generate: the sampler's t .. 0) evenly spread, the first and last among them; by
    default every one up to 21, else 11."""
    last = len(path) - 1
    n = last + 1 if frames is None and last <= 20 else min(frames or 11, last + 1)
    return [path[k] for k in sorted({round(i * last / (n - 1)) for i in range(n)})] if n > 1 else list(path)


def strip_frame(x, size, bits: int = 8):
    """The frames of a strip from x (B, C, H, W) in [-1, 1]: uint8 (or 16-bit) on the CPU, shrunk to `size` (h, w)
    where strip_frame_size shrank them (the step itself ran at full size; None: as they are)."""
    import torch.nn.functional as F

    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return to_pixels(x, bits).cpu()


def strip_recording(sampling, steps: list[int], size, x0_hat: bool, bits: int = 8):
    """(sampling, states, predicted): `sampling` recording a --strip's frames as it runs, the states
    x_s at `steps` into `states` and, with --x0-hat, R's x0_hat from each into `predicted` (else
    None), each as strip_frame makes them (uint8 on the CPU, at once: R's output buffer is reused)."""
    states, predicted = [], [] if x0_hat else None
    recorded = sampling.recorded(set(steps), lambda x, s: states.append(strip_frame(x, size, bits)),
                                 (lambda x0, s: predicted.append(strip_frame(x0, size, bits))) if x0_hat else None)
    return recorded, states, predicted


def strip_rows(states: list, predicted: list | None = None):
    """(B, C, h, n w) strips from a strip's n frames, each (B, C, h, w) uint8: the states x_s side by
    side; with `predicted` (R's x0_hat from each state but x_0), a second row of them under the
    first, (B, C, 2 h, n w), blank (black) under x_0, the output, which R never saw."""
    import torch

    top = states[0] if len(states) == 1 else torch.cat(states, dim=-1)  # one frame: no copy
    if predicted is None:
        return top
    return torch.cat([top, torch.cat([*predicted, torch.zeros_like(states[-1])], dim=-1)], dim=-2)


def strip_alpha(alpha, size, n: int, rows: int = 1):
    """An image's alpha (1, H, W) for each of a strip's n frames of `size` in `rows` rows: every frame keeps the image's transparency."""
    import torch.nn.functional as F

    if alpha is None:
        return None
    if size is not None and tuple(size) != tuple(alpha.shape[-2:]):
        alpha = to_pixels(F.interpolate(to_model(alpha)[None], size=tuple(size), mode="bilinear", antialias=True)[0])
    return alpha.repeat(1, rows, n)


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
    """The format an output is written in: its suffix's (check_suffix), PNG on stdout."""
    return "PNG" if dest == STDIO else _FORMATS[Path(check_suffix(dest)).suffix.lower()]


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
    except ValueError:
        note = None
    if not isinstance(note, dict):
        raise UserError(f"{name}: its {NOTE_KEY!r} note is not colddiff's (not a JSON object); pass --t to restore it anyway")
    return note


def load_folder(folder: str, size: int | None, channels: int | None, limit: int | None = None, quiet: bool = True, say=None,
                mixed_size: tuple[int, str] | None = None, skip: str | None = None, size_is: str | None = None):
    """The images of a folder (the first `limit`, sorted by name) as one uint8 tensor (N, C, S, S),
    or at the images' own size. Decoded on worker threads (PIL decodes without the GIL) straight
    into the one tensor: CelebA's 200k images at 128 px are 9.8 GB, not twice that while stacking.
    channels None: the images' own, and where grey and colour images mix, the majority's (ties:
    colour), which say() is told; not the first image's, which could turn a colour folder grey.
    channels given: say() is told how many images were converted to it. size None and images of
    several sizes: an error, or with mixed_size = (px, why) all resized to px, which say() is told.
    skip: the command's output folder, not read where it lies inside `folder` (find_images).
    size_is: where a size the user did not ask for comes from ("the model's size"): say() is then
    told how many images were resized to it, not only how many were upscaled."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from common import Progress

    if channels not in (None, 1, 3):
        raise UserError(f"--channels must be 1 or 3, got {channels}")
    if size is not None and size < 8:
        raise UserError(f"--size must be at least 8, got {size}")
    items = find_images([folder], skip)[:limit]
    first = read_image(items[0][0], channels)
    C = channels or (1 if neutral(first) else first.shape[0])
    out = torch.empty((len(items), C, *((size, size) if size is not None else first.shape[-2:])), dtype=torch.uint8)

    own = torch.zeros(len(items), dtype=torch.uint8)  # each image's own channels
    resized = torch.zeros(len(items), dtype=torch.bool)  # not size x size
    upscaled = torch.zeros(len(items), dtype=torch.bool)  # short side under `size`: stretched, not sharp
    mixed = []  # with mixed_size: the first image found whose size differs (the rest is not loaded)

    def load(chunk: range) -> int:
        for i in chunk:
            if mixed:
                return 0
            src = items[i][0]
            im = read_image(src, shrink_to=size)
            own[i] = 1 if neutral(im) else im.shape[0]
            if im.shape[0] != C:
                im = im[:1] if own[i] == 1 and C == 1 else read_image(src, C, shrink_to=size)
            if size is not None and im.shape[-2:] != (size, size):
                resized[i], upscaled[i] = True, min(im.shape[-2:]) < size
                im = resize_square(im, size)
            elif size is None and im.shape[-2:] != first.shape[-2:]:
                sizes = f"{src}: {tuple(im.shape[-2:])} differs from {tuple(first.shape[-2:])}"
                if mixed_size is None:
                    raise UserError(f"{sizes}; pass --size to resize all")
                mixed.append(sizes)
                return 0
            out[i] = im
        return len(chunk)

    chunks = [range(i, min(i + 64, len(items))) for i in range(0, len(items), 64)]
    pool = ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(chunks))))
    try:
        with Progress("loading", len(items), "images", quiet=quiet or len(items) < 5000) as progress:
            for n in pool.map(load, chunks):  # in order: an error names the first bad image by name
                progress.update(progress.done + n)
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C or an error: the images not started are dropped
    if mixed:
        if say:
            say(f"the images differ in size ({mixed[0]}): resizing and centre-cropping them to {mixed_size[0]} px, "
                f"{mixed_size[1]} (--size chooses)")
        return load_folder(folder, mixed_size[0], channels, limit, quiet, say, skip=skip)
    if say and size_is and bool(resized.any()):
        n, up = int(resized.sum()), int(upscaled.sum())
        which = ("the image is" if len(items) == 1 else f"all {n} images are" if n == len(items)
                 else f"{n} of the {len(items)} images {'is' if n == 1 else 'are'}")
        say(f"{folder}: {which} resized and centre-cropped to {size}x{size}, {size_is}" + (f" ({up} of them upscaled: blurrier)" if up else ""))
    elif say and bool(upscaled.any()):
        n = int(upscaled.sum())
        say(f"{folder}: {n} of the {len(items)} images {'is' if n == 1 else 'are'} smaller than {size} px on the short side "
            f"and upscaled to it (blurrier than {'the rest' if n < len(items) else 'the size promises'})")
    colour = int((own == 3).sum())
    if channels is None and 0 < colour < len(items):
        majority = 3 if 2 * colour >= len(items) else 1
        if say:
            say(f"{folder}: {colour} {'image is' if colour == 1 else 'images are'} colour and {len(items) - colour} grey: using them as "
                f"{'colour' if majority == 3 else 'grey'} (--channels chooses)")
        if majority != C:
            return load_folder(folder, size, majority, limit, quiet, skip=skip, size_is=size_is)
    elif channels is not None and say and bool((own != channels).any()):
        kind = {1: "grey", 3: "colour"}
        say(f"{folder}: {int((own != channels).sum())} of the {len(items)} images are {kind[4 - channels]}: using them as {kind[channels]}")
    return out


def check_input(u8, channels: int, op, src, model, least: int = 0) -> None:
    """An input image fits the model: its channels (a colour image whose channels are equal is grey), and
    a short side of at least 8 px, the operator's smallest size and `least`."""
    name = source_name(src)
    if u8.shape[0] != channels and not (channels == 1 and neutral(u8)):
        kind = {1: "grey (1-channel)", 3: "colour (3-channel)"}
        raise UserError(f"{name}: is {kind[u8.shape[0]]} but {model} was trained on {kind[channels]} images")
    check_side(u8, op, src, max(least, 8))  # R pads any size, but under 8 px it would see mostly padding


def check_side(u8, op, src, least: int = 1) -> None:
    """An input image's short side is at least what the operator's D needs (pixelate halves it T
    times) and `least`."""
    m = max(op.min_size(), least)
    if min(u8.shape[-2:]) < m:
        raise UserError(f"{source_name(src)}: {u8.shape[-1]}x{u8.shape[-2]} is too small for {op.name} (at least {m}x{m})")


def neutral(u8) -> bool:
    """A colour image whose channels are all equal (R = G = B): grey, whatever the file stores (a WebP
    holds no grey mode). Models take it as grey, losslessly: its 1-channel read has the same values."""
    return u8.shape[0] == 3 and bool((u8 == u8[:1]).all())


def resize_square(im, size: int):
    """Resize the short side to `size` and centre-crop (uint8 in, uint8 out)."""
    import torch
    import torch.nn.functional as F

    H, W = im.shape[-2:]
    s = size / min(H, W)
    h, w = max(size, round(H * s)), max(size, round(W * s))
    x = F.interpolate(im[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def attach_source(op, folder: str | None, device):
    """animorph-like operators: their z images, every image of --source resized to the first's size."""
    import torch
    import torch.nn.functional as F

    if not op.needs_source:
        return
    if folder is None:
        raise UserError(f"{op.name} needs --source DIR, a folder of the images to morph into")
    items = find_images([folder])
    first = read_image(items[0][0])
    imgs = [to_model(read_image(src, channels=first.shape[0]))[None] for src, _, _ in items]
    size = first.shape[-2:]
    imgs = [im if im.shape[-2:] == size else F.interpolate(im, size=size, mode="bilinear", antialias=True, align_corners=False) for im in imgs]
    op.source = torch.cat(imgs).to(device)
