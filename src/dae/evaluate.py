"""Honest numbers: every method (learned or classical) sees the same fixed-seed noisy test images."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dae import make_callable
from dae.checks import is_whole
from dae.data.noise import NOISES, Noise, check_unit_range, make_noisy, parse_noise
from dae.errors import ResourceError, UsageError
from dae.fileio import output_folder

DEFAULT_LEVELS = Noise.sweep  # most families' sweep; poisson has its own
RECORD_COLUMNS = [
    "method",
    "kind",
    "noise",
    "level",
    "psnr",
    "ssim",
    "mse",
    "n_images",
    "seed",
    "train_noise",
    "sigma",  # the noise level a baseline was handed: given (measured), estimated, or none used
]


# Every file write_results may write: those a new evaluation does not write are removed when its are swapped in.
RESULT_FILES = ("results.csv", "results.json", "psnr_vs_noise.png", "matrix.csv", "matrix.png")
STAGING = ".results-new"  # where write_results writes a new set before swapping it in


@dataclass
class Method:
    name: str
    kind: str  # "learned" | "baseline"
    denoiser: Any  # anything with .denoise(x, sigma=None)
    train_noise: str | None = None
    slow: bool = False
    trained_on: dict[str, Any] | None = None  # a checkpoint's config "data" section
    source: Path | None = None  # a checkpoint's weights file
    checkpoint: dict[str, Any] | None = None  # which weights were scored (see EvalResult.checkpoints)


@dataclass
class EvalResult:
    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    # Per learned method from a checkpoint: its file, training step and tensors' sha256. A run's best
    # checkpoint is replaced as training goes on; these tell whether the results still describe it.
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)


def noise_specs(noise: str | None, levels: Sequence[float] | None) -> list[tuple[str, float | None]]:
    """Expand a noise family and levels into concrete specs: ('gaussian', [0.1, 0.3]) -> gaussian:0.1, gaussian:0.3.

    Options after a comma are kept (gaussian,clip=false -> gaussian:0.3,clip=false). A full spec ('gaussian:0.3',
    'block:third', 'none', a composition) with no levels is used as it is; a family alone with levels=None gets
    the family's sweep (DEFAULT_LEVELS; peaks 1 to 100 for poisson).

    Example:
        >>> noise_specs("gaussian,clip=false", [0.1, 0.25])
        [('gaussian:0.1,clip=false', 0.1), ('gaussian:0.25,clip=false', 0.25)]
    """
    noise = "gaussian" if noise is None else noise
    if not noise.strip():
        parse_noise(noise)  # the parser's "empty noise spec" message
    name, _, rest = noise.partition(",")
    full = ":" in name or "+" in noise or name == "none"
    # A family alone is looked up once: an unknown one is named as given, not as the first spec built from it.
    family = None if full else NOISES.get(name.strip().lower())
    if levels is None and family is not None:
        levels = family.sweep
    if levels is None or len(levels) == 0:
        # Recorded as the parser writes it (Gaussian: 0.3 -> gaussian:0.3), so that the same noise always
        # has the same name, and its level is found in any notation (1e-1).
        spec = parse_noise(noise).spec
        try:
            # A composition has no one level: none+gaussian:0.3 is not gaussian:0.3 on a level axis.
            level: float | None = None if "+" in spec else float(spec.split(",")[0].partition(":")[2])
        except ValueError:  # block:third, a blind range, none
            level = None
        return [(spec, level)]
    if "+" in noise:
        raise UsageError(
            f"levels cannot be combined with a composed noise {noise!r}; give full specs instead"
        )
    if name == "none":
        raise UsageError("noise 'none' takes no levels; drop the levels")
    if full:
        raise UsageError(
            f"noise {noise!r} already has a level; drop the levels or give the family only (e.g. gaussian)"
        )
    specs: dict[str, float] = {}  # a level given twice is evaluated once
    for level in levels:
        text = f"{float(level):.12g}"  # the level that runs is the level recorded (0.1 + 0.2 -> 0.3)
        spec = parse_noise(f"{name}:{text}" + (f",{rest}" if rest else "")).spec
        specs.setdefault(spec, float(text))
    return list(specs.items())


def parse_levels(text: str | None) -> list[float] | None:
    """Comma-separated levels; None (not given) is the family's sweep, an empty list is refused later."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"bad levels {text!r}; give comma-separated numbers, e.g. 0.1,0.3,0.5") from None


