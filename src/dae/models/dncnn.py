"""DnCNN-style residual denoiser: a plain stack of 3x3 convs that predicts the noise, output = x - noise."""

from __future__ import annotations

from torch import Tensor, nn

from dae.models import MODELS
from dae.models._common import SideInfoDenoiser, check_positive, make_activation, make_norm


class DnCNN(SideInfoDenoiser):
    """Zhang et al. 2017 DnCNN, narrowed for CPU: conv+act, (depth-2) x conv+norm+act, conv -> noise estimate.

    Not from the tutorials. No pooling, so any H, W works unpadded. The residual form (output = x - net(x),
    output_kind "image") means the network only has to model the noise. Code layer: the last hidden
    feature maps, (N, width, H, W), e.g. (N, 32, 28, 28) at default settings; decode maps them through the
    last conv and subtracts from the input recorded by encode(). The last conv starts at zero, so an
    untrained model is the identity.
    """

    output_kind = "image"

    def __init__(
        self,
        in_channels: int = 1,
        depth: int = 8,
        width: int = 32,
        norm: str = "none",
        activation: str = "relu",
    ):
        super().__init__()
        self.in_channels = in_channels
        where = "model dncnn"
        check_positive(in_channels, "in_channels", where)
        check_positive(depth, "depth", where, minimum=2)
        check_positive(width, "width", where)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            make_activation(activation, where),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=norm == "none"),
                make_norm(norm, width, where),
                make_activation(activation, where),
            ]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.body(x), x  # code (N, width, H, W); the input is needed to subtract the noise

    def _decode(self, code: Tensor, x: Tensor) -> Tensor:
        return x - self.tail(code)


@MODELS.register("dncnn")
def dncnn(
    in_channels: int = 1,
    depth: int = 8,
    width: int = 32,
    norm: str = "none",
    activation: str = "relu",
) -> DnCNN:
    """Residual DnCNN-style denoiser (depth, width, norm none|batch|group, activation relu|sigmoid|silu).

    Example:
        >>> model = dncnn(depth=8, width=32)
    """
    return DnCNN(in_channels, depth, width, norm, activation)
