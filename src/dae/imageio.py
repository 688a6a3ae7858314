"""Read and write real image files safely: [0, 1] float tensors in, the original format and depth out.

Rules (what a file becomes, and what is written back):
  - Grayscale (1, L, I;16*, I, F) -> 1 channel; everything else -> 3 channels (RGB). Palette images become
    L when every palette entry is gray, RGB otherwise; CMYK, YCbCr, LAB and HSV are converted to RGB.
  - 8-bit samples are scaled by 1/255, 16-bit (I;16, I;16B, 16-bit PNG/TIFF, mode I) by 1/65535; a mode I
    (32-bit integer) file with samples outside 0..65535 is refused rather than clipped. Mode F is taken as
    [0, 1] when its maximum is <= 1, otherwise as [0, 255]; values are clipped to [0, 1].
  - One image per file: an animation or a multi-page TIFF is refused, not cut to its first frame.
  - Alpha is KEPT but never denoised: it is split off into `ImageInfo.alpha` (the original bytes) and
    re-attached unchanged by `write_image` when the output format holds alpha (PNG, TIFF); JPEG and BMP
    drop it.
  - 16-bit grayscale input is written back as 16-bit PNG/TIFF. Floating-point (mode F) input is written back
    as a 32-bit float TIFF on its own scale ([0, 1], or [0, 255] when its maximum passes 2), and as 16-bit
    PNG; pixels outside the scale are clipped, with a warning, and NaN or infinite ones refused. Pillow reads
    16-bit colour PNG/TIFF, and 16-bit grey with alpha, as 8 bits per channel, so those come back 8-bit (grey with alpha
    stays grey). JPEG is written with quality 95.
  - EXIF orientation is applied on read (the pixels are rotated); no EXIF is written back, so the output is
    displayed the same way. An ICC profile is carried over, unless the pixels were converted out of
    its colour space (CMYK, LAB, YCbCr and HSV are read as RGB), and so is the resolution (dpi).
  - Hostile files are refused before memory is spent on them: the pixel count in the header is checked
    against `max_pixels` before decoding (which overrides Pillow's own limit), truncated files are errors (never
    silently padded), and anything Pillow cannot identify or decode is a DataError naming the file and the
    reason; a file that cannot be read at all (permissions) is a ResourceError.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from dae.errors import DataError, ResourceError, UsageError
from dae.fileio import atomic_write

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: about 1.2 GB as an RGB float32 tensor
_CONVERTED_MODES = ("CMYK", "LAB", "YCbCr", "HSV")  # read as RGB
_PILLOW_LIMIT = threading.Lock()  # held while Image.MAX_IMAGE_PIXELS is lifted

# Output format by extension; reading accepts whatever Pillow identifies, folder scans use these extensions.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
IMAGE_EXTENSIONS = frozenset(FORMATS)
ALPHA_FORMATS = frozenset({"PNG", "TIFF"})
SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})

_GRAY_16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")


@dataclass
class ImageInfo:
    """What `read_image` learned about a file and `write_image` needs to write it back the same way."""

    path: Path | None = None
    format: str | None = None  # Pillow format of the source file ("PNG", "JPEG", ...)
    mode: str = "L"  # Pillow mode of the source file, before any conversion
    bit_depth: int = 8  # 8, 16 or 32 (float) per sample, for the written output
    scale: float = 1.0  # a float file's full scale: [0, 1] is 1.0, [0, 255] is 255.0
    alpha: np.ndarray | None = None  # (H, W) uint8, the original alpha channel, re-attached on write
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None  # the file's resolution, written back where the format keeps one


def read_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[Tensor, ImageInfo]:
    """Read an image file as float32 (C, H, W) in [0, 1] (C = 1 or 3) plus what is needed to write it back.

    Example:
        >>> x, info = read_image("photo.png")
        >>> write_image("out/photo.png", x, info)
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise DataError(f"{path}: not a file")
        raise ResourceError(f"{path}: no such file")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped Pillow's global switch; a truncated file would be padded with gray without a word.
        raise DataError(f"{path}: refusing to read with PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True")
    # Our pixel limit replaces Pillow's warning. Pillow's hard error (at twice its own limit) is lifted only
    # when max_pixels asks for more, and only under a lock, as the limit is a global of Pillow's.
    lift = max_pixels is None or (
        Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS
    )
    with _PILLOW_LIMIT if lift else contextlib.nullcontext():
        return _read(path, max_pixels, lift)


