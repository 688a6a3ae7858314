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
# Names the classic tutorials use for their architectures; used only when the model zoo does not say itself.
KNOWN_TUTORIAL_NAMES = ("fc", "strided", "transpose", "unpool", "upsample")


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
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cuda": torch.cuda.is_available(),
    }


def write_result(out_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json with the machine record attached."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **result}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
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
    from dae.models import create_model

    try:
        model = create_model(name)
    except Exception:  # a model that needs kwargs to build: fall back to its name
        model = None
    for attr in ("tutorial", "is_tutorial"):
        value = getattr(model, attr, None)
        if isinstance(value, bool):
            return value
    source = getattr(model, "source", None) or getattr(model, "origin", None)
    if isinstance(source, str) and source:
        return "tutorial" in source.lower()
    # The zoo's docstrings say which models reproduce a tutorial and which are "Not from the tutorials".
    doc = " ".join((type(model).__doc__ or "").split()).lower() if model is not None else ""
    if "not from the tutorial" in doc:
        return False
    if "tutorial" in doc:
        return True
    return name in KNOWN_TUTORIAL_NAMES


def recipe_layer(name: str) -> dict[str, Any]:
    """The model's recipe (src/dae/recipes.py) as a config layer, or {} when there is none."""
    try:
        from dae import recipes
    except ImportError:
        return {}
    for fn_name in ("recipe_for", "get_recipe", "recipe"):
        fn = getattr(recipes, fn_name, None)
        if callable(fn):
            try:
                layer = fn(name)
            except Exception:
                continue
            if hasattr(layer, "to_dict"):
                layer = layer.to_dict()
            if isinstance(layer, dict):
                return layer
    table = getattr(recipes, "RECIPES", None)
    if table is not None:
        try:
            layer = table.get(name)
        except Exception:
            return {}
        if callable(layer):
            layer = layer()
        if isinstance(layer, dict):
            return layer
    return {}


def recipe_batch_size(name: str, fallback: int = 128) -> int:
    layer = recipe_layer(name)
    value = layer.get("train", {}).get("batch_size") if isinstance(layer.get("train"), dict) else None
    return int(value) if value else fallback


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


def eval_psnr(model: Any, clean: Tensor, noisy: Tensor, batch_size: int = 1000) -> float:
    from dae.inference import denoise
    from dae.metrics import psnr

    with torch.inference_mode():
        out = denoise(model, noisy, batch_size=batch_size)
    return float(psnr(out, clean).mean())


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
