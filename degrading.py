"""degrade's work: the operator it degrades with (--op, or a model's), and each image's x_t or its
strip of frames, written with the note of how it was made (notes.py)."""
from __future__ import annotations

from errors import UserError
from strips import STRIP_WIDTH, shrunk_line, strip_alpha, strip_frame


def operator_for(op: str, preset: str | None, param: list[str] | None, model: str | None, typed: list[str]):
    """(operator, channels, refit): --op/--preset/--param's (any channels, fitted to each image if
    --fit), or with --model the model's own, every parameter as trained, for its channels. typed:
    the operator options given on the command line, which --model leaves no room for."""
    import checkpoint
    import operators

    if model is None:
        return operators.from_options(op, preset, param), None, True
    if typed:
        raise UserError(f"--model degrades with the model's own operator: give {' or '.join(typed)}, or --model, not both")
    operator, meta = checkpoint.model_operator(model)
    return operator, meta["image"]["channels"], False


def checked_step(operator, t: int | None) -> int:
    """--t, default T, in 0..T."""
    t = operator.T if t is None else t
    if not 0 <= t <= operator.T:
        raise UserError(f"--t must be in 0..{operator.T} for {operator.name}, got {t}")
    return t


def degrade_image(operator, src, dest: str, steps: list[int], strip, seed: int, dev, fit: bool, say, write, frames_done) -> None:
    """One input's x_t (steps [t]), or its --strip of frames x_s, s in steps, to `dest`: the operator
    fitted to the image's size if `fit`; say(key, line) is told what is worth saying once per key."""
    import notes
    from image_io import bits_of, read_alpha, read_image, source_name, to_model

    px = read_image(src, deep=True)  # 16-bit grey stays 16-bit
    x0 = to_model(px)[None].to(dev)
    fitted, note = operator.fit_to(*x0.shape[-3:])
    if note and (fit or note.startswith("warning")):
        say(note, note)
    fitted = fitted if fit else operator
    h, w = x0.shape[-2:]
    size = strip.frame_size(h, w)
    if size and size != (h, w):
        say("strip", f"{shrunk_line(source_name(src), len(steps), h, w)} (a strip of at most {STRIP_WIDTH} px; crop the image "
                     "or pass fewer --frames for larger ones)")
    made = notes.degraded_strip(fitted, steps, seed) if strip else notes.degraded(fitted, steps[0], seed)
    frames = degraded_frames(fitted, x0, steps, seed, size, bits_of(px), frames_done)
    write(frames, dest, made, strip_alpha(read_alpha(src, dest), size, len(steps)))


def degraded_frames(operator, x0, steps: list[int], seed: int, size, bits: int = 8, frames_done=lambda k: None):
    """D(x0, s) for s in steps side by side, as pixels at `bits`, each frame shrunk to `size` (None:
    as it is); frames_done(k) after each call of D, k the frames made so far."""
    import torch

    from seeding import generator

    hidden = operator.draw(x0, generator(seed))
    frames = []
    per_call = max(1, 2**25 // x0.numel())  # a strip of a 12-megapixel photo: a few frames at a time
    for i in range(0, len(steps), per_call):
        chunk = steps[i : i + per_call]
        h = None if hidden is None else {k: v.expand(len(chunk), *v.shape[1:]) for k, v in hidden.items()}
        frames += list(strip_frame(operator.apply(x0.expand(len(chunk), -1, -1, -1), torch.tensor(chunk), h), size, bits))
        frames_done(len(frames))
    return torch.cat(frames, dim=-1)
