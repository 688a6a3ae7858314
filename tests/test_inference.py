"""Denoising tensors (batched, channel rule, tiled) and files/folders (report, overwrite rules, atomicity)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import dae.inference as inference
from dae.errors import DaeError, DataError, PartialFailure, ResourceError, UsageError
from dae.inference import denoise, denoise_files, denoise_tiled, model_channels
from dae.models import create_model
from dae.models.base import Denoiser


class TinyConv(Denoiser):
    """Two 3x3 convs: receptive-field radius 2, zero padding (so tile edges differ unless blended away)."""

    output_kind = "image"

    def __init__(self, in_channels: int = 1, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, in_channels, 3, padding=1)
        self.seen: list[tuple[int, ...]] = []
        self.modes: list[bool] = []

    def encode(self, x: Tensor) -> Tensor:
        self.seen.append(tuple(x.shape))
        self.modes.append(self.training)
        return torch.relu(self.conv1(x))

    def decode(self, code: Tensor) -> Tensor:
        return self.conv2(code) * 0.1 + 0.5


class TileMean(Denoiser):
    """Outputs each input's global mean: as tile-dependent as a model can be, to expose seams."""

    output_kind = "image"

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, code: Tensor) -> Tensor:
        return code.mean(dim=(1, 2, 3), keepdim=True).expand_as(code) + self.dummy


class Halve:
    """A duck-typed classical baseline."""

    def denoise(self, x: Tensor, sigma: float | None = None) -> Tensor:
        return x.double() * 0.5


def rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- tensors


def test_denoise_shapes_dtype_and_rank() -> None:
    model = TinyConv()
    x = rand(5, 1, 37, 53, seed=1).double()
    y = denoise(model, x, precision="fp32")
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert not torch.is_inference(y)  # usable with autograd afterwards
    single = denoise(model, x[2], precision="fp32")
    assert single.shape == (1, 37, 53)
    torch.testing.assert_close(single, y[2])
    torch.testing.assert_close(y, model.denoise(x.float()))


def test_batches_give_the_same_result_and_respect_batch_size() -> None:
    model = TinyConv()
    x = rand(10, 1, 9, 11)
    whole = denoise(model, x)
    model.seen.clear()
    parts = denoise(model, x, batch_size=3)
    assert [s[0] for s in model.seen] == [3, 3, 3, 1]
    torch.testing.assert_close(parts, whole)


def test_eval_mode_during_call_and_training_mode_restored() -> None:
    model = TinyConv()
    model.train()
    denoise(model, rand(2, 1, 8, 8))
    assert model.modes == [False]
    assert model.training


def test_rgb_image_one_channel_model_is_denoised_per_channel() -> None:
    model = TinyConv(in_channels=1)
    x = rand(2, 3, 12, 10)
    y = denoise(model, x, precision="fp32")
    for c in range(3):
        torch.testing.assert_close(y[:, c : c + 1], model.denoise(x[:, c : c + 1]))


def test_gray_image_rgb_model_replicates_and_averages() -> None:
    model = TinyConv(in_channels=3)
    assert model_channels(model) == 3
    x = rand(2, 1, 12, 10)
    y = denoise(model, x, precision="fp32")
    assert y.shape == x.shape
    torch.testing.assert_close(y, model.denoise(x.repeat(1, 3, 1, 1)).mean(dim=1, keepdim=True))


def test_model_channels_prefers_recorded_kwargs() -> None:
    model = TinyConv(in_channels=1)
    model.dae_kwargs = {"in_channels": 3}
    assert model_channels(model) == 3
    assert model_channels(Halve()) is None
    wrapper = types.SimpleNamespace(model=TinyConv(in_channels=3), denoise=lambda x: x)
    assert model_channels(wrapper) == 3


