"""Classical denoisers behind the same call as learned ones: `method.denoise(x, sigma=None)`.

Every method (baseline or wrapped model) has:
  name          str, as shown in tables and figures
  needs_sigma   whether it uses the noise level; when it does and `sigma` is None, the level is estimated per
                image with skimage.restoration.estimate_sigma (wavelet MAD), so blind use works too
  slow          True for methods whose per-image cost makes a full test set impractical on CPU (nlm, bm3d);
                evaluation runs those on a fixed, stated subset
  denoise(x, sigma=None)  (N, C, H, W) float in [0, 1] -> same shape, float, [0, 1]; `sigma` is one level for
                the batch or one per image, on the [0, 1] pixel scale

Parameters tied to sigma were chosen on 200 MNIST and Fashion-MNIST training images with clipped Gaussian
noise at s = 0.05..0.7: blur width 0.4 + s px, TV weight 0.5 s. NL-means uses scikit-image's documented
recipe (h = 0.8 sigma, fast mode, 5x5 patches, search distance 6) with a sigma it estimates, and h = 0.4 sigma
with a sigma it is given. Handed the noise's true std, 0.8 of it over-smooths these small images from s = 0.3
on, clipped or not; the wavelet estimate falls short of the true std at high levels, which hid that. 0.4 was
chosen on 200 training images of each dataset at s = 0.1..0.7 (clipped): mean PSNR +0.35 dB over 0.8, up to
+1.1 dB at s = 0.5, 0.2 dB less at s = 0.1.

Example:
    >>> method = create_baseline("tv")
    >>> clean = method.denoise(noisy, sigma=0.3)
    >>> same = as_denoiser(create_model("unet")).denoise(noisy)  # learned models, same call
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dae.errors import ResourceError, UsageError
from dae.registry import Registry

__all__ = [
    "BASELINES",
    "ClassicalDenoiser",
    "LearnedDenoiser",
    "as_denoiser",
    "create_baseline",
    "list_baselines",
    "estimate_sigma",
]

BASELINES: Registry[ClassicalDenoiser] = Registry("baseline", name_pattern="[a-z][a-z0-9_]*")

SigmaArg = float | Sequence[float] | Tensor | None

_SIGMA_FLOOR = 1e-6  # below this there is nothing to remove: sigma-driven methods return the input


def _check_batch(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise UsageError(f"{who} expects a float (N, C, H, W) batch in [0, 1], got {got}")


def _image_view(arr: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(C, H, W) -> (H, W) with channel_axis None for grey, (H, W, C) with channel_axis -1 otherwise."""
    if arr.shape[0] == 1:
        return arr[0], None
    return np.moveaxis(arr, 0, -1), -1


def _from_image_view(img: np.ndarray, channels: int) -> np.ndarray:
    return img[None] if channels == 1 else np.moveaxis(img, -1, 0)


def estimate_sigma(x: Tensor) -> list[float]:
    """Gaussian noise std per image (skimage wavelet-MAD estimate, averaged over channels).

    Example:
        >>> from dae.data.noise import add_noise
        >>> estimate_sigma(add_noise(torch.full((2, 1, 64, 64), 0.5), "gaussian:0.1", seed=0))
        [0.0960..., 0.1009...]
    """
    from skimage.restoration import estimate_sigma as _est

    _check_batch(x, "estimate_sigma")
    arr = x.detach().to("cpu", torch.float64).numpy()
    out = []
    for a in arr:
        img, axis = _image_view(a)
        # skimage gives NaN for an image with no fine detail at all (a digit a block erased), with numpy's
        # "Mean of empty slice" warnings on the way: there is no noise to see.
        # A grey picture a few pixels wide makes skimage guess it is a colour image and say so: it is not.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", "image is size .* on the last axis", UserWarning)
            s = float(_est(img, channel_axis=axis, average_sigmas=True))
        out.append(s if math.isfinite(s) else 0.0)
    return out


