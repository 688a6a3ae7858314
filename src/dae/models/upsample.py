"""Conv + max-pool encoder, nearest-neighbour upsampling + conv decoder: the Keras blog and Udacity TF models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from dae.models import MODELS
from dae.models._common import SideInfoDenoiser, check_positive, parse_channels

PRESETS: dict[str, tuple[int, ...]] = {
    "16-8-8": (16, 8, 8),  # Keras blog "convolutional autoencoder" (code 4x4x8)
    "32-32-16": (32, 32, 16),
    "64-64-32": (64, 64, 32),
}


class UpsampleConv(SideInfoDenoiser):
    """3x3 conv + ReLU + 2x2 max-pool (ceil, like Keras 'same') per level; decoder upsamples and convolves.

    The encoder is the Keras blog convolutional autoencoder's: 16-8-8 channels, 28 -> 14 -> 7 -> 4. The decoder
    upsamples (nearest neighbour, 4 -> 7 -> 14 -> 28) before each 3x3 conv + ReLU, in the order of the Udacity
    TensorFlow denoiser, then a final 3x3 conv to C channels gives logits (the tutorial's sigmoid is
    `to_image`). The Keras blog convolves before it upsamples (4 -> 8 -> 16, an unpadded conv to 14, -> 28):
    the same layers and parameters (4,385 for "16-8-8"), run at different resolutions. Code layer:
    (N, 8, 4, 4) at 28x28 for "16-8-8", in general (N, channels[-1], ceil(H/8), ceil(W/8)). Any H, W works:
    the decoder upsamples to the sizes the encoder recorded (side info), so nothing is padded.
    """

    output_kind = "logits"

    def __init__(self, in_channels: int = 1, channels: str | Sequence[int] = "16-8-8"):
        super().__init__()
        self.in_channels = in_channels
        where = "model upsample"
        check_positive(in_channels, "in_channels", where)
        widths = parse_channels(channels, where, PRESETS)
        chans = (in_channels, *widths)
        self.enc = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        # Decoder convs mirror the encoder: 8 -> 8, 8 -> 8, 8 -> 16 for "16-8-8".
        rev = widths[::-1]
        self.dec = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip((rev[0], *rev[:-1]), rev))
        self.head = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    @property
    def grid(self) -> int:  # one 2x2 max-pool per level; nothing is padded to size_multiple
        return 2 ** len(self.enc)

    def _encode(self, x: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        sizes = []
        for conv in self.enc:
            x = F.relu(conv(x), inplace=True)
            sizes.append((x.shape[-2], x.shape[-1]))
            x = F.max_pool2d(x, 2, ceil_mode=True)  # 28 -> 14 -> 7 -> 4
        return x, sizes  # code (N, 8, 4, 4) at 28x28

    def _decode(self, code: Tensor, sizes: list[tuple[int, int]]) -> Tensor:
        x = code
        for conv, size in zip(self.dec, reversed(sizes)):
            x = F.interpolate(x, size=size, mode="nearest")  # 4 -> 7 -> 14 -> 28
            x = F.relu(conv(x), inplace=True)
        return self.head(x)

    def _default_side(self, code: Tensor) -> Any:
        # Without a recorded encode, assume each pool exactly halved (e.g. 4 -> 8 -> 16 -> 32).
        h, w = code.shape[-2:]
        return [(h * 2**i, w * 2**i) for i in range(len(self.enc), 0, -1)]


@MODELS.register("upsample")
def upsample(in_channels: int = 1, channels: str | Sequence[int] = "16-8-8") -> UpsampleConv:
    """Conv + max-pool encoder, nearest-upsampling + conv decoder (presets 16-8-8, 32-32-16, 64-64-32).

    Example:
        >>> model = upsample(channels="32-32-16")
    """
    return UpsampleConv(in_channels, channels)
