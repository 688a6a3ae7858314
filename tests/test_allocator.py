"""Keeping freed memory: glibc stops handing each step's memory back to the kernel, and only when it should."""

from __future__ import annotations

import os
import shutil
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
    env = {k: v for k, v in os.environ.items() if k not in USER_VARS and k != "LD_PRELOAD"}
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


USER_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


@pytest.fixture
def fresh_detection(monkeypatch):
    """No user settings in the environment, and glibc looked up again (the lookup is cached) before and after."""
    for name in USER_VARS:
        monkeypatch.delenv(name, raising=False)
    lookup = allocator._glibc  # the cached function itself: a test may monkeypatch the module's name
    lookup.cache_clear()
    yield
    lookup.cache_clear()


@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
        ("MALLOC_TOP_PAD_", "0"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
        ("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.mmap_threshold=65536"),
    ],
)
def test_a_users_own_allocator_settings_win(monkeypatch, fresh_detection, name, value):
    calls = []
    monkeypatch.setattr(allocator, "_glibc", lambda: calls.append("libc"))
    monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False
    assert calls == []  # glibc was never touched


@pytest.mark.parametrize("value", ["glibc.cpu.hwcaps=-AVX512F", "glibc.malloc.arena_max=2"])
def test_other_glibc_tunables_do_not_count(monkeypatch, fresh_detection, value):
    monkeypatch.setenv("GLIBC_TUNABLES", value)
    calls = []
    monkeypatch.setattr(allocator, "_glibc", lambda: calls.append("libc"))  # None: stop before mallopt
    assert allocator.keep_freed_memory() is False
    assert calls == ["libc"]  # it got as far as looking for glibc


def _raise(error):
    def confstr(name):
        raise error

    return confstr


@pytest.mark.parametrize(
    "confstr",
    [
        _raise(ValueError("unrecognized configuration name")),  # macOS: the name is unknown
        _raise(OSError(22, "Invalid argument")),  # musl: the name exists, the value does not
        lambda name: None,  # defined but empty
        None,  # no os.confstr at all (Windows)
    ],
)
def test_other_c_libraries_are_left_alone(monkeypatch, fresh_detection, confstr):
    if confstr is None:
        monkeypatch.delattr(os, "confstr")
    else:
        monkeypatch.setattr(os, "confstr", confstr)
    assert allocator._glibc() is None
    assert allocator.keep_freed_memory() is False
    assert allocator.release_freed_memory() is False


# A malloc of its own, as jemalloc or tcmalloc would bring: glibc's settings would then change nothing.
OWN_MALLOC = """
#include <stddef.h>
extern void *__libc_malloc(size_t);
void *malloc(size_t n) { return __libc_malloc(n); }
"""


@pytest.mark.skipif(not GLIBC or shutil.which("cc") is None, reason="needs glibc and a C compiler")
def test_another_malloc_in_use_is_left_alone(tmp_path):
    (tmp_path / "own.c").write_text(OWN_MALLOC)
    lib = tmp_path / "libown.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "own.c")], check=True)
    probe = "from dae.allocator import keep_freed_memory; print(keep_freed_memory())"
    env = {k: v for k, v in os.environ.items() if k not in USER_VARS and k != "LD_PRELOAD"}
    run = [sys.executable, "-c", probe]
    assert subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.split() == ["True"]
    preloaded = {**env, "LD_PRELOAD": str(lib)}
    assert subprocess.run(run, env=preloaded, capture_output=True, text=True, check=True).stdout.split() == [
        "False"
    ]