def _resolve_sigmas(x: Tensor, sigma: SigmaArg, who: str) -> list[float]:
    n = x.shape[0]
    if sigma is None:
        return estimate_sigma(x)
    if isinstance(sigma, Tensor):
        sigma = sigma.detach().cpu().flatten().tolist()
        if len(sigma) == 1:
            sigma = sigma[0]
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        values = [float(sigma)] * n
    elif isinstance(sigma, Sequence) and not isinstance(sigma, str):
        values = [float(s) for s in sigma]
        if len(values) != n:
            raise UsageError(f"{who}: got {len(values)} sigma values for a batch of {n} images")
    else:
        raise UsageError(f"{who}: sigma must be a number, one number per image or None, got {sigma!r}")
    for s in values:
        if not (math.isfinite(s) and s >= 0):
            raise UsageError(f"{who}: sigma must be a finite number >= 0, got {s}")
    return values


class ClassicalDenoiser:
    """Base class: subclasses set `name`, `needs_sigma`, `slow` and implement `_denoise_one` (one image).

    `_denoise_one(img, sigma, channel_axis)` gets a float64 (H, W) or (H, W, C) array and the image's sigma
    (None when the method ignores it) and returns the same shape.
    """

    name: str = ""
    needs_sigma: bool = False
    slow: bool = False

    def denoise(self, x: Tensor, sigma: SigmaArg = None) -> Tensor:
        _check_batch(x, f"baseline {self.name!r}")
        sigmas: list[float | None]
        if self.needs_sigma:
            sigmas = list(_resolve_sigmas(x, sigma, f"baseline {self.name!r}"))
        else:
            sigmas = [None] * x.shape[0]
        arr = x.detach().to("cpu", torch.float64).numpy()  # (N, C, H, W)
        out = self._denoise_batch(arr, sigmas)
        return torch.from_numpy(np.clip(out, 0.0, 1.0)).to(device=x.device, dtype=x.dtype)

    def _denoise_batch(self, arr: np.ndarray, sigmas: list[float | None]) -> np.ndarray:
        out = np.empty_like(arr)
        for i, (a, s) in enumerate(zip(arr, sigmas, strict=True)):
            if s is not None and s < _SIGMA_FLOOR:
                out[i] = a
                continue
            img, axis = _image_view(a)
            out[i] = _from_image_view(self._denoise_one(img, s, axis), a.shape[0])
        return out

    def _denoise_one(self, img: np.ndarray, sigma: float | None, channel_axis: int | None) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "needs_sigma" and k[0] != "_")
        return f"{type(self).__name__}({params})"


@BASELINES.register("identity")
class Identity(ClassicalDenoiser):
    """Returns the noisy input: the floor every method must beat."""

    name = "identity"

    def denoise(self, x: Tensor, sigma: SigmaArg = None) -> Tensor:
        _check_batch(x, "baseline 'identity'")
        return x.clamp(0.0, 1.0)  # clamp makes a copy, so callers may modify the result


@BASELINES.register("gaussian_blur")
class GaussianBlur(ClassicalDenoiser):
    """Gaussian low-pass filter; width (px) fixed, or 0.4 + sigma when `width` is None (tied to the noise)."""

    name = "gaussian_blur"

    def __init__(self, width: float | None = None):
        if width is not None and not (math.isfinite(width) and width > 0):
            raise UsageError(f"baseline 'gaussian_blur' width must be > 0 pixels, got {width}")
        self.width = width
        self.needs_sigma = width is None

    def _denoise_batch(self, arr: np.ndarray, sigmas: list[float | None]) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        if self.width is not None:  # one call for the whole batch: blur only H and W
            return gaussian_filter(arr, sigma=(0, 0, self.width, self.width), mode="reflect")
        return super()._denoise_batch(arr, sigmas)

    def _denoise_one(self, img: np.ndarray, sigma: float | None, channel_axis: int | None) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        # A blur wider than the image is its mean already; an uncapped one (at level 1e9) asked for 60 GiB.
        w = min(0.4 + float(sigma), max(img.shape[:2]))
        spatial = (w, w) if channel_axis is None else (w, w, 0)
        return gaussian_filter(img, sigma=spatial, mode="reflect")


