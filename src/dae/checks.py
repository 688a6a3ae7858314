"""Checks on the values people pass in, shared so that "a whole number" means the same thing everywhere, and
the machine facts they are checked against."""

from __future__ import annotations

import numbers
import os
from typing import Any


def is_whole(value: Any) -> bool:
    """An integer of any kind (numpy's too), and not a bool: True is an int to Python, not a count to a user."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def machine_memory() -> int:
    """This machine's physical memory in bytes (8 GiB where the system does not say: any machine training has)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return 8 * 2**30
