"""Faults a user meets: a closed or broken stdout, /dev/full, a full disk, a decompression bomb,
two trainings on one model, an allocation that fails, absurd T. Each is one line (or, for a
reader that went away, silence and SIGPIPE's status), a non-zero exit, and no partial output."""
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import ROOT, run_cli
from PIL import Image

import checkpoint

COLDDIFF = f"{sys.executable} -m colddiff"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
TINY_TRAIN = ["--net", "tiny", "--batch", "4", "--accumulate", "1", "--no-augment", "--sample-every", "1000"]


def noise_png(path, h=512, w=512, c=3, seed=0):
    """Random pixels: a PNG that does not compress, larger than a pipe's 64 KB buffer."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    Image.fromarray(arr if c == 3 else arr[..., 0]).save(path)
    return path


def sh(script: str, **kw):
    return subprocess.run(["bash", "-c", script], capture_output=True, env=ENV, cwd=ROOT, timeout=300, **kw)


def test_closed_stdout_is_quiet_with_sigpipe_status(tmp_path):
    x = noise_png(tmp_path / "x.png", 64, 64)
    r = sh(f"{COLDDIFF} degrade {x} --op blur --t 3 --no-fit >&-")
    assert r.returncode == 141 and r.stderr == b""


def test_reader_gone_is_quiet_with_sigpipe_status(tmp_path):
    x = noise_png(tmp_path / "x.png")
    # `true` is gone before colddiff (2 s of start-up) writes: EPIPE on any kernel, whatever its pipe buffer
    r = sh(f"set -o pipefail; {COLDDIFF} degrade {x} --op desaturate | true")
    assert r.returncode == 141 and r.stderr == b""


def test_dev_full_is_one_line(tmp_path):
    x = noise_png(tmp_path / "x.png", 64, 64)
    r = sh(f"{COLDDIFF} degrade {x} --op blur --t 3 --no-fit > /dev/full")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err


def bomb_png(w: int, h: int) -> bytes:
    """A few hundred bytes whose header claims w x h grey pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_everywhere_with_the_flag_named(tmp_path, blur_model):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(100_000, 100_000))
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(bomb, folder / "bomb.png")
    cases = [
        (["degrade", bomb, "--op", "blur", "-o", tmp_path / "o.png"], None),
        (["degrade", "-", "--op", "blur"], bomb.read_bytes()),
        (["restore", bomb, "-m", blur_model, "-o", tmp_path / "r.png"], None),
        (["train", folder, "-o", tmp_path / "m.safetensors", "--steps", "1", *TINY_TRAIN], None),
    ]
    for args, stdin in cases:
        r = run_cli(*args, stdin=stdin)
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, (args, err)
        assert "10,000 megapixels" in err and "--max-megapixels" in err, err
    assert not any(p.exists() for p in (tmp_path / "o.png", tmp_path / "r.png", tmp_path / "m.safetensors"))


def test_the_megapixel_limit_can_be_raised(tmp_path):
    x = noise_png(tmp_path / "x.png", 1000, 1200, c=1)  # 1.2 megapixels
    assert run_cli("--max-megapixels", "1", "degrade", x, "--op", "desaturate", "-o", tmp_path / "a.png").returncode == 1
    r = run_cli("--max-megapixels", "1.5", "degrade", x, "--op", "desaturate", "-o", tmp_path / "a.png")
    assert r.returncode == 0 and Image.open(tmp_path / "a.png").size == (1200, 1000)


def test_second_train_on_the_same_model_is_refused(cli, fmnist_split, tmp_path):
    out = tmp_path / "m.safetensors"
    with checkpoint.train_lock(out):  # stands for a training that is running
        r = cli("train", fmnist_split[0], "-o", out, "--steps", "2", *TINY_TRAIN)
        assert r.returncode == 1 and b"another `colddiff train` is writing this model" in r.stderr
        assert not out.exists()
    r = cli("train", fmnist_split[0], "-o", out, "--steps", "2", *TINY_TRAIN)
    assert r.returncode == 0 and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.run", "m.safetensors", "m.state.safetensors"]  # lock removed


def test_lock_is_released_by_a_killed_holder(tmp_path):
    out = tmp_path / "m.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); import checkpoint\n"
                               f"with checkpoint.train_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(Exception, match="another"):
        checkpoint.train_lock(out).__enter__()
    holder.kill()
    holder.wait()
    with checkpoint.train_lock(out):  # kill -9 left the file, not the lock
        pass


def with_hook(tmp_path, code: str) -> dict:
    """ENV with a sitecustomize.py that runs `code` in every colddiff process started with it: a fault
    delivered at a known point of the program, not after a sleep."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(code)
    return {**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}


KILL_AT_STATE_RENAME = """
import os, signal
_replace = os.replace
def replace(src, dst):
    if str(dst).endswith(".state.safetensors"):  # the temporary is written and synced: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    _replace(src, dst)
