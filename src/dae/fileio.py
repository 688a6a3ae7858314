"""Atomic, durable file writes: the one helper behind checkpoints, datasets, images, figures and reports;
and the folder walk behind image folders, which names the folders it could not read.

A write goes to a temp file in the target's directory, is flushed and fsynced, then renamed over the target
and the directory fsynced, so a reader (or a crash) sees the old file or the whole new one, never a mix.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from dae.errors import ResourceError, UsageError


class WriteError(ResourceError):
    """A file could not be written (read-only or full folder, one that vanished); `reason` says which."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: cannot write ({reason})")
        self.path, self.reason = path, reason


def expand_user(path: str | os.PathLike, what: str) -> Path:
    """`path` with a leading ~ or ~user expanded; a user without a home folder is a UsageError naming `what`."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's "Could not determine home directory", as a traceback
        head = os.fspath(path).split("/", 1)[0]
        raise UsageError(
            f"{what} {os.fspath(path)}: cannot expand {head} (no such user, or no home folder)"
        ) from None


def output_folder(path: str | Path) -> Path:
    """`path` as a folder outputs will go to, checked before any work is done: a file already there, or a
    file or unwritable folder where it would be created, is refused. A leading ~ is the home folder, as in a
    shell: a config's `out: ~/runs/x` made a folder named "~" here, and `rm -rf ~` to clean it up removes home."""
    path = expand_user(path, "output folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: output path exists and is not a folder")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # mkdir cannot make it, and resolving it was a RuntimeError for a loop
            raise UsageError(
                f"{path}: cannot create the output folder: {ancestor} is a link to nothing (a missing target "
                "or a loop)"
            )
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise UsageError(f"{path}: cannot create the output folder: {ancestor} is a file")
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        if ancestor == path:
            raise ResourceError(f"{path}: the output folder is not writable")
        raise ResourceError(f"{path}: cannot create the output folder: {ancestor} is not writable")
    return path


def walk_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Everything under `root` but folders (files, and links to files or to nothing), unsorted, leaving out
    hidden names and whatever hidden folders hold; and each folder that could not be read, with the reason.

    Path.rglob passes over a folder it cannot read without a word, so its images would go missing from a
    dataset or a denoise run that then reports success. Links to folders are not followed (as rglob).
    """
    unreadable: list[tuple[Path, str]] = []

    def refused(e: OSError) -> None:
        unreadable.append((Path(e.filename) if e.filename is not None else root, e.strerror or str(e)))

    found: list[Path] = []
    for folder, subfolders, names in os.walk(root, onerror=refused):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # ._x.png, .git, .tmp folders
        found += [Path(folder, n) for n in names if not n.startswith(".")]
    return found, unreadable


def make_folder(path: str | Path) -> Path:
    """mkdir -p, with a one-line ResourceError instead of an OSError traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{path}: output path exists and is not a folder") from None
    except OSError as e:
        raise ResourceError(f"{path}: cannot create folder ({e.strerror or e})") from None
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, overwrite: bool = True) -> Path:
    """Call `write(f)` on a temp file beside `path`, then move it into place atomically.

    With overwrite=False an existing `path` is never replaced, checked at the final rename itself (a file
    that appears meanwhile is not clobbered); FileExistsError is raised then. A folder that cannot be written
    (read-only, full, gone) raises WriteError (a ResourceError) naming `path`, and leaves no temp file.
    """
    path = Path(path)
    try:
        _atomic_write(path, write, overwrite)
    except OSError as e:
        if isinstance(e, FileExistsError) and not overwrite:
            raise  # the caller's "output exists"
        raise WriteError(path, e.strerror or str(e)) from None
    fsync_dir(path.parent)
    return path


def _atomic_write(path: Path, write: Callable[[BinaryIO], object], overwrite: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the permissions any new file would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_no_clobber(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done; they are delivered (and handled) right after.

    For work that must not stop half-way: swapping a set of result files (dae eval), and `import torch` at a
    command's start: raised inside it, KeyboardInterrupt or Terminated left torch and numpy half imported, and
    the unwinding then crashed in their code (a RecursionError in numpy's lazy imports, a pybind11 abort) or
    the signal was lost and the command ran on to exit 0.

    The handlers are swapped for ones that only take note, rather than the signals masked: a mask holds them
    back from this thread alone, and the kernel hands a process's Ctrl-C to any thread that does not mask it
    (torch's workers), after which Python raises it here all the same.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers, and only it runs them
        return
    caught: list[int] = []
    before = {
        sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)  # now handled as usual: KeyboardInterrupt, Terminated


@contextmanager
def folder_lock(folder: Path, what: str, doing: str, advice: str = "") -> Iterator[None]:
    """Hold `folder`/.lock for one process at a time (made with the folder if need be), for `doing` ("training",
    "study", ...). Held elsewhere: a ResourceError "WHAT FOLDER is in use by another DOING (process PID);
    ADVICE", naming what the holder is doing. An advisory lock the OS drops when the process ends, however it
    ends."""
    import fcntl

    make_folder(folder)
    try:
        handle = open(folder / ".lock", "a+")
    except OSError as e:
        raise ResourceError(f"cannot lock {what} {folder}: {e.strerror or e}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid, _, theirs = handle.read().strip().partition(" ")
            raise ResourceError(
                f"{what} {folder} is in use by another {theirs or doing} (process {pid or 'unknown'})"
                + (f"; {advice}" if advice else "")
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {doing}\n")
            handle.flush()
        except OSError as e:  # a full disk: the folder's first write
            raise ResourceError(f"cannot write {folder / '.lock'}: {e.strerror or e}") from None
        yield


@contextmanager
def folder_turn(folder: Path) -> Iterator[None]:
    """Wait until no other process holds `folder`'s turn, then hold it for the block. The lock is on the folder
    itself, so no lock file is left among what the folder holds (and none that folder_lock takes is touched)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # which releases the lock


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` so that `path` holds either its old content or all of `data`, never a mix."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _rename_no_clobber(src: Path, dst: Path) -> None:
    """Move src to dst unless dst exists, atomically where the filesystem supports hard links."""
    try:
        os.link(src, dst)  # fails with FileExistsError if dst appeared meanwhile
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT filesystems): check, then rename
        if dst.exists():
            raise FileExistsError(str(dst)) from None
        os.replace(src, dst)
        return
    src.unlink()


def fsync_dir(directory: str | Path) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