def as_levels(levels: Any) -> list[float] | None:
    """Noise levels as a list of floats, from what a caller may give: a list, one number, or the command
    line's comma-separated text; None stays None (the family's sweep). Anything else is a UsageError."""
    if levels is None:
        return None
    if isinstance(levels, str):
        return parse_levels(levels)
    if isinstance(levels, int | float) or getattr(levels, "ndim", None) == 0:
        levels = [levels]
    try:
        return [_level(v) for v in levels]
    except (TypeError, ValueError):
        raise UsageError(f"levels must be numbers, got {levels!r}") from None


def _level(v: Any) -> float:
    """One level as a float. A float32 tensor or array holds 0.3 as 0.300000011920929, and torch.linspace's
    0.2 as 0.19999999; rounded to the decimal digits its dtype holds (6 for float32, 3 for float16, 2 for
    bfloat16) it is the level meant, and it labels the results."""
    x = float(v)
    if not isinstance(v, Tensor | np.ndarray | np.generic) or not math.isfinite(x):
        return x
    if isinstance(v, Tensor):
        dtype = v.dtype
    else:
        dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}.get(
            np.dtype(v.dtype)
        )
    if dtype is None or not dtype.is_floating_point or dtype == torch.float64:
        return x
    digits = round(-math.log10(torch.finfo(dtype).resolution))
    return float(f"{x:.{digits}g}")


def resolve_methods(
    checkpoints: Sequence[str | Path] = (),
    baselines: Sequence[str] = (),
    models: Sequence[Any] = (),
    device: str = "auto",
) -> list[Method]:
    """Checkpoints, already-built models and baseline names, all behind the same .denoise(x, sigma) call.

    `models` may also hold denoiser objects of one's own (.name, .needs_sigma, .denoise(x, sigma=None)).
    """
    from dae.baselines import BASELINES, LearnedDenoiser, as_denoiser
    from dae.checkpoint import load_checkpoint
    from dae.train import select_device

    dev = select_device(device)
    methods: list[Method] = []
    for path in checkpoints:
        ck = load_checkpoint(path, device=dev)
        config = ck.record.get("config") or {}
        train_noise = config.get("train", {}).get("noise")
        label = _checkpoint_label(ck.path, ck.record)
        methods.append(
            Method(
                label,
                "learned",
                as_denoiser(ck.model, label),
                train_noise,
                trained_on=config.get("data"),
                source=ck.path,
                checkpoint={
                    "file": str(ck.path.resolve()),
                    "step": ck.record.get("step"),
                    "tensors_sha256": ck.record.get("tensors_sha256"),
                },
            )
        )
    for model in models:
        if not isinstance(model, torch.nn.Module):  # a denoiser object of one's own (.name, .denoise)
            kind = "learned" if isinstance(model, LearnedDenoiser) else "baseline"
            slow = bool(getattr(model, "slow", False))
            methods.append(Method(getattr(model, "name", ""), kind, as_denoiser(model), slow=slow))
            continue
        label = getattr(model, "dae_name", type(model).__name__)
        methods.append(Method(label, "learned", as_denoiser(model.to(dev).eval(), label)))
    for name in baselines:
        b = BASELINES.create(name)
        methods.append(Method(name, "baseline", b, slow=bool(getattr(b, "slow", False))))
    # Two checkpoints of one run are told apart by file (unet@run:best, unet@run:step-00000200), anything
    # still alike by number, or they would collide in tables.
    names = [m.name for m in methods]
    for m in methods:
        if m.source is not None and names.count(m.name) > 1 and m.source.parent.name == "checkpoints":
            m.name = f"{m.name}:{m.source.stem}"
    names = [m.name for m in methods]
    for i, m in enumerate(methods):
        if names.count(m.name) > 1:
            m.name = f"{m.name}#{names[: i + 1].count(m.name)}"
    return methods


