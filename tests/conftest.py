"""Shared fixtures: where the test data lives, and the MNIST test set loaded once per session."""

from __future__ import annotations

import contextlib
import os
import tracemalloc
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$DAE_DATA_DIR, else ../shared/data beside the checkout; skips the test when mnist is not there."""
    path = Path(os.environ.get("DAE_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (path / "mnist").is_dir():
        pytest.skip(f"no MNIST under {path}; set DAE_DATA_DIR to a folder holding mnist/")
    return path


@pytest.fixture(scope="session")
def mnist_test(data_dir: Path) -> torch.Tensor:
    """The 10,000 MNIST test images, float32 (10000, 1, 28, 28) in [0, 1]; shared: clone before changing."""
    from dae.data.datasets import create_dataset

    return create_dataset("mnist", "test", root=data_dir, download=False).as_float()


@pytest.fixture
def traced_peak():
    """`with traced_peak() as peak: ...` leaves in peak[0] the most memory Python held at once inside the block
    (tracemalloc), for tests that a declared size was never allocated."""

    @contextlib.contextmanager
    def trace():
        peak = [0]
        tracemalloc.start()
        try:
            yield peak
        finally:
            peak[0] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    return trace


@pytest.fixture
def unreadable(monkeypatch):
    """`unreadable(folder)` makes listing that folder fail with EACCES, as chmod 0 does for a user other than
    root (the tests may run as root, whom permissions do not stop)."""
    locked: set[Path] = set()
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)).resolve() in locked:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda folder: locked.add(Path(folder).resolve())
