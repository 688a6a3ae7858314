"""Image-quality metrics on batched tensors: one value per image, to be averaged over a set by the caller.

All metrics take two (N, C, H, W) batches, compute in float64 (so averages over large sets lose nothing and
SSIM agrees with scikit-image to ~1e-12) and return a float64 tensor of shape (N,) on the inputs' device.

- `mse`: mean squared error over C, H, W.
- `psnr`: 10 log10(data_range^2 / mse). MSE is floored at 1e-10 * data_range^2, so identical images score a
  finite 100 dB instead of inf, and set averages stay finite. No other pair of [0, 1] images of practical size
  comes near that floor (one 1/255 step in one pixel of a 28x28 image is ~77 dB).
- `ssim`: the standard SSIM of Wang et al. 2004 as scikit-image computes it with `gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False`: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  statistics only where the window fits (valid convolution, no padding), mean over pixels and channels.
  Images smaller than the window raise UsageError rather than silently switching to a non-standard window;
  pass a smaller odd `win_size` (and sigma) explicitly for tiny images (the value is then not standard SSIM).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dae.errors import UsageError

__all__ = ["mse", "psnr", "ssim"]

PSNR_MSE_FLOOR = 1e-10  # relative to data_range**2: identical images give 100 dB
_SSIM_CHUNK_ELEMENTS = 1 << 23  # float64 elements of the stacked maps per chunk (64 MiB)


def _check_pair(x: Tensor, y: Tensor, fn: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise UsageError(f"{fn} takes two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 4 or x.shape != y.shape:
        raise UsageError(
            f"{fn} takes two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.device != y.device:
        raise UsageError(f"{fn} got tensors on different devices: {x.device} and {y.device}")
    return x.to(torch.float64), y.to(torch.float64)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image, shape (N,).

    Example:
        >>> mse(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5))
        tensor([0.2500, 0.2500], dtype=torch.float64)
    """
    x, y = _check_pair(x, y, "mse")
    return (x - y).pow(2).flatten(1).mean(dim=1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, shape (N,); identical images give 100 dB (see module doc).

    Example:
        >>> psnr(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1))
        tensor([20.0000], dtype=torch.float64)
    """
    if not data_range > 0:
        raise UsageError(f"psnr data_range must be > 0, got {data_range}")
    err = mse(x, y).clamp_min(PSNR_MSE_FLOOR * data_range**2)
    return 10.0 * torch.log10(data_range**2 / err)


def _gaussian_window(win_size: int, sigma: float, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian taps, the same as scipy.ndimage.gaussian_filter uses for this size."""
    r = torch.arange(win_size, dtype=torch.float64, device=device) - (win_size - 1) / 2
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image (mean over valid pixels and channels), shape (N,).

    Example:
        >>> x = torch.rand(2, 1, 28, 28)
        >>> ssim(x, x)
        tensor([1., 1.], dtype=torch.float64)
    """
    x, y = _check_pair(x, y, "ssim")
    if not data_range > 0:
        raise UsageError(f"ssim data_range must be > 0, got {data_range}")
    if win_size < 1 or win_size % 2 == 0:
        raise UsageError(f"ssim win_size must be a positive odd number, got {win_size}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise UsageError(f"ssim sigma must be > 0, got {sigma}")
    n, c, h, w = x.shape
    if h < win_size or w < win_size:
        raise UsageError(
            f"ssim needs images of at least {win_size}x{win_size} pixels, got {h}x{w}; "
            "pass a smaller odd win_size for tiny images (no longer the standard SSIM)"
        )
    g = _gaussian_window(win_size, sigma, x.device)
    # Separable Gaussian: one depthwise conv over rows, one over columns, on all five maps at once.
    kh = g.view(1, 1, win_size, 1).expand(5 * c, 1, win_size, 1)
    kw = g.view(1, 1, 1, win_size).expand(5 * c, 1, 1, win_size)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    # Chunk over images so a whole test set never builds (N, 5C, H, W) float64 maps at once.
    step = max(1, _SSIM_CHUNK_ELEMENTS // (5 * c * h * w))
    out = []
    for i in range(0, n, step):
        xs, ys = x[i : i + step], y[i : i + step]
        maps = torch.cat([xs, ys, xs * xs, ys * ys, xs * ys], dim=1)  # (n, 5C, H, W)
        stats = F.conv2d(F.conv2d(maps, kh, groups=5 * c), kw, groups=5 * c)  # (n, 5C, H-10, W-10) for 11x11
        mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
        var_x = e_xx - mu_x * mu_x
        var_y = e_yy - mu_y * mu_y
        cov = e_xy - mu_x * mu_y
        s_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        out.append(s_map.flatten(1).mean(dim=1))
    return torch.cat(out) if out else x.new_zeros(0)