def _checkpoint_label(path: Path, record: dict[str, Any]) -> str:
    name = (record.get("model") or {}).get("name", "model")
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    return f"{name}@{run}" if run else name


def evaluate(
    checkpoints: Sequence[str | Path] = (),
    baselines: Sequence[str] = (),
    *,
    models: Sequence[Any] = (),
    dataset: str | None = None,
    split: str = "test",
    noise: str | None = "gaussian",
    levels: Sequence[float] | None = None,
    limit: int | None = None,
    slow_limit: int = 200,
    seed: int = 1234,
    sigma: str = "given",
    data_dir: str | None = None,
    images: Tensor | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 500,
    verbose: bool = True,
) -> EvalResult:
    """PSNR/SSIM/MSE of each method at each noise spec, plus the noisy input's own floor.

    `noise` is a family swept over `levels` (default 0.1 to 1.0; photon peaks 1 to 100 for poisson) or one full
    spec ('salt_pepper:0.1').
    The test images are a dataset's first `limit` images (dataset=None: the one the checkpoints were trained
    on, from the folder they recorded, else MNIST) or `images`, float (N, C, H, W) in [0, 1] of at least
    11x11 pixels (SSIM's window). Slow baselines (nlm, bm3d) run on the first `slow_limit` images; their records
    say how many, and a "noisy input, first N" row gives their floor. `sigma="given"` hands baselines that need
    a noise level the std of the noise in each image, measured against the clean image (an oracle, for Gaussian
    noise; clipping leaves less than the nominal level), `"estimate"` makes them estimate it.

    Example:
        >>> res = dae.evaluate(["runs/demo/checkpoints/best.safetensors"], ["median", "tv"], levels=[0.3, 0.5])
    """
    from dae.data.datasets import check_limit, load_images
    from dae.metrics import mse as mse_fn
    from dae.metrics import psnr, ssim

    # A string where a list belongs is read as the command line reads it, not iterated letter by letter.
    if isinstance(checkpoints, str | os.PathLike):
        checkpoints = [checkpoints]
    if isinstance(baselines, str):
        baselines = [b for b in baselines.split(",") if b]
    levels = as_levels(levels)
    if sigma not in ("given", "estimate"):
        raise UsageError(f"sigma must be 'given' or 'estimate', got {sigma!r}")
    if slow_limit < 1:
        raise UsageError(f"--slow-limit must be >= 1 (images for the slow baselines), got {slow_limit}")
    if not is_whole(batch_size) or batch_size < 1:
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if levels is not None and len(levels) == 0:
        raise UsageError(
            "levels is empty: give at least one noise level, or leave it out for the family's sweep"
        )
    checkpoints, baselines, models = checkpoints or (), baselines or (), models or ()  # None reads as none
    if callable(getattr(models, "denoise", None)) or (
        isinstance(models, torch.nn.Module) and not isinstance(models, torch.nn.ModuleList)
    ):
        models = [models]  # one model (a torch module, or a denoiser of one's own) rather than a list of them
    if out is not None:
        check_results_folder(Path(out))  # before the work, not after it
    methods = resolve_methods(checkpoints, baselines, models, device)
    if not methods:
        raise UsageError("nothing to evaluate: give at least one --checkpoint or --baselines name")
    specs = noise_specs(noise, levels)
    check_limit(limit)
    if images is None:
        if dataset is None:
            dataset, trained_dir = _training_data(methods)
            data_dir = data_dir or trained_dir
        images = load_images(dataset, split, root=data_dir, limit=limit, **_crop_size(methods, dataset))
        source = f"dataset {dataset}/{split}"
    else:
        check_images(images)
        images = images[:limit]
        source = "the images given"
    # Scored on the CPU, where the noise is drawn and each method's output comes back.
    clean = images.float().cpu()
    n = clean.shape[0]
    if min(clean.shape[-2:]) < 11:
        raise UsageError(
            f"images of {clean.shape[-2]}x{clean.shape[-1]} pixels are smaller than SSIM's 11x11 window"
        )
    gaussian = any("gaussian" in spec for spec, _ in specs)
    notes = [
        f"{source}, {n} images; noise fixed by seed {seed} (image i from its own generator); "
        + ("gaussian: noisy = clip(x + s*N(0,1), 0, 1) unless clip=false; " if gaussian else "")
        + "PSNR data range 1.0, per image then averaged"
    ]
    notes.append(
        "baselines' noise level: "
        + (
            "given, as the std of the noise in each image measured against the clean image (an oracle; "
            "clipping leaves less than the nominal level), or estimated where the noise is not Gaussian of one level"
            if sigma == "given"
            else "estimated from each noisy image (skimage's wavelet estimate)"
        )
    )
    slow = [m for m in methods if m.slow]
    subset = slow_limit if slow and slow_limit < n else None
    if subset is not None:
        notes += [f"{m.name} is slow: evaluated on the first {subset} of the {n} images" for m in slow]

    records: list[dict[str, Any]] = []
    for spec, level in specs:
        # Image by image from the seed: neither limit nor batch size changes an image's noise.
        noisy = make_noisy(clean, spec, seed)
        # "given" is an oracle: the std of the noise actually in each image. Clipping leaves less than the
        # nominal level (0.31 at s = 0.5 on MNIST); non-local means handed the nominal one flattened the digits,
        # 2-3 dB below its own estimate.
        sigmas = None
        if sigma == "given" and parse_noise(spec).sigma_estimate is not None:
            sigmas = (noisy - clean).flatten(1).std(dim=1).tolist()
        rows = [("noisy input", "noisy", None, noisy, n, None)]
        if subset is not None:  # the floor the slow methods are to be read against
            rows.append((f"noisy input, first {subset}", "noisy", None, noisy[:subset], subset, None))
        for m in methods:
            k = subset if m.slow and subset is not None else n
            t0 = time.perf_counter()
            outs = []
            for start in range(0, k, batch_size):
                stop = min(start + batch_size, k)
                given = None if sigmas is None else sigmas[start:stop]
                outs.append(m.denoiser.denoise(noisy[start:stop], given))
            used = None
            if getattr(m.denoiser, "needs_sigma", False):
                used = "given" if sigmas is not None else "estimated"
            rows.append((m.name, m.kind, m.train_noise, torch.cat(outs).float().cpu(), k, used))
            if verbose:
                print(f"  {spec:<28} {m.name:<28} {k} images in {time.perf_counter() - t0:.1f}s", flush=True)
        for name, kind, train_noise, denoised, k, used in rows:
            ref = clean[:k]
            records.append(
                {
                    "method": name,
                    "kind": kind,
                    "noise": spec,
                    "level": level,
                    "psnr": psnr(denoised, ref).mean().item(),
                    "ssim": ssim(denoised, ref).mean().item(),
                    "mse": mse_fn(denoised, ref).mean().item(),
                    "n_images": k,
                    "seed": seed,
                    "train_noise": train_noise,
                    "sigma": used,
                }
            )
    scored = {m.name: m.checkpoint for m in methods if m.checkpoint is not None}
    result = EvalResult(records=records, notes=notes, checkpoints=scored)
    if out is not None:
        result.files = write_results(result, Path(out))
    return result


