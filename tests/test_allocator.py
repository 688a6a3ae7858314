"""Keeping freed memory: glibc stops handing each step's memory back to the kernel, and only when it should."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dae import allocator

GLIBC = allocator._glibc() is not None

# Allocate and free 60 MiB in 1-4 MiB blocks, round after round, the way a training step's activations come
# and go; print the page faults of the later rounds (the first ones map the memory however it is managed).
ROUNDS = textwrap.dedent(
    """
    import resource, sys, torch
    from dae.allocator import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    sizes = [(1 << 18) * (1 + i % 4) for i in range(24)]  # floats: 1, 2, 3 and 4 MiB blocks
    def rounds(n):
        for _ in range(n):
            blocks = [torch.ones(s) for s in sizes]
            del blocks
    rounds(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(5)
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
PAGES_CYCLED = 5 * 60 * 256  # five rounds of 60 MiB in 4 KiB pages


def _faults(mode: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC or sys.platform != "linux", reason="glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults():
    kept, faults = _faults("keep")
    assert kept
    # Kept: the freed blocks are reused, 0-1,800 faults here. glibc's defaults usually trim the heap after
    # every round and fault ~16,000 pages in again; in some runs (address-space layout) they happen not to
    # trim, which is why the bound is absolute rather than a comparison with a default run.
    assert faults < PAGES_CYCLED // 20, (faults, "system:", _faults("system")[1])


@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_a_users_own_allocator_settings_win(monkeypatch, name, value):
    calls = []
    monkeypatch.setattr(allocator, "_glibc", lambda: calls.append("libc"))
    monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False
    assert calls == []  # glibc was never touched


def test_unrelated_glibc_tunables_do_not_count(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(allocator, "_glibc", lambda: calls.append("libc"))  # None: stop before mallopt
    assert allocator.keep_freed_memory() is False
    assert calls == ["libc"]  # it got as far as looking for glibc


def test_other_c_libraries_are_left_alone(monkeypatch):
    def no_confstr(name):
        raise ValueError(name)  # what os.confstr does for a name the platform lacks (musl, macOS)

    monkeypatch.setattr(os, "confstr", no_confstr)
    assert allocator._glibc() is None
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is False
    assert allocator.release_freed_memory() is False