os.replace = replace
"""


def test_a_run_killed_between_temporary_and_rename_leaves_a_temporary_the_next_run_removes(fmnist_split, tmp_path):
    """kill -9 (or a power cut) at the one point where a write leaves something behind: after the
    temporary is written, before its rename. The model is not there, the temporary is, and the
    next `colddiff train` of that model removes it once it holds the lock."""
    out = tmp_path / "m.safetensors"
    args = [sys.executable, "-m", "colddiff", "train", fmnist_split[0], "-o", out, "--steps", "2", "--save-every", "1", *TINY_TRAIN]
    r = subprocess.run(args, env=with_hook(tmp_path, KILL_AT_STATE_RENAME), cwd=ROOT, capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr.decode()
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert [p.name.startswith(".m.state.safetensors.") for p in stale] == [True] and stale[0].stat().st_size > 0
    assert not out.exists() and not checkpoint.state_path(out).exists()
    r = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert not stale[0].exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert checkpoint.load_model(out)[2]["step"] == 2


def test_failed_checkpoint_write_keeps_the_last_good_one(cli, fmnist_split, tmp_path, monkeypatch):
    """The disk fills at the second save: one line, the model still loads at step 1, no temp files."""
    import outputs

    out = tmp_path / "m.safetensors"
    real, writes = os.fsync, {"n": 0}

    def full_disk(fd):
        writes["n"] += 1
        if writes["n"] > 2:  # save 1 = state + model; the next write fails
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    r = cli("train", fmnist_split[0], "-o", out, "--steps", "5", "--save-every", "1", *TINY_TRAIN)
    err = r.stderr.decode()
    assert r.returncode == 1 and "No space left on device" in err and f"{out} keeps step 1" in err, err
    assert checkpoint.load_model(out)[2]["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def on_small_tmpfs(tmp_path, kilobytes: int, script: str):
    """Run `script` with $FULL a tmpfs of `kilobytes` (a user and mount namespace: no root needed
    where the kernel allows them); None where it cannot be mounted."""
    full = tmp_path / "full"
    full.mkdir()
    probe = subprocess.run(["unshare", "-rm", "bash", "-c", f"mount -t tmpfs -o size={kilobytes}k tmpfs {full}"], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None
    return sh(f"unshare -rm bash -c 'mount -t tmpfs -o size={kilobytes}k tmpfs {full} && FULL={full} && {script}'")


def test_full_tmpfs_outputs_are_one_line_and_leave_nothing(tmp_path, gen_model):
    x = noise_png(tmp_path / "x.png", 256, 256)
    r = on_small_tmpfs(tmp_path, 200, f"""
        {COLDDIFF} degrade {x} --op blur --no-fit --strip -o $FULL/strip.png; echo "rc=$?" >&2
        {COLDDIFF} generate --model {gen_model} --n 100 -o $FULL/many/ --no-compile; echo "rc=$?" >&2
        echo LISTING >&2; ls -a $FULL $FULL/many >&2""".replace("\n", ";").replace(";;", ";").lstrip(";").strip())
    if r is None:
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    err, listing = r.stderr.decode().split("LISTING")
    assert err.count("No space left on device") == 2 and err.count("rc=1") == 2 and "Traceback" not in err, err
    assert ".tmp" not in listing and "strip.png" not in listing  # no partial file; the images before the disk filled stay


def disk_full_after(monkeypatch, n: int):
    """Every write after the first n fails as a full disk does (ENOSPC at fsync), on any thread."""
    import threading

    import outputs

    real, count, lock = os.fsync, [0], threading.Lock()

    def fsync(fd):
        with lock:
            count[0] += 1
            full = count[0] > n
        if full:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(outputs.os, "fsync", fsync)


def test_a_full_disk_under_a_strip_is_one_line_and_leaves_nothing(cli, tmp_path, monkeypatch):
    x = noise_png(tmp_path / "x.png", 64, 64)
    disk_full_after(monkeypatch, 0)
    r = cli("degrade", x, "--op", "blur", "--no-fit", "--strip", "-q", "-o", tmp_path / "out" / "strip.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "No space left on device" in err and "strip.png" in err, err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_under_generate_into_a_folder_keeps_the_whole_images_before_it(cli, gen_model, tmp_path, monkeypatch):
    disk_full_after(monkeypatch, 5)
    r = cli("generate", "--model", gen_model, "--n", "20", "--batch", "4", "--steps", "3", "-q", "-o", f"{tmp_path / 'many'}/")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
    kept = sorted((tmp_path / "many").iterdir())
    assert len(kept) == 5 and all(p.suffix == ".png" and Image.open(p).size == (28, 28) for p in kept), kept


def test_an_output_that_cannot_be_written_is_refused_before_any_work(cli, fmnist_split, gen_model, tmp_path):
    """-o under a file (or in /proc, a read-only mount, ...): one line, before decoding, training or
    generating, and nothing left behind."""
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    photo = noise_png(tmp_path / "in.png", 32, 32)
    for args in (["degrade", photo, "-o", blocker / "x.png"], ["degrade", photo, "-o", f"{blocker}/sub/"],
                 ["train", fmnist_split[0], "-o", blocker / "m.safetensors", *TINY_TRAIN, "--steps", "2"],
                 ["generate", "--model", gen_model, "--n", "2", "-o", blocker / "g.png"],
                 ["generate", "--model", gen_model, "--n", "2", "-o", f"{blocker}/grid/"],
                 ["eval", fmnist_split[1], "--model", gen_model, "--n", "2", "-o", blocker / "ev"],
                 ["fit-prior", fmnist_split[0], "--model", gen_model, "-o", blocker / "p.safetensors"]):
        r = cli(*args)
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1 and "cannot write there" in err and "is not a folder" in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in.png"]


def test_a_network_call_that_cannot_fit_is_refused_with_what_to_change(cli, blur_model, tmp_path, monkeypatch):
    import machine

    x = noise_png(tmp_path / "x.png", 300, 400, c=1)
    monkeypatch.setattr(machine, "available_memory", lambda device: 200 * 2**20)  # 200 MB free
    r = cli("restore", x, "-m", blur_model, "-o", tmp_path / "r.png", "--batch", "4")
    err = r.stderr.decode()  # tiny net (dim 16): ~0.18 GB per 400x300 image
    assert r.returncode == 0, err
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(4):
        noise_png(folder / f"{i}.png", 300, 400, c=1, seed=i)
    r = cli("restore", folder, "-m", blur_model, "-o", tmp_path / "out/", "--batch", "4")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "use --batch 1" in err and not (tmp_path / "out").exists(), err
    monkeypatch.setattr(machine, "available_memory", lambda device: 20 * 2**20)  # 400x300 cannot fit whole
    r = cli("restore", x, "-m", blur_model, "-o", tmp_path / "r2.png", "--tile", "0")
    err = r.stderr.decode()
    assert r.returncode == 1 and "in tiles (--tile N) or resize it to about" in err and not (tmp_path / "r2.png").exists(), err
    r = cli("restore", x, "-m", blur_model, "-o", tmp_path / "r2.png", "--tile", "400")  # a tile the whole image
    err = r.stderr.decode()
    assert r.returncode == 1 and "use --tile 64" in err and not (tmp_path / "r2.png").exists(), err
    r = cli("restore", x, "-m", blur_model, "-o", tmp_path / "auto.png", "--sampler", "direct")
    err = r.stderr.decode()  # by default: the largest tiles that fit, and a note saying so
    assert r.returncode == 0 and "cannot fit in memory whole; restoring it in 64 px tiles" in err, err
    r = cli("restore", x, "-m", blur_model, "-o", tmp_path / "told.png", "--sampler", "direct", "--tile", "64", "-q")
    assert r.returncode == 0 and r.stderr == b"" and (tmp_path / "told.png").read_bytes() == (tmp_path / "auto.png").read_bytes()
    whole = cli("restore", x, "-m", blur_model, "--sampler", "direct", "--tile", "0", "--force", "-o", tmp_path / "whole.png")
    assert whole.returncode == 1  # still refused: memory is "20 MB"
    monkeypatch.undo()
    assert cli("restore", x, "-m", blur_model, "--sampler", "direct", "-o", tmp_path / "whole.png").returncode == 0
    assert (tmp_path / "whole.png").read_bytes() != (tmp_path / "auto.png").read_bytes()  # tiles are an approximation
    r = cli("restore", x, "-m", blur_model, "--tile", "16")
    assert r.returncode == 1 and "--tile must be 0 (whole images only) or at least 32 px, got 16" in r.stderr.decode()


def test_an_allocation_failure_is_one_line(cli, tmp_path, monkeypatch):
    import cold

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to allocate 38654705664 bytes.")

    monkeypatch.setattr(cold.Blur, "apply", oom)
    x = noise_png(tmp_path / "x.png", 64, 64)
    r = cli("degrade", x, "--op", "blur", "--no-fit", "-o", tmp_path / "o.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "out of memory" in err and "--batch" in err, err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("param", ["T=1000000000", "T=0"])
def test_absurd_T_is_refused_before_any_work(cli, tmp_path, param):
    x = noise_png(tmp_path / "x.png", 32, 32)
    for op in ("mask", "blur", "colour"):
        r = cli("degrade", x, "--op", op, "--param", param, "-o", tmp_path / "o.png")
        assert r.returncode == 1 and b"T must be in 1..100000" in r.stderr


def test_kill_9_soak_every_file_loads_and_resumes():
    """benchmarks/soak.py in small: three SIGKILLs at random moments (seeded), then a clean finish."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import soak

    rounds = soak.soak(kills=3, seed=1, low=2.0, high=7.0, log=lambda m: None)
    assert len(rounds) == 4 and all(r["ok"] for r in rounds), rounds
    assert rounds[-1]["state_step"] >= 3