@BASELINES.register("median")
class Median(ClassicalDenoiser):
    """Median filter over a size x size window (default 3x3), per channel: the classic impulse-noise fix."""

    name = "median"

    def __init__(self, size: int = 3):
        if int(size) != size or size < 1:
            raise UsageError(f"baseline 'median' size must be a whole number >= 1, got {size}")
        self.size = int(size)

    def _denoise_batch(self, arr: np.ndarray, sigmas: list[float | None]) -> np.ndarray:
        from scipy.ndimage import median_filter

        return median_filter(arr, size=(1, 1, self.size, self.size), mode="reflect")


@BASELINES.register("nlm")
class NonLocalMeans(ClassicalDenoiser):
    """Non-local means (skimage, fast mode): h = h_factor * sigma, 5x5 patches, search distance 6.

    h_factor None (the default): 0.8 with a sigma it estimates (scikit-image's recipe), 0.4 with one it is
    given (see the module's notes).
    """

    name = "nlm"
    needs_sigma = True
    slow = True
    ESTIMATED_FACTOR, GIVEN_FACTOR = 0.8, 0.4

    def __init__(self, h_factor: float | None = None, patch_size: int = 5, patch_distance: int = 6):
        self.h_factor = None if h_factor is None else float(h_factor)
        self.patch_size = int(patch_size)
        self.patch_distance = int(patch_distance)

    def denoise(self, x: Tensor, sigma: SigmaArg = None) -> Tensor:
        if self.h_factor is not None:
            return super().denoise(x, sigma)
        tuned = copy.copy(self)  # the factor goes with where sigma comes from; self is left as it was
        tuned.h_factor = self.ESTIMATED_FACTOR if sigma is None else self.GIVEN_FACTOR
        return ClassicalDenoiser.denoise(tuned, x, sigma)

    def _denoise_one(self, img: np.ndarray, sigma: float | None, channel_axis: int | None) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        return denoise_nl_means(
            img,
            h=self.h_factor * sigma,
            sigma=sigma,
            fast_mode=True,
            patch_size=self.patch_size,
            patch_distance=self.patch_distance,
            channel_axis=channel_axis,
        )


@BASELINES.register("tv")
class TotalVariation(ClassicalDenoiser):
    """Total-variation denoising (Chambolle) with weight = weight_factor * sigma."""

    name = "tv"
    needs_sigma = True

    def __init__(self, weight_factor: float = 0.5):
        self.weight_factor = float(weight_factor)

    def _denoise_one(self, img: np.ndarray, sigma: float | None, channel_axis: int | None) -> np.ndarray:
        from skimage.restoration import denoise_tv_chambolle

        return denoise_tv_chambolle(img, weight=self.weight_factor * sigma, channel_axis=channel_axis)


@BASELINES.register("wavelet")
class Wavelet(ClassicalDenoiser):
    """Wavelet shrinkage (skimage denoise_wavelet): BayesShrink, soft thresholds, given sigma."""

    name = "wavelet"
    needs_sigma = True

    def __init__(self, wavelet: str = "db1", method: str = "BayesShrink", mode: str = "soft"):
        self.wavelet = wavelet
        self.method = method
        self.mode = mode

    def _denoise_one(self, img: np.ndarray, sigma: float | None, channel_axis: int | None) -> np.ndarray:
        from skimage.restoration import denoise_wavelet

        return denoise_wavelet(
            img,
            sigma=sigma,
            wavelet=self.wavelet,
            method=self.method,
            mode=self.mode,
            rescale_sigma=True,
            channel_axis=channel_axis,
        )


