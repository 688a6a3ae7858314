"""Checks on the values people pass in, shared so that "a whole number" means the same thing everywhere."""

from __future__ import annotations

import numbers
from typing import Any


def is_whole(value: Any) -> bool:
    """An integer of any kind (numpy's too), and not a bool: True is an int to Python, not a count to a user."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