def test_an_allocation_failure_without_a_message_is_one_line(cli, tmp_path, monkeypatch):
    import cold

    def oom(*a, **k):
        raise MemoryError()  # what Python raises for a buffer it cannot allocate: no message at all

    monkeypatch.setattr(cold.Blur, "apply", oom)
    x = noise_png(tmp_path / "x.png", 64, 64)
    r = cli("degrade", x, "--op", "blur", "--no-fit", "-o", tmp_path / "o.png")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "out of memory (MemoryError)" in err, err


@pytest.mark.parametrize("sig,code", [("INT", 130), ("TERM", 143)])
def test_a_folder_stopped_by_a_signal_leaves_whole_files_and_finishes_with_skip_existing(tmp_path, sig, code):
    """Ctrl-C or SIGTERM (a scheduler's) mid-folder: no temporary file left beside the outputs, one
    line that says how to finish, and --skip-existing does the rest."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        for f in sorted((ROOT / "tests" / "data" / "fmnist").iterdir()):
            shutil.copy(f, src / f"{i}_{f.name}")
    args = [sys.executable, "-m", "colddiff", "degrade", src, "--op", "snow", "--preset", "celeba", "-o", out]
    signal_at_20th_output = f"""
import os, signal, threading
_replace, _n, _lock = os.replace, [0], threading.Lock()
def replace(src, dst):
    _replace(src, dst)
    with _lock:
        _n[0] += 1
        if str(dst).endswith(".png") and _n[0] == 20:  # the 20th output is whole: the signal comes now
            os.kill(os.getpid(), signal.SIG{sig})