def test_bad_inputs_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="channels"):
        denoise(TinyConv(in_channels=3), rand(1, 2, 8, 8))
    with pytest.raises(UsageError, match="divide by 255"):
        denoise(TinyConv(), torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        denoise(TinyConv(), torch.zeros(8, 8))
    with pytest.raises(UsageError, match="not a denoiser"):
        denoise(nn.Identity(), rand(1, 1, 8, 8))
    with pytest.raises(UsageError, match="NaN or infinite"):  # once NaN out, against the docstring's [0, 1]
        denoise(TinyConv(), torch.full((1, 1, 8, 8), float("nan")))
    # Unclipped noise leaves noisy images outside [0, 1]: they are a denoiser's input, not a mistake.
    assert denoise(TinyConv(), torch.linspace(-0.5, 1.5, 64).reshape(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    strong = rand(4, 1, 16, 16) + 2.0 * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert denoise(TinyConv(), strong).shape == (4, 1, 16, 16)  # unclipped noise at level 2: still [0, 1]-ish
    with pytest.raises(UsageError, match=r"got a mean of 1\d\d.*0-255 data: divide by 255"):
        denoise(TinyConv(), rand(1, 1, 8, 8) * 255)  # came back as values in [0, 1], no error


def test_a_large_image_goes_whole_to_a_classical_method() -> None:
    # Tiled like a network's above 512x512: each tile estimated its own noise level (wavelet differed by
    # 0.034), and median ran 10x slower.
    from dae.baselines import create_baseline

    wavelet = create_baseline("wavelet")
    x = torch.rand(1, 1, 600, 600, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(denoise(wavelet, x), wavelet.denoise(x))


def test_duck_typed_baseline() -> None:
    x = rand(3, 3, 8, 8)
    y = denoise(Halve(), x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x * 0.5)


@pytest.mark.parametrize("channels", [1, 3])
def test_tiled_equals_untiled_when_receptive_field_within_margin(channels: int) -> None:
    model = TinyConv(in_channels=channels)
    x = rand(1, channels, 150, 97, seed=3)
    full = denoise(model, x, tile=0)
    model.seen.clear()
    tiled = denoise_tiled(model, x, tile=48, overlap=8)  # margin 8 // 4 = 2 = receptive-field radius
    assert len(model.seen) > 1 and all(s[-2:] == (48, 48) for s in model.seen)
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)
    # With a margin smaller than the receptive field, tile edges leak in: the check above is not vacuous.
    assert (denoise_tiled(model, x, tile=48, overlap=4) - full).abs().max() > 1e-4


@pytest.mark.parametrize(("h", "w"), [(150, 97), (161, 130), (128, 128)])
def test_tiled_equals_untiled_for_a_pooling_model_at_any_size(h: int, w: int) -> None:
    # A unet pools 2x2 blocks: tiles that started off its grid (the last one, flush with an odd-sized end)
    # pooled other blocks than the whole image's pass, and differed from it by up to 0.8 near the borders.
    model = create_model("unet", levels=1, convs=1, shuffle=1).eval()  # receptive-field radius 5
    with torch.no_grad():  # weights of one scale: a last layer that starts near zero would hide the net
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.3)
    assert model.grid == 2
    x = rand(1, 1, h, w, seed=5)
    full = denoise(model, x, tile=0, precision="fp32")
    # Both in fp32: "auto" is bf16 on CPUs with AVX512-BF16, whose rounding differs with the tile's size.
    tiled = denoise_tiled(model, x, tile=64, overlap=24, precision="fp32")  # margin 24 // 4 = 6 >= 5
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("grid", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("overlap", [0, 3, 8, 16])
@pytest.mark.parametrize("tile", [32, 45, 64])
def test_tiles_cover_the_axis_on_the_grid_with_the_overlap_asked_for(
    tile: int, overlap: int, grid: int
) -> None:
    assert tile - overlap >= grid  # every combination here is one denoise accepts (others are refused)
    for length in range(1, 3 * tile + 2 * grid):
        tiles = inference._tiles(length, tile, overlap, grid)
        starts = [s for s, _ in tiles]
        assert starts == sorted(set(starts)) and all(s % grid == 0 for s in starts)
        assert tiles[-1][0] + tiles[-1][1] == length  # the last ends flush with the axis
        if length > tile:
            assert all(n == tile for _, n in tiles[:-1]) and tile <= tiles[-1][1] < tile + grid
        for (s0, n0), (s1, _) in zip(tiles, tiles[1:]):
            assert s0 + n0 - s1 >= overlap  # neighbours overlap at least as much as asked
        weight = torch.zeros(length)
        for i, (s, n) in enumerate(tiles):
            weight[s : s + n] += inference._ramp(n, overlap, i > 0, s + n < length)
        assert (weight > 0).all()  # every pixel is covered by a tile that counts there


def test_tiles_too_small_for_the_models_grid_are_refused() -> None:
    model = create_model("unet", levels=3, shuffle=2)  # pools 16x16 blocks
    with pytest.raises(
        UsageError, match=r"tile \(20\) less overlap \(8\) must be at least 16 pixels.*--tile"
    ):
        denoise_tiled(model, rand(1, 1, 100, 100), tile=20, overlap=8)


def test_tiled_blending_leaves_no_seams() -> None:
    x = torch.linspace(0, 1, 300).expand(1, 1, 40, 300).contiguous()  # horizontal gradient
    model = TileMean()
    hard = denoise(model, x, tile=64, overlap=0)
    soft = denoise(model, x, tile=64, overlap=32)
    jump_hard = (hard[..., 1:] - hard[..., :-1]).abs().max()
    jump_soft = (soft[..., 1:] - soft[..., :-1]).abs().max()
    assert jump_hard > 0.1  # each tile outputs its own mean: a visible step between tiles
    assert jump_soft < jump_hard / 8  # the ramp spreads the step over 16 pixels
    assert torch.isfinite(soft).all()


def test_auto_tiling_bounds_what_the_model_sees(monkeypatch) -> None:
    monkeypatch.setattr(inference, "TILE_THRESHOLD", 64 * 64)
    monkeypatch.setattr(inference, "DEFAULT_TILE", 32)
    monkeypatch.setattr(inference, "TILE_BATCH", 4)
    model = TinyConv()
    x = rand(2, 1, 100, 90)
    y = denoise(model, x, overlap=8)
    assert model.seen and all(s == (4, 1, 32, 32) or (s[0] < 4 and s[1:] == (1, 32, 32)) for s in model.seen)
    torch.testing.assert_close(y, denoise(model, x, tile=0), atol=1e-6, rtol=0)
    model.seen.clear()
    denoise(model, rand(1, 1, 60, 60), overlap=8)  # below the threshold: one pass
    assert model.seen == [(1, 1, 60, 60)]


def test_tile_arguments_validated() -> None:
    x = rand(1, 1, 100, 100)
    with pytest.raises(UsageError, match="overlap"):
        denoise_tiled(TinyConv(), x, tile=32, overlap=17)
    with pytest.raises(UsageError, match="tile must be"):
        denoise(TinyConv(), x, tile=-1)
    fixed = TinyConv()
    fixed.fixed_size = (1, 28, 28)
    with pytest.raises(UsageError, match="cannot be tiled"):
        denoise(fixed, x, tile=32, overlap=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_with_cpu_images_returns_cpu_tensors() -> None:
    x = rand(2, 3, 70, 90)
    expected = denoise(TinyConv(), x, tile=0)
    model = TinyConv()
    y = denoise(model, x, device="cuda")  # moves the model, computes there, brings results back
    assert next(model.parameters()).is_cuda and y.device.type == "cpu"
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=0)
    tiled = denoise(model, x, tile=32, overlap=8)
    assert tiled.device.type == "cpu"
    torch.testing.assert_close(tiled, expected, atol=1e-4, rtol=0)
    assert denoise(model, x.cuda()).is_cuda


# ---------------------------------------------------------------------------------------------- files


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def u8(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder of good and bad files."""
    src = tmp_path / "in"
    save(src / "a.png", u8((37, 53)))
    save(src / "sub" / "b.jpg", u8((20, 30, 3), seed=1))
    save(src / "c.png", u8((16, 16), seed=2))
    data = (src / "c.png").read_bytes()
    (src / "c.png").write_bytes(data[: len(data) // 2])  # truncated
    (src / "e.tif").write_bytes(b"not a tiff at all")
    (src / "readme.txt").write_text("ignored: not an image extension")
    (src / "._a.png").write_bytes(b"AppleDouble junk, hidden")
    return src


def test_folder_run_writes_good_and_reports_bad(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = TinyConv()
    report = denoise_files([mixed], model, out)
    assert sorted(p.relative_to(out).as_posix() for p in report.written) == ["a.png", "sub/b.jpg"]
    assert sorted(p.name for p, _ in report.failed) == ["c.png", "e.tif"]
    for path, line in report.failed:
        assert str(path) in line and "\n" not in line
    a = Image.open(out / "a.png")
    assert a.size == (53, 37) and a.mode == "L"
    b = Image.open(out / "sub" / "b.jpg")
    assert b.size == (30, 20) and b.mode == "RGB"  # RGB through a 1-channel model
    expected = denoise(model, torch.from_numpy(u8((37, 53))).float()[None] / 255)
    np.testing.assert_allclose(np.asarray(a) / 255.0, expected[0].numpy(), atol=0.5 / 255 + 1e-6)
    assert not report.ok and leftovers(out) == []
    assert not (out / "c.png").exists() and not (out / "readme.txt").exists()
    with pytest.raises(PartialFailure) as info:
        report.raise_if_failed()
    assert info.value.exit_code == 7 and "2 of 4 files failed" in str(info.value)


def test_a_folder_that_cannot_be_read_fails_like_a_file(tmp_path: Path, unreadable) -> None:
    """Path.rglob passed over it without a word: its images were missing and the run reported success."""
    save(tmp_path / "in" / "a.png", u8((8, 8)))
    save(tmp_path / "in" / "locked" / "x.png", u8((8, 8)))
    unreadable(tmp_path / "in" / "locked")
    report = denoise_files([tmp_path / "in"], TinyConv(), tmp_path / "out")
    assert report.written == [tmp_path / "out" / "a.png"]
    assert report.failed == [
        (
            tmp_path / "in" / "locked",
            f"{tmp_path / 'in' / 'locked'}: cannot read this folder (Permission denied); the images in it were "
            "not denoised",
        )
    ]
    unreadable(tmp_path / "in")  # nothing else to do: the folder is the error, not "no files found"
    with pytest.raises(ResourceError, match=r"in: cannot read this folder \(Permission denied\)$"):
        denoise_files([tmp_path / "in"], TinyConv(), tmp_path / "out2")


def test_existing_output_kept_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    src = tmp_path / "in"
    save(src / "a.png", u8((10, 12)))
    save(src / "b.png", u8((10, 12), seed=1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    report = denoise_files([src], TinyConv(), out)
    assert (out / "a.png").read_bytes() == b"keep me"
    assert [p.name for p in report.written] == ["b.png"]
    assert report.ok and report.kept == [out / "a.png"]

    report = denoise_files([src], TinyConv(), out, force=True)
    assert report.ok and len(report.written) == 2
    assert Image.open(out / "a.png").size == (12, 10)
    assert leftovers(out) == []


def test_single_file_errors_are_raised(tmp_path: Path) -> None:
    good = save(tmp_path / "good.png", u8((10, 12)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.png").write_bytes(b"keep me")
    with pytest.raises(ResourceError, match=r"good\.png: output .*out/good\.png exists; pass --force"):
        denoise_files([good], TinyConv(), out)
    assert (out / "good.png").read_bytes() == b"keep me"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"bad\.png"):
        denoise_files([bad], TinyConv(), out)
    with pytest.raises(ResourceError, match="no such file"):
        denoise_files([tmp_path / "missing.png"], TinyConv(), out)
    assert leftovers(out) == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({}, DataError), ({"tile": -1}, UsageError), ({"tile": 64, "overlap": 40}, UsageError)],
    ids=["unreadable-image", "bad-tile", "bad-overlap"],
)
def test_a_run_that_writes_nothing_makes_no_output_folder(tmp_path: Path, kwargs, error) -> None:
    src = tmp_path / "in.png"
    if error is DataError:
        src.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    else:
        save(src, u8((10, 12)))
    with pytest.raises(error):
        denoise_files([src], TinyConv(), tmp_path / "new" / "out", **kwargs)
    assert not (tmp_path / "new").exists()


def test_output_equal_to_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in"
    a = save(src / "a.png", u8((10, 12)))
    before = a.read_bytes()
    with pytest.raises(UsageError, match="overwrite an input"):
        denoise_files([src], TinyConv(), src, force=True)
    with pytest.raises(UsageError, match="overwrite an input"):
        denoise_files([a], TinyConv(), src, force=True)
    out = tmp_path / "out"
    out.mkdir()
    os.link(a, out / "a.png")  # the same file under another name
    with pytest.raises(UsageError, match="overwrite an input"):
        denoise_files([src], TinyConv(), out, force=True)
    assert a.read_bytes() == before
    report = denoise_files([src], TinyConv(), src, suffix="_clean")  # beside the input, another name
    assert report.written == [src / "a_clean.png"] and a.read_bytes() == before


def test_folder_scan_skips_the_output_folder_inside_it(tmp_path: Path) -> None:
    src = tmp_path / "in"
    save(src / "a.png", u8((10, 12)))
    out = src / "clean"
    assert len(denoise_files([src], TinyConv(), out).written) == 1
    again = denoise_files([src], TinyConv(), out, force=True)  # clean/a.png is not picked up as an input
    assert again.written == [out / "a.png"] and again.ok
    assert again.left_out == []  # the earlier run's output is this run's output, not a left-out image


def test_images_already_in_an_output_folder_inside_the_input_are_named_not_passed_over(
    tmp_path: Path,
) -> None:
    # `dae denoise imgs -o imgs/sub` where imgs/sub already holds the user's own images (QA: silently skipped).
    src = tmp_path / "imgs"
    save(src / "a.png", u8((10, 12)))
    save(src / "sub" / "b.png", u8((10, 12), seed=1))
    save(
        src / "sub" / "c.noisy.png", u8((10, 12), seed=2)
    )  # a noisy copy's name, but of no input of this run
    report = denoise_files([src], TinyConv(), src / "sub", add_noise="gaussian:0.1")
    assert report.written == [src / "sub" / "a.png"] and report.noisy == [src / "sub" / "a.noisy.png"]
    assert report.left_out == [src / "sub" / "b.png", src / "sub" / "c.noisy.png"]
    # A rerun without noise: a.png and the noisy copy the first run wrote are this run's, the rest is not.
    again = denoise_files([src], TinyConv(), src / "sub")
    assert again.kept == [src / "sub" / "a.png"] and again.written == []
    assert again.left_out == [src / "sub" / "b.png", src / "sub" / "c.noisy.png"]


@pytest.mark.parametrize("below", ["", "sub"])
@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_an_output_folder_through_a_link_to_nothing_is_a_usage_error(tmp_path: Path, link, below) -> None:
    img = save(tmp_path / "a.png", u8((10, 12)))
    out = tmp_path / "out"
    out.symlink_to(out if link == "loop" else tmp_path / "nowhere")
    target = out / below if below else out
    # A loop was a RuntimeError traceback ("Symlink loop"), a dangling link a mkdir error after the work.
    with pytest.raises(UsageError, match=f"{out} is a link to nothing"):
        denoise_files([img], TinyConv(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "out"]


def test_name_clashes_and_empty_folders(tmp_path: Path) -> None:
    save(tmp_path / "x" / "a.png", u8((8, 8)))
    save(tmp_path / "y" / "a.png", u8((8, 8)))
    with pytest.raises(UsageError, match="both be written"):
        denoise_files([tmp_path / "x", tmp_path / "y"], TinyConv(), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResourceError, match="no .png"):
        denoise_files([tmp_path / "empty"], TinyConv(), tmp_path / "out")
    with pytest.raises(UsageError, match="no inputs"):
        denoise_files([], TinyConv(), tmp_path / "out")


def test_bit_depth_and_alpha_survive_the_file_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in"
    deep = np.random.default_rng(0).integers(0, 65536, (11, 13)).astype(np.uint16)
    save(src / "deep.tif", deep)
    rgba = u8((11, 13, 4), seed=1)
    save(src / "rgba.png", rgba)
    out = tmp_path / "out"
    report = denoise_files([src], TinyConv(), out)
    assert report.ok
    assert Image.open(out / "deep.tif").mode == "I;16"
    back = np.asarray(Image.open(out / "rgba.png"))
    assert back.shape == (11, 13, 4)
    np.testing.assert_array_equal(back[..., 3], rgba[..., 3])


def test_write_failure_is_per_file_and_leaves_no_temp_files(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "in"
    save(src / "a.png", u8((8, 8)))
    save(src / "b.png", u8((8, 8)))
    real_save = Image.Image.save
    calls = []

    def flaky_save(self, fp, format=None, **params):
        calls.append(1)
        if len(calls) == 1:  # a.png, the first in sorted order
            fp.write(b"partial")
            raise OSError(5, "Input/output error")
        return real_save(self, fp, format=format, **params)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    out = tmp_path / "out"
    report = denoise_files([src], TinyConv(), out)
    assert [p.name for p in report.written] == ["b.png"]
    assert len(report.failed) == 1 and "Input/output error" in report.failed[0][1]
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]


def fake_noise(x: Tensor, generator: torch.Generator) -> Tensor:
    return (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def test_add_noise_is_seeded_and_saved_beside(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(inference, "_parse_noise", lambda spec: fake_noise)
    src = tmp_path / "in"
    save(src / "a.png", np.full((16, 16), 128, np.uint8))
    runs = {}
    for name, seed in (("one", 0), ("two", 0), ("three", 1)):
        report = denoise_files([src], TinyConv(), tmp_path / name, add_noise="fake", seed=seed)
        assert report.noisy == [tmp_path / name / "a.noisy.png"]
        runs[name] = np.asarray(Image.open(tmp_path / name / "a.noisy.png"))
    assert runs["one"].std() > 10  # it really is noisy
    np.testing.assert_array_equal(runs["one"], runs["two"])
    assert not np.array_equal(runs["one"], runs["three"])
    report = denoise_files([src], TinyConv(), tmp_path / "quiet", add_noise="fake", save_noisy=False)
    assert report.noisy == [] and sorted(p.name for p in (tmp_path / "quiet").iterdir()) == ["a.png"]


def test_add_noise_with_the_real_noise_models(tmp_path: Path) -> None:
    pytest.importorskip("dae.data.noise")
    a = save(tmp_path / "in" / "a.png", np.full((16, 16), 128, np.uint8))
    report = denoise_files([a], TinyConv(), tmp_path / "out", add_noise="gaussian:0.2", seed=3)
    assert report.ok and report.noisy == [tmp_path / "out" / "a.noisy.png"]
    assert np.asarray(Image.open(report.noisy[0])).std() > 10
    with pytest.raises(UsageError):
        denoise_files([a], TinyConv(), tmp_path / "out2", add_noise="no-such-noise:1")
    # The noisy copy is an image file, clamped to [0, 1]: clip=false did nothing, without a word.
    for spec in ("gaussian:0.5,clip=false", "poisson:5,clip=false+mask:0.1"):
        with pytest.raises(
            UsageError, match="clip=false keeps values outside \\[0, 1\\], which an image file"
        ):
            denoise_files([a], TinyConv(), tmp_path / "out3", add_noise=spec)
    assert not (tmp_path / "out3").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_add_noise_takes_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    """Python keeps such a name's bytes as surrogates, which str.encode() refuses: the noise seed hashed it."""
    pytest.importorskip("dae.data.noise")
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, as old archives hold them
    a = save(tmp_path / "in" / name, np.full((16, 16), 128, np.uint8))
    b = save(tmp_path / "in" / "z.png", np.full((16, 16), 128, np.uint8))
    report = denoise_files([tmp_path / "in"], TinyConv(), tmp_path / "out", add_noise="gaussian:0.2")
    assert report.ok and sorted(report.written) == sorted(
        [tmp_path / "out" / a.name, tmp_path / "out" / b.name]
    )


def test_checkpoint_path_is_loaded_with_load_model(tmp_path: Path, monkeypatch) -> None:
    loaded = []

    def load_model(path):
        loaded.append(Path(path))
        return TinyConv()

    monkeypatch.setitem(sys.modules, "dae.checkpoint", types.SimpleNamespace(load_model=load_model))
    a = save(tmp_path / "a.png", u8((8, 8)))
    report = denoise_files([a], tmp_path / "model.safetensors", tmp_path / "out")
    assert loaded == [tmp_path / "model.safetensors"] and report.ok
    with pytest.raises(UsageError, match="neither a checkpoint path nor a denoiser"):
        denoise_files([a], object(), tmp_path / "out2")


def test_auto_precision_stays_close_to_fp32():
    # "auto" may run bf16 (on bf16-capable CPUs and GPUs); it must stay within bf16 rounding of fp32.
    model = TinyConv().eval()
    x = rand(4, 1, 37, 53, seed=5)
    torch.testing.assert_close(denoise(model, x), denoise(model, x, precision="fp32"), atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "shape", "error", "match"),
    [
        ({"device": "gpu0"}, (1, 1, 8, 8), UsageError, "unknown device 'gpu0'"),
        ({}, (1, 1, 0, 28), UsageError, "empty image"),
    ]
    + ([] if torch.cuda.is_available() else [({"device": "cuda"}, (1, 1, 8, 8), ResourceError, "CUDA")]),
)
def test_denoise_refuses_bad_devices_and_empty_images_in_one_line(kwargs, shape, error, match) -> None:
    with pytest.raises(error, match=match):
        denoise(TinyConv(), rand(*shape), **kwargs)


def test_a_jpeg_noisy_copy_is_saved_lossless_as_png(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(inference, "_parse_noise", lambda spec: fake_noise)
    a = tmp_path / "a.jpg"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(a, quality=95)
    seen = {}
    monkeypatch.setattr(inference, "denoise", lambda model, x, **kw: seen.setdefault("x", x))
    report = denoise_files([a], TinyConv(), tmp_path / "out", add_noise="fake")
    assert report.noisy == [tmp_path / "out" / "a.noisy.jpg.png"] and report.written == [
        tmp_path / "out" / "a.jpg"
    ]
    saved = torch.from_numpy(np.array(Image.open(report.noisy[0]))).permute(2, 0, 1) / 255
    assert (saved - seen["x"]).abs().max() <= 0.5 / 255 + 1e-6  # exactly what the model saw, to 8 bits


def test_the_same_file_named_twice_is_denoised_once(tmp_path: Path) -> None:
    src = tmp_path / "in"
    a = save(src / "a.png", u8((8, 8)))
    b = save(src / "sub" / "b.png", u8((8, 8)))
    report = denoise_files([src, src, a, b], TinyConv(), tmp_path / "out")
    assert report.ok and report.written == [tmp_path / "out" / "a.png", tmp_path / "out" / "sub" / "b.png"]


def test_a_jpeg_and_a_png_of_one_name_each_get_a_noisy_copy(tmp_path: Path) -> None:
    src = tmp_path / "in"
    save(src / "a.png", u8((8, 8)))
    Image.fromarray(u8((8, 8))).save(src / "a.jpg")
    report = denoise_files([src], TinyConv(), tmp_path / "out", add_noise="gaussian:0.1")
    assert report.ok and sorted(p.name for p in report.noisy) == ["a.noisy.jpg.png", "a.noisy.png"]


@pytest.mark.parametrize("where", ["file-parent", "unwritable", "unwritable-itself"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path: Path, where, monkeypatch):
    a = save(tmp_path / "a.png", u8((8, 8)))
    if where == "file-parent":
        out, match = (
            tmp_path / "a.png" / "sub",
            r"a\.png/sub: cannot create the output folder: .*a\.png is a file",
        )
    else:
        (tmp_path / "ro").mkdir()
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "ro")  # root ignores chmod
        out, match = tmp_path / "ro" / "out", r"ro/out: cannot create the output folder: .*ro is not writable"
        if where == "unwritable-itself":  # there already: "cannot create" it was wrong
            out, match = tmp_path / "ro", r"ro: the output folder is not writable$"
    monkeypatch.setattr(inference, "_load", lambda *a: pytest.fail("loaded the model first"))
    with pytest.raises(UsageError if where == "file-parent" else ResourceError, match=match):
        denoise_files([a], TinyConv(), out)


def test_a_folder_that_fails_to_appear_is_named_in_one_line(tmp_path: Path, monkeypatch) -> None:
    a = save(tmp_path / "in" / "a.png", u8((8, 8)))
    b = save(tmp_path / "in" / "b.png", u8((8, 8)))

    def refuse(self, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ResourceError, match=r"out: cannot create folder \(No such file or directory\)"):
        denoise_files([a], TinyConv(), tmp_path / "out")
    report = denoise_files([a, b], TinyConv(), tmp_path / "out")
    assert [m for _, m in report.failed] == [
        f"{p}: {tmp_path / 'out'}: cannot create folder (No such file or directory)" for p in (a, b)
    ]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_pixels_must_be_positive_or_none(tmp_path: Path, bad) -> None:
    a = save(tmp_path / "a.png", u8((8, 8)))
    with pytest.raises(UsageError, match="max_pixels must be a positive whole number"):
        denoise_files([a], TinyConv(), tmp_path / "out", max_pixels=bad)
    assert denoise_files([a], TinyConv(), tmp_path / "out", max_pixels=None).ok


def test_a_single_files_error_names_the_file(tmp_path: Path) -> None:
    from dae.models import create_model

    a = save(tmp_path / "wide.png", u8((20, 30)))
    with pytest.raises(UsageError, match=r"^.*wide\.png: .*28x28"):  # fc takes only its own size
        denoise_files([a], create_model("fc"), tmp_path / "out")


def test_images_in_other_formats_and_dangling_links_in_a_folder_are_named(tmp_path: Path) -> None:
    src = tmp_path / "in"
    save(src / "a.png", u8((8, 8)))
    Image.fromarray(u8((8, 8))).save(src / "b.webp")
    Image.fromarray(u8((8, 8))).save(src / "c.gif")
    (src / "notes.txt").write_text("not an image, not worth a word")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (src / "loop").symlink_to(src / "loop")  # never followed, never an error
    report = denoise_files([src], TinyConv(), tmp_path / "out")
    assert report.ok and report.written == [tmp_path / "out" / "a.png"]
    assert report.skipped == [src / "b.webp", src / "c.gif", src / "gone.png"]


@pytest.mark.parametrize("where", ["input", "output"])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path: Path, monkeypatch, where) -> None:
    save(tmp_path / "a.png", u8((10, 12)))
    monkeypatch.chdir(tmp_path)
    inputs, out = ([""], tmp_path / "out") if where == "input" else ([tmp_path / "a.png"], "")
    with pytest.raises(UsageError, match="empty"):
        denoise_files(inputs, TinyConv(), out)  # was: everything under the working folder, or written into it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_rerun_keeps_the_outputs_it_finds_and_does_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(3):
        save(src / f"{i}.png", u8((10, 12), seed=i))
    out = tmp_path / "out"
    first = denoise_files([src / "0.png", src / "1.png"], TinyConv(), out)
    assert len(first.written) == 2
    (out / "0.png").write_bytes(b"keep me")
    # As after an interrupted run: outputs already there are kept, not failures (was exit 7, one line each).
    again = denoise_files([src], TinyConv(), out)
    assert again.ok and [p.name for p in again.written] == ["2.png"]
    assert sorted(p.name for p in again.kept) == ["0.png", "1.png"] and again.total == 3
    assert (out / "0.png").read_bytes() == b"keep me"


def test_a_link_to_nothing_at_an_output_name_is_a_failure_not_kept(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(2):
        save(src / f"{i}.png", u8((10, 12), seed=i))
    out = tmp_path / "out"
    out.mkdir()
    (out / "0.png").symlink_to(tmp_path / "nowhere.png")
    report = denoise_files([src], TinyConv(), out)
    # Taken for an output another run had written meanwhile ("kept"), exit 0, and the link left in place.
    assert report.kept == [] and [p.name for p in report.written] == ["1.png"]
    assert report.failed == [
        (
            src / "0.png",
            f"{src / '0.png'}: output {out / '0.png'} is a link to nothing; pass --force to overwrite",
        )
    ]
    again = denoise_files([src], TinyConv(), out, force=True)
    assert again.ok and (out / "0.png").is_file() and not (out / "0.png").is_symlink()


@pytest.mark.parametrize("out_name", [".", "scans"])
def test_an_output_folder_that_holds_the_input_folder_is_not_taken_for_one_inside_it(
    tmp_path, monkeypatch, out_name
):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "scans" / "raw" / "a.png", u8((10, 12)))
    save(tmp_path / "scans" / "raw" / "deep" / "c.png", u8((10, 12), seed=1))
    # Every input lies under the output folder: all were left out, and "no .png files found" was the error.
    report = denoise_files(["scans/raw"], TinyConv(), out_name)
    assert sorted(p.as_posix() for p in report.written) == sorted(
        (Path(out_name) / rel).as_posix() for rel in ("a.png", "deep/c.png")
    )
    assert report.left_out == []


def test_a_folder_whose_only_images_are_in_the_output_folder_says_so(tmp_path: Path) -> None:
    save(tmp_path / "imgs" / "sub" / "b.png", u8((10, 12)))
    with pytest.raises(
        ResourceError, match=r"found in .*imgs \(1 left out: they are in the output folder .*sub\)"
    ):
        denoise_files([tmp_path / "imgs"], TinyConv(), tmp_path / "imgs" / "sub")


def test_an_image_left_out_is_named_once_when_its_folder_is_given_twice(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    save(src / "a.png", u8((10, 12)))
    save(src / "sub" / "mine.png", u8((10, 12), seed=1))
    report = denoise_files([src, tmp_path / "imgs" / "sub" / ".."], TinyConv(), src / "sub")
    assert report.left_out == [src / "sub" / "mine.png"]


def test_an_output_another_run_writes_meanwhile_is_kept_not_a_failure(tmp_path: Path, monkeypatch) -> None:
    # Two `dae denoise` runs into one folder at once: both exited 7, each failing on what the other wrote.
    src = tmp_path / "in"
    for i in range(3):
        save(src / f"{i}.png", u8((10, 12), seed=i))
    out = tmp_path / "out"
    real = inference.denoise

    def racing(model, x, **kwargs):
        y = real(model, x, **kwargs)
        if x.shape[-1] == 12 and not (out / "1.png").exists() and (out / "0.png").exists():
            save(
                out / "1.png", u8((10, 12), seed=9)
            )  # the other run finishes 1.png while this one works on it
        return y

    monkeypatch.setattr(inference, "denoise", racing)
    report = denoise_files([src], TinyConv(), out)
    assert report.ok and [p.name for p in report.written] == ["0.png", "2.png"]
    assert [p.name for p in report.kept] == ["1.png"] and report.total == 3
    assert np.array_equal(
        np.asarray(Image.open(out / "1.png")), u8((10, 12), seed=9)
    )  # the other's, untouched


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tile": 100.5}, "tile must be a whole number"),
        ({"overlap": 10.5}, "overlap must be a whole number"),
        ({"tile": 0, "overlap": -7}, "overlap must be a whole number >= 0"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
    ],
)
def test_tiling_settings_of_the_wrong_kind_are_usage_errors(kw, message) -> None:
    with pytest.raises(UsageError, match=message):  # were TypeErrors, or accepted
        denoise(TinyConv(), torch.rand(1, 1, 20, 20), **kw)


def test_a_rerun_finishes_a_file_whose_noisy_copy_was_written_before_the_stop(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(2):
        save(src / f"{i}.png", u8((10, 12), seed=i))
    out = tmp_path / "out"
    denoise_files([src], TinyConv(), out, add_noise="gaussian:0.2")
    (out / "1.png").unlink()  # stopped between the noisy copy and the output
    again = denoise_files([src], TinyConv(), out, add_noise="gaussian:0.2")
    assert again.ok and [p.name for p in again.written] == ["1.png"]  # was "1.noisy.png exists", exit 7
    assert [p.name for p in again.kept] == ["0.png"]


def test_one_file_can_be_written_to_the_file_name_given(tmp_path: Path, monkeypatch) -> None:
    src = save(tmp_path / "photo.png", u8((10, 12)))
    into_folder = denoise_files([src], TinyConv(), tmp_path / "folder")
    report = denoise_files([src], TinyConv(), tmp_path / "sub" / "clean.png")
    assert report.written == [tmp_path / "sub" / "clean.png"] and (tmp_path / "sub").is_dir()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["clean.png"]  # no folder named clean.png
    # The same pixels as the output that keeps the input's name.
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "sub" / "clean.png")), np.asarray(Image.open(into_folder.written[0]))
    )
    with pytest.raises(DaeError, match=r"clean.png exists; pass --force"):
        denoise_files([src], TinyConv(), tmp_path / "sub" / "clean.png")
    assert denoise_files([src], TinyConv(), tmp_path / "sub" / "clean.png", force=True).ok
    # The noisy copy goes beside it, named after it.
    monkeypatch.setattr(inference, "_parse_noise", lambda spec: fake_noise)
    report = denoise_files([src], TinyConv(), tmp_path / "n" / "x.PNG", add_noise="fake")
    assert report.written == [tmp_path / "n" / "x.PNG"] and report.noisy == [tmp_path / "n" / "x.noisy.PNG"]
    # A folder that exists under such a name is still a folder.
    (tmp_path / "looks.png").mkdir()
    assert denoise_files([src], TinyConv(), tmp_path / "looks.png").written == [
        tmp_path / "looks.png" / "photo.png"
    ]


@pytest.mark.parametrize(
    ("inputs", "out", "match"),
    [
        (
            ["photo.png"],
            "clean.jpg",
            r"clean.jpg: the output keeps the input's format \(PNG, as photo.png\); give a "
            r"name ending in .png",
        ),
        (
            ["photo.png", "other.png"],
            "clean.png",
            r"clean.png: an output file name, but there are 2 inputs; give an "
            "output folder",
        ),
        (["folder"], "clean.png", "clean.png: an output file name, but the input is a folder"),
        (["photo.png"], "photo.png", "output would overwrite an input"),
    ],
)
def test_an_output_file_name_that_cannot_be_meant_is_refused_before_any_work(
    tmp_path: Path, monkeypatch, inputs, out, match
) -> None:
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "photo.png", u8((10, 12)))
    save(tmp_path / "other.png", u8((10, 12)))
    save(tmp_path / "folder" / "a.png", u8((10, 12)))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=match):
        denoise_files(inputs, TinyConv(), out)
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, nothing written


