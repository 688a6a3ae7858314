"""Small pieces the model families share: option parsing, activations, norms, and decoders that need side info."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dae.checks import is_whole
from dae.errors import UsageError
from dae.models.base import Denoiser

ACTIVATIONS = ("relu", "sigmoid", "silu")
NORMS = ("none", "batch", "group")


def make_activation(name: str, where: str) -> nn.Module:
    """A fresh activation module by name; `where` names the model option for the error message."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise UsageError(f"{where}: unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def make_norm(name: str, channels: int, where: str) -> nn.Module:
    """A normalisation layer by name ("none" gives Identity)."""
    if name == "none":
        return nn.Identity()
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "group":
        # 8 channels a group keeps the statistics meaningful at the small widths used here.
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise UsageError(f"{where}: unknown norm {name!r}; choose one of {', '.join(NORMS)}")


def parse_channels(spec: str | Sequence[int], where: str, presets: dict[str, tuple[int, ...]] | None = None):
    """Channel widths from a "16-8-8" string or a list of ints; all must be positive."""
    if isinstance(spec, str):
        if presets is not None and spec in presets:
            return presets[spec]
        try:
            widths = tuple(int(part) for part in spec.split("-"))
        except ValueError:
            valid = f"; presets: {', '.join(presets)}" if presets else ""
            raise UsageError(f"{where}: channels {spec!r} is not like '16-8-8'{valid}") from None
    else:
        # Whole numbers only (refused just below): int(16.9) would build 16 channels and record 16.9.
        whole = isinstance(spec, Sequence) and all(is_whole(c) for c in spec)
        widths = tuple(int(c) for c in spec) if whole else ()
    if not widths or any(c < 1 for c in widths):
        raise UsageError(f"{where}: channels must be one or more positive integers, got {spec!r}")
    return widths


def check_positive(value: int, name: str, where: str, minimum: int = 1) -> int:
    if not is_whole(value) or value < minimum:  # True is an int to Python, not a width to a user
        raise UsageError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_flag(value: Any, name: str, where: str) -> bool:
    """A true/false option; bool("False") is True, so strings and numbers are refused, not read as truthy."""
    if not isinstance(value, bool):
        raise UsageError(f"{where}: {name} must be true or false, got {value!r}")
    return value


class ZooDenoiser(Denoiser):
    """Denoiser that knows its channel count, so a wrong-channel batch is a one-line UsageError."""

    in_channels: int = 1

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if x.shape[1] != self.in_channels:
            raise UsageError(
                f"{type(self).__name__} was built for {self.in_channels}-channel images, got {x.shape[1]} channels; "
                f"build it with in_channels={x.shape[1]}"
            )


class SideInfoDenoiser(ZooDenoiser):
    """A denoiser whose decoder needs more than the code: pooling indices, skip features, sizes or the input.

    Subclasses implement `_encode(x) -> (code, side)` and `_decode(code, side)`. `forward` passes the side
    info directly and keeps no state, so training, DDP and torch.compile see a pure function. The public
    `encode(x)` remembers the side info of its last call (with the code's shape) so that `decode(code)` works
    on that batch's code, or on any edited code of the same shape; `_default_side(code)` answers otherwise.
    """

    _decode_context: tuple[tuple[int, ...], Any] | None = None

    def _encode(self, x: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _decode(self, code: Tensor, side: Any) -> Tensor:
        raise NotImplementedError

    def _default_side(self, code: Tensor) -> Any:
        raise UsageError(
            f"{type(self).__name__}.decode needs the side info of encode() on the same batch; "
            f"call encode first (got code of shape {tuple(code.shape)})"
        )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        xp, (h, w) = self.pad(x)
        code, side = self._encode(xp)
        return self._decode(code, side)[..., :h, :w]

    def encode(self, x: Tensor) -> Tensor:
        xp, size = self.pad(x)  # as forward does, so decode(encode(x)) == forward(x) at any size
        code, side = self._encode(xp)
        self._decode_context = (tuple(code.shape), side, size)
        return code

    def decode(self, code: Tensor) -> Tensor:
        ctx = self._decode_context
        if ctx is not None and ctx[0] == tuple(code.shape):
            h, w = ctx[2]
            return self._decode(code, ctx[1])[..., :h, :w]
        return self._decode(code, self._default_side(code))
