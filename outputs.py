"""Where a command's outputs go and how they are written: atomically (never half a file), on
background threads, never over a file silently (--force), and --skip-existing's check of the
outputs that are kept. Reading images is image_io.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from errors import Stop, Terminated, UserError
from image_io import IMAGE_EXTS, STDIO, check_size, check_suffix, eight_bit, encode_image, format_of, keeps_alpha, read_note


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename: never a half-written file."""
    tmp = None
    try:  # a folder that cannot be made or written to (/proc, a file in the path) is the same one line
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name near the 255-byte limit leaves no room for the temporary's prefix and suffix: cut there
        fd, tmp = tempfile.mkstemp(prefix=f".{cut_bytes(path.name, 200)}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs follow the umask
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder, a quota: nothing half-written is left
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: could not write ({e.strerror or e}); nothing was written there") from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def cut_bytes(name: str, n: int) -> str:
    """`name` cut to at most n bytes of UTF-8, on a character boundary."""
    return name.encode()[:n].decode("utf-8", "ignore")


def write_stdout(data: bytes) -> None:
    """Bytes to standard output. A reader that went away (or no stdout at all) is a BrokenPipeError,
    which the CLI turns into a quiet exit with SIGPIPE's status; any other failure (/dev/full) is
    one line. Either way fd 1 is pointed at /dev/null so that Python's exit-time flush of what
    is still buffered cannot print a second error."""
    try:
        if sys.stdout is None:
            raise BrokenPipeError(32, "standard output is closed")
        sys.stdout.buffer.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, ValueError):  # no file descriptor (an in-process runner's buffer): its own write
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        write_all(fd, data)
    except OSError as e:
        if sys.stdout is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        if isinstance(e, BrokenPipeError):
            raise
        raise UserError(f"standard output: could not write ({e.strerror or e})") from None


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to fd, or an OSError: a short write (a disk that fills) is carried on from where it
    stopped, and one that writes nothing is a full disk; a regular file is synced, so that a disk that
    fills only at the sync (delayed allocation) is an error too, not a truncated file and exit 0."""
    import errno
    import stat

    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fsync(fd)


def stdout_is_terminal() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()


def write_image(u8, dest: str, note: dict | None = None, alpha=None) -> None:
    """To `dest` (- for stdout, as PNG), in the format its suffix names, carrying `note` (encode_image)
    and `alpha` (uint8 (1, H, W), read_alpha's) where the format holds it (then at 8 bits: PIL writes no 16-bit grey with alpha)."""
    if alpha is not None and keeps_alpha(dest):
        import torch

        u8 = torch.cat([eight_bit(u8.cpu()), alpha])
    if dest == os.devnull:
        encode_image(u8, note=note)  # what would have been written is made, and dropped
        return
    if dest == STDIO:
        write_stdout(encode_image(u8, note=note))
        return
    check_size(dest, u8.shape[-1], u8.shape[-2])
    atomic_write(Path(dest), encode_image(u8, format_of(dest), note))


class Writer:
    """write_image on background threads, so that a folder's next image is read and degraded (or
    restored) while the last ones are encoded and written: encoding and fsync were half the time of
    degrading 2,000 small images. At most WAITING bytes of images wait (memory stays that of the
    work); a failed write is raised at a later write or at the end; on an error or Ctrl-C the writes
    not yet started are dropped and those under way finish (each is atomic). stdout is written at once, in order."""

    WAITING = 2**27  # 128 MB: three 12-megapixel photos

    def __init__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        import torch

        self.pool = ThreadPoolExecutor(max(1, min(4, torch.get_num_threads())), thread_name_prefix="colddiff-write")
        self.waiting: deque = deque()  # (future, bytes) in order
        self.bytes = 0  # theirs, summed: not again at each write (a queue of 100k small images)

    def __enter__(self):
        return self

    def write(self, u8, dest: str, note: dict | None = None, alpha=None) -> None:
        if dest == STDIO:
            write_image(u8, dest, note, alpha)
            return
        self.waiting.append((self.pool.submit(write_image, u8, dest, note, alpha), u8.numel()))
        self.bytes += u8.numel()
        while self.waiting and (self.waiting[0][0].done() or self.bytes > self.WAITING):
            self.wait_first()

    def wait_first(self) -> None:
        future, n = self.waiting.popleft()
        self.bytes -= n
        future.result()

    def __exit__(self, exc_type, *exc):
        try:
            while exc_type is None and self.waiting:
                self.wait_first()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


class FileLock:
    """flock on `path`, held for a `with` block: a second holder is refused with `busy` (a UserError),
    not interleaved. The kernel releases it even on kill -9; the file is removed on exit, and a lock
    taken on a file that was removed meanwhile is taken again. taken() runs once it is held."""

    def __init__(self, path: Path, busy: str):
        self.path, self.busy = Path(path), busy

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(self.busy) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                self.taken()
                return self
            os.close(fd)  # the holder removed the file between our open and our lock: try again

    def taken(self):
        pass

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def folder_lock(out: str | None, several: bool = True):
    """Held while a command writes into its output folder -o `out` (one taking several outputs, or
    named as a folder): a second colddiff writing there at the same time, with other settings, would
    replace its files silently. A hidden .colddiff.lock in it, which folder scans leave out. Nothing
    for a single file, stdout or /dev/null."""
    folder = Path(out or ".")
    if out in (None, STDIO, os.devnull) or not (folder.is_dir() or out.endswith(("/", os.sep)) or several):
        return contextlib.nullcontext()
    return FileLock(folder / ".colddiff.lock", f"{folder}: another colddiff command is writing into this folder (it holds "
                    f"{folder / '.colddiff.lock'}); wait for it, or give another -o")


def check_writable(dests) -> None:
    """Every destination's folder exists or can be made, and takes a new file: a UserError now, not
    after the work (/proc, a file where a folder should be, a read-only mount). Nothing is left behind:
    the probe is a temporary file in the deepest folder that already exists."""
    probed: set = set()
    for folder in sorted({Path(d).parent for d in dests if d != STDIO}):
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe in probed:
            continue
        try:
            if not probe.is_dir():
                raise NotADirectoryError(20, f"{probe} is not a folder")
            fd, tmp = tempfile.mkstemp(prefix=".colddiff-probe.", dir=probe)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise UserError(f"{folder}: cannot write there ({e.strerror or e})") from None
        probed.add(probe)


def plan_outputs(items, out: str | None, force: bool) -> list[str]:
    """Where each input's result goes; checks every destination before anything is written."""
    single = len(items) == 1 and not items[0][2]
    if out == os.devnull and single:  # a dry run: the work done, its output dropped
        return [out]
    if out is None or out == STDIO:
        if not single:
            raise UserError("several input images: give an output folder with -o DIR")
        if out is None and stdout_is_terminal():
            raise UserError("refusing to write a PNG to the terminal: give -o FILE or redirect the output")
        return [STDIO]
    o = Path(out)
    if single and not o.is_dir() and not out.endswith(("/", os.sep)):
        dests = [out]
    else:
        if o.exists() and not o.is_dir():
            raise UserError(f"{out}: exists and is not a folder (several outputs need a folder)")
        check_folder_name(out, "a folder's images" if len(items) == 1 else f"{len(items)} images")
        dests = [str(o / rel) for _, rel, _ in items]
        seen: dict[str, str] = {}
        for (src, _, _), d in zip(items, dests):
            if d in seen:
                raise UserError(f"{seen[d]} and {src} would both be written to {d}; give them apart, one command each")
            seen[d] = src
    for d in dests:
        check_suffix(d)
    clash = [d for d in dests if Path(d).exists()]
    if clash and not force:
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        raise UserError(f"{clash[0]}: output exists{more}; pass --force to overwrite")
    check_writable(dests)
    return dests


def check_folder_name(out: str, what: str) -> None:
    """An output folder named like an image file (-o out.png) that is not a folder already is a
    mistaken file name: refused, not made as a folder named out.png."""
    o = Path(out)
    if not o.is_dir() and o.suffix.lower() in IMAGE_EXTS and not out.endswith(("/", os.sep)):
        raise UserError(f"{out}: names an image file, but {what} need an output folder: give -o {o.with_suffix('')}/ (a name ending in /)")


def check_skip_existing(force: bool, skip_existing: bool) -> bool:
    """skip_existing, where it is not asked for together with --force."""
    if force and skip_existing:
        raise UserError("--force overwrites the outputs that exist, --skip-existing keeps them: give one")
    return skip_existing


def not_written(items, out: str | None, force: bool, skip_existing: bool, say=None, expected=None) -> list:
    """--skip-existing: the inputs whose output is not there yet, so that a folder's run that was
    interrupted (or failed on one image) finishes with the rest; an output there is whole, since
    every write is atomic. say() is told how many are kept. expected(src, dest): the note this
    command would write for src, which a kept output's note must agree with (still_to_write)."""
    if not check_skip_existing(force, skip_existing):
        return items
    dests = plan_outputs(items, out, force=True)
    return [items[i] for i in still_to_write(dests, say, expected=expected and (lambda i: expected(items[i][0], dests[i])))]


def still_to_write(dests: list[str], say=None, noun: str = "outputs", doing: str = "doing", where: str = "", expected=None) -> list[int]:
    """The indices of `dests` not written yet (--skip-existing), which say() is told of; none: Stop(0).
    expected(i): the note output i would carry; a kept output whose note says other settings is an
    error, so that a folder never mixes two runs (one with no note, a BMP or a strip, is kept as it is)."""
    left = [i for i, dest in enumerate(dests) if dest == STDIO or not Path(dest).exists()]
    for i in sorted(set(range(len(dests))) - set(left)) if expected else []:
        check_kept(dests[i], lambda i=i: expected(i))
    if not left:
        raise Stop(0, f"{'the output exists' if len(dests) == 1 else f'all {len(dests)} {noun} exist'} already{where} (--skip-existing): nothing to do")
    if len(left) < len(dests) and say:
        say(f"{len(dests) - len(left)} of the {len(dests)} {noun} exist{where} and are kept (--skip-existing); {doing} the other {len(left)}")
    return left


STRIP_KEYS = ("strip", "x0_hat_row")  # a note's word that its image is a strip: never kept for a plain output


def check_kept(dest: str, want) -> None:
    """An output --skip-existing keeps must be what this command would write: its note agrees with
    want() on every setting (a dict's, such as the operator's parameters, one by one)."""
    try:
        note = read_note(dest)
    except UserError:
        note = {}  # a note that is not colddiff's: not this command's output
    if note is None:
        return
    want = json.loads(json.dumps(want()))  # as the note stores it: tuples are lists

    def differing(mine: dict, theirs: dict, keys) -> list:
        return [(k, theirs.get(k), mine.get(k)) for k in keys if theirs.get(k) != mine.get(k)]

    # the command's settings, and the shape of a strip that it would not write; where they agree, a
    # dict's (the operator's parameters) one by one
    keys = [k for k, v in want.items() if not isinstance(v, dict)] + [k for k in STRIP_KEYS if k in note and k not in want]
    differ, unset = differing(want, note, keys), "none"
    for k, v in want.items():
        if isinstance(v, dict) and not differ:
            got = note[k] if isinstance(note.get(k), dict) else {}
            differ, unset = differing(v, got, sorted(v.keys() | got.keys())), "its default"  # one left out is at its default
    theirs, mine = {k: a for k, a, _ in differ}, {k: b for k, _, b in differ}
    if mine:
        said = lambda d: ", ".join(f"{k}={unset if v is None else v}" for k, v in list(d.items())[:3])  # noqa: E731
        raise UserError(f"{dest}: made with {said(theirs)}, not this command's {said(mine)}; --skip-existing keeps only "
                        "what this command would write: give another -o, or --force to redo them all")


@contextlib.contextmanager
def finish_later(n: int):
    """A run over n inputs interrupted (Ctrl-C, SIGTERM) says how to finish it: what it wrote is whole."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as e:
        if n < 2:
            raise
        raise Stop(130 if isinstance(e, KeyboardInterrupt) else 128 + 15,
                   "interrupted; the outputs written so far are whole: the same command with --skip-existing does the rest") from None


def plan_grid_or_folder(out: str | None, names: list[str], force: bool) -> tuple[bool, list[str]]:
    """generate's outputs: (True, one path per image) for `-o DIR/` or an existing folder, else
    (False, [the grid's path or - for stdout]); checked before anything is written."""
    if out == os.devnull:  # a dry run: the work done, its output dropped
        return False, [out]
    if out is not None and (out.endswith(("/", os.sep)) or Path(out).is_dir()):
        dests = [str(Path(out) / name) for name in names]
        clash = [d for d in dests if Path(d).exists()]
        if clash and not force:
            raise UserError(f"{clash[0]}: output exists; pass --force to overwrite")
        check_writable(dests[:1])
        return True, dests
    if out is None or out == STDIO:
        if out is None and stdout_is_terminal():
            raise UserError("refusing to write a PNG to the terminal: give -o FILE or redirect the output")
        return False, [STDIO]
    if Path(out).exists() and not force:
        raise UserError(f"{out}: output exists; pass --force to overwrite")
    check_writable([check_suffix(out)])
    return False, [out]