@pytest.mark.parametrize(
    ("inputs", "out", "error", "match"),
    [
        (["missing.png"], "clean.png", ResourceError, "missing.png: no such file or folder"),
        (
            ["photo.png"],
            "clean.webp",
            UsageError,
            r"clean.webp: dae writes .* files; give a name ending in .png",
        ),
        (
            ["photo.png"],
            "photo.png",
            UsageError,
            "output would overwrite an input; choose another output name",
        ),
    ],
)
def test_output_file_names_that_go_wrong_say_what_is_wrong(tmp_path, monkeypatch, inputs, out, error, match):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "photo.png", u8((10, 12)))
    with pytest.raises(error, match=match):
        denoise_files(inputs, TinyConv(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_an_output_name_ending_in_a_slash_is_a_folder(tmp_path):
    src = save(tmp_path / "photo.png", u8((10, 12)))
    report = denoise_files([src], TinyConv(), f"{tmp_path / 'y.png'}/")
    assert report.written == [tmp_path / "y.png" / "photo.png"]


def test_a_misspelt_baseline_name_says_what_names_there_are(tmp_path):
    src = save(tmp_path / "photo.png", u8((10, 12)))
    with pytest.raises(
        ResourceError, match=r"checkpoint medain does not exist, nor is it a classical method \(.*median"
    ):
        denoise_files([src], "medain", tmp_path / "out")