def _training_data(methods: Sequence[Method]) -> tuple[str, str | None]:
    """The dataset the checkpoints were trained on (and a folder run's folder), for an evaluation that names
    none; MNIST when no checkpoint says."""
    runs = [m.trained_on for m in methods if m.trained_on]
    trained = {
        (name, data.get("data_dir") if name == "folder" else None)
        for data in runs
        for name in [data.get("dataset") or "mnist"]
    }
    if not trained:
        return "mnist", None
    if len(trained) > 1:
        where = ", ".join(sorted(f"{n} ({d})" if d else n for n, d in trained))
        raise UsageError(
            f"the checkpoints were trained on different data: {where}; choose one with --dataset"
        )
    name, _ = trained.pop()
    return name, next((d for d in map(trained_data_dir, runs) if d is not None), None)


def trained_data_dir(data: Mapping[str, Any]) -> str | None:
    """Where to find the test images of a run whose config "data" section is `data`, when none is named.

    A folder run's images live in its folder. MNIST-like sets are read from the folder training read while it
    exists, else found the usual way (DAE_DATA_DIR, the cache), so a run moved to another machine still
    evaluates.
    """
    recorded = data.get("data_dir")
    if (data.get("dataset") or "mnist") == "folder":
        return recorded
    return str(recorded) if recorded and Path(recorded).is_dir() else None


