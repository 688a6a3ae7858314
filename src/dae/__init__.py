"""dae: denoising autoencoders for images: train, evaluate against classical baselines, denoise files.

Example:
    >>> import dae
    >>> result = dae.train({"train": {"time_budget": 60}, "out": "runs/quick"})
    >>> model = dae.load_model(result.best_checkpoint)
    >>> clean = dae.denoise(model, noisy)  # (N, C, H, W) in [0, 1] -> same
"""

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
    "denoise_files",
    "create_baseline",
    "load_model",
    "load_images",
    "add_noise",
    "Config",
]


class CallableModule(types.ModuleType):
    """A module that runs its namesake function when called: dae/train.py and dae/evaluate.py.

    `dae.train` is both a function (the public API) and a module (DESIGN.md's layout). Python binds the
    module on the package once anything imports it, so the module itself must be callable:
    `dae.train(cfg)` runs `dae.train.train(cfg)`, while `dae.train.select_device`, `import dae.train as m`
    and patching by dotted name (`"dae.train.select_device"`) reach the module as usual.
    """

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(module: types.ModuleType) -> None:
    """Turn `module` into a CallableModule that `help()` and `inspect.signature` describe as its function.

    help() documents a module as a module, so the function's signature and docstring are put first in the
    module's docstring; `__signature__` is what inspect (and so IDEs and notebooks) reads for a callable.
    """
    import inspect
    import textwrap

    name = module.__name__.rpartition(".")[2]
    function = getattr(module, name)
    signature = inspect.signature(function)
    module.__class__ = CallableModule
    module.__signature__ = signature
    summary, _, details = (inspect.getdoc(function) or "").partition("\n")
    module.__doc__ = (
        f"{summary}\n\n    dae.{name}{signature}\n{details}\n\n"
        f"The module dae.{name}:\n{textwrap.indent(inspect.cleandoc(module.__doc__ or ''), '    ')}"
    )


# The package's modules, reached as attributes after a plain `import dae` (dae.baselines.BASELINES), as
# after `import dae.baselines`.
_MODULES = frozenset(
    "allocator baselines checkpoint checks config data distributed errors evaluate fileio imageio inference "
    "losses metrics models plots recipes registry report study train".split()
)


def __dir__() -> list[str]:
    """What `dae.<TAB>` offers in a notebook: the public API is imported on first use, so it is not in globals."""
    return sorted(set(__all__) | _MODULES)


# Where each public name lives: imported on first use, so that `import dae` stays light.
_API = {
    "create_model": "dae.models",
    "list_models": "dae.models",
    "denoise": "dae.inference",
    "denoise_files": "dae.inference",
    "create_baseline": "dae.baselines",
    "load_model": "dae.checkpoint",
    "load_images": "dae.data.datasets",
    "add_noise": "dae.data.noise",
    "Config": "dae.config",
}


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    # train and evaluate are callable modules (CallableModule): dae.train(cfg) trains.
    if name in _MODULES:
        return importlib.import_module(f"dae.{name}")
    raise AttributeError(f"module 'dae' has no attribute {name!r}")
