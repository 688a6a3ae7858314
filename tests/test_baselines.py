"""Classical baselines and learned models behind one `denoise(x, sigma=None)` interface."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from dae.baselines import (
    BASELINES,
    BM3D,
    LearnedDenoiser,
    as_denoiser,
    create_baseline,
    estimate_sigma,
    list_baselines,
)
from dae.data.noise import add_noise
from dae.errors import ResourceError, UsageError
from dae.inference import DEFAULT_TILE
from dae.metrics import psnr
from dae.models.base import Denoiser

try:
    import bm3d  # noqa: F401

    HAVE_BM3D = True
except ImportError:
    HAVE_BM3D = False

SLOW = {"nlm", "bm3d"}


def make(name: str):
    if name == "bm3d" and not HAVE_BM3D:
        pytest.skip("optional package bm3d not installed")
    return create_baseline(name)


def smooth(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """A smooth synthetic image (low-frequency waves), different per image and channel."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.empty(n, c, h, w)
    for i in range(n):
        for k in range(c):
            out[i, k] = 0.5 + 0.3 * torch.sin(3 * xx + i + k) * torch.cos(2 * yy - k)
    return out


def test_registry_lists_every_baseline():
    assert list_baselines() == BASELINES.names()
    assert set(list_baselines()) == {"identity", "gaussian_blur", "median", "nlm", "tv", "wavelet", "bm3d"}


@pytest.mark.parametrize("name", BASELINES.names())
def test_interface_attributes(name):
    method = make(name)
    assert method.name == name
    assert isinstance(method.needs_sigma, bool)
    assert method.slow == (name in SLOW)
    assert as_denoiser(method) is method
    assert repr(method).startswith(type(method).__name__ + "(")


@pytest.mark.parametrize("name", BASELINES.names())
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 17, 13), (1, 1, 15, 21)])
@pytest.mark.parametrize("sigma", [0.1, None])
def test_shape_dtype_and_range_preserved(name, shape, sigma):
    method = make(name)
    noisy = add_noise(smooth(*shape), "gaussian:0.1", seed=0)
    before = noisy.clone()
    out = method.denoise(noisy, sigma=sigma)
    assert out.shape == noisy.shape and out.dtype == torch.float32 and out.device == noisy.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.isfinite(out).all()
    assert torch.equal(noisy, before)


@pytest.mark.parametrize("name", [n for n in BASELINES.names() if n != "identity"])
@pytest.mark.parametrize("c", [1, 3])
def test_each_baseline_improves_psnr_at_sigma_0_1(name, c):
    method = make(name)
    clean = smooth(2, c, 32, 32)
    noisy = add_noise(clean, "gaussian:0.1", seed=0)
    base = psnr(noisy, clean)
    for sigma in (0.1, None):  # known level, and blind (estimated) level
        gained = psnr(method.denoise(noisy, sigma=sigma), clean) - base
        assert (gained > 1.0).all(), f"{name} gained only {gained.tolist()} dB (sigma={sigma})"


