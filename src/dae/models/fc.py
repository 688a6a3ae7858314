"""Fully connected autoencoder: the first model of the Keras blog tutorial, made deeper on request."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dae.errors import UsageError
from dae.models import MODELS
from dae.models._common import ZooDenoiser, check_positive


class FullyConnected(ZooDenoiser):
    """Flatten -> ReLU dense layers down to the code -> mirrored dense layers -> logits of every pixel.

    Reproduces the Keras blog's "simple autoencoder" (784 -> 32 -> 784, here 64 by default) and, with
    `hidden=(128, 64, 32)`, its "deep fully-connected autoencoder". Code layer: (N, hidden[-1]), e.g. (N, 64).
    Accepts only (in_channels, height, width) inputs.
    """

    output_kind = "logits"

    def __init__(
        self, in_channels: int = 1, height: int = 28, width: int = 28, hidden: Sequence[int] = (64,)
    ):
        super().__init__()
        self.in_channels = in_channels
        where = "model fc"
        for name, value in (("in_channels", in_channels), ("height", height), ("width", width)):
            check_positive(value, name, where)
        if isinstance(hidden, int | str):  # hidden=64 means one layer of 64, as hidden=[64] does
            hidden = (hidden,)  # and "64" is then refused as a whole, not read as "6" and "4"
        hidden = tuple(check_positive(h, "hidden size", where) for h in hidden)
        if not hidden:
            raise UsageError(f"{where}: hidden must list at least one layer size, e.g. hidden=[64]")
        self.fixed_size = (in_channels, height, width)
        sizes = (in_channels * height * width, *hidden)
        enc: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        rev = sizes[::-1]
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            dec.append(nn.Linear(a, b))
            if i < len(rev) - 2:  # the last layer gives logits
                dec.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        self.check_input(x)  # its one size, said as forward says it (a matmul error otherwise)
        return self.encoder(x)  # (N, hidden[-1])

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code).reshape(code.shape[0], *self.fixed_size)  # (N, C, H, W)


@MODELS.register("fc")
def fc(
    in_channels: int = 1, height: int = 28, width: int = 28, hidden: Sequence[int] = (64,)
) -> FullyConnected:
    """Fully connected autoencoder 784-64-784 (hidden sizes configurable).

    Example:
        >>> model = fc(hidden=(300, 64))  # 784-300-64-300-784
    """
    return FullyConnected(in_channels, height, width, hidden)