@BASELINES.register("bm3d")
class BM3D(ClassicalDenoiser):
    """BM3D (optional `bm3d` package, non-commercial licence); bm3d_rgb for RGB, per channel otherwise."""

    name = "bm3d"
    needs_sigma = True
    slow = True

    def __init__(self) -> None:
        try:
            import bm3d
        except ImportError:
            raise ResourceError(
                "baseline 'bm3d' needs the optional package bm3d (non-commercial licence): "
                "pip install 'dae[bm3d]'"
            ) from None
        self._bm3d = bm3d

    def __repr__(self) -> str:
        return "BM3D()"

    def denoise(self, x: Tensor, sigma: SigmaArg = None) -> Tensor:
        _check_batch(x, "baseline 'bm3d'")
        if min(x.shape[-2:]) < 8:  # bm3d's own error would be a ValueError from deep inside it
            raise UsageError(
                f"baseline 'bm3d' needs images of at least 8x8 pixels, got {x.shape[-2]}x{x.shape[-1]}"
            )
        return super().denoise(x, sigma)

    def _denoise_one(self, img: np.ndarray, sigma: float | None, channel_axis: int | None) -> np.ndarray:
        if channel_axis is None:
            return np.asarray(self._bm3d.bm3d(img, sigma_psd=sigma), dtype=np.float64)
        if img.shape[-1] == 3:
            return np.asarray(self._bm3d.bm3d_rgb(img, sigma), dtype=np.float64)
        chans = [self._bm3d.bm3d(img[..., k], sigma_psd=sigma) for k in range(img.shape[-1])]
        return np.stack(chans, axis=-1).astype(np.float64)


def create_baseline(name: str, **kwargs: Any) -> ClassicalDenoiser:
    """Build a registered classical denoiser by name.

    Example:
        >>> create_baseline("median", size=5).denoise(noisy)
    """
    return BASELINES.create(name, **kwargs)


def list_baselines() -> list[str]:
    """Names of all registered classical denoisers."""
    return BASELINES.names()


class LearnedDenoiser:
    """A trained `dae.models.base.Denoiser` behind the baseline interface; runs in eval mode, in batches.

    Example:
        >>> method = LearnedDenoiser(model, name="unet")
        >>> method.denoise(noisy)  # (N, C, H, W) in [0, 1] on noisy's device
    """

    needs_sigma = False
    slow = False

    def __init__(self, model: torch.nn.Module, name: str | None = None, batch_size: int = 256):
        if batch_size < 1:
            raise UsageError(f"LearnedDenoiser batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.name = name or getattr(model, "dae_name", None) or type(model).__name__
        self.batch_size = int(batch_size)

    def denoise(self, x: Tensor, sigma: SigmaArg = None) -> Tensor:
        from dae.inference import denoise

        _check_batch(x, f"model {self.name!r}")
        # The path dae.denoise takes (eval mode, colour images channel by channel for a grayscale model, large
        # images in tiles), in exact fp32 so evaluation numbers do not depend on whether the CPU has bf16.
        return denoise(self.model, x, batch_size=self.batch_size, precision="fp32").to(x.dtype)

    def __repr__(self) -> str:
        return f"LearnedDenoiser(name={self.name!r}, batch_size={self.batch_size})"


def as_denoiser(obj: Any, name: str | None = None, batch_size: int = 256) -> Any:
    """Anything evaluation can call: a baseline passes through, a learned Denoiser gets wrapped.

    Example:
        >>> methods = [as_denoiser(m) for m in (create_baseline("tv"), model)]
    """
    from dae.models.base import Denoiser

    if isinstance(obj, Denoiser):
        return LearnedDenoiser(obj, name=name, batch_size=batch_size)
    if all(hasattr(obj, a) for a in ("denoise", "needs_sigma", "name")):
        return obj
    raise UsageError(
        f"cannot use {type(obj).__name__} as a denoiser: expected a dae Denoiser model or an object with "
        ".name, .needs_sigma and .denoise(x, sigma=None)"
    )