def test_identity_returns_the_input_as_a_copy():
    x = torch.rand(2, 1, 8, 8)
    out = create_baseline("identity").denoise(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_per_image_sigma_is_used_per_image():
    tv = create_baseline("tv")
    x = add_noise(smooth(2, 1, 24, 24), "gaussian:0.2", seed=0)
    both = tv.denoise(x, sigma=[0.0, 0.3])
    assert torch.equal(both[0], x[0])  # sigma 0: nothing to remove
    assert torch.allclose(both[1], tv.denoise(x[1:], sigma=0.3))
    assert torch.allclose(tv.denoise(x, sigma=torch.tensor([0.3, 0.3])), tv.denoise(x, sigma=0.3))


@pytest.mark.parametrize(
    "bad,needle", [([0.1], "got 1 sigma values for a batch of 2 images"), (-0.1, ">= 0"), ("x", "sigma")]
)
def test_bad_sigma_is_a_usage_error(bad, needle):
    with pytest.raises(UsageError, match=needle):
        create_baseline("nlm").denoise(torch.rand(2, 1, 12, 12), sigma=bad)


def test_bad_batches_are_usage_errors():
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        create_baseline("median").denoise(torch.rand(12, 12))
    with pytest.raises(UsageError, match="width"):
        create_baseline("gaussian_blur", width=0)
    with pytest.raises(UsageError, match="unknown baseline 'bm4d'"):
        create_baseline("bm4d")


def test_gaussian_blur_width_follows_sigma_unless_fixed():
    x = add_noise(smooth(1, 1, 24, 24), "gaussian:0.3", seed=0)
    tied = create_baseline("gaussian_blur")
    assert tied.needs_sigma
    assert not torch.allclose(tied.denoise(x, sigma=0.05), tied.denoise(x, sigma=0.6))
    fixed = create_baseline("gaussian_blur", width=1.0)
    assert not fixed.needs_sigma
    assert torch.equal(fixed.denoise(x, sigma=0.05), fixed.denoise(x, sigma=0.6))
    assert torch.allclose(fixed.denoise(x), tied.denoise(x, sigma=0.6), atol=1e-6)  # width 0.4 + 0.6


def test_nlm_filter_strength_goes_with_where_sigma_comes_from():
    # A given sigma (evaluation measures the clipped noise's std) is larger than the wavelet estimate at high
    # levels; 0.8 of it, scikit-image's recipe for its own estimate, flattened the digits (2 dB below the
    # estimate at s = 0.7). So h is 0.4 sigma with a given sigma and 0.8 sigma with an estimated one.
    from dae.baselines import estimate_sigma

    x = add_noise(smooth(2, 1, 24, 24), "gaussian:0.3", seed=0)
    nlm = create_baseline("nlm")
    given = nlm.denoise(x, sigma=0.3)
    assert torch.allclose(given, create_baseline("nlm", h_factor=0.4).denoise(x, sigma=0.3))
    assert not torch.allclose(given, create_baseline("nlm", h_factor=0.8).denoise(x, sigma=0.3))
    assert torch.allclose(nlm.denoise(x), create_baseline("nlm", h_factor=0.8).denoise(x, estimate_sigma(x)))
    assert nlm.h_factor is None  # denoising left the method as it was
    fixed = create_baseline("nlm", h_factor=0.8)
    assert torch.allclose(fixed.denoise(x), fixed.denoise(x, estimate_sigma(x)))


def test_gaussian_blur_width_is_capped_at_the_image():
    # Level 1e9 asked scipy for a 60 GiB kernel (numpy's _ArrayMemoryError, a traceback): a blur wider than the
    # image is its mean already.
    x = torch.rand(2, 1, 28, 28)
    out = create_baseline("gaussian_blur").denoise(x, sigma=1e9)
    assert torch.isfinite(out).all() and out.std(dim=(2, 3)).max() < 0.05


def test_an_image_with_no_detail_left_has_no_noise_to_see(tmp_path):
    # skimage's estimate is NaN for a flat image (a digit a block erased whole): tv and wavelet returned NaN,
    # and one NaN image made the whole set's average NaN.
    flat = torch.zeros(2, 1, 28, 28)
    assert estimate_sigma(flat) == [0.0, 0.0]
    for name in ("tv", "wavelet"):
        assert torch.equal(create_baseline(name).denoise(flat), flat)


def test_median_removes_salt_and_pepper():
    clean = smooth(2, 1, 28, 28)
    noisy = add_noise(clean, "salt_pepper:0.05", seed=0)
    assert (psnr(create_baseline("median").denoise(noisy), clean) - psnr(noisy, clean) > 10).all()


def test_estimate_sigma_is_close_on_flat_images():
    x = add_noise(torch.full((3, 1, 64, 64), 0.5), "gaussian:0.1,clip=false", seed=0)
    est = estimate_sigma(x)
    assert len(est) == 3 and all(abs(s - 0.1) < 0.01 for s in est)


def test_bm3d_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # makes `import bm3d` fail even when installed
    with pytest.raises(ResourceError) as e:
        BM3D()
    assert str(e.value) == (
        "baseline 'bm3d' needs the optional package bm3d (non-commercial licence): pip install 'dae[bm3d]'"
    )
    assert e.value.exit_code == 5


def test_bm3d_refuses_images_smaller_than_its_blocks(monkeypatch):
    import types

    calls = []
    fake = types.SimpleNamespace(bm3d=lambda img, sigma_psd: calls.append(img.shape) or img)
    monkeypatch.setitem(sys.modules, "bm3d", fake)  # the size check comes before bm3d is called
    with pytest.raises(UsageError, match="'bm3d' needs images of at least 8x8 pixels, got 5x9"):
        BM3D().denoise(torch.rand(1, 1, 5, 9), sigma=0.1)
    assert calls == []
    assert BM3D().denoise(torch.rand(1, 1, 8, 8), sigma=0.1).shape == (1, 1, 8, 8) and calls == [(8, 8)]


class TinyModel(Denoiser):
    """A 1x1 conv 'denoiser' that records the mode and batch sizes it was called with."""

    output_kind = "image"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.calls: list[tuple[bool, int]] = []

    def encode(self, x):
        self.calls.append((self.training, x.shape[0]))
        return self.conv(x)

    def decode(self, code):
        return code


def test_as_denoiser_wraps_learned_models_in_batches_in_eval_mode():
    model = TinyModel()
    model.dae_name = "tiny"
    model.train()
    method = as_denoiser(model, batch_size=3)
    assert isinstance(method, LearnedDenoiser)
    assert method.name == "tiny" and method.needs_sigma is False and method.slow is False
    x = torch.rand(7, 1, 9, 9)
    out = method.denoise(x, sigma=0.3)  # sigma is accepted and ignored
    assert [b for _, b in model.calls] == [3, 3, 1]
    assert not any(training for training, _ in model.calls)
    assert model.training  # the caller's mode is restored
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, model.denoise(x))
    assert as_denoiser(model, name="custom").name == "custom"
    assert as_denoiser(TinyModel()).name == "TinyModel"


