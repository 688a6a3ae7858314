"""Named presets that reproduce a tutorial's whole set-up (model, loss, optimiser, batch, noise, epochs).

Tutorial values are those the tutorials published where we know them; where a tutorial left a value
unstated the description says which value we chose. The `unet-*` and `dncnn-*` presets are ours, tuned
to train well on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dae.errors import UsageError
from dae.registry import Registry

LOSS_NAMES = ("mse", "bce", "l1")
OPTIMIZER_NAMES = ("adam", "adamw")


@dataclass(frozen=True)
class Recipe:
    """A tutorial's (or our) whole training set-up under one name.

    Example:
        >>> r = get_recipe("tf-upsample-0.5")
        >>> model = create_model(r.model, **r.model_kwargs)
    """

    name: str
    description: str
    model: str
    model_kwargs: Mapping[str, Any] = field(hash=False)
    loss: str
    optimizer: str
    lr: float
    batch_size: int
    noise: str
    epochs: int
    dataset: str = "mnist"
    # A tutorial's recipe reruns it exactly: constant learning rate, no warm-up, no gradient clipping, fp32.
    # Ours (exact=False) keep dae's training defaults (cosine schedule, warm-up, clipping, precision auto).
    exact: bool = True

    def __post_init__(self) -> None:
        where = f"recipe {self.name!r}"
        if self.loss not in LOSS_NAMES:
            raise UsageError(f"{where}: unknown loss {self.loss!r}; choose one of {', '.join(LOSS_NAMES)}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise UsageError(
                f"{where}: unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}"
            )
        if not self.lr > 0 or self.batch_size < 1 or self.epochs < 1:
            raise UsageError(f"{where}: lr, batch_size and epochs must be positive")
        # Read-only so that a recipe handed out by get_recipe cannot be edited for everyone.
        object.__setattr__(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs)))

    def to_dict(self, exact: bool | None = None) -> dict[str, Any]:
        """This recipe as a config layer (the shape `dae.config.build_config` merges).

        exact=False leaves out the tutorial's plain optimisation (constant lr, no warm-up or clipping,
        fp32), so its model trains with dae's defaults instead, e.g. to compare architectures fairly.
        """
        exact = self.exact if exact is None else exact
        plain = {"schedule": "constant", "warmup_steps": 0, "grad_clip": None, "precision": "fp32"}
        return {
            "recipe": self.name,
            "model": {"name": self.model, "kwargs": dict(self.model_kwargs)},
            "data": {"dataset": self.dataset},
            "train": {
                "loss": self.loss,
                "optimizer": self.optimizer,
                "lr": self.lr,
                "batch_size": self.batch_size,
                "noise": self.noise,
                "epochs": self.epochs,
                **(plain if exact else {}),
            },
        }


RECIPES: Registry[Recipe] = Registry("recipe")

# Each model's representative recipe, for the benchmarks. `dae train --model X` does not use it: without
# --recipe a run trains under dae's own defaults (config.py), with the model's default options.
DEFAULT_FOR_MODEL: dict[str, str] = {}


def _add(recipe: Recipe, default_for_model: bool = False) -> None:
    RECIPES.register(recipe.name)(lambda: recipe)
    if default_for_model:
        DEFAULT_FOR_MODEL[recipe.model] = recipe.name


def get_recipe(name: str) -> Recipe:
    """The recipe registered under `name`; an unknown name is a UsageError listing the valid ones.

    Example:
        >>> get_recipe("unet-fast").model
        'unet'
    """
    return RECIPES.create(name)


def list_recipes() -> list[str]:
    """Names of all recipes, sorted."""
    return RECIPES.names()


def recipe_for(model: str) -> Recipe:
    """The default recipe of a model name (e.g. "unet" -> "unet-fast")."""
    if model not in DEFAULT_FOR_MODEL:
        raise UsageError(
            f"model {model!r} has no default recipe; models with one: {', '.join(sorted(DEFAULT_FOR_MODEL))}"
        )
    return get_recipe(DEFAULT_FOR_MODEL[model])


# ------------------------------------------------------------------------------------------ fully connected

_add(
    Recipe(
        "fc-784-64",
        "Keras blog (Chollet 2016) simple dense autoencoder with the 784-64-784 tutorials' 64-unit code (the "
        "blog's has 32): sigmoid output, binary "
        "cross-entropy, Adam, batch 256, 50 epochs; noise 0.5 as in the blog's denoising section",
        "fc",
        {"hidden": [64]},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=256,
        noise="gaussian:0.5",
        epochs=50,
    ),
    default_for_model=True,
)
_add(
    Recipe(
        "fc-deep-128-64-32",
        "Keras blog deep dense autoencoder 784-128-64-32-64-128-784: bce, Adam, batch 256, 100 epochs, noise 0.5",
        "fc",
        {"hidden": [128, 64, 32]},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=256,
        noise="gaussian:0.5",
        epochs=100,
    )
)
_add(
    Recipe(
        "fc-784-300-64",
        "Two-hidden-layer dense denoiser 784-300-64-300-784 (common TF/PyTorch course layout): bce, Adam 1e-3, "
        "batch 128, 20 epochs, noise 0.3 (values chosen, typical of those courses)",
        "fc",
        {"hidden": [300, 64]},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        noise="gaussian:0.3",
        epochs=20,
    )
)

# ------------------------------------------------------------------------------------------------ strided

_add(
    Recipe(
        "tf-strided-0.3",
        "TensorFlow strided-conv denoiser: 5x5 stride-2 convs 16-32, transposed-conv decoder, MSE on the "
        "sigmoid output, Adam 1e-3, batch 128, 10 epochs, noise 0.3 (batch and epochs chosen)",
        "strided",
        {},
        loss="mse",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        noise="gaussian:0.3",
        epochs=10,
    ),
    default_for_model=True,
)
_add(
    Recipe(
        "tf-intro-fashion-0.2",
        "TensorFlow 'Intro to Autoencoders' denoising section on Fashion-MNIST: 3x3 stride-2 convs 16-8 "
        "(closest zoo layout: no extra final conv), MSE, Adam, Keras default batch 32, 10 epochs, noise 0.2",
        "strided",
        {"channels": [16, 8], "kernel_size": 3},
        loss="mse",
        optimizer="adam",
        lr=1e-3,
        batch_size=32,
        noise="gaussian:0.2",
        epochs=10,
        dataset="fashion-mnist",
    )
)

# ----------------------------------------------------------------------------------------------- upsample

_add(
    Recipe(
        "tf-upsample-16-8-8-ae",
        "Udacity TensorFlow convolutional autoencoder (plain, no noise): 16-8-8, nearest resize 4-7-14-28, "
        "sigmoid cross-entropy, Adam 1e-3, batch 200, 20 epochs",
        "upsample",
        {"channels": "16-8-8"},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=200,
        noise="none",
        epochs=20,
    )
)
_add(
    Recipe(
        "tf-upsample-0.5",
        "Udacity TensorFlow denoising autoencoder: 32-32-16, nearest resize 4-7-14-28, sigmoid cross-entropy, "
        "Adam 1e-3, batch 200, 100 epochs, noise 0.5",
        "upsample",
        {"channels": "32-32-16"},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=200,
        noise="gaussian:0.5",
        epochs=100,
    ),
    default_for_model=True,
)
_add(
    Recipe(
        "tf-upsample-64-64-32-0.5",
        "The Udacity denoiser widened to 64-64-32 (the notebook's suggested experiment): bce, Adam 1e-3, "
        "batch 200, 100 epochs, noise 0.5",
        "upsample",
        {"channels": "64-64-32"},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=200,
        noise="gaussian:0.5",
        epochs=100,
    )
)
_add(
    Recipe(
        "keras-upsample-16-8-8-0.5",
        "Keras blog convolutional autoencoder 16-8-8 (code 4x4x8) trained as a denoiser: bce, Adam, "
        "batch 128, 50 epochs, noise 0.5 (the zoo's decoder upsamples before each conv; Keras convolves first)",
        "upsample",
        {"channels": "16-8-8"},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        noise="gaussian:0.5",
        epochs=50,
    )
)
_add(
    Recipe(
        "keras-upsample-32-32-0.5",
        "Keras blog denoising model: conv 32 + pool twice (code 7x7x32), upsampling decoder, bce, Adam, "
        "batch 128, 100 epochs, noise 0.5 (the zoo's decoder upsamples before each conv; Keras convolves first)",
        "upsample",
        {"channels": "32-32"},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        noise="gaussian:0.5",
        epochs=100,
    )
)

# ---------------------------------------------------------------------------------------------- transpose

_add(
    Recipe(
        "pytorch-transpose-0.5",
        "Udacity PyTorch denoising autoencoder: conv+pool 32-16-8 (code 3x3x8), transposed convs 3x3 then "
        "2x2 twice, MSE on the sigmoid output, Adam 1e-3, batch 20, 20 epochs, noise 0.5",
        "transpose",
        {},
        loss="mse",
        optimizer="adam",
        lr=1e-3,
        batch_size=20,
        noise="gaussian:0.5",
        epochs=20,
    ),
    default_for_model=True,
)
_add(
    Recipe(
        "tf-transpose-0.5",
        "The same 32-16-8 transposed-conv layout as Keras/TF versions train it: bce, Adam 1e-3, batch 128, "
        "50 epochs, noise 0.5 (batch and epochs chosen)",
        "transpose",
        {},
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        noise="gaussian:0.5",
        epochs=50,
    )
)

# ------------------------------------------------------------------------------------------------- unpool

for _method in ("zeros", "nearest", "argmax"):
    for _act in ("relu", "sigmoid"):
        _add(
            Recipe(
                f"tf-unpool-{_method}-{_act}",
                f"TensorFlow unpooling tutorials: conv+pool 16-32, decoder unpools by {_method} with {_act} "
                "convs; MSE on the sigmoid output, Adam 1e-3, batch 128, 20 epochs, noise 0.3 (values chosen: "
                "the tutorials compared methods, not hyperparameters)",
                "unpool",
                {"method": _method, "activation": _act},
                loss="mse",
                optimizer="adam",
                lr=1e-3,
                batch_size=128,
                noise="gaussian:0.3",
                epochs=20,
            ),
            default_for_model=(_method, _act) == ("argmax", "relu"),
        )

# ------------------------------------------------------------------------------------------ ours: stronger

_add(
    Recipe(
        "unet-fast",
        "Ours: U-Net on 2x2 pixel-unshuffled input, width 32, 1 level, 3 convs per block, batch norm, additive "
        "skips; bce, AdamW 3e-3, batch 64, 5 epochs, noise 0.5 "
        "(tuned to reach good PSNR within minutes on a 2-core CPU)",
        "unet",
        {},
        loss="bce",
        optimizer="adamw",
        lr=3e-3,
        batch_size=64,
        noise="gaussian:0.5",
        epochs=5,
        exact=False,
    ),
    default_for_model=True,
)
_add(
    Recipe(
        "unet-blind",
        "Ours: the unet-fast model trained blind, each image at its own level in 0.1-0.9",
        "unet",
        {},
        loss="bce",
        optimizer="adamw",
        lr=3e-3,
        batch_size=64,
        noise="gaussian:0.1-0.9",
        epochs=10,
        exact=False,
    )
)
_add(
    Recipe(
        "dncnn-fast",
        "Ours: residual DnCNN depth 8 width 32 predicting the noise; MSE, AdamW 2e-3, batch 64, 5 epochs, noise 0.5",
        "dncnn",
        {},
        loss="mse",
        optimizer="adamw",
        lr=2e-3,
        batch_size=64,
        noise="gaussian:0.5",
        epochs=5,
        exact=False,
    ),
    default_for_model=True,
)
_add(
    Recipe(
        "dncnn-blind",
        "Ours: the dncnn-fast model trained blind, each image at its own level in 0.1-0.9",
        "dncnn",
        {},
        loss="mse",
        optimizer="adamw",
        lr=2e-3,
        batch_size=64,
        noise="gaussian:0.1-0.9",
        epochs=10,
        exact=False,
    )
)
