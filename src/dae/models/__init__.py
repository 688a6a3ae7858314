"""Model zoo. Each family lives in its own module and registers its builders in MODELS on import."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from dae.checks import FALSE_WORDS, TRUE_WORDS, machine_memory
from dae.errors import ResourceError, UsageError
from dae.models.base import Denoiser
from dae.registry import Registry

MODELS: Registry[Denoiser] = Registry("model")


def create_model(name: str, **kwargs: Any) -> Denoiser:
    """Build a registered model by name; the name and kwargs are kept on it for self-describing checkpoints.

    Example:
        >>> model = create_model("unet", width=16)
    """
    builder = MODELS.builder(name, kwargs)
    kwargs = _flags_read(builder, kwargs)
    # Inside `with torch.device("meta")` (a checkpoint's layout check) the build costs no memory to check.
    if torch.empty(0).device.type != "meta":
        _check_fits_in_memory(name, builder, kwargs)
    model = builder(**kwargs)
    if not isinstance(model, Denoiser):  # training, inference and checkpoints rely on its interface
        raise UsageError(
            f"model {name}: its builder returned a {type(model).__name__}, not a dae.models.base.Denoiser "
            "(subclass it: it says what a model must provide)"
        )
    model.dae_name = name
    model.dae_kwargs = resolved_kwargs(builder, kwargs)
    return model


def _flags_read(builder: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs with the words YAML 1.1 read as booleans (yes/no/on/off) made booleans where the builder declares
    a bool: config files written for YAML 1.1 said `residual: yes`, which dae's YAML 1.2 reads as a word."""
    words = {**dict.fromkeys(TRUE_WORDS, True), **dict.fromkeys(FALSE_WORDS, False)}
    try:
        hints = inspect.signature(builder, eval_str=True).parameters
    except (NameError, TypeError, ValueError):  # annotations it cannot evaluate: take the values as given
        return kwargs
    return {
        k: words[v.lower()]
        if k in hints and hints[k].annotation is bool and isinstance(v, str) and v.lower() in words
        else v
        for k, v in kwargs.items()
    }


# Training holds a model's weights four times over (weights, gradients and Adam's two moments) beside its
# activations: a model larger than a quarter of the machine's memory cannot train here.
MAX_MODEL_BYTES = machine_memory() // 4


def _check_fits_in_memory(name: str, builder: Any, kwargs: dict[str, Any]) -> None:
    """Refuse a model too large for this machine, sized on the meta device before a byte is allocated.

    Linux promises memory it does not have: `unet levels=30` was built, then killed by the kernel, which may
    take other programs with it.
    """
    try:
        with torch.device("meta"):
            shell = builder(**kwargs)
    except RuntimeError as e:  # "Storage size calculation overflowed": more elements than 64 bits can count
        raise ResourceError(
            f"model {name} {kwargs} is too large to build ({str(e).splitlines()[0]})"
        ) from None
    tensors = [*shell.parameters(), *shell.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size > MAX_MODEL_BYTES:
        count = sum(p.numel() for p in shell.parameters())
        raise ResourceError(
            f"model {name} {kwargs} has {count:,} parameters ({size / 2**30:.1f} GiB): more than a quarter of this "
            f"machine's {machine_memory() / 2**30:.0f} GiB memory (training holds it four times over); "
            "give it fewer levels or channels"
        )


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
