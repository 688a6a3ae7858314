"""Figures for runs and studies: each function takes plain data, writes one figure and returns its path.

Figures are built on `matplotlib.figure.Figure` directly instead of pyplot: nothing is registered in
pyplot's global figure list (so nothing leaks and there is nothing to close), the process-wide backend is
never switched, and files are rendered by Agg whatever backend a notebook has selected.
Files are written atomically, as PNG, SVG, PDF or JPEG by the path's extension (PNG without one).
"""

from __future__ import annotations

import csv
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from dae.checks import is_whole
from dae.errors import DataError, UsageError
from dae.fileio import atomic_write

DPI = 110
CELL = 1.05  # inches per image cell in image grids

# Layers whose outputs are shown by plot_activations (see its docstring for the selection rule).
SPATIAL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.MaxUnpool2d,
    nn.PixelShuffle,
)
VECTOR_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear,)


# ----------------------------------------------------------------------------------------------------
# helpers


# The file's extension picks the format: a .jpg path used to get PNG bytes, which some viewers refuse. A name
# with no extension, or a dot that starts none ("psnr_0.5"), gets PNG.
FORMATS = {"": "png", ".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg"}


def _save(fig: Figure, path: str | Path) -> Path:
    """Render `fig` at `path` atomically (temp file + os.replace) in the format its extension names (PNG
    without one) and return the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = FORMATS.get(suffix if suffix[1:].isalpha() else "")
    try:
        if fmt is None:
            raise UsageError(
                f"figure {path}: cannot write {path.suffix!r} files; use .png, .svg, .pdf or .jpg"
            )
        if path.is_dir():
            raise UsageError(f"figure {path} is a folder; give a file name, e.g. {path / 'figure.png'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=DPI, facecolor="white"))
    finally:
        fig.clear()  # drop the artists now rather than at garbage collection, written or not
    return path


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _images(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    """(N, C, H, W) / (C, H, W) / (H, W) images -> (N, H, W) grey or (N, H, W, 3) colour, in [0, 1]."""
    a = _numpy(x)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise UsageError(f"{what}: expected images shaped (N, 1|3, H, W), got {tuple(a.shape)}")
    a = np.clip(a, 0.0, 1.0)
    return a[:, 0] if a.shape[1] == 1 else a.transpose(0, 2, 3, 1)


def _like_clean(y: np.ndarray, clean: np.ndarray, fn: str, what: str) -> np.ndarray:
    if y.shape != clean.shape:
        raise UsageError(f"{fn}: {what} has shape {y.shape}, clean has {clean.shape}")
    return y


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR with data range 1.0 (the project's canonical definition)."""
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def _bare(ax: Any) -> None:
    """Hide ticks and frame but keep the y label (used as a row label)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _show(ax: Any, img: np.ndarray, **kw: Any) -> None:
    if img.ndim == 2:
        kw.setdefault("cmap", "gray")
    kw.setdefault("vmin", 0.0)
    kw.setdefault("vmax", 1.0)
    ax.imshow(img, interpolation="nearest", **kw)
    _bare(ax)


def _row_label(ax: Any, text: str, size: float = 8) -> None:
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=size, labelpad=6)


def _near_square(d: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == d and rows the largest divisor <= sqrt(d): 64 -> 8x8, 32 -> 4x8."""
    rows = max(r for r in range(1, math.isqrt(d) + 1) if d % r == 0)
    return rows, d // rows


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _family(noise: Any) -> str:
    """A noise spec without its level: 'gaussian:0.3' -> 'gaussian', 'x:0.3,clip=false' -> 'x,clip=false'."""
    return re.sub(r":[-+0-9.eE]+", "", str(noise or ""))


def _spec_level(value: Any) -> float:
    """The number in a level or in a one-level spec ('0.3', 'gaussian:0.3'); NaN if there is none."""
    f = _float(value)
    if math.isnan(f):
        m = re.fullmatch(r"[a-z_]+:([-+0-9.eE]+)(,.*)?", str(value))
        f = _float(m.group(1)) if m else math.nan
    return f


