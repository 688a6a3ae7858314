"""The base class every learned denoiser shares: padding to what the network needs, code layer, output kind."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dae.errors import UsageError

OUTPUT_KINDS = ("logits", "image")


def module_device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """Where `model` lives: its first parameter's device, else its first buffer's, else `default` (CPU)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return default if default is not None else torch.device("cpu")


class Denoiser(nn.Module):
    """A learned denoiser: `forward` maps a noisy batch (N, C, H, W) in [0, 1] to its raw output.

    Subclasses set:
      output_kind   "logits" (apply a sigmoid to get the image; trained with bce or mse-on-sigmoid)
                    or "image" (the output is the image itself, clamped to [0, 1] at inference).
      size_multiple H and W are padded (replicate) up to a multiple of this, then cropped back.
      fixed_size    (C, H, W) for models that accept only one size (fc); None for conv models.
      grid          (a property, size_multiple unless overridden) the total stride of the downsampling:
                    the output follows a shift of the input only by multiples of it.
    and implement `encode(x)` -> code layer and `decode(code)` -> raw output on padded inputs.
    """

    output_kind: str = "logits"
    size_multiple: int = 1
    fixed_size: tuple[int, int, int] | None = None

    @property
    def grid(self) -> int:
        """The total stride of the downsampling: tiled denoising places its tiles on this grid."""
        return self.size_multiple

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, code: Tensor) -> Tensor:
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise UsageError(
                f"{type(self).__name__} expects a (N, C, H, W) batch, got shape {tuple(x.shape)}"
            )
        if self.fixed_size is not None and tuple(x.shape[1:]) != tuple(self.fixed_size):
            c, h, w = self.fixed_size
            raise UsageError(
                f"{type(self).__name__} accepts only {c}x{h}x{w} inputs, got {tuple(x.shape[1:])}; "
                "use a convolutional model for other sizes"
            )

    def pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Replicate-pad H and W up to a multiple of `size_multiple`; returns the padded batch and (H, W)."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, (h, w)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        xp, (h, w) = self.pad(x)
        out = self.decode(self.encode(xp))
        return out[..., :h, :w]

    def to_image(self, out: Tensor) -> Tensor:
        """Map raw output to an image in [0, 1]."""
        return torch.sigmoid(out) if self.output_kind == "logits" else out.clamp(0.0, 1.0)

    @torch.inference_mode()
    def denoise(self, x: Tensor) -> Tensor:
        """Denoise a batch in [0, 1]; returns float32 [0, 1] of the same shape, on x's device.

        x is moved to the model's device and the result back, so a model that evaluation moved to a GPU still
        takes CPU batches. The output is mapped to an image in float32: under bf16 autocast a bf16 sigmoid
        would leave only 8 bits of precision near 1, less than a 16-bit image file holds.
        """
        device = module_device(self, default=x.device)
        return self.to_image(self(x.to(device)).float()).to(x.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
