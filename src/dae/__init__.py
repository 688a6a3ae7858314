"""dae: denoising autoencoders for images: train, evaluate against classical baselines, denoise files.

Example:
    >>> import dae
    >>> result = dae.train({"train": {"time_budget": 60}, "out": "runs/quick"})
    >>> model = dae.load_model(result.best_checkpoint)
    >>> clean = dae.denoise(model, noisy)  # (N, C, H, W) in [0, 1] -> same
"""

import sys
import types

__version__ = "0.1.0"

# Public API. Imports are deferred so `import dae` stays fast and light for the CLI and notebooks.
__all__ = [
    "__version__",
    "create_model",
    "list_models",
    "train",
    "evaluate",
    "denoise",
    "load_model",
    "load_images",
    "add_noise",
    "Config",
]


# Public names that are also submodules (dae/train.py, dae/evaluate.py, as DESIGN.md lays them out).
_FUNCTIONS_NAMED_LIKE_MODULES = ("train", "evaluate")


class _Package(types.ModuleType):
    """The `dae` package, whose `train` and `evaluate` stay the functions once their modules are imported.

    Python binds a submodule on its package when it is first imported (by dae.cli, dae.inference, a user's
    `from dae.train import ...`), which would shadow the function: `dae.train(...)` then failed with
    "'module' object is not callable". The modules stay importable: `from dae.train import train`.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _FUNCTIONS_NAMED_LIKE_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from dae import models

        return getattr(models, name)
    if name == "train":
        from dae.train import train

        return train
    if name == "evaluate":
        from dae.evaluate import evaluate

        return evaluate
    if name == "denoise":
        from dae.inference import denoise

        return denoise
    if name == "load_model":
        from dae.checkpoint import load_model

        return load_model
    if name == "load_images":
        from dae.data.datasets import load_images

        return load_images
    if name == "add_noise":
        from dae.data.noise import add_noise

        return add_noise
    if name == "Config":
        from dae.config import Config

        return Config
    raise AttributeError(f"module 'dae' has no attribute {name!r}")