os.replace = replace
"""
    proc = subprocess.Popen(args, env=with_hook(tmp_path, signal_at_20th_output), cwd=ROOT, stderr=subprocess.PIPE)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == code and "--skip-existing does the rest" in err and "Traceback" not in err, err
    written = sorted(p.name for p in out.iterdir())
    assert 20 <= len(written) < 900 and all(not n.startswith(".") for n in written), written[:5]
    r = subprocess.run(args + ["--skip-existing"], env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    assert r.returncode == 0 and f"{len(written)} of the 900 outputs exist and are kept" in r.stderr.decode()
    assert len(list(out.iterdir())) == 900


SLOW_THIRD_STEP = """
import os, pathlib, time
import train
_make_step = train.make_step
def make_step(*args, **kwargs):
    step, n = _make_step(*args, **kwargs), [0]
    def slow(data, rng):
        n[0] += 1
        if n[0] == 3:  # a step of minutes, as the paper network's on a CPU: Python runs handlers between the sleeps
            pathlib.Path(os.environ["SLOW_MARK"]).write_text("in the slow step")
            for _ in range(6000):
                time.sleep(0.01)
        return step(data, rng)
    return slow
train.make_step = make_step
"""


def test_ctrl_c_in_a_slow_training_step_is_answered_at_once_and_a_second_stops_at_once(fmnist_split, tmp_path):
    """The first Ctrl-C says at once that the step will finish and be saved; a second stops the run at
    once (the step would take a minute more), and the model saved before is whole."""
    import queue
    import signal
    import threading
    import time

    mark, out = tmp_path / "slow", tmp_path / "m.safetensors"
    env = {**with_hook(tmp_path, SLOW_THIRD_STEP), "SLOW_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-m", "colddiff", "train", fmnist_split[0], "-o", out, "--steps", "5", "--save-every", "1",
                             *TINY_TRAIN], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stderr], daemon=True).start()
    while not mark.exists():  # the known point: inside step 3, steps 1 and 2 saved
        assert proc.poll() is None, "training ended before its slow step"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    said = time.monotonic()
    while "stopping: this step finishes and is saved" not in (line := lines.get(timeout=30)):
        pass
    assert time.monotonic() - said < 1.0, line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130  # the step had a minute to go
    rest = "".join(lines.get(timeout=5) for _ in range(lines.qsize()))
    assert "Traceback" not in rest, rest
    assert checkpoint.load_model(out)[2]["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
