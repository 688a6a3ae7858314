"""Image file reading/writing: modes, bit depths, alpha, EXIF orientation, hostile files, atomic writes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from dae.errors import DataError, ResourceError, UsageError
from dae.imageio import ImageInfo, read_image, write_image

H, W = 53, 37  # odd sizes on purpose


def rng_array(shape: tuple[int, ...], high: int = 256, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_8bit_round_trip_is_exact(tmp_path: Path, ext: str, channels: int) -> None:
    a = rng_array((H, W) if channels == 1 else (H, W, 3))
    src = tmp_path / f"in{ext}"
    Image.fromarray(a).save(src)
    x, info = read_image(src)
    assert x.dtype == torch.float32 and x.shape == (channels, H, W)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert info.bit_depth == 8 and info.alpha is None
    np.testing.assert_array_equal(
        np.rint(x.numpy() * 255).astype(np.uint8).reshape(channels, H, W),
        a.reshape(H, W, channels).transpose(2, 0, 1),
    )
    out = tmp_path / f"out{ext}"
    write_image(out, x, info)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), a)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_gray_round_trip_preserves_every_value(tmp_path: Path, ext: str) -> None:
    a = rng_array((H, W), high=65536, dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    src = tmp_path / f"in{ext}"
    Image.fromarray(a).save(src)
    x, info = read_image(src)
    assert info.bit_depth == 16 and x.shape == (1, H, W)
    np.testing.assert_array_equal(np.rint(x[0].numpy().astype(np.float64) * 65535).astype(np.uint16), a)
    out = tmp_path / f"out{ext}"
    write_image(out, x, info)
    back = Image.open(out)
    assert back.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(back), a)


def test_16bit_big_endian_and_mode_i_scaled_by_65535(tmp_path: Path) -> None:
    a = rng_array((H, W), high=65536, dtype=np.uint16)
    src = tmp_path / "be.png"
    Image.fromarray(a.astype(">u2")).save(src)  # I;16B in memory
    x, _ = read_image(src)
    np.testing.assert_allclose(x[0].numpy(), a / 65535.0, atol=1e-7)
    src = tmp_path / "int32.tif"
    Image.fromarray(a.astype(np.int32)).save(src)  # mode I
    x, info = read_image(src)
    assert info.mode == "I" and info.bit_depth == 16
    np.testing.assert_allclose(x[0].numpy(), a / 65535.0, atol=1e-7)


def test_a_float_tiff_a_little_past_one_stays_on_its_scale(tmp_path: Path, caplog) -> None:
    # One pixel at 1.02 read the whole image as 0-255: divided by 255, then denoised as near-black.
    a = np.full((H, W), 0.5, dtype=np.float32)
    a[0, 0], a[0, 1] = 1.02, -0.01
    Image.fromarray(a).save(tmp_path / "over.tif")
    x, info = read_image(tmp_path / "over.tif")
    assert info.scale == 1.0 and x[0, 5, 5] == 0.5 and x[0, 0, 0] == 1.0 and x[0, 0, 1] == 0.0
    assert "over.tif: 2 pixel(s) outside [0, 1] clipped to it" in caplog.text
    a[0, 0] = np.nan
    Image.fromarray(a).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif: floating-point pixels hold NaN or infinite values"):
        read_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_tiff_scale_rule(tmp_path: Path, scale: float) -> None:
    a = np.random.default_rng(0).random((H, W)).astype(np.float32)
    a[0, 0] = 1.0
    src = tmp_path / "f.tif"
    Image.fromarray(a * scale).save(src)
    x, info = read_image(src)
    assert info.mode == "F" and info.bit_depth == 32 and info.scale == scale
    np.testing.assert_allclose(x[0].numpy(), a, atol=1e-6)
    # Written back as a float TIFF on the file's own scale, not quantised to 16 bits.
    write_image(tmp_path / "out.tif", x, info)
    back = Image.open(tmp_path / "out.tif")
    assert back.mode == "F"
    np.testing.assert_allclose(np.asarray(back), a * scale, rtol=1e-6, atol=1e-6 * scale)
    # PNG holds no floats: the nearest it has is 16 bits.
    write_image(tmp_path / "out.png", x, info)
    back = Image.open(tmp_path / "out.png")
    assert back.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(back), np.rint(x[0].numpy() * 65535).astype(np.uint16))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_kept_byte_exact_on_png_and_tiff_dropped_on_jpeg(tmp_path: Path, mode: str) -> None:
    a = rng_array((H, W, len(mode)))
    src = tmp_path / "in.png"
    Image.fromarray(a).save(src)
    x, info = read_image(src)
    assert x.shape == (len(mode) - 1, H, W)  # alpha is not a channel to denoise
    np.testing.assert_array_equal(info.alpha, a[..., -1])
    changed = 1.0 - x  # whatever the denoiser did to the colour channels
    for ext in (".png", ".tif"):
        write_image(tmp_path / f"out{ext}", changed, info)
        back = np.asarray(Image.open(tmp_path / f"out{ext}"))
        assert back.shape == a.shape
        np.testing.assert_array_equal(back[..., -1], a[..., -1])
        np.testing.assert_array_equal(back[..., :-1], 255 - a[..., :-1])
    for ext in (".jpg", ".bmp"):
        write_image(tmp_path / f"out{ext}", x, info)
        assert Image.open(tmp_path / f"out{ext}").mode in ("L", "RGB")


def test_palette_gray_becomes_one_channel_colour_three(tmp_path: Path) -> None:
    gray = Image.fromarray(rng_array((H, W))).convert("P")  # L -> P keeps a gray palette
    gray.save(tmp_path / "gray.png")
    x, _ = read_image(tmp_path / "gray.png")
    assert x.shape == (1, H, W)
    np.testing.assert_array_equal(np.rint(x[0].numpy() * 255), np.asarray(gray.convert("L")))

    colour = Image.fromarray(rng_array((H, W, 3))).quantize(16)
    colour.save(tmp_path / "colour.png")
    x, _ = read_image(tmp_path / "colour.png")
    assert x.shape == (3, H, W)
    np.testing.assert_array_equal(
        np.rint(x.numpy() * 255).transpose(1, 2, 0), np.asarray(colour.convert("RGB"))
    )


def test_palette_transparency_becomes_alpha(tmp_path: Path) -> None:
    im = Image.fromarray(rng_array((H, W, 3))).quantize(8)
    im.info["transparency"] = 0
    im.save(tmp_path / "t.png", transparency=0)
    x, info = read_image(tmp_path / "t.png")
    assert x.shape == (3, H, W) and info.alpha is not None
    expected = np.where(np.asarray(im) == 0, 0, 255)
    np.testing.assert_array_equal(info.alpha, expected)


def test_bilevel_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(rng_array((H, W)) > 127).save(tmp_path / "b.png")
    x, _ = read_image(tmp_path / "b.png")
    assert x.shape == (1, H, W) and set(x.unique().tolist()) == {0.0, 1.0}
    Image.fromarray(rng_array((H, W, 3))).convert("CMYK").save(tmp_path / "c.jpg")
    x, info = read_image(tmp_path / "c.jpg")
    assert info.mode == "CMYK" and x.shape == (3, H, W)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    a = np.zeros((40, 80, 3), np.uint8)  # stored 80 wide, 40 high
    a[:16, :16] = 255  # marker in the stored top-left corner
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    x, _ = read_image(tmp_path / "rot.jpg")
    assert x.shape == (3, 80, 40)  # dimensions swapped
    assert x[:, :8, -8:].mean() > 0.9  # the marker moved to the top-right
    assert x[:, :8, :8].mean() < 0.1
    write_image(tmp_path / "out.jpg", x)
    assert Image.open(tmp_path / "out.jpg").size == (40, 80)


def test_jpeg_written_with_quality_95(tmp_path: Path) -> None:
    x = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    write_image(tmp_path / "q95.jpg", x)
    write_image(tmp_path / "q50.jpg", x, quality=50)
    assert (tmp_path / "q95.jpg").stat().st_size > (tmp_path / "q50.jpg").stat().st_size


def test_truncated_png_is_data_error(tmp_path: Path) -> None:
    Image.fromarray(rng_array((H, W, 3))).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.png"):
        read_image(bad)


def test_refuses_to_read_when_load_truncated_images_is_on(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(rng_array((H, W))).save(tmp_path / "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "ok.png")


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR claims width x height (CRC fixed up), like a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    bomb = png_claiming_size(tmp_path / "bomb.png", 12000, 12000)  # 144 MP: over our 100 MP default
    with pytest.raises(DataError, match=r"bomb\.png: 12000x12000 .* exceeds the limit of 100000000"):
        read_image(bomb)
    with pytest.raises(DataError, match=r"raise the limit \(dae denoise --max-pixels, or max_pixels=\)"):
        read_image(bomb)


def test_max_pixels_alone_decides_and_pillows_limit_is_restored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would refuse anything over 2000 pixels
    Image.fromarray(rng_array((50, 60))).save(tmp_path / "trusted.png")
    assert read_image(tmp_path / "trusted.png", max_pixels=3000)[0].shape == (1, 50, 60)
    assert read_image(tmp_path / "trusted.png", max_pixels=None)[0].shape == (1, 50, 60)
    with pytest.raises(DataError, match="exceeds the limit of 2999"):
        read_image(tmp_path / "trusted.png", max_pixels=2999)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_unreadable_file_is_a_resource_error(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(rng_array((H, W))).save(tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked.png"))

    monkeypatch.setattr(Image, "open", denied)  # chmod 000 does not stop root, who runs CI here
    with pytest.raises(ResourceError, match=r"locked\.png: cannot read \(Permission denied\)"):
        read_image(tmp_path / "locked.png")


def test_icc_profile_is_dropped_when_the_pixels_leave_its_colour_space(tmp_path: Path) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rng_array((H, W, 3))).save(tmp_path / "rgb.png", icc_profile=srgb)
    x, info = read_image(tmp_path / "rgb.png")
    assert info.icc_profile == srgb
    cmyk_profile = b"\0" * 16 + b"CMYK" + b"\0" * 108  # only the colour-space field matters here
    Image.fromarray(rng_array((H, W, 3))).convert("CMYK").save(
        tmp_path / "cmyk.jpg", icc_profile=cmyk_profile
    )
    x, info = read_image(tmp_path / "cmyk.jpg")
    assert x.shape[0] == 3 and info.icc_profile is None
    write_image(tmp_path / "out.jpg", x, info)
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    Image.fromarray(rng_array((H, W))).save(tmp_path / "small.png")
    with pytest.raises(DataError, match="exceeds the limit of 100"):
        read_image(tmp_path / "small.png", max_pixels=100)
    assert read_image(tmp_path / "small.png", max_pixels=H * W)[0].shape == (1, H, W)


def test_non_image_missing_and_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    with pytest.raises(DataError, match=r"notes\.png: not an image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ResourceError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="not a file"):
        read_image(tmp_path)


def test_write_is_atomic_and_cleans_up_on_failure(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def broken_save(self, fp, format=None, **params):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ResourceError, match=r"out\.png: cannot write \(No space left"):
        write_image(target, torch.zeros(1, 4, 4))
    assert target.read_bytes() == b"previous"  # the old file is untouched
    assert leftovers(tmp_path) == []


def test_write_without_overwrite_keeps_existing(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")
    with pytest.raises(ResourceError, match="exists"):
        write_image(target, torch.zeros(1, 4, 4), overwrite=False)
    assert target.read_bytes() == b"previous"
    write_image(target, torch.zeros(1, 4, 4))  # overwrite is the default for the library call
    assert Image.open(target).size == (4, 4)
    assert leftovers(tmp_path) == []


def test_write_rejects_bad_extension_and_shape(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unsupported output extension"):
        write_image(tmp_path / "x.gif", torch.zeros(1, 4, 4))
    with pytest.raises(UsageError, match="expects a"):
        write_image(tmp_path / "x.png", torch.zeros(2, 4, 4))
    with pytest.raises(UsageError, match="alpha"):
        write_image(tmp_path / "x.png", torch.zeros(3, 4, 4), ImageInfo(alpha=np.zeros((5, 5), np.uint8)))
    assert list(tmp_path.iterdir()) == []


def test_write_clamps_and_accepts_a_batch_of_one(tmp_path: Path) -> None:
    x = torch.tensor([[[-0.5, 0.5, 1.5]]])
    write_image(tmp_path / "c.png", x[None])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), [[0, 128, 255]])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_a_file_of_several_frames_is_refused_not_cut_to_its_first(tmp_path: Path, ext: str) -> None:
    frames = [Image.fromarray(rng_array((H, W), seed=s)) for s in range(3)]
    src = tmp_path / f"anim{ext}"
    frames[0].save(src, save_all=True, append_images=frames[1:])  # an APNG, a multi-page TIFF
    with Image.open(src) as im:
        assert im.n_frames == 3
    with pytest.raises(DataError, match=rf"anim\{ext}: holds 3 frames"):
        read_image(src)  # was frame 0 alone, written back as if it were the file


def test_32bit_integers_beyond_16_bits_are_refused_not_clipped(tmp_path: Path) -> None:
    src = tmp_path / "i32.tif"
    Image.fromarray(np.arange(H * W, dtype=np.int32).reshape(H, W) * 1000).save(src)
    with pytest.raises(DataError, match=r"i32\.tif: 32-bit integer samples from 0 to \d+ do not fit 16 bits"):
        read_image(src)  # was clipped at 65535 without a word
    Image.fromarray(np.full((H, W), -1, dtype=np.int32)).save(src)
    with pytest.raises(DataError, match="from -1 to -1"):
        read_image(src)


def test_a_bomb_past_pillows_own_limit_gets_our_message(tmp_path: Path) -> None:
    bomb = png_claiming_size(tmp_path / "bomb.png", 14000, 14000)  # 196 MP: Pillow refuses before we look
    with pytest.raises(DataError) as e:
        read_image(bomb)
    message = str(e.value)
    assert "196000000 pixels exceeds the limit of 100000000" in message and "--max-pixels" in message
    assert "DOS attack" not in message  # Pillow's wording, and its limit, were quoted


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp"])
def test_resolution_is_written_back(tmp_path: Path, ext: str) -> None:
    src = tmp_path / f"scan{ext}"
    Image.fromarray(rng_array((H, W))).save(src, dpi=(300, 300))
    x, info = read_image(src)
    out = write_image(tmp_path / f"back{ext}", x, info)
    with Image.open(out) as im:
        assert tuple(round(float(v)) for v in im.info["dpi"]) == (300, 300)  # was dropped


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_a_file_without_a_resolution_gets_none_written(tmp_path: Path, ext: str) -> None:
    """Pillow says 1 dpi for a TIFF without one; written back, that sized a 30-pixel image at 30 inches."""
    src = tmp_path / f"plain{ext}"
    Image.fromarray(rng_array((H, W))).save(src)
    x, info = read_image(src)
    assert info.dpi is None
    with Image.open(write_image(tmp_path / f"back{ext}", x, info)) as im:
        assert "dpi" not in im.info or ext == ".tif"  # Pillow reads TIFF's default back as (1, 1) ...
        assert 282 not in getattr(im, "tag_v2", {})  # ... but no resolution tag is written


def test_sixteen_bit_grey_with_alpha_stays_grey(tmp_path: Path) -> None:
    """Pillow reads it as 8-bit RGBA; it came back as a colour file."""
    import struct
    import zlib

    w, h = 3, 2
    rows = b"".join(
        b"\0" + b"".join(struct.pack(">HH", 20000 * i, 40000) for i in range(w)) for _ in range(h)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)  # 16 bits, colour type 4: grey and alpha
    src = tmp_path / "la16.png"
    src.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    x, info = read_image(src)
    assert x.shape == (1, h, w) and info.alpha is not None and (info.alpha == 40000 >> 8).all()
    assert x[0, 0].mul(255).round().tolist() == [0, 20000 >> 8, 40000 >> 8]
    with Image.open(write_image(tmp_path / "back.png", x, info)) as im:
        assert im.mode == "LA"
