"""Training losses. Each takes the model's raw output, the clean target and the model's output kind,
so a model that emits logits is never fed to a loss that expects an image (or the reverse)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dae.registry import Registry

LossFn = Callable[[Tensor, Tensor, str], Tensor]
LOSSES: Registry[Tensor] = Registry("loss")


def _as_image(out: Tensor, output_kind: str) -> Tensor:
    return torch.sigmoid(out) if output_kind == "logits" else out


@LOSSES.register("mse")
def mse(out: Tensor, target: Tensor, output_kind: str) -> Tensor:
    """Mean squared error in image space (a sigmoid is applied to logits first)."""
    return F.mse_loss(_as_image(out, output_kind), target)


@LOSSES.register("l1")
def l1(out: Tensor, target: Tensor, output_kind: str) -> Tensor:
    """Mean absolute error in image space."""
    return F.l1_loss(_as_image(out, output_kind), target)


@LOSSES.register("bce")
def bce(out: Tensor, target: Tensor, output_kind: str) -> Tensor:
    """Sigmoid cross-entropy, as the tutorials train: on logits directly (numerically stable);
    image outputs are clamped into (0, 1) first."""
    if output_kind == "logits":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), target)


def get_loss(name: str) -> LossFn:
    return LOSSES.get(name)
