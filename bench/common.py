"""Shared pieces of the benchmark suite: machine record, data access, model roles, result files."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import dae

EVAL_SEED = 1234
EVAL_NOISE = "gaussian:0.5"
EVAL_IMAGES = 2000
# The architectures that reproduce a classic tutorial: the baselines the new models must beat.
TUTORIAL_MODELS = ("fc", "strided", "transpose", "unpool", "upsample")


def data_dir() -> str | None:
    """DAE_DATA_DIR (make sets it to ../shared/data), else the shared folder next to the repo if present."""
    env = os.environ.get("DAE_DATA_DIR")
    if env:
        return env
    guess = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(guess) if (guess / "mnist").exists() else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured: every result file carries this."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {p: _version(p) for p in ("torch", "numpy", "safetensors", "scikit-image", "pillow")},
        "dae_version": dae.__version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cuda": torch.cuda.is_available(),
    }


def write_result(out_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json with the machine record attached."""
    from dae.fileio import atomic_write_text, make_folder

    path = make_folder(out_dir) / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **result}
    atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Tensor):
        return obj.tolist()
    return str(obj)


def default_model() -> str:
    from dae.config import ModelConfig

    return ModelConfig().name


def list_archs() -> list[str]:
    return list(dae.list_models())


def is_tutorial(name: str) -> bool:
    """Whether an architecture reproduces a classic tutorial (the baseline the new models must beat)."""
    return name in TUTORIAL_MODELS


def recipe_layer(name: str) -> dict[str, Any]:
    """The model's default recipe (src/dae/recipes.py) as a config layer: its model, loss, optimizer, lr and
    batch size, trained with dae's defaults (cosine schedule, warm-up, clipping, precision auto) so that
    architectures, not optimisation tricks, are compared."""
    from dae.recipes import recipe_for

    return recipe_for(name).to_dict(exact=False)


def recipe_batch_size(name: str) -> int:
    from dae.recipes import recipe_for

    return recipe_for(name).batch_size


def build_model(name: str, in_channels: int = 1) -> torch.nn.Module:
    """The model exactly as its recipe builds it (e.g. upsample 32-32-16), so every benchmark row compares
    the same network."""
    from dae.models import create_model
    from dae.recipes import recipe_for

    return create_model(name, **{**recipe_for(name).model_kwargs, "in_channels": in_channels})


def model_fingerprint(name: str) -> dict[str, Any]:
    """What identifies the network a result was measured on, so a later benchmark never reuses a number
    measured on an earlier version of a model (e.g. before its defaults changed)."""
    model = build_model(name)
    return {"kwargs": model.dae_kwargs, "num_parameters": model.num_parameters()}  # kwargs: defaults included


def load_split(split: str, limit: int | None = None) -> Tensor:
    """uint8 (N, 1, 28, 28) MNIST images (what the tutorial loop's Dataset converts one by one)."""
    from dae.data.datasets import create_dataset

    return create_dataset("mnist", split, root=data_dir()).images[:limit]


def load_float(split: str, limit: int | None = None) -> Tensor:
    """float32 (N, 1, 28, 28) MNIST images in [0, 1]."""
    from dae.data.datasets import load_images

    return load_images("mnist", split, root=data_dir(), limit=limit)


def eval_set(n: int = EVAL_IMAGES) -> tuple[Tensor, Tensor]:
    """(clean, noisy) float [0, 1]: the first n MNIST test images, gaussian 0.5 clipped, seed 1234."""
    from dae.data.noise import make_noisy

    clean = load_float("test", limit=n)
    return clean, make_noisy(clean, EVAL_NOISE, EVAL_SEED)


def eval_psnr(
    model: Any, clean: Tensor, noisy: Tensor, batch_size: int = 1000, precision: str = "auto"
) -> float:
    """Mean test PSNR of `model`'s outputs, denoised as dae.denoise runs at `precision` ("auto" by default)."""
    from dae.inference import denoise
    from dae.metrics import psnr

    with torch.inference_mode():
        out = denoise(model, noisy, batch_size=batch_size, precision=precision)
    return float(psnr(out, clean).mean())


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
