"""Model zoo. Each family lives in its own module and registers its builders in MODELS on import."""

from __future__ import annotations

from typing import Any

from dae.models.base import Denoiser
from dae.registry import Registry

MODELS: Registry[Denoiser] = Registry("model")


def create_model(name: str, **kwargs: Any) -> Denoiser:
    """Build a registered model by name; the name and kwargs are kept on it for self-describing checkpoints.

    Example:
        >>> model = create_model("unet", width=16)
    """
    model = MODELS.create(name, **kwargs)
    model.dae_name = name
    model.dae_kwargs = dict(kwargs)
    return model


def list_models() -> list[str]:
    """Names of all registered models."""
    return MODELS.names()


# Explicit imports so every family registers (no filename scanning). Added by the model-zoo work.
from dae.models import dncnn, fc, strided, transpose, unet, unpool, upsample  # noqa: E402, F401