def _crop_size(methods: Sequence[Method], dataset: str) -> dict[str, Any]:
    """A folder is scored on crops of the size its checkpoints were trained on (fc takes no other), when they
    agree on one; otherwise on the folder dataset's default."""
    if dataset != "folder":
        return {}
    trained = [m.trained_on for m in methods if m.trained_on and m.trained_on.get("dataset") == "folder"]
    sizes = {data.get("patch_size") for data in trained} - {None}
    return {"patch_size": sizes.pop()} if len(sizes) == 1 else {}


def check_images(images: Any) -> None:
    """Refuse test images that are not a non-empty float (N, C, H, W) batch in [0, 1], before any work."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise UsageError(f"images must be a float (N, C, H, W) tensor in [0, 1], got {got}")
    if images.shape[0] == 0:
        raise UsageError("images is empty: nothing to evaluate")
    check_unit_range(images, "images")


def on_most_images(records: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The records scored on the most images, and the rest (slow baselines, scored on the first few): methods
    are ranked only against those scored on the same images. A record without a count counts none (older
    results); counts may be text (results.csv)."""

    def count(r: Mapping[str, Any]) -> float:
        try:
            n = float(r.get("n_images") or 0)
        except (TypeError, ValueError):
            return 0.0
        return 0.0 if math.isnan(n) else n

    full = max((count(r) for r in records), default=0.0)
    return [r for r in records if count(r) == full], [r for r in records if count(r) != full]


def check_results_folder(out: Path) -> Path:
    """`out` checked as the folder write_results will write, before any work: it can be made or written, and
    no folder (or other non-file) stands where one of its files goes."""
    out = output_folder(out)
    for name in RESULT_FILES:
        if (out / name).exists() and not (out / name).is_file():
            raise ResourceError(
                f"{out / name}: cannot replace the earlier evaluation's file (it is not a file)"
            )
    return out


def write_results(result: EvalResult, out: Path) -> list[Path]:
    """results.csv, results.json, a PSNR-vs-noise plot and, for several trained levels, a train x test matrix;
    replaces an earlier evaluation's results in `out` (none of its files are left behind).

    The new files are written aside first, then swapped in at once with Ctrl-C held back: an interrupt or a
    failed write (a full disk, while the plot is drawn) leaves the earlier evaluation whole, never part of
    each (which `dae report` would show as the run's evaluation).
    """
    from dae.fileio import folder_turn, make_folder

    out = make_folder(check_results_folder(out))
    # Two evaluations writing into one folder at once share the staging folder: the second waits (a second
    # or so), then replaces the first's set whole.
    with folder_turn(out):
        return _swap_in_results(result, out)