@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (1, 4, 20, 20)])
def test_learned_denoiser_takes_colour_through_a_grayscale_model_channel_by_channel(shape):
    # One interface: what dae.denoise accepts, evaluation's wrapper accepts too (it once refused colour).
    from dae.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", width=8).eval()
    x = torch.rand(shape)
    out = as_denoiser(model).denoise(x)
    assert out.shape == x.shape
    with torch.no_grad():
        for k in range(shape[1]):
            assert torch.allclose(out[:, k : k + 1], model.denoise(x[:, k : k + 1]), atol=1e-5)


def test_learned_denoiser_handles_large_images():
    from dae.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", width=8).eval()
    x = torch.rand(1, 1, 700, 900)  # over dae.denoise's 512x512 threshold, so it goes in blended tiles
    seen: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    out = as_denoiser(model).denoise(x)
    hook.remove()
    with torch.no_grad():
        whole = model.denoise(x)
    # The wrapper tiled (no forward pass saw more than a default tile) and the seams blend to near-equal.
    assert seen and max(h * w for h, w in seen) <= DEFAULT_TILE**2
    assert out.shape == x.shape and (out - whole).abs().max() < 0.05


def test_as_denoiser_rejects_other_objects():
    with pytest.raises(UsageError, match="cannot use int as a denoiser"):
        as_denoiser(3)
    with pytest.raises(UsageError, match="cannot use Conv2d"):
        as_denoiser(nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("shape", [(1, 1, 37, 1), (1, 1, 1, 1), (1, 1, 2, 2), (1, 1, 3, 4)])
def test_sigma_of_a_tiny_grey_picture_is_estimated_without_skimages_colour_warning(shape):
    """skimage took the few columns for colour channels and said so, with advice that does not apply."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (sigma,) = estimate_sigma(torch.rand(shape, generator=torch.Generator().manual_seed(0)))
    assert sigma >= 0
