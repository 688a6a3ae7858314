"""PSNR, SSIM and MSE: known values and agreement with scikit-image."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import dae.metrics as metrics
from dae.errors import UsageError
from dae.metrics import mse, psnr, ssim

MNIST_TEST = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def digit_like(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Dark background with bright smooth strokes, like MNIST digits."""
    g = gen(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    out = torch.zeros(n, c, h, w)
    for i in range(n):
        cx, cy, r = torch.rand(3, generator=g) * torch.tensor([0.6, 0.6, 0.4]) + torch.tensor(
            [-0.3, -0.3, 0.3]
        )
        ring = torch.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() - r).pow(2) / 0.01)
        out[i] = ring * torch.linspace(0.7, 1.0, c).view(c, 1, 1)
    return out.clamp(0, 1)


def sk_ssim(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> list[float]:
    return [
        structural_similarity(
            a[i].double().numpy(),
            b[i].double().numpy(),
            gaussian_weights=True,
            sigma=sigma,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        for i in range(a.shape[0])
    ]


def sk_psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [
        peak_signal_noise_ratio(a[i].double().numpy(), b[i].double().numpy(), data_range=1.0)
        for i in range(len(a))
    ]


def test_psnr_of_a_constant_offset_is_exact():
    x = torch.rand(3, 1, 16, 16, generator=gen()) * 0.8
    assert torch.allclose(psnr(x, x + 0.1), torch.full((3,), 20.0, dtype=torch.float64), atol=1e-5)
    # data_range scales the peak: an offset of 0.1 on a 0..2 range is 20*log10(2/0.1) dB.
    assert psnr(x, x + 0.1, data_range=2.0)[0].item() == pytest.approx(20 * np.log10(20), abs=1e-5)


def test_identical_images_give_a_finite_100_db():
    x = torch.rand(2, 3, 12, 12)
    p = psnr(x, x)
    assert torch.equal(p, torch.full((2,), 100.0, dtype=torch.float64))
    assert psnr(x * 255, x * 255, data_range=255.0)[0].item() == pytest.approx(100.0)


def test_metrics_are_per_image():
    x = torch.zeros(3, 1, 12, 12)
    y = x.clone()
    y[1] += 0.1
    y[2] += 0.2
    assert torch.allclose(mse(x, y), torch.tensor([0.0, 0.01, 0.04], dtype=torch.float64))
    p = psnr(x, y)
    assert p.shape == (3,) and p.dtype == torch.float64
    assert p[1].item() == pytest.approx(20.0) and p[2].item() == pytest.approx(20 * np.log10(5))
    s = ssim(x + 0.3, y + 0.3)
    assert s[0].item() == pytest.approx(1.0) and s[1] > s[2]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [(28, 28), (23, 31)])
def test_psnr_and_ssim_match_skimage(c, size):
    clean = digit_like(4, c, *size)
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=gen(1))).clamp(0, 1)
    random = torch.rand(clean.shape, generator=gen(2))
    for a, b in [(clean, noisy), (clean, random), (noisy, random)]:
        assert np.allclose(psnr(a, b).numpy(), sk_psnr(a, b), atol=1e-4)
        assert np.allclose(ssim(a, b).numpy(), sk_ssim(a, b), atol=1e-4)


@pytest.mark.skipif(not MNIST_TEST.exists(), reason="shared MNIST not present")
def test_ssim_matches_skimage_on_real_mnist_digits():
    with gzip.open(MNIST_TEST) as f:
        raw = f.read(16 + 6 * 784)
    x = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).copy()).float().view(6, 1, 28, 28) / 255
    noisy = (x + 0.3 * torch.randn(x.shape, generator=gen())).clamp(0, 1)
    assert np.allclose(ssim(x, noisy).numpy(), sk_ssim(x, noisy), atol=1e-4)
    assert np.allclose(psnr(x, noisy).numpy(), sk_psnr(x, noisy), atol=1e-4)


def test_ssim_properties():
    x = digit_like(2, 1, 28, 28)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    light = (x + 0.05 * torch.randn(x.shape, generator=gen())).clamp(0, 1)
    heavy = (x + 0.5 * torch.randn(x.shape, generator=gen())).clamp(0, 1)
    assert (ssim(x, light) > ssim(x, heavy)).all()
    assert torch.allclose(ssim(x, heavy), ssim(heavy, x))  # symmetric


def test_ssim_chunking_gives_the_same_values(monkeypatch):
    a = torch.rand(7, 3, 16, 16, generator=gen())
    b = torch.rand(7, 3, 16, 16, generator=gen(1))
    whole = ssim(a, b)
    monkeypatch.setattr(metrics, "_SSIM_CHUNK_ELEMENTS", 5 * 3 * 16 * 16 * 2)  # two images per chunk
    assert torch.allclose(ssim(a, b), whole, atol=1e-12)


def test_ssim_on_small_images_raises_unless_a_smaller_window_is_asked_for():
    a = torch.rand(2, 1, 8, 8, generator=gen())
    b = torch.rand(2, 1, 8, 8, generator=gen(1))
    with pytest.raises(UsageError, match="at least 11x11 pixels, got 8x8"):
        ssim(a, b)
    # win_size=7 with sigma 0.8 is exactly what skimage uses for sigma=0.8 (radius int(3.5 * 0.8 + 0.5) = 3).
    assert np.allclose(ssim(a, b, win_size=7, sigma=0.8).numpy(), sk_ssim(a, b, sigma=0.8), atol=1e-4)
    with pytest.raises(UsageError, match="odd"):
        ssim(a, b, win_size=6)


def test_bad_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="one shape"):
        psnr(torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 13))
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        ssim(torch.rand(1, 12, 12), torch.rand(1, 12, 12))
    with pytest.raises(UsageError, match="data_range"):
        psnr(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), data_range=0)


def test_float32_inputs_and_empty_batches():
    a = torch.rand(2, 1, 12, 12)
    assert ssim(a, a.clone()).dtype == torch.float64
    assert psnr(a[:0], a[:0]).shape == (0,)
    assert ssim(a[:0], a[:0]).shape == (0,)
