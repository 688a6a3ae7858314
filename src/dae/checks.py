"""Checks on the values people pass in, shared so that "a whole number" means the same thing everywhere, and
the machine facts they are checked against."""

from __future__ import annotations

import numbers
import os
from typing import Any

# The words read as true and false where a flag is given as text: YAML 1.1's, which config files written for it
# still use (YAML 1.2, as dae reads config files, knows only true/false). Config fields and noise options also
# take "1" and "0"; a model's flag takes these words alone.
TRUE_WORDS = frozenset({"true", "yes", "on"})
FALSE_WORDS = frozenset({"false", "no", "off"})


def is_whole(value: Any) -> bool:
    """An integer of any kind (numpy's too), and not a bool: True is an int to Python, not a count to a user."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def machine_memory() -> int:
    """This machine's physical memory in bytes (8 GiB where the system does not say: any machine training has)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return 8 * 2**30