def _read(path: Path, max_pixels: int | None, lift: bool) -> tuple[Tensor, ImageInfo]:
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if lift:
                Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise _too_large(path, f"{width}x{height} = {width * height}", max_pixels)
                frames = getattr(im, "n_frames", 1)
                # Frame 0 alone would come back as the whole file, the rest lost without a word. A camera's
                # JPEG (MPO) carries previews or a depth map after its one picture: that is read as before.
                if frames > 1 and im.format != "MPO":
                    raise DataError(
                        f"{path}: holds {frames} frames (an animation or a multi-page file); dae denoises "
                        "single images: save the frame you want as a file of its own"
                    )
                fmt = im.format
                src_mode = im.mode
                # Pillow reports 1 dpi for a TIFF without a resolution tag (282): written back, a print would
                # size each pixel at an inch.
                no_resolution = fmt == "TIFF" and 282 not in getattr(im, "tag_v2", {})
                dpi = None if no_resolution else _dpi(im.info.get("dpi"))
                # The profile describes the file's colour space; pixels converted out of it (CMYK, LAB,
                # YCbCr, HSV to RGB) would be mis-rendered under it.
                icc = im.info.get("icc_profile") if src_mode not in _CONVERTED_MODES else None
                # Pillow reads a 16-bit grey-and-alpha PNG as 8-bit RGBA: keep it grey (its depth is lost).
                gray_alpha = fmt == "PNG" and bool(im.tile) and getattr(im.tile[0], "args", None) == "LA;16B"
                im.load()  # decode now so truncation surfaces here, as OSError
                im = ImageOps.exif_transpose(im)
                if gray_alpha and im.mode == "RGBA":
                    im = im.convert("LA")  # R = G = B, so exact
                x, bit_depth, alpha, scale = _to_array(im, path)
    except DataError:
        raise
    except (PermissionError, IsADirectoryError) as e:
        raise ResourceError(f"{path}: cannot read ({e.strerror or e})") from None
    except Image.DecompressionBombError as e:
        # Pillow's hard limit (twice its own, lifted only when max_pixels asks for more) fires before our check
        # can, so say it as our check does, with the limit that fired.
        size = re.search(r"\((\d+) pixels\)", str(e))
        limit = (
            min(max_pixels, 2 * pillow_limit) if max_pixels and pillow_limit else max_pixels or pillow_limit
        )
        raise _too_large(path, size[1] if size else "its", limit) from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can identify (other format or damaged)") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to decode this image") from None
    except Exception as e:  # Pillow plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None
    finally:
        if lift:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    info = ImageInfo(
        path=path,
        format=fmt,
        mode=src_mode,
        bit_depth=bit_depth,
        scale=scale,
        alpha=alpha,
        icc_profile=icc or None,
        dpi=dpi,
    )
    return torch.from_numpy(x), info


def _too_large(path: Path, pixels: str, limit: int | None) -> DataError:
    return DataError(
        f"{path}: {pixels} pixels exceeds the limit of {limit} (possible decompression bomb); if the file is "
        "trusted, raise the limit (dae denoise --max-pixels, or max_pixels=)"
    )


