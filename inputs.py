"""The inputs of degrade and restore: found, decoded and checked before anything is written (the
model's channels, the operator's smallest size), and what is worth saying of them."""
from __future__ import annotations

from errors import UserError
from image_io import frame_count, neutral, source_name


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


def say_first_frames(items, say) -> None:
    """One line for the inputs that hold several frames: only the first is used, which is no surprise once said."""
    many = [(source_name(src), n) for src, _, _ in items if (n := frame_count(src)) > 1]
    if many:
        others = f" (and {len(many) - 1} more such input{'s' * (len(many) > 2)})" if len(many) > 1 else ""
        say(f"{many[0][0]} holds {many[0][1]} frames{others}: colddiff reads only the first{' of each' if others else ''}")


def plan(inputs: list[str], out: str | None, force: bool, skip_existing: bool, say, expected, check) -> list[tuple]:
    """(src, dest, checked) for each input of degrade or restore still to do, all checked before
    anything is written: found (--skip-existing leaves out those whose output is there and agrees,
    outputs.not_written), each decoded and checked by check(src, pixels, n) -> (checked, (width,
    height) of its output), n the inputs' number, and its output planned (plan_outputs) and sized
    (check_size). say() (None: quiet) is told of inputs that hold several frames."""
    from image_io import check_size, find_images, read_image
    from outputs import not_written, plan_outputs

    items = not_written(find_images(inputs, skip=out), out, force, skip_existing, say, expected)
    checked = [check(src, read_image(src), len(items)) for src, _, _ in items]
    dests = plan_outputs(items, out, force)
    for dest, (_, (width, height)) in zip(dests, checked):
        check_size(dest, width, height)
    if say:
        say_first_frames(items, say)
    return [(src, dest, c) for (src, _, _), dest, (c, _) in zip(items, dests, checked)]
