"""Folders of images as one tensor (training, eval, fit-prior, animorph's --source): decoded on
worker threads, resized and centre-cropped to a size, their channels agreed on, and said so."""
from __future__ import annotations

from errors import UserError
from image_io import find_images, neutral, read_image, to_model


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
    import torch

    if channels not in (None, 1, 3):
        raise UserError(f"--channels must be 1 or 3, got {channels}")
    if size is not None and size < 8:
        raise UserError(f"--size must be at least 8, got {size}")
    items = find_images([folder], skip)[:limit]
    first = read_image(items[0][0], channels)
    C = channels or (1 if neutral(first) else first.shape[0])
    loaded = Loaded(torch.empty((len(items), C, *((size, size) if size is not None else first.shape[-2:])), dtype=torch.uint8))
    decode_all(items, loaded, size, first.shape[-2:], mixed_size is not None, quiet)
    if loaded.mixed:
        if say:
            say(f"the images differ in size ({loaded.mixed[0]}): resizing and centre-cropping them to {mixed_size[0]} px, "
                f"{mixed_size[1]} (--size chooses)")
        return load_folder(folder, mixed_size[0], channels, limit, quiet, say, skip=skip)
    if say:
        say_resized(folder, loaded, size, size_is, say)
    colour = int((loaded.own == 3).sum())
    if channels is None and 0 < colour < len(items):
        majority = 3 if 2 * colour >= len(items) else 1
        if say:
            say(f"{folder}: {colour} {'image is' if colour == 1 else 'images are'} colour and {len(items) - colour} grey: using them as "
                f"{'colour' if majority == 3 else 'grey'} (--channels chooses)")
        if majority != C:
            return load_folder(folder, size, majority, limit, quiet, skip=skip, size_is=size_is)
    elif channels is not None and say and bool((loaded.own != channels).any()):
        kind = {1: "grey", 3: "colour"}
        say(f"{folder}: {int((loaded.own != channels).sum())} of the {len(items)} images are {kind[4 - channels]}: using them as {kind[channels]}")
    return loaded.images


class Loaded:
    """A folder's images as decode_all fills them in, and what it found on the way."""

    def __init__(self, images):
        import torch

        n = len(images)
        self.images = images  # (N, C, S, S) uint8
        self.own = torch.zeros(n, dtype=torch.uint8)  # each image's own channels
        self.resized = torch.zeros(n, dtype=torch.bool)  # not size x size
        self.upscaled = torch.zeros(n, dtype=torch.bool)  # short side under `size`: stretched, not sharp
        self.mixed: list = []  # with mixed sizes allowed: the first image found whose size differs (the rest is not loaded)


def decode_all(items, loaded: Loaded, size: int | None, first_size, mixed_ok: bool, quiet: bool) -> None:
    """Decode items into loaded.images on worker threads (PIL decodes without the GIL), 64 at a time,
    resized to size x size where a size is given; images of another size than the first, without a
    size, are an error, or with mixed_ok stop the loading (loaded.mixed says which)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from progress import Progress

    C = loaded.images.shape[1]

    def load(chunk: range) -> int:
        for i in chunk:
            if loaded.mixed:
                return 0
            src = items[i][0]
            im = read_image(src, shrink_to=size)
            loaded.own[i] = 1 if neutral(im) else im.shape[0]
            if im.shape[0] != C:
                im = im[:1] if loaded.own[i] == 1 and C == 1 else read_image(src, C, shrink_to=size)
            if size is not None and im.shape[-2:] != (size, size):
                loaded.resized[i], loaded.upscaled[i] = True, min(im.shape[-2:]) < size
                im = resize_square(im, size)
            elif size is None and im.shape[-2:] != first_size:
                sizes = f"{src}: {tuple(im.shape[-2:])} differs from {tuple(first_size)}"
                if not mixed_ok:
                    raise UserError(f"{sizes}; pass --size to resize all")
                loaded.mixed.append(sizes)
                return 0
            loaded.images[i] = im
        return len(chunk)

    chunks = [range(i, min(i + 64, len(items))) for i in range(0, len(items), 64)]
    pool = ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(chunks))))
    try:
        with Progress("loading", len(items), "images", quiet=quiet or len(items) < 5000) as progress:
            for n in pool.map(load, chunks):  # in order: an error names the first bad image by name
                progress.update(progress.done + n)
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C or an error: the images not started are dropped


def say_resized(folder: str, loaded: Loaded, size: int | None, size_is: str | None, say) -> None:
    """How many images were resized to a size the user did not ask for (size_is says whose), else how many were upscaled."""
    total = len(loaded.images)
    if size_is and bool(loaded.resized.any()):
        n, up = int(loaded.resized.sum()), int(loaded.upscaled.sum())
        which = ("the image is" if total == 1 else f"all {n} images are" if n == total
                 else f"{n} of the {total} images {'is' if n == 1 else 'are'}")
        say(f"{folder}: {which} resized and centre-cropped to {size}x{size}, {size_is}" + (f" ({up} of them upscaled: blurrier)" if up else ""))
    elif bool(loaded.upscaled.any()):
        n = int(loaded.upscaled.sum())
        say(f"{folder}: {n} of the {total} images {'is' if n == 1 else 'are'} smaller than {size} px on the short side "
            f"and upscaled to it (blurrier than {'the rest' if n < total else 'the size promises'})")


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
