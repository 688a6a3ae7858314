"""Conv + max-pool encoder whose decoder undoes each pool by unpooling: zeros, nearest or argmax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from dae.errors import UsageError
from dae.models import MODELS
from dae.models._common import SideInfoDenoiser, check_positive, make_activation, parse_channels

METHODS = ("zeros", "nearest", "argmax")
DECODER_ACTIVATIONS = ("relu", "sigmoid")


def unpool_zeros(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Each value to the top-left corner of its 2x2 cell, the other three zero; cropped to `size`."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, 2 * h, 2 * w)
    out[..., ::2, ::2] = x
    return out[..., : size[0], : size[1]]


def unpool_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Each value repeated over its 2x2 cell; cropped to `size` (ceil pooling may have a half cell)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")[..., : size[0], : size[1]]


class Unpool(SideInfoDenoiser):
    """3x3 conv + ReLU + 2x2 max-pool encoder 16-32 (28 -> 14 -> 7); decoder unpools, then conv + activation.

    Reproduces the TensorFlow unpooling tutorials, which compared three ways to undo a max-pool: `zeros`
    (value in a fixed corner), `nearest` (repeat) and `argmax` (put it back where the max was, using the
    pooling indices; F.max_unpool2d), and found the decoder activation (`relu` vs `sigmoid`) decisive.
    Every decoder conv uses the chosen activation; the final 3x3 conv gives logits.
    Code layer: (N, 32, 7, 7) at 28x28, in general (N, channels[-1], ceil(H/4), ceil(W/4)); any size works.
    For `argmax`, `encode(x)` keeps the pooling indices (and sizes) on the model, so `decode(code)` works
    for that batch's code or any code of the same shape; `forward` passes them along and keeps no state.
    """

    output_kind = "logits"

    def __init__(
        self,
        in_channels: int = 1,
        channels: str | Sequence[int] = (16, 32),
        method: str = "argmax",
        activation: str = "relu",
    ):
        super().__init__()
        self.in_channels = in_channels
        where = "model unpool"
        check_positive(in_channels, "in_channels", where)
        if method not in METHODS:
            raise UsageError(f"{where}: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if activation not in DECODER_ACTIVATIONS:
            raise UsageError(
                f"{where}: unknown activation {activation!r}; choose one of {', '.join(DECODER_ACTIVATIONS)}"
            )
        widths = parse_channels(channels, where)
        self.method = method
        chans = (in_channels, *widths)
        self.enc = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        rev = widths[::-1]  # 32, 16: conv after each unpool maps to the width of the level above
        outs = (*rev[1:], rev[-1])
        self.dec = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(rev, outs))
        self.acts = nn.ModuleList(make_activation(activation, where) for _ in rev)
        self.head = nn.Conv2d(outs[-1], in_channels, 3, padding=1)

    @property
    def grid(self) -> int:  # one 2x2 max-pool per level; nothing is padded to size_multiple
        return 2 ** len(self.enc)

    def _encode(self, x: Tensor) -> tuple[Tensor, dict[str, list[Any]]]:
        sizes, indices = [], []
        for conv in self.enc:
            x = F.relu(conv(x), inplace=True)
            sizes.append((x.shape[-2], x.shape[-1]))
            if self.method == "argmax":
                x, idx = F.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
                indices.append(idx)
            else:
                x = F.max_pool2d(x, 2, ceil_mode=True)  # 28 -> 14 -> 7
        return x, {"sizes": sizes, "indices": indices}  # code (N, 32, 7, 7) at 28x28

    def _decode(self, code: Tensor, side: dict[str, list[Any]]) -> Tensor:
        x = code
        sizes = side["sizes"][::-1]
        for i, (conv, act) in enumerate(zip(self.dec, self.acts)):
            if self.method == "argmax":
                x = F.max_unpool2d(x, side["indices"][-1 - i], 2, output_size=sizes[i])
            elif self.method == "zeros":
                x = unpool_zeros(x, sizes[i])
            else:
                x = unpool_nearest(x, sizes[i])
            x = act(conv(x))
        return self.head(x)

    def _default_side(self, code: Tensor) -> Any:
        if self.method == "argmax":
            return super()._default_side(code)  # the indices cannot be guessed
        h, w = code.shape[-2:]
        return {"sizes": [(h * 2**i, w * 2**i) for i in range(len(self.enc), 0, -1)], "indices": []}


@MODELS.register("unpool")
def unpool(
    in_channels: int = 1,
    channels: str | Sequence[int] = (16, 32),
    method: str = "argmax",
    activation: str = "relu",
) -> Unpool:
    """Conv + max-pool encoder, unpooling decoder (method zeros | nearest | argmax, activation relu | sigmoid).

    Example:
        >>> model = unpool(method="zeros", activation="sigmoid")
    """
    return Unpool(in_channels, channels, method, activation)
