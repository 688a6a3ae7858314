"""Conv + max-pool encoder with a transposed-convolution decoder (the common Keras/TF denoising tutorial)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dae.models import MODELS
from dae.models._common import ZooDenoiser, check_positive, parse_channels


def _exact_size(n: int, levels: int) -> int:
    """Smallest size >= n that floor-pooling `levels` times and this decoder map back to exactly.

    The decoder turns the deepest size k into 2k+1 (3x3 stride-2 'valid') and then doubles levels-1 times,
    so the sizes it reproduces are m * (2k+1) with m = 2**(levels-1) and k >= 1 (28 = 4 * 7).
    """
    m = 2 ** (levels - 1)
    t = max(n, 3 * m)
    t = -(-t // m) * m
    if (t // m) % 2 == 0:
        t += m
    return t


class TransposeConv(ZooDenoiser):
    """3x3 conv + ReLU + 2x2 max-pool encoder 32-16-8 (28 -> 14 -> 7 -> 3), transposed-conv decoder.

    Reproduces the Keras/TF denoising tutorial whose decoder is a 3x3 stride-2 transposed conv (3 -> 7)
    then 2x2 stride-2 transposed convs (7 -> 14 -> 28), mirroring the channels 8-16-32, and a final 3x3 conv
    giving logits (the tutorial's sigmoid is `to_image`). Code layer: (N, 8, 3, 3) at 28x28.
    Other sizes are replicate-padded to the next size of the form 4 * (2k+1) (28, 36, 44, ...), where floor
    pooling is inverted exactly by this decoder, and cropped back; `size_multiple` is unused.
    """

    output_kind = "logits"

    def __init__(self, in_channels: int = 1, channels: str | Sequence[int] = (32, 16, 8)):
        super().__init__()
        self.in_channels = in_channels
        where = "model transpose"
        check_positive(in_channels, "in_channels", where)
        widths = parse_channels(channels, where)
        self.levels = len(widths)
        chans = (in_channels, *widths)
        enc: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*enc)
        rev = widths[::-1]  # 8, 16, 32
        dec: list[nn.Module] = [nn.ConvTranspose2d(rev[0], rev[0], 3, stride=2), nn.ReLU(inplace=True)]
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose2d(a, b, 2, stride=2), nn.ReLU(inplace=True)]
        dec.append(nn.Conv2d(rev[-1], in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    @property
    def grid(self) -> int:  # one 2x2 max-pool per level; nothing is padded to size_multiple
        return 2**self.levels

    def pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        ph, pw = _exact_size(h, self.levels) - h, _exact_size(w, self.levels) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, (h, w)

    def encode(self, x: Tensor) -> Tensor:
        # Padded as forward pads (a no-op there), so the code of any size is the one forward decodes.
        return self.encoder(self.pad(x)[0])  # (N, 8, 3, 3) at 28x28

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code)  # (N, C, 28, 28) from (N, 8, 3, 3)


@MODELS.register("transpose")
def transpose(in_channels: int = 1, channels: str | Sequence[int] = (32, 16, 8)) -> TransposeConv:
    """Conv + max-pool encoder 32-16-8, transposed-conv decoder.

    Example:
        >>> model = transpose()
    """
    return TransposeConv(in_channels, channels)
