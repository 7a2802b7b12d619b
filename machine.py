"""What this machine has and whether the work fits it: CPU threads, the device, free memory, and
the memory a network call needs (so that a call that cannot fit is refused, or tiled, before it starts);
moving tensors to the device, bf16 on CUDA, and the versions a bug report needs."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from errors import UserError, at_least

if TYPE_CHECKING:
    import torch


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation: MemoryError, torch's OutOfMemoryError (CUDA), or the CPU allocator's RuntimeError."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text \
        or "can't allocate memory" in text or "not enough memory" in text


def default_threads() -> int:
    """OMP_NUM_THREADS where it is set (the user's, or a scheduler's, choice); else the CPU cores
    other processes are not using right now (/proc/stat over 0.1 s). On a shared machine OpenMP
    threads that wait for a core another process holds slow every step down (RESULTS.md, "Threads
    on a shared CPU"); alone, every core."""
    import time

    told = os.environ.get("OMP_NUM_THREADS", "").strip()
    if told.isdigit() and int(told) > 0:
        return int(told)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def ticks():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # all, idle + iowait

    try:
        (all0, idle0), _ = ticks(), time.sleep(0.1)
        all1, idle1 = ticks()
    except (OSError, ValueError, IndexError):
        return cores
    machine = os.cpu_count() or cores
    busy = machine * (1 - (idle1 - idle0) / max(all1 - all0, 1))
    return max(1, min(cores, round(machine - busy)))


def pick_device(device: str, threads: int | None = None):
    import torch

    torch.set_num_threads(at_least(threads, "--threads") if threads is not None else default_threads())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # the devices colddiff is built and tested for
        raise UserError(f"--device must be auto, cpu or cuda (or cuda:N), got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def available_memory(device) -> int | None:
    """Bytes free for tensors: the CUDA device's free memory, or the CPU's MemAvailable (None if unknown)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


NET_BYTES_PER_PIXEL_AND_WIDTH = 100  # peak activations of one forward, measured 74-93 (unet.py, float32, CPU)
AUTO_TILE = 512  # the tiles of an image that cannot fit whole: larger ones cost more per pixel (benchmarks/tiles.py)


def check_fits(sampling, name: str, h: int, w: int, batch: int, device, tile: int | None = 0) -> int | None:
    """The tile size for h x w images through R at --batch (None: whole), or a UserError that says
    what to change: a network call that cannot fit (a 12-megapixel photo through R) is refused
    before any work, where the allocator would fail mid-way or the kernel kill us. tile: --tile
    (N: tiles of N px; 0: whole or refuse; None: whole, or the largest tiles that fit where one
    image cannot fit whole)."""
    per_px = NET_BYTES_PER_PIXEL_AND_WIDTH * sampling.meta["network"]["dim"]
    side = tile or max(h, w)
    need = per_px * min(h, side) * min(w, side)  # one image's (or tile's) network call
    free = available_memory(device)
    if free is None or need * batch <= free:
        return side if side < max(h, w) else None
    gb = 2**30
    # the largest tiles that fit, a power of two: the same tiles (the same bytes) however free memory moves
    fitting = 2 ** int(math.log2(max(math.sqrt(free / (per_px * batch)), 1)))
    if need <= free:
        advice = f"use --batch {free // need}"
    elif tile is None and fitting >= 64:
        return min(fitting, AUTO_TILE)
    elif tile:
        advice = f"use --tile {fitting}" if fitting >= 64 else "use a smaller --batch"
    else:
        scale = math.sqrt(free / need)
        advice = f"restore it in tiles (--tile N) or resize it to about {int(w * scale)}x{int(h * scale)}"
    advice += "" if device.type == "cpu" else ", or use --device cpu"
    where = f" in {side} px tiles" if side < max(h, w) else ""
    raise UserError(f"{name}: {w}x{h}{where} at --batch {batch} needs about {need * batch / gb:.1f} GB for the network, "
                    f"{free / gb:.1f} GB are free on {device.type}; {advice}")


def versions(device=None) -> dict:
    """colddiff's and torch's versions and the device: what a bug report or a model's provenance needs."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        own = version("colddiff")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "not installed"
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"colddiff": own, "torch": torch.__version__, "device": name}


# network FLOPs a second: a training step on one CPU thread measured 24-64 G (small net, 28 px; 64 in both
# 2-thread bundled-model runs) as the shared machine's load varied; a forward is as fast per FLOP
CPU_FLOPS_PER_THREAD = 50e9
CUDA_FLOPS = 100e12  # a guess for a recent GPU in bf16, until benchmarks/train.py measures one


def rough_seconds(flops: float, device) -> tuple[float, str]:
    """(seconds, on what) of `flops` of network work on `device` at the assumed rate: an estimate to say
    before a long run, within a factor of two or so."""
    import torch

    if torch.device(device).type == "cuda":
        return flops / CUDA_FLOPS, "a GPU"
    n = torch.get_num_threads()
    return flops / (CPU_FLOPS_PER_THREAD * n), f"{n} CPU thread{'s' if n != 1 else ''}"


def autocast(device, precision: str = "auto"):
    """bf16 autocast where `precision` asks for it: auto is bf16 on CUDA and float32 elsewhere; bf16
    (the CPU too: AMX multiplies bf16 at several times its float32 rate) or fp32 anywhere."""
    import contextlib

    import torch

    device = torch.device(device)
    return torch.autocast(device.type, torch.bfloat16) if uses_bf16(device, precision) else contextlib.nullcontext()


def uses_bf16(device, precision: str = "auto") -> bool:
    """Whether R computes in bf16 on `device` at `precision` (auto: on CUDA only)."""
    import torch

    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16); without it, bf16 on the CPU
    is emulated and slower than float32."""
    import torch

    cpu = torch.cpu  # private probes (torch 2.3+); a torch without them is taken as "no"
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """x (drawn on the CPU) on `device`, without making the host wait. A plain .to("cuda") of
    pageable memory waits until every kernel already queued has run, so a step's draws on the CPU
    (t, crops, noise, ...) could not overlap the GPU's work on the step before; on CUDA the copy
    goes through pinned memory instead, which the caching host allocator keeps until the copy is done."""
    import torch

    device = torch.device(device)
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        x = x.contiguous().pin_memory()
    return x.to(device, non_blocking=True)  # from the host that is always safe: the device waits for the copy
