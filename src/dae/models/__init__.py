"""Model zoo. Each family lives in its own module and registers its builders in MODELS on import."""

from __future__ import annotations

import inspect
from typing import Any

from dae.models.base import Denoiser
from dae.registry import Registry

MODELS: Registry[Denoiser] = Registry("model")


def create_model(name: str, **kwargs: Any) -> Denoiser:
    """Build a registered model by name; the name and kwargs are kept on it for self-describing checkpoints.

    Example:
        >>> model = create_model("unet", width=16)
    """
    builder = MODELS.builder(name, kwargs)
    model = builder(**kwargs)
    model.dae_name = name
    model.dae_kwargs = resolved_kwargs(builder, kwargs)
    return model


def resolved_kwargs(builder: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument the builder ran with, defaults filled in (tuples as lists, as JSON stores them).

    A checkpoint records these, not just the ones given, so it rebuilds the same network after a later
    release changes a default (unet's defaults changed twice while dae was young).
    """
    signature = inspect.signature(builder)
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    resolved = dict(bound.arguments)
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:  # a builder taking **kwargs: keep them flat
            resolved.update(resolved.pop(p.name, {}))
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:  # never given (kwargs only): nothing to record
            resolved.pop(p.name, None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


def list_models() -> list[str]:
    """Names of all registered models."""
    return MODELS.names()


# Explicit imports so every family registers (no filename scanning). Added by the model-zoo work.
from dae.models import dncnn, fc, strided, transpose, unet, unpool, upsample  # noqa: E402, F401
