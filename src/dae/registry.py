"""One small registry class used for models, noise models, baselines, losses and recipes."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from dae.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders; a duplicate name is an error, an unknown name lists the valid ones.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(width: int = 8): ...
        >>> MODELS.names()
        ['tiny']
    """

    def __init__(self, kind: str, name_pattern: str | None = None):
        self.kind = kind
        # Names that are parsed out of a larger text (a noise spec "gaussian:0.3+mask", a comma-separated
        # list of baselines) must be plain words, or a registered name could never be asked for.
        self.name_pattern = name_pattern
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if self.name_pattern is not None and not re.fullmatch(self.name_pattern, name):
            raise ValueError(
                f"{self.kind} name {name!r} must match {self.name_pattern} (it is read from specs)"
            )

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            ) from None

    def builder(self, name: str, kwargs: dict[str, Any]) -> Callable[..., T]:
        """The builder of `name`, once `kwargs` fit its signature (a misspelt argument names the valid ones)."""
        builder = self.get(name)
        signature = inspect.signature(builder)
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            valid = ", ".join(p.name for p in signature.parameters.values() if p.kind in named)
            raise UsageError(f"{self.kind} {name}: {e}; its arguments are {valid}") from None
        return builder

    def create(self, name: str, **kwargs: Any) -> T:
        return self.builder(name, kwargs)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