def _swap_in_results(result: EvalResult, out: Path) -> list[Path]:
    import shutil

    from dae.fileio import WriteError, atomic_write_bytes, fsync_dir, make_folder, signals_held
    from dae.plots import plot_matrix, plot_psnr_vs_noise

    stage = out / STAGING
    if stage.is_symlink() or stage.is_file():
        stage.unlink()  # not ours to keep: the name is dae's
    shutil.rmtree(stage, ignore_errors=True)  # what an earlier write that was stopped left aside
    make_folder(stage)
    try:
        try:
            atomic_write_bytes(stage / "results.csv", records_to_csv(result.records).encode())
            if any(r["level"] is not None for r in result.records):
                plot_psnr_vs_noise(result.records, stage / "psnr_vs_noise.png")
            matrix = train_test_matrix(result.records)
            if matrix:
                lines = [",".join(matrix[0])] + [",".join(str(v) for v in row) for row in matrix[1:]]
                atomic_write_bytes(stage / "matrix.csv", ("\n".join(lines) + "\n").encode())
                plot_matrix(result.records, stage / "matrix.png")
            notes = {"notes": result.notes, "records": result.records, "checkpoints": result.checkpoints}
            atomic_write_bytes(stage / "results.json", json.dumps(notes, indent=2).encode())
        except WriteError as e:  # named as the file the user asked for, not where it was written aside
            raise (WriteError(out / e.path.name, e.reason) if e.path.parent == stage else e) from None
        written = [name for name in RESULT_FILES if (stage / name).is_file()]
        with signals_held():
            try:
                # The earlier evaluation's other files go: a figure or matrix left beside these results (this
                # one drawing none) would be read, by `dae report` too, as theirs. results.json, which `dae
                # report` reads first, comes in last.
                for name in RESULT_FILES:
                    if name not in written:
                        (out / name).unlink(missing_ok=True)
                for name in sorted(written, key=lambda n: n == "results.json"):
                    os.replace(stage / name, out / name)
            except OSError as e:  # a folder of that name (made since the check), a read-only folder
                raise ResourceError(
                    f"{out}: cannot replace the earlier evaluation's files ({e.strerror or e})"
                ) from None
            fsync_dir(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / name for name in ("results.csv", "results.json", *RESULT_FILES[2:]) if name in written]


def records_to_csv(records: list[dict[str, Any]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow(r)
    return buf.getvalue()


def train_test_matrix(records: list[dict[str, Any]]) -> list[list[Any]] | None:
    """Rows: training noise of each learned method; columns: test noise; cells: PSNR. None unless 2+ train levels."""
    learned = [r for r in records if r["kind"] == "learned" and r.get("train_noise")]
    trains = sorted({(r["train_noise"], r["method"]) for r in learned})
    if len({t for t, _ in trains}) < 2:
        return None
    tests = list(dict.fromkeys(r["noise"] for r in learned))
    table = [["train_noise", "method", *tests]]
    for train_noise, method in trains:
        cells = {r["noise"]: round(r["psnr"], 3) for r in learned if r["method"] == method}
        table.append([train_noise, method, *[cells.get(s, "") for s in tests]])
    return table


def format_table(records: list[dict[str, Any]], metric: str = "psnr") -> str:
    """Method x noise table for the terminal."""
    specs = list(dict.fromkeys(r["noise"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    cells = {(r["method"], r["noise"]): r[metric] for r in records}
    width = max(12, *(len(m) for m in methods)) + 2
    col = max(16, *(len(s) + 2 for s in specs))  # a long spec ("gaussian:0.3,clip=false") keeps a gap
    head = f"{metric.upper():<{width}}" + "".join(f"{s:>{col}}" for s in specs)
    lines = [head, "-" * len(head)]
    for m in methods:
        vals = "".join(f"{cells[(m, s)]:>{col}.3f}" if (m, s) in cells else f"{'':>{col}}" for s in specs)
        lines.append(f"{m:<{width}}" + vals)
    return "\n".join(lines)


# `dae.evaluate(...)` calls this module's evaluate(); see dae.CallableModule.
make_callable(sys.modules[__name__])  # also sets the module's __signature__ to evaluate's
