"""Strided-convolution autoencoder: downsampling by stride-2 convs, upsampling by stride-2 transposed convs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dae.errors import UsageError
from dae.models import MODELS
from dae.models._common import ZooDenoiser, check_positive, parse_channels


class StridedConv(ZooDenoiser):
    """5x5 stride-2 convs 1 -> 16 -> 32 (28 -> 14 -> 7), mirrored 5x5 stride-2 transposed convs back to 28.

    Reproduces the TensorFlow-tutorial strided conv autoencoder (no pooling; ReLU after every layer but the
    last, which gives logits). Code layer: (N, 32, 7, 7) at 28x28, in general (N, channels[-1], H/4, W/4).
    Inputs are padded to a multiple of 2**len(channels) so every transposed conv inverts its conv exactly.
    """

    output_kind = "logits"

    def __init__(self, in_channels: int = 1, channels: str | Sequence[int] = (16, 32), kernel_size: int = 5):
        super().__init__()
        self.in_channels = in_channels
        where = "model strided"
        check_positive(in_channels, "in_channels", where)
        widths = parse_channels(channels, where)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise UsageError(f"{where}: kernel_size must be a positive odd integer, got {kernel_size!r}")
        self.size_multiple = 2 ** len(widths)
        k, p = kernel_size, kernel_size // 2
        chans = (in_channels, *widths)
        enc: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(a, b, k, stride=2, padding=p), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        rev = chans[::-1]
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            # output_padding=1 makes (n-1)*2 - 2p + k + 1 = 2n exactly for odd k.
            dec.append(nn.ConvTranspose2d(a, b, k, stride=2, padding=p, output_padding=1))
            if i < len(rev) - 2:
                dec.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        # Padded as forward pads (a no-op there), so the code of any size is the one forward decodes.
        return self.encoder(self.pad(x)[0])  # (N, 32, H/4, W/4), H and W padded to multiples of 4

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code)  # (N, C, H, W) logits


@MODELS.register("strided")
def strided(
    in_channels: int = 1, channels: str | Sequence[int] = (16, 32), kernel_size: int = 5
) -> StridedConv:
    """Strided conv autoencoder (5x5 stride-2 convs 16-32, transposed-conv decoder).

    Example:
        >>> model = strided(channels="16-32")
    """
    return StridedConv(in_channels, channels, kernel_size)