def _dpi(value: object) -> tuple[float, float] | None:
    """Pillow's dpi entry as two positive numbers, or None (absent, zero or malformed)."""
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _to_array(im: Image.Image, path: Path) -> tuple[np.ndarray, int, np.ndarray | None, float]:
    """Decoded Pillow image -> ((C, H, W) float32 in [0, 1], bit depth, (H, W) uint8 alpha or None, scale)."""
    mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        rgb = np.asarray(im)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            im = im.convert("LA" if has_alpha else "L")  # a gray palette stays one channel
        mode = im.mode
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in ("La", "RGBa"):  # premultiplied alpha -> straight alpha
        mode = "LA" if mode == "La" else "RGBA"
        im = im.convert(mode)
    elif mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in _TO_RGB:
        im, mode = im.convert("RGB"), "RGB"

    if mode in _GRAY_16:
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):  # mode I is 32-bit: clipping would flatten the rest
            raise DataError(
                f"{path}: 32-bit integer samples from {a.min()} to {a.max()} do not fit 16 bits; dae reads "
                "integer images of up to 16 bits: convert it to 16-bit or floating point"
            )
        return (a.astype(np.float32) / 65535.0)[None], 16, None, 1.0
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        if not np.isfinite(a).all():  # was read as 0 (NaN) or 1 and 0 (infinities), without a word
            raise DataError(f"{path}: floating-point pixels hold NaN or infinite values")
        # On [0, 1] by convention, or 0-255. A pixel a little past 1 (a filter's overshoot) does not make the
        # file 0-255: it divided the whole image by 255. Only a maximum past 2 does.
        scale = 255.0 if a.size and a.max() > 2.0 else 1.0
        x = a / scale
        outside = int(np.count_nonzero((x < 0.0) | (x > 1.0)))
        if outside:
            log.warning("%s: %d pixel(s) outside [0, %g] clipped to it", path, outside, scale)
        return np.clip(x, 0.0, 1.0)[None], 32, None, scale
    if mode in ("L", "LA", "RGB", "RGBA"):
        a = np.asarray(im)
        alpha = None
        if mode in ("LA", "RGBA"):
            alpha = np.ascontiguousarray(a[..., -1])
            a = a[..., :-1]
        a = a.reshape(a.shape[0], a.shape[1], -1)  # (H, W, C)
        x = np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32) / 255.0
        return x, 8, alpha, 1.0
    raise ValueError(f"unsupported image mode {mode!r}")


def write_image(
    path: str | Path,
    image: Tensor,
    info: ImageInfo | None = None,
    *,
    quality: int = 95,
    overwrite: bool = True,
) -> Path:
    """Write a (C, H, W) or (1, C, H, W) [0, 1] tensor atomically, in the format its extension names.

    Bit depth and alpha come from `info` (see the module rules). With overwrite=False an existing file is
    never replaced (checked atomically at the final rename).

    Example:
        >>> write_image("out.png", torch.rand(1, 37, 53))
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unsupported output extension; use one of {', '.join(sorted(FORMATS))}")
    info = info or ImageInfo()
    im = _to_pil(image, info, fmt, path)
    params: dict = {}
    if fmt == "JPEG":
        params["quality"] = quality
    if info.icc_profile and fmt in ("PNG", "JPEG", "TIFF"):
        params["icc_profile"] = info.icc_profile
    if info.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        params["dpi"] = info.dpi  # a scan's 300 dpi would otherwise print at the viewer's default size
    if not overwrite and path.exists():
        raise OutputExists(path)

    try:
        atomic_write(path, lambda f: im.save(f, format=fmt, **params), overwrite=overwrite)
    except FileExistsError:
        raise OutputExists(path) from None
    return path


class OutputExists(ResourceError):
    """write_image(overwrite=False) found its target there: before the write, or put there meanwhile."""

    def __init__(self, path: Path):
        super().__init__(f"{path}: output exists; pass --force to overwrite")
        self.path = path


def _to_pil(image: Tensor, info: ImageInfo, fmt: str, path: Path) -> Image.Image:
    """(C, H, W) tensor in [0, 1] -> Pillow image in the depth and alpha that `info` and `fmt` call for."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise UsageError(f"{path}: write_image expects a (1 or 3, H, W) image, got {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0).numpy()
    c, h, w = x.shape
    alpha = info.alpha if fmt in ALPHA_FORMATS else None
    if alpha is not None and alpha.shape != (h, w):
        raise UsageError(f"{path}: alpha channel is {alpha.shape[1]}x{alpha.shape[0]}, image is {w}x{h}")
    if c == 1 and info.bit_depth == 32 and fmt == "TIFF" and alpha is None:
        return Image.fromarray((x[0] * np.float32(info.scale)).astype(np.float32))  # mode F
    if c == 1 and info.bit_depth >= 16 and fmt in SIXTEEN_BIT_FORMATS and alpha is None:
        return Image.fromarray(np.rint(x[0] * 65535.0).astype(np.uint16))  # mode I;16
    a = np.rint(x * 255.0).astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    if alpha is not None:
        a = np.concatenate([a, alpha.astype(np.uint8)[..., None]], axis=2)
    if a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(np.ascontiguousarray(a))  # L, LA, RGB or RGBA from the shape