def _level_key(value: Any) -> tuple[str, int, float, str]:
    """Sort levels and specs by family, then numerically by level, anything else alphabetically after them."""
    f = _spec_level(value)
    family = "" if not math.isnan(_float(value)) else _family(value)
    return (family, 0, f, "") if not math.isnan(f) else (family, 1, 0.0, str(value))


def _fmt_level(value: Any) -> str:
    f = _float(value)
    return f"{f:g}" if not math.isnan(f) else str(value)


def _short_levels(labels: Sequence[str]) -> tuple[list[str], str]:
    """['gaussian:0.1', 'gaussian:0.3'] -> (['0.1', '0.3'], 'gaussian'); mixed families stay as they are."""
    families = {_family(v) for v in labels}
    numbers = [_spec_level(v) for v in labels]
    if len(families) == 1 and not any(math.isnan(f) for f in numbers):
        return [f"{f:g}" for f in numbers], families.pop()
    return [_fmt_level(v) for v in labels], ""


def _blank(value: Any) -> bool:
    return value is None or str(value).strip() in ("", "None", "null", "nan")


def _read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a readable CSV file ({e})") from None


# ----------------------------------------------------------------------------------------------------
# image grids


def plot_denoise_grid(
    clean: Tensor,
    noisy_by_level: Mapping[str, Tensor],
    denoised_by_level: Mapping[str, Tensor],
    path: str | Path,
    n: int = 8,
) -> Path:
    """Rows: clean, then noisy and denoised per level (row labels give the mean PSNR of the images shown).

    Example:
        >>> plot_denoise_grid(x, {"0.5": noisy}, {"0.5": model.denoise(noisy)}, "figures/grid.png")
    """
    if not is_whole(n) or n < 1:
        raise UsageError(f"plot_denoise_grid: n must be a whole number of images >= 1, got {n!r}")
    c = _images(clean, "clean")
    n = min(n, len(c))
    if n == 0:
        raise UsageError("plot_denoise_grid: no clean images given")
    c = c[:n]
    rows: list[tuple[str, np.ndarray]] = [("clean", c)]
    for level, noisy in noisy_by_level.items():
        what = f"noisy images at level {level}"
        x = _like_clean(_images(noisy, what)[:n], c, "plot_denoise_grid", what)
        rows.append((f"noisy {level}\n{_psnr(x, c):.1f} dB", x))
        if level in denoised_by_level:
            what = f"denoised images at level {level}"
            y = _like_clean(_images(denoised_by_level[level], what)[:n], c, "plot_denoise_grid", what)
            rows.append((f"denoised {level}\n{_psnr(y, c):.1f} dB", y))
    fig = Figure(figsize=(1.5 + CELL * n, CELL * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    for r, (label, imgs) in enumerate(rows):
        for j in range(n):
            _show(axes[r, j], imgs[j])
        _row_label(axes[r, 0], label)
    return _save(fig, path)


def plot_error_maps(clean: Tensor, outputs: Mapping[str, Tensor], path: str | Path, n: int = 3) -> Path:
    """|output - clean| per method (columns) for the first `n` images (rows), on one shared colour scale.

    Example:
        >>> plot_error_maps(x, {"noisy": noisy, "unet": unet.denoise(noisy), "bm3d": b}, "figures/errors.png")
    """
    c = _images(clean, "clean")
    n = min(n, len(c))
    if n == 0 or not outputs:
        raise UsageError("plot_error_maps: needs at least one clean image and one method output")
    c = c[:n]
    errors = {}
    for name, out in outputs.items():
        y = _like_clean(_images(out, f"output of {name}")[:n], c, "plot_error_maps", f"output of {name}")
        errors[name] = (np.abs(y - c), [_psnr(y[i : i + 1], c[i : i + 1]) for i in range(n)])
    vmax = max(float(e.max()) for e, _ in errors.values()) or 1.0
    cols = 1 + len(errors)
    fig = Figure(figsize=(0.8 + 1.35 * cols, 1.45 * n), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    im = None
    for i in range(n):
        _show(axes[i, 0], c[i])
        _row_label(axes[i, 0], f"image {i}")
        for j, (err, psnrs) in enumerate(errors.values(), start=1):
            e = err[i] if err.ndim == 3 else err[i].mean(axis=-1)
            im = axes[i, j].imshow(e, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
            _bare(axes[i, j])
            axes[i, j].set_xlabel(f"{psnrs[i]:.1f} dB", fontsize=7, labelpad=2)
    axes[0, 0].set_title("clean", fontsize=8)
    for j, name in enumerate(errors, start=1):
        # Wrapped to the column's width: study labels ("upsample @gaussian:0.5 bce") ran into each other.
        axes[0, j].set_title(textwrap.fill(str(name), 16, break_long_words=True), fontsize=7)
    fig.colorbar(im, ax=axes[:, 1:], shrink=0.8, label="|error|")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# inside the model


def plot_code_layer(code: Tensor, path: str | Path, title: str = "", max_maps: int = 64) -> Path:
    """Each feature map of one digit's code layer (C, h, w) in a grid; a vector code (D,) as bars + a tile.

    Example:
        >>> plot_code_layer(model.encode(x[:1])[0], "figures/code.png", "code layer")
    """
    if not is_whole(max_maps) or max_maps < 1:
        raise UsageError(f"plot_code_layer: max_maps must be a whole number >= 1, got {max_maps!r}")
    a = _numpy(code)
    while a.ndim > 1 and a.shape[0] == 1 and a.ndim in (2, 4):  # drop a batch dimension of one
        a = a[0]
    if a.ndim == 3 and a.shape[1:] == (1, 1):
        a = a[:, 0, 0]  # (C, 1, 1) is a vector code
    if a.ndim == 1 and a.size:
        return _plot_code_vector(a, path, title)
    if a.ndim != 3 or a.size == 0:
        raise UsageError(
            f"plot_code_layer: expected a non-empty (C, h, w) or (D,) code, got shape {tuple(a.shape)}"
        )
    total = a.shape[0]
    a = a[:max_maps]
    k = a.shape[0]
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    cell = max(0.75, min(1.3, 6.0 / cols))
    fig = Figure(figsize=(0.9 + cell * cols, 0.6 + cell * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    lo, hi = float(a.min()), float(a.max())
    im = None
    for i, ax in enumerate(axes.flat):
        _bare(ax)
        if i < k:
            # One colour scale for all maps: dead (all-zero) channels look dead, not like amplified noise.
            im = ax.imshow(
                a[i], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest"
            )
            ax.set_title(f"{i}", fontsize=7, pad=2)
        else:
            ax.set_visible(False)
    shown = f"{total}x{a.shape[1]}x{a.shape[2]}" + (f", first {k} shown" if k < total else "")
    fig.suptitle(f"{title} ({shown})" if title else shown, fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.7)
    return _save(fig, path)


def _plot_code_vector(v: np.ndarray, path: str | Path, title: str) -> Path:
    d = v.shape[0]
    r, c = _near_square(d)
    if r == 1 and d > 16:  # a prime length: a single strip reads better than a 1 x D tile
        r, c = 1, d
    fig = Figure(figsize=(8.0, 3.0), layout="constrained")
    ax_bar, ax_tile = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.2]})
    ax_bar.bar(np.arange(d), v, color=np.where(v >= 0, "#3b6fb6", "#c0504d"), width=0.85)
    ax_bar.set_xlim(-0.7, d - 0.3)
    ax_bar.set_xlabel("code unit")
    ax_bar.set_ylabel("activation")
    ax_bar.axhline(0.0, color="black", lw=0.6)
    im = ax_tile.imshow(v.reshape(r, c), cmap="viridis", interpolation="nearest", aspect="equal")
    _bare(ax_tile)
    ax_tile.set_title(f"as {r}x{c}", fontsize=8)
    fig.colorbar(im, ax=ax_tile, shrink=0.8)
    fig.suptitle(f"{title} ({d} units)" if title else f"{d} units", fontsize=10)
    return _save(fig, path)


def _capture(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, str, Tensor]]:
    """Run encode then decode with forward hooks; return (name, module, phase, output) for each layer call."""
    watched = [
        (name, m) for name, m in model.named_modules() if isinstance(m, SPATIAL_LAYERS + VECTOR_LAYERS)
    ]
    calls: list[tuple[str, nn.Module, str, Tensor]] = []
    phase = ["encode"]

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                calls.append((name, module, phase[0], output.detach().to("cpu", torch.float32)))

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in watched]
    try:
        with torch.inference_mode():
            xp = model.pad(x)[0] if hasattr(model, "pad") else x
            code = model.encode(xp)
            phase[0] = "decode"
            raw = model.decode(code)
            calls.append(
                ("output", model, "output", model.to_image(raw)[..., : x.shape[-2], : x.shape[-1]].cpu())
            )
    finally:
        for h in handles:
            h.remove()
    return calls


def decoder_activations(model: nn.Module, x: Tensor) -> tuple[list[tuple[str, nn.Module, Tensor]], Tensor]:
    """The decoder's layer outputs for a batch, in call order, and the model's output image.

    Decoder layers are chosen by this rule:
      1. the conv / transposed-conv / upsample / unpool / pixel-shuffle modules that run inside
         `model.decode(code)` (exact for every Denoiser whatever its modules are called, e.g. "up1");
      2. if none run there, such modules whose top-level name starts with "dec" ("decoder.3", "dec1.conv");
      3. if the decoder has no spatial layers at all (fully connected models), its nn.Linear layers.

    Example:
        >>> layers, out = decoder_activations(model, noisy[:1])
        >>> [name for name, _, _ in layers]
        ['decoder.0', 'decoder.2', 'decoder.4']
    """
    was_training = model.training
    model.eval()
    try:
        calls = _capture(model, x)
    finally:
        model.train(was_training)
    output = calls.pop()[3]
    spatial = [c for c in calls if isinstance(c[1], SPATIAL_LAYERS)]
    chosen = [c for c in spatial if c[2] == "decode"]
    if not chosen:
        chosen = [c for c in spatial if c[0].split(".")[0].startswith("dec")]
    if not chosen:
        chosen = [c for c in calls if c[2] == "decode" and isinstance(c[1], VECTOR_LAYERS)]
    return [(name, module, out) for name, module, _, out in chosen], output


def plot_activations(
    model: nn.Module, x: Tensor, path: str | Path, max_channels: int = 6, max_layers: int = 10
) -> Path:
    """Outputs of the decoder's layers for one input: a row per layer, its first few channels per row.

    Layers are chosen as `decoder_activations` documents; at most `max_layers` are shown (evenly spaced, the
    last kept), each channel on its own colour scale; vector (Linear) outputs are shown as a heat tile.

    Example:
        >>> plot_activations(model, noisy[:1], "figures/activations.png")
    """
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise UsageError(f"plot_activations: expected one image (1, C, H, W), got shape {tuple(x.shape)}")
    x = x[:1]
    chosen, output = decoder_activations(model, x)
    if not chosen:
        raise UsageError(f"plot_activations: found no decoder layers in {type(model).__name__}")
    if len(chosen) > max_layers:
        keep = np.unique(np.linspace(0, len(chosen) - 1, max_layers).round().astype(int))
        chosen = [chosen[i] for i in keep]

    # A module called twice (shared weights) gets "#2" so its rows are told apart.
    seen: dict[str, int] = {}
    rows: list[tuple[str, np.ndarray, bool]] = [("input", _images(x, "input")[0], True)]
    for name, module, out in chosen:
        seen[name] = seen.get(name, 0) + 1
        label = name + (f"#{seen[name]}" if seen[name] > 1 else "")
        a = out[0].numpy()
        if a.ndim == 3:
            rows.append(
                (f"{label}\n{type(module).__name__} {a.shape[0]}x{a.shape[1]}x{a.shape[2]}", a, False)
            )
        else:
            flat = a.reshape(-1)
            r, c = _near_square(flat.size)
            rows.append((f"{label}\n{type(module).__name__} {flat.size}", flat.reshape(1, r, c), False))
    rows.append(("output", _images(output, "output")[0], True))

    cols = max(min(max_channels, r[1].shape[0]) if not r[2] else 1 for r in rows)
    fig = Figure(figsize=(2.2 + 1.0 * cols, 1.0 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for i, (label, a, is_image) in enumerate(rows):
        maps = [a] if is_image else [a[k] for k in range(min(max_channels, a.shape[0]))]
        for j in range(cols):
            ax = axes[i, j]
            _bare(ax)
            if j >= len(maps):
                ax.set_visible(j != 0)
                ax.axis("off")
                continue
            m = maps[j]
            if is_image:
                _show(ax, m)
            else:
                lo, hi = float(m.min()), float(m.max())
                ax.imshow(
                    m, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest"
                )
                if len(maps) > 1:
                    ax.set_title(f"ch {j}", fontsize=6, pad=1)
        _row_label(axes[i, 0], label, size=7)
    fig.suptitle(f"decoder activations of {type(model).__name__}", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# numbers


def plot_training_curves(
    metrics: str | Path | Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    loss: str | None = None,
    noise: str | None = None,
) -> Path:
    """Train/val loss (left) and validation PSNR (right) against step, from metrics.csv or its rows.

    `loss` and `noise` (the run's train.loss and train.noise) label the axes: a bce and an mse loss differ in
    scale, and a blind run's validation noise spans levels.

    Example:
        >>> plot_training_curves("runs/demo/metrics.csv", "runs/demo/figures/curves.png")
    """
    where = str(metrics) if isinstance(metrics, str | Path) else "metrics rows"
    rows = _read_csv(metrics) if isinstance(metrics, str | Path) else list(metrics)
    if not rows:
        raise DataError(f"{where} has no rows; nothing to plot")

    def column(name: str) -> np.ndarray:
        values = np.array([_float(r.get(name)) for r in rows], dtype=float)
        return np.where(np.isfinite(values), values, np.nan)  # dae writes no inf: a hand edit is no point

    step = column("step")
    if np.isnan(step).all():
        step = np.arange(1, len(rows) + 1, dtype=float)
    train, val, psnr = column("train_loss"), column("val_loss"), column("val_psnr")
    if all(np.isnan(c).all() for c in (train, val, psnr)):
        raise DataError(f"{where} has no train_loss, val_loss or val_psnr values")

    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    ax_loss, ax_psnr = fig.subplots(1, 2)
    for values, label, style in ((train, "train loss", "-"), (val, "val loss", "--")):
        ok = ~np.isnan(values)
        if ok.any():
            ax_loss.plot(
                step[ok], values[ok], style, marker="o" if ok.sum() < 30 else None, ms=3, label=label
            )
    losses = np.concatenate([train[~np.isnan(train)], val[~np.isnan(val)]])
    if losses.size and losses.min() > 0 and losses.max() / losses.min() > 20:
        ax_loss.set_yscale("log")  # early losses dwarf the rest on a linear axis
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"{loss} loss" if loss else "loss")
    ax_loss.set_title(f"loss ({loss})" if loss else "loss")
    if losses.size:
        ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)

    ok = ~np.isnan(psnr)
    if ok.any():
        ax_psnr.plot(step[ok], psnr[ok], "-", color="#2a7f3f", marker="o" if ok.sum() < 30 else None, ms=3)
        best = int(np.nanargmax(np.where(ok, psnr, -np.inf)))
        ax_psnr.plot([step[best]], [psnr[best]], "*", color="#d62728", ms=12, zorder=3)
        # In a corner box rather than beside the star: a rising curve would run through a label there.
        ax_psnr.text(
            0.98,
            0.04,
            f"best {psnr[best]:.2f} dB at step {step[best]:g}",
            transform=ax_psnr.transAxes,
            ha="right",
            va="bottom",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8"},
        )
    else:
        ax_psnr.text(
            0.5, 0.5, "no validation PSNR recorded", ha="center", va="center", transform=ax_psnr.transAxes
        )
    ax_psnr.set_xlabel("step")
    ax_psnr.set_ylabel("PSNR (dB)")
    ax_psnr.set_title(f"validation PSNR ({noise})" if noise else "validation PSNR")
    ax_psnr.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    # Steps are whole: one row gave ticks at 0.96 ... 1.04, which an integer locator still draws on so short a
    # span; a few rows get ticks at their own steps.
    steps = np.unique(step[np.isfinite(step)])
    for ax in (ax_loss, ax_psnr):
        if len(steps) <= 6:
            ax.set_xticks(steps)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def _label_log_axis(ax: Any, values: Sequence[float]) -> None:
    """Label a log axis at the values evaluated, as plain numbers ("20", not "2x10^1").

    Matplotlib's own labels turn to scientific minor labels on a range of about a decade, and those
    overlap; labelling the evaluated peaks says what was measured. Both ends are labelled; a value closer
    than a tenth of the axis's span (in log terms) to a labelled neighbour goes unlabelled, so dense sweeps
    stay legible.
    """
    from matplotlib.ticker import NullLocator

    values = [v for v in values if v > 0]
    if not values:
        return
    span = math.log10(values[-1] / values[0]) or 1.0
    shown = [values[0]]
    for v in values[1:-1]:
        if min(math.log10(v / shown[-1]), math.log10(values[-1] / v)) >= span / 10:
            shown.append(v)
    if len(values) > 1:
        shown.append(values[-1])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(shown, [f"{v:g}" for v in shown])


# A legend entry's width at fontsize 8, in inches: a generous average character width (DejaVu Sans) and the
# line sample with its padding.
_LEGEND_CHAR_IN, _LEGEND_HANDLE_IN = 0.075, 0.75

_STYLE = {
    "learned": {"linestyle": "-", "marker": "o", "lw": 2.0},
    "baseline": {"linestyle": "--", "marker": "s", "lw": 1.4},
    "noisy": {"linestyle": ":", "marker": None, "lw": 1.6, "color": "0.5"},
}


def level_label(family: str | None) -> str:
    """What a noise family's level is, for an axis or a table's columns: poisson's is a photon peak."""
    if family == "poisson":
        return "poisson peak (photons; more is less noise)"
    return f"{family} noise level" if family else "noise level"


def plot_psnr_vs_noise(
    records: Iterable[Mapping[str, Any]], path: str | Path, metric: str = "psnr", title: str | None = None
) -> Path:
    """One line per method against noise level: learned solid, baselines dashed, the noisy input grey dotted.

    Records are evaluation rows (method, kind, noise, level, psnr, ssim, ...) as written by `dae.evaluate`;
    one panel per noise family ('gaussian:0.3' and 'gaussian:0.5' share the 'gaussian' panel).

    Example:
        >>> plot_psnr_vs_noise(records, "figures/psnr_vs_noise.png", metric="ssim")
    """
    records = list(records)
    odd = next((r for r in records if not isinstance(r, Mapping)), None)
    if odd is not None:
        raise UsageError(
            f"plot_psnr_vs_noise: records are evaluation rows (mappings), got a {type(odd).__name__}"
        )
    records = [r for r in records if not math.isnan(_float(r.get(metric)))]
    if not records:
        raise DataError(f"no evaluation records with a {metric!r} value to plot")

    def x_of(r: Mapping[str, Any]) -> Any:
        return r.get("level") if not _blank(r.get("level")) else r.get("noise")

    families = sorted({_family(r.get("noise")) for r in records})
    xs = sorted({x_of(r) for r in records}, key=_level_key)
    numeric = all(not math.isnan(_spec_level(v)) for v in xs)
    position = {v: (_spec_level(v) if numeric else float(i)) for i, v in enumerate(xs)}

    kinds: dict[str, str] = {}  # method -> kind
    for r in records:
        kinds.setdefault(str(r.get("method")), str(r.get("kind", "learned")))
    order = sorted(kinds, key=lambda m: {"learned": 0, "baseline": 1, "noisy": 2}.get(kinds[m], 1))
    palette = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#9467bd",
        "#ff7f0e",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
    ]
    coloured = [m for m in order if kinds[m] != "noisy"]
    if len(coloured) > len(palette):  # one colour per method while there are colours to give
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        palette = [to_hex(c) for c in colormaps["tab20"].colors]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(coloured)}

    fig = Figure(figsize=(0.8 + 4.6 * len(families), 4.2), layout="constrained")
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, family in zip(axes, families, strict=True):
        for method in order:
            pts = sorted(
                (position[x_of(r)], _float(r.get(metric)))
                for r in records
                if str(r.get("method")) == method and _family(r.get("noise")) == family
            )
            if not pts:
                continue
            style = dict(_STYLE.get(kinds[method], _STYLE["baseline"]))
            style.setdefault("color", colours.get(method))
            if kinds[method] == "noisy" and method != "noisy input":  # the floor of the slow methods' subset
                style["linestyle"] = "-."
            label = method
            label = " " + label if label.startswith("_") else label  # matplotlib hides "_..." from legends
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, ms=4, **style)
        ax.set_xlabel(level_label(family))
        if family == "poisson":  # peaks are photon counts: more is cleaner, and they span decades
            if numeric:
                ax.set_xscale("log")
                _label_log_axis(
                    ax, sorted({_spec_level(x_of(r)) for r in records if _family(r.get("noise")) == family})
                )
        if not numeric:
            ax.set_xticks(list(position.values()), _short_levels([str(v) for v in xs])[0], fontsize=8)
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM"}.get(metric, metric))
        ax.grid(alpha=0.3)
    # Below the plot, not beside it: method names can be long and would squeeze the axes. Every panel's
    # methods, each once: a method evaluated on one family only (salt_pepper, say) is in one panel only.
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    # As many columns (up to 3) as the figure's width holds: three long run names side by side were cut off at
    # both edges. A name longer than the figure widens it.
    entry = max(len(label) for label in labels) * _LEGEND_CHAR_IN + _LEGEND_HANDLE_IN
    width = fig.get_figwidth()
    if entry > width:
        fig.set_figwidth(entry + 0.2)
    ncols = max(1, min(3, len(labels), int(width // entry)))
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


_TRAIN_KEYS = ("train_noise", "train_level", "train", "trained_on")


def _matrix_from(data: Any, metric: str) -> tuple[list[str], list[str], np.ndarray]:
    """Accept {row: {col: value}}, evaluation records (train_noise, level/noise, metric) or wide rows
    (matrix.csv: label columns such as train_noise and method, then one column per test noise)."""
    if isinstance(data, str | Path):
        data = _read_csv(data)
    if isinstance(data, Mapping):
        table = {str(r): {str(c): _float(v) for c, v in cols.items()} for r, cols in data.items()}
    else:
        rows = [dict(r) for r in data]
        if not rows:
            raise DataError("plot_matrix: the matrix is empty")
        keys = list(rows[0])
        train_key = next((k for k in _TRAIN_KEYS if k in keys), None)
        table = {}
        if metric in keys and train_key:  # long form: one evaluation record per cell, trained models only
            rows = [r for r in rows if not _blank(r.get(train_key))]
            per_train: dict[str, set[str]] = {}
            for r in rows:
                per_train.setdefault(str(r[train_key]), set()).add(str(r.get("method", "")))
            for r in rows:
                label = str(r[train_key])
                if len(per_train[label]) > 1:  # two models trained on the same noise: name them
                    label = f"{label} ({r.get('method')})"
                test = r.get("noise") if not _blank(r.get("noise")) else r.get("level", r.get("test"))
                table.setdefault(label, {})[str(test)] = _float(r[metric])
        else:  # wide form: columns with no numbers label the row, the others are test noises
            label_cols = [k for k in keys if all(math.isnan(_float(r.get(k))) for r in rows)]
            shown = [k for k in label_cols if len({str(r.get(k)) for r in rows}) > 1] or label_cols[:1]
            if train_key in label_cols:  # the training noise leads; the rest tells apart rows it leaves alike
                shown = [train_key, *(k for k in shown if k != train_key)]
            labels = [[str(r.get(k)) for k in shown] or [str(i)] for i, r in enumerate(rows)]
            firsts = [first for first, *_ in labels]
            for r, (first, *rest) in zip(rows, labels, strict=True):
                alike = firsts.count(first) > 1
                label = first + (f" ({', '.join(rest)})" if rest and alike else "")
                table[label] = {str(k): _float(v) for k, v in r.items() if k not in label_cols}
        # Rows by training level (0.1 above 0.3 above 0.5), ignoring the " (method)" suffix.
        table = dict(sorted(table.items(), key=lambda kv: (_level_key(kv[0].split(" (")[0]), kv[0])))
    row_labels = list(table)
    col_labels = sorted({c for cols in table.values() for c in cols}, key=_level_key)
    values = np.array([[table[r].get(c, math.nan) for c in col_labels] for r in row_labels], dtype=float)
    if values.size == 0 or np.isnan(values).all():
        raise DataError("plot_matrix: the matrix holds no numbers")
    return row_labels, col_labels, values


def plot_matrix(
    data: str | Path | Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, Any]],
    path: str | Path,
    metric: str = "psnr",
    title: str | None = None,
) -> Path:
    """Heatmap of train noise (rows) x test level (columns) with each value written in; column best in bold.

    Example:
        >>> plot_matrix({"0.3": {"0.3": 27.1, "0.7": 18.0}, "0.7": {"0.3": 24.9, "0.7": 21.2}}, "matrix.png")
    """
    rows, cols, v = _matrix_from(data, metric)
    # Room for the row labels (about 0.07 in a character at 8 pt) beside the cells, not taken from them.
    label_width = 0.07 * max(len(r) for r in rows)
    fig = Figure(figsize=(1.8 + label_width + 0.85 * len(cols), 1.2 + 0.55 * len(rows)), layout="constrained")
    ax = fig.subplots()
    finite = v[~np.isnan(v)]
    lo, hi = float(finite.min()), float(finite.max())
    im = ax.imshow(
        np.ma.masked_invalid(v), cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, aspect="auto"
    )
    best = [np.nanargmax(v[:, j]) if not np.isnan(v[:, j]).all() else -1 for j in range(len(cols))]
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isnan(v[i, j]):
                continue
            # Dark text on the bright end of viridis, light text on the dark end.
            light = (v[i, j] - lo) / ((hi - lo) or 1.0) < 0.6
            ax.text(
                j,
                i,
                f"{v[i, j]:.2f}" if metric == "ssim" else f"{v[i, j]:.1f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if light else "black",
                fontweight="bold" if best[j] == i else "normal",
            )
    ticks, family = _short_levels(cols)
    ax.set_xticks(range(len(cols)), ticks, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(f"test {family} level" if family else "test noise level")
    ax.set_ylabel("trained on")
    fig.colorbar(im, ax=ax, label={"psnr": "PSNR (dB)", "ssim": "SSIM"}.get(metric, metric))
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
