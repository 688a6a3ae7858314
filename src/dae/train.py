"""The training loop, readable top to bottom: data in memory as uint8, noise per batch, checkpoints you can trust."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dae import make_callable
from dae.allocator import keep_freed_memory, release_freed_memory
from dae.checkpoint import Checkpoint, load_checkpoint, paths_for, read_record, save_checkpoint
from dae.checks import is_whole
from dae.config import Config, build_config, load_config_file, merge, save_config
from dae.data.datasets import FolderDataset, create_dataset
from dae.data.noise import derive_seed, image_seed, make_noisy, parse_noise
from dae.distributed import ALONE, World, join
from dae.errors import (
    CheckpointError,
    DataError,
    Interrupted,
    ResourceError,
    Terminated,
    TrainingError,
    UsageError,
)
from dae.fileio import atomic_write_text, expand_user, folder_lock, make_folder, output_folder
from dae.losses import get_loss
from dae.metrics import psnr, ssim
from dae.models import create_model
from dae.recipes import get_recipe

METRIC_COLUMNS = [
    "epoch",
    "step",
    "time_s",
    "lr",
    "train_loss",
    "val_loss",
    "val_psnr",
    "val_ssim",
    "images_per_s",
]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    step: int
    epoch: int
    elapsed_s: float
    best_val_psnr: float
    history: list[dict[str, float]] = field(default_factory=list)
    # What this process trained on, as resolved (precision "auto" -> "bf16" or "fp32"): see trained_with().
    trained_with: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; a named device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError(f"device {name!r} requested but CUDA is not available; use the cpu device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ResourceError("device 'mps' requested but MPS is not available; use the cpu device")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, ...: nothing dae runs on
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16, AMX), where oneDNN runs bf16 convs faster than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: stay on the safe side
        return False


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        # Without emulation: pre-Ampere GPUs (V100, T4) "support" bf16 only by emulating it, slowly.
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


# A CPU's bf16 pays only when a network does enough arithmetic per pixel to outweigh the conversions autocast
# adds around each op. Measured side by side (`make bench`, 2-core Zen 4 with AVX512-BF16, the tutorials' batch
# sizes), in forward FLOPs per pixel: transpose (4.7k) trained 1.28x faster in fp32, strided (3.6k) and fc
# (0.3k) about as fast in either; unpool (9.8k) 1.30x faster in bf16, unet (36k) 1.38x, dncnn (112k) 2.1x.
AUTO_BF16_MIN_FLOPS_PER_PIXEL = 7000


def auto_precision(device: torch.device, model: nn.Module, image_shape: Sequence[int]) -> str:
    """What precision "auto" trains `model` in on `device`, for (C, H, W) images: bf16 where it is native (on a
    CPU only for a network of at least AUTO_BF16_MIN_FLOPS_PER_PIXEL forward FLOPs per pixel), else fp32."""
    if not _native_bf16(device):
        return "fp32"
    if device.type != "cpu":
        return "bf16"
    try:
        per_pixel = forward_flops_per_pixel(model, image_shape)
    except Exception:  # noqa: BLE001 -- a model of one's own that cannot run on the meta device: bf16, as before
        return "bf16"
    return "bf16" if per_pixel >= AUTO_BF16_MIN_FLOPS_PER_PIXEL else "fp32"


def forward_flops_per_pixel(model: nn.Module, image_shape: Sequence[int]) -> float:
    """FLOPs of one forward pass per pixel of a (C, H, W) image (torch's flop counter: 2 per multiply-add),
    counted on a copy on the meta device: no arithmetic, and the model itself untouched."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = image_shape
    twin = copy.deepcopy(model).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        twin(torch.empty(1, c, h, w, device="meta"))
    return counter.get_total_flops() / (h * w)


def autocast_for(device: torch.device, precision: str):
    """Mixed precision context: bf16 on GPUs and CPUs with native bf16 (measured faster, same quality), else fp32.

    Training resolves "auto" with auto_precision first, which also weighs the network on a CPU."""
    if precision == "auto":
        precision = "bf16" if _native_bf16(device) else "fp32"
    if precision == "fp32":
        return nullcontext(), precision
    if precision not in ("bf16", "fp16"):
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "adamw")


def lr_at(cfg: Config, step: int, progress: float) -> float:
    """Linear warm-up, then constant or cosine decay over `progress` in [0, 1] (steps or time budget)."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    if t.schedule == "constant":
        return t.lr * warm
    if t.schedule == "cosine":
        return t.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    raise UsageError(f"unknown schedule {t.schedule!r}; use {' or '.join(SCHEDULES)}")


def check_settings(cfg: Config, only: Collection[str] | None = None) -> None:
    """Refuse settings that cannot train, before any data is loaded or anything is written.

    Some would otherwise fail deep inside (a division by a validation set of 0 images), and some would
    train silently wrong (a negative grad_clip flips every gradient, so the loss climbs).
    `only` limits the checks to those dotted fields (e.g. {"train.lr"}): those one config layer sets.
    """
    t, d = cfg.train, cfg.data

    def need(ok: bool, field: str, rule: str, value: Any) -> None:
        if only is not None and field not in only:
            return
        if not ok:
            raise UsageError(f"{field} must be {rule}, got {value}")

    for name in ("epochs", "steps", "batch_size", "val_every"):
        value = getattr(t, name)
        need(value is None or value >= 1, f"train.{name}", ">= 1", value)
    need(t.threads is None or t.threads >= 0, "train.threads", ">= 0 (0 or none: torch's default)", t.threads)
    need(d.limit is None or d.limit >= 1, "data.limit", ">= 1", d.limit)
    # inf ran until killed: "none" is how to say no limit.
    need(
        t.time_budget is None or (math.isfinite(t.time_budget) and t.time_budget > 0),
        "train.time_budget",
        "a finite number of seconds > 0 (none: no limit)",
        t.time_budget,
    )
    need(math.isfinite(t.lr) and t.lr > 0, "train.lr", "a number > 0", t.lr)
    need(math.isfinite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
    need(t.warmup_steps >= 0, "train.warmup_steps", ">= 0", t.warmup_steps)
    need(
        t.grad_clip is None or t.grad_clip > 0,
        "train.grad_clip",
        "> 0 (or none for no clipping)",
        t.grad_clip,
    )
    need(t.keep_last >= 1, "train.keep_last", ">= 1 (resuming needs a generation)", t.keep_last)
    need(t.schedule in SCHEDULES, "train.schedule", " or ".join(SCHEDULES), repr(t.schedule))
    need(t.optimizer in OPTIMIZERS, "train.optimizer", " or ".join(OPTIMIZERS), repr(t.optimizer))
    need(d.val_size >= 1, "data.val_size", ">= 1 (validation picks the best checkpoint)", d.val_size)
    if d.dataset == "folder":  # validation scores SSIM, whose window is 11x11: found only after an epoch
        need(
            d.patch_size >= 11,
            "data.patch_size",
            ">= 11 (SSIM's 11x11 window scores validation)",
            d.patch_size,
        )
    for name in ("seed", "eval_seed"):  # torch takes seeds in [-2**63, 2**64 - 1]; the noise uses seed + 1
        value = getattr(cfg, name)
        ok = isinstance(value, int) and -(2**63) <= value <= 2**64 - 2
        need(ok, name, "a whole number from -2**63 to 2**64 - 2", value)


def check_config_layer(layer: dict[str, Any], source: str) -> None:
    """The settings one layer gives (a config file, a run's saved config), checked alone so that an error in one
    says where it came from: its fields and their kinds and values, and the recipe, model (with its kwargs),
    noise and loss it names. Errors read "SOURCE: what is wrong"."""
    from dae.data.noise import parse_noise

    try:
        cfg = build_config(layer)
        check_settings(cfg, only=_dotted_fields(layer))
        if layer.get("recipe"):
            get_recipe(cfg.recipe)
        model, train = layer.get("model") or {}, layer.get("train") or {}
        if model.get("name"):
            # The options' names (through MODELS.builder) and values (width: -3), at no cost in memory.
            with torch.device("meta"):
                create_model(cfg.model.name, **{"in_channels": 1, **cfg.model.kwargs})
        if train.get("noise"):
            parse_noise(cfg.train.noise)
        if train.get("loss"):
            get_loss(cfg.train.loss)
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None


def _dotted_fields(layer: dict[str, Any], prefix: str = "") -> set[str]:
    """{"train": {"lr": 1}, "seed": 2} -> {"train.lr", "seed"}"""
    out = set()
    for key, value in layer.items():
        if isinstance(value, dict) and key != "kwargs":
            out |= _dotted_fields(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    # The fused kernel updates all parameters in one pass: the same maths up to rounding, and 4-9% more
    # training images/s for the default unet on a 2-core CPU (two side-by-side runs). CPU and CUDA have it.
    fused = True if all(p.device.type in ("cpu", "cuda") for p in model.parameters()) else None
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    raise UsageError(f"unknown optimizer {t.optimizer!r}; use {' or '.join(OPTIMIZERS)}")


class TrainingData(NamedTuple):
    train: Tensor  # uint8 (N, C, H, W)
    val: Tensor  # uint8 (V, C, H, W), held out of the training split
    # A folder's: the training crops of an epoch (N of them, like `train`); None: `train` serves every epoch.
    redraw: Callable[[int], Tensor] | None = None
    padded: tuple[Path, ...] = ()  # a folder's pictures smaller than a crop
    # A folder whose training split is one picture: it is also the validation picture, so say so.
    val_is_train: Path | None = None


def load_train_val(cfg: Config) -> TrainingData:
    """The training images and the validation images held out of the training split.

    MNIST-like sets hold out their last images. A folder holds out whole pictures, spread over its sorted
    list (the last files alone may be one day's photos, or its smallest); its validation crops are drawn
    once with eval_seed, and its training crops afresh for every epoch from (seed, epoch).
    """
    d = cfg.data
    if d.dataset != "folder":
        images = create_dataset(d.dataset, "train", root=d.data_dir).images
        n_val = min(d.val_size, max(1, images.shape[0] // 10))
        train, val = images[: images.shape[0] - n_val], images[images.shape[0] - n_val :]
        return TrainingData(train if d.limit is None else train[: d.limit], val)

    folder = create_dataset(
        "folder",
        "train",
        root=d.data_dir,
        patch_size=d.patch_size,
        patches_per_image=d.patches_per_image,
        seed=cfg.eval_seed,
    )
    assert isinstance(folder, FolderDataset)
    n, k = len(folder.files), d.patches_per_image
    # Whole pictures: a crop overlapping a training crop of the same picture would score training data. At
    # least one picture, and with a single picture it serves both.
    held_out = min(max(1, min(d.val_size, n * k // 10) // k), max(1, n - 1))
    val_pictures = sorted({round(j * (n - 1) / max(1, held_out - 1)) for j in range(held_out)})
    train_pictures = [i for i in range(n) if i not in val_pictures] or val_pictures
    val = torch.cat([folder.images[i * k : (i + 1) * k] for i in val_pictures])  # a copy
    # The first draw's training crops are not used (each epoch draws its own): let them go, and the
    # validation pictures too, whose crops are drawn once.
    folder.images = val
    folder.forget([i for i in val_pictures if i not in train_pictures])

    def redraw(epoch: int) -> Tensor:
        crops = folder.crops(derive_seed("crops", cfg.seed, epoch), train_pictures)
        return crops if d.limit is None else crops[: d.limit].clone()  # a view would keep every crop

    shared = folder.files[val_pictures[0]] if val_pictures == train_pictures else None
    return TrainingData(redraw(0), val, redraw, tuple(folder.padded), shared)


def _continue_stream(generator: torch.Generator, state: Tensor | None, fresh_seed: int) -> bool:
    """Continue a saved noise stream; False when there is none, or it is another device type's, then reseed.

    A CPU generator's state (5056 bytes) and a CUDA one's (seed and offset) do not fit each other, and a run
    started on a laptop may be resumed on a GPU machine: its noise then starts afresh, as when the process
    count changed.
    """
    if state is not None:
        try:
            generator.set_state(state)
            return True
        except RuntimeError:  # "wrong size": a state from the other kind of device
            pass
    generator.manual_seed(fresh_seed)
    return False


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    # Derived from (seed, epoch) alone, so a resumed run draws the same order without saved state.
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("order", seed, epoch)))


def to_float(batch: Tensor, channels_last: bool) -> Tensor:
    x = batch.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def validate(
    model, loss_fn, noisy: Tensor, clean: Tensor, amp, world: World = ALONE, batch_size: int = 500
) -> dict[str, float]:
    """Loss, PSNR and SSIM on the fixed-seed noisy validation set; each process scores its share of it."""
    model.eval()
    noisy, clean = world.share(noisy), world.share(clean)
    loss_sum, psnr_sum, ssim_sum = 0.0, 0.0, 0.0
    for i in range(0, noisy.shape[0], batch_size):
        x, y = noisy[i : i + batch_size], clean[i : i + batch_size]
        with amp:
            out = model(x)
        out = out.float()
        loss_sum += loss_fn(out, y, model.output_kind).item() * x.shape[0]
        img = model.to_image(out)
        psnr_sum += psnr(img, y).sum().item()
        ssim_sum += ssim(img, y).sum().item()
    model.train()
    loss_sum, psnr_sum, ssim_sum, n = world.sum(loss_sum, psnr_sum, ssim_sum, noisy.shape[0])
    return {"val_loss": loss_sum / n, "val_psnr": psnr_sum / n, "val_ssim": ssim_sum / n}


def noise_seed(seed: int, rank: int) -> int:
    """The training noise stream's seed for process `rank`; the first keeps the single-process seed."""
    return seed + 1 if rank == 0 else image_seed(seed + 1, rank)


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal means "now", and keeps its own exit status (130 or 143)
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _compiled(model: torch.nn.Module, device: torch.device):
    """torch.compile'd `model`, specialised to one input shape.

    Inductor builds C++ kernels on the CPU; on GPUs Triton builds its launchers with a C compiler. Without one
    the first step would fail deep inside inductor.
    """
    if device.type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        raise ResourceError(
            "train.compile on the CPU needs a C++ compiler (g++ or clang++); install one or train without it"
        )
    if device.type == "cuda" and not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        raise ResourceError(  # Triton looks at $CC, then gcc, then clang
            "train.compile on a GPU needs a C compiler for Triton (gcc or clang, or $CC); install one or train "
            "without it"
        )
    return torch.compile(model, dynamic=False)


def _rng_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _check_state(ck: Checkpoint) -> Checkpoint:
    """The training state a resume relies on (save_generation's), field by field: its hash proves the bytes are
    the ones written, not that whoever wrote them (an older dae, a hand edit) wrote what this one reads. A bad
    field is a damaged generation, so a resume falls back to the one before instead of failing half-way."""
    state, path, step = ck.state, paths_for(ck.path)[1], ck.record.get("step")

    def whole(v: Any) -> bool:
        return is_whole(v) and v >= 0

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)

    if not isinstance(state, dict):
        raise CheckpointError(f"training state {path} is damaged: a {type(state).__name__}, not a mapping")
    checks = {
        "optimizer": lambda v: isinstance(v, dict) and "state" in v and "param_groups" in v,
        "torch_rng": _rng_state,
        "noise_rng": _rng_state,
        "step": whole,
        "epoch": whole,
        "batch_index": whole,
        "elapsed_s": lambda v: number(v) and v >= 0,
        "best_val_psnr": number,
    }
    optional = {
        "noise_rng_world": lambda v: isinstance(v, list) and v and all(_rng_state(x) for x in v),
        "grad_scaler": lambda v: isinstance(v, dict),
    }
    for key, ok in [*checks.items(), *((k, f) for k, f in optional.items() if k in state)]:
        if key not in state or not ok(state[key]):
            what = "missing" if key not in state else f"not usable ({type(state[key]).__name__})"
            raise CheckpointError(f"training state {path} is damaged: its {key} is {what}")
    if isinstance(step, int) and step != state["step"]:
        raise CheckpointError(
            f"training state {path} is damaged: step {state['step']}, its record says {step}"
        )
    return ck


def latest_good_generation(ckpt_dir: Path, quiet: bool = False) -> Checkpoint:
    """Newest step-* checkpoint that verifies; falls back generation by generation, naming what it skipped
    (unless quiet: under torchrun every process reads them, and the first one speaks for all)."""
    generations = sorted(ckpt_dir.glob("step-*.json"), reverse=True)
    if not generations:
        if _holds_checkpoints(ckpt_dir):  # a fresh start there would overwrite them (and is refused)
            raise ResourceError(
                f"no checkpoint to resume from in {ckpt_dir}: no training state (step-*.json) is left beside its "
                "other checkpoints; train into another directory (--out), or move this one away first"
            )
        raise ResourceError(f"no checkpoint to resume from in {ckpt_dir}; start the run without --resume")
    for record in generations:
        try:
            return _check_state(load_checkpoint(paths_for(record)[0], with_state=True))
        except (CheckpointError, ResourceError) as e:
            if not quiet:
                print(f"dae: skipping bad checkpoint generation: {e}", file=sys.stderr)
    raise CheckpointError(
        f"no good checkpoint to resume from in {ckpt_dir}: all {len(generations)} generation(s) are damaged "
        "(each named above)"
    )


def prune_generations(
    ckpt_dir: Path, keep: int, step: int | None = None, abandoned: Collection[str] = ()
) -> None:
    """Keep the newest `keep` step-* generations up to `step` (best.* is separate); the JSON goes first so a
    half-deleted generation is never mistaken for a complete one.

    Generations after `step` go first: a resume that fell back past damaged ones trains a new timeline, and
    the damaged generations must not count among those kept (they would crowd out the good ones). Files of a
    generation whose write never finished (no JSON: a crash or a full disk) go too: pruning runs after a
    complete write, under the run's lock.

    `abandoned` names the records (step-*.json) of the damaged generations a resume skipped: those older than
    `step` are not kept either (a resume from step 2 past a damaged 3 that saves next at 4 kept 4 and the
    damaged 3, and pruned the good 2). Give them at the first save after the resume only: a later save may
    have rewritten one of those names with a good generation of the new timeline."""
    records = sorted(ckpt_dir.glob("step-*.json"), reverse=True)
    last = f"step-{step:08d}.json" if step is not None else None
    kept = [
        r for r in records if (last is None or r.name <= last) and (r.name == last or r.name not in abandoned)
    ][:keep]
    for record in records:
        if record not in kept:
            for p in (record, *paths_for(record)[:2]):
                p.unlink(missing_ok=True)
    kept_files = {p for record in kept for p in paths_for(record)}
    for p in [*ckpt_dir.glob("step-*.safetensors"), *ckpt_dir.glob("step-*.state.pt")]:
        if p not in kept_files:
            p.unlink(missing_ok=True)


def _append_metrics(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    try:
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
    except OSError as e:
        raise ResourceError(f"cannot write {path}: {e.strerror or e}") from None


def _logged_step(row: dict[str, Any]) -> int | None:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return None


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint we resume from (they will be logged again), and rows
    without a step (a hand edit, a torn line): the log keeps one row per validation, in order."""
    if not path.exists():
        return
    try:
        # Bytes that are not UTF-8 (a damaged or foreign edit) mark their rows, which are dropped below.
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            lines = list(csv.reader(f))
    except OSError as e:  # a folder in its place, say
        raise ResourceError(f"cannot read {path}: {e.strerror or e}; move it away to resume") from None
    # A log whose header line was deleted: its first row is a validation's, not the names of the columns.
    header = lines.pop(0) if lines and "step" in lines[0] else METRIC_COLUMNS
    logged = [dict(zip(header, line, strict=False)) for line in lines if "\ufffd" not in "".join(line)]
    rows = [r for r in logged if (n := _logged_step(r)) is not None and 0 <= n <= step]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows({k: r.get(k, "") for k in METRIC_COLUMNS} for r in rows)
    atomic_write_text(path, text.getvalue())  # a crash here leaves the old log, never a half-written one


def resolve_config(config: Config | dict[str, Any] | None, resume: bool = False) -> Config:
    """The Config a call to train() runs under; `dae train` builds its flags into a dict and comes here too.

    A Config is taken whole (its fields checked as a dict's are). A dict is laid over, in order: the saved config
    of the run it resumes, then its own "recipe" (the tutorial's set-up), then itself. A stop condition it names
    (epochs, steps, time_budget) replaces all three of those layers', so
    `train({"out": "runs/x", "train": {"steps": 500}}, resume=True)` continues runs/x as it was set up, until
    step 500.
    """
    if isinstance(config, Config):
        # Through the dict path's checks: a Config built by hand has had none, and a time_budget of "2m", an lr
        # of "abc" or a section given as a dict failed deep inside training with Python's TypeError.
        config = build_config(config.to_dict())
        if config.recipe is not None:
            get_recipe(config.recipe)  # an unknown name is an error, not a silent label
        return config
    if config is not None and not isinstance(config, dict):
        raise UsageError(f"config must be a dae.Config, a dict or None, got {type(config).__name__}")
    own = config or {}
    layers = [saved_run_config(own["out"])] if resume and own.get("out") else []
    if layers and layers[0] and own.get("recipe"):
        # The saved config holds the run's recipe and the run's own changes to it: laid over it again, the
        # recipe undid them (a resume given --recipe went back to the recipe's lr and batch size).
        if own["recipe"] != layers[0].get("recipe"):
            was = layers[0].get("recipe")
            raise UsageError(
                f"{own['out']} was set up {f'with recipe {was}' if was else 'without a recipe'}; a resume "
                f"continues under the run's own config: leave out --recipe, or train {own['recipe']} into "
                "another --out"
            )
        own = {k: v for k, v in own.items() if k != "recipe"}
    if own.get("recipe"):
        layers.append(get_recipe(own["recipe"]).to_dict())
    below: dict[str, Any] = {}
    for layer in layers:  # the run's saved config, or a recipe
        below = lay_over(below, layer)
    # A model that is not a section is build_config's to refuse; lay_over reads it as naming no other model.
    return build_config(lay_over(below, own))


STOPS = ("epochs", "steps", "time_budget")


def naming_every_stop(layer: dict[str, Any]) -> dict[str, Any]:
    """`layer`, with the other stop settings set to None when it names one: laid over another layer (a run's
    saved config, a recipe, a config file) it then replaces that layer's stop instead of adding a second."""
    train = layer["train"] if isinstance(layer.get("train"), dict) else {}
    if any(train.get(k) is not None for k in STOPS):
        return merge(layer, {"train": {k: train.get(k) for k in STOPS}})
    return layer


def lay_over(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` merged over `base` as a later config layer: a stop it names replaces base's (naming_every_stop),
    and a model it names other than base's drops base's model kwargs, which were that model's options."""
    model, below = layer.get("model"), base.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    if name and isinstance(below, dict) and below.get("name") not in (None, name) and "kwargs" in below:
        base = {**base, "model": {k: v for k, v in below.items() if k != "kwargs"}}
    return merge(base, naming_every_stop(layer))


def saved_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The config a run was started under: its config.yaml, else the newest checkpoint's record ({} if none)."""
    run_dir = expand_user(run_dir, "run folder")  # as output_folder reads the same `out`
    path = run_dir / "config.yaml"
    saved: dict[str, Any] = {}
    try:
        saved = load_config_file(path) if path.is_file() else {}
        if saved:
            check_config_layer(saved, f"the run's config {path}")
    except UsageError as e:
        # A hand edit gone wrong: without config.yaml a resume takes the config the checkpoints record. Or a
        # model of the user's own that this process has not registered: the config is then right.
        model = saved.get("model")
        hint = "fix it, or move it away to resume under the config the checkpoints record"
        if isinstance(model, dict) and _unregistered(model.get("name")):
            hint = f"a model of your own: register it before resuming, as when it was trained; else {hint}"
        raise UsageError(f"{e} ({hint})") from None
    # An emptied config.yaml says nothing: it must not make a strided run resume as the default unet.
    if saved:
        return saved
    for record in sorted((run_dir / "checkpoints").glob("step-*.json"), reverse=True):
        try:
            return dict(read_record(paths_for(record)[0]).get("config") or {})
        except CheckpointError:
            continue  # a damaged record: resuming will say so, and fall back the same way
    return {}


# ----------------------------------------------------------------------------------------------- the loop


def train(
    config: Config | dict[str, Any] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """Train a denoiser as `config` says; returns where the run and its checkpoints are.

    `on_step(step, loss)` may return True to stop early, exactly as SIGINT does (checkpoint saved).
    Under torchrun every process trains its share of each batch (see dae.distributed); the first one writes.

    Example:
        >>> result = dae.train({"train": {"steps": 200}, "data": {"limit": 2048}, "out": "runs/quick"})
        >>> model = dae.load_model(result.best_checkpoint)
    """
    cfg = resolve_config(config, resume)
    world = join(select_device(cfg.train.device))  # torchrun's processes, or a world of one
    # Each step's activations reuse the last step's memory instead of being faulted in again; given back when
    # training ends, however it ends (a study goes on to its next model after a failed one).
    kept = cfg.train.keep_memory and keep_freed_memory()
    threads = torch.get_num_threads()  # train.threads is for training: a notebook's later work gets them back
    try:
        with ExitStack() as held:  # the run folder's lock and the seeded generators, until training ends
            return _train(cfg, world, resume, progress, on_step, held)
    except RuntimeError as e:
        lost = world.lost_peer(e)  # a collective broken by a process that failed: its error says why
        if lost is not None:
            raise lost from None
        if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e):
            # The CPU allocator's is a plain RuntimeError; the run's last checkpoint, if any, is complete.
            raise ResourceError(
                f"out of memory training {cfg.model.name} at batch size {cfg.train.batch_size}: use a smaller "
                "--train.batch_size (or a smaller model)"
            ) from None
        raise
    finally:
        if kept:
            release_freed_memory()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the generators training draws from, and give the caller's states back when it ends: a notebook's
    own random numbers do not change because it trained a model.

    The CPU's (the weights are initialised there) and the training device's (a model's own random layers);
    torch.manual_seed would also reseed every other GPU, which nothing here draws from.
    """
    cpu = torch.random.get_rng_state()
    accelerator = {"cuda": torch.cuda, "mps": getattr(torch, "mps", None)}.get(device.type)
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        device_state = accelerator.get_rng_state() if accelerator is not None else None
        if accelerator is not None:
            accelerator.manual_seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu)
        if device_state is not None:
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
                accelerator.set_rng_state(device_state)


def _holds_checkpoints(ckpt_dir: Path) -> bool:
    """A finished generation (its record, written last), or a best model: a fresh start would replace them.
    A generation's weights without its record are an unfinished one, which a fresh start may clear."""
    return any(ckpt_dir.glob("step-*.json")) or (ckpt_dir / "best.safetensors").exists()


def _refuse_a_fresh_start_over_checkpoints(run_dir: Path, resume: bool) -> None:
    if not resume and _holds_checkpoints(run_dir / "checkpoints"):
        raise ResourceError(
            f"run directory {run_dir} already holds checkpoints; resume it (--resume, or resume=True) or "
            "train into another directory (--out, or the config's out)"
        )


def _run_lock(run_dir: Path):
    """One training per run folder: two runs into one --out would interleave their metrics and checkpoints,
    and both report success."""
    return folder_lock(
        run_dir, "run directory", "training", "wait for it to end or train into another directory (--out)"
    )


def _check_model(cfg: Config, resume: bool) -> None:
    """The model's name and options, checked before the data is loaded: training passes every model the data's
    in_channels, and a model registered in a user's own code is unknown to a process that did not register it
    (a resume would otherwise find every checkpoint naming an unknown model, and call them all damaged)."""
    import inspect

    from dae.models import MODELS

    name = cfg.model.name
    if resume:
        _refuse_an_unregistered_model(name)
    parameters = inspect.signature(MODELS.get(name)).parameters.values()
    if not any(p.name == "in_channels" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise UsageError(
            f"model {name}: its builder takes no in_channels argument, which training passes to every model "
            "(the data's channel count)"
        )
    MODELS.builder(name, {"in_channels": 1, **cfg.model.kwargs})


def _unregistered(name: Any) -> bool:
    """A model name this process does not know: perhaps a model of the user's own, registered in other code."""
    from dae.models import MODELS

    return isinstance(name, str) and name not in MODELS


def _refuse_an_unregistered_model(name: Any) -> None:
    from dae.models import MODELS

    if _unregistered(name):
        raise UsageError(
            f"unknown model {name!r} (the run's model); register it before resuming, as when it was trained; "
            f"valid names: {', '.join(MODELS.names())}"
        )


def _claim_run(run_dir: Path, resume: bool, world: World, held: ExitStack) -> None:
    """The first process locks the run folder (the others write nothing); every process stops if it could not."""
    refused: ResourceError | None = None
    if world.main:
        try:
            held.enter_context(_run_lock(run_dir))
            # Again, under the lock: another run may have finished meanwhile.
            _refuse_a_fresh_start_over_checkpoints(run_dir, resume)
            if not resume:
                # A metrics log left by a start that never saved a checkpoint.
                (run_dir / "metrics.csv").unlink(missing_ok=True)
        except ResourceError as e:
            refused = e
    # Decided together: a process going on alone into the first step's collectives would wait for ever.
    if world.sum(refused is not None)[0]:
        raise refused or ResourceError(
            f"the first process could not take run directory {run_dir} (it says why)"
        )


def _train(
    cfg: Config,
    world: World,
    resume: bool,
    progress: bool,
    on_step: Callable[[int, float], bool] | None,
    held: ExitStack,
) -> TrainResult:
    t = cfg.train
    if sum(x is not None for x in (t.epochs, t.steps, t.time_budget)) == 0:
        t.epochs = 1  # a stop condition is needed; one epoch is the least surprising default
    check_settings(cfg)
    if cfg.data.data_dir:  # recorded absolute, so eval and report find the data from any folder
        cfg.data.data_dir = str(expand_user(cfg.data.data_dir, "data dir").absolute())
    # Under torchrun the processes may read the clock either side of a second: the main process names the run.
    cfg.name = cfg.name or (
        Path(cfg.out).name if cfg.out else world.first(f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    run_dir = output_folder(cfg.out or f"runs/{cfg.name}")
    ckpt_dir = output_folder(run_dir / "checkpoints")  # a file there failed only at the first save
    _refuse_a_fresh_start_over_checkpoints(run_dir, resume)
    get_loss(t.loss)  # validate names before loading data
    noise = parse_noise(t.noise)
    _check_model(cfg, resume)
    device = world.device
    autocast_for(device, t.precision)  # an unknown precision is refused before the data is loaded
    if t.threads:
        torch.set_num_threads(t.threads)
    held.enter_context(_seeded(cfg.seed, device))  # model initialisation

    # Data: the whole split lives on the device as uint8; batches are drawn by indexing.
    data = load_train_val(cfg)
    train_u8, val_u8, drawn_epoch = data.train, data.val, 0
    # Held by train_u8 and val_u8 alone from here, so that an epoch's crops can be let go for the next.
    data = data._replace(train=None, val=None)
    if data.padded and world.main:
        print(
            f"dae: {len(data.padded)} picture(s) smaller than the {cfg.data.patch_size}x{cfg.data.patch_size} crops "
            f"are padded by reflection, e.g. {data.padded[0]}; a smaller --data.patch_size pads fewer",
            file=sys.stderr,
        )
    if data.val_is_train is not None and world.main:
        print(
            f"dae: the folder's training split is one picture, {data.val_is_train}, so it also serves for "
            "validation: the validation PSNR scores a picture the model trains on; add pictures to hold one out",
            file=sys.stderr,
        )
    if cfg.data.dataset != "folder" and val_u8.shape[0] < cfg.data.val_size and world.main:
        print(
            f"dae: validation holds {val_u8.shape[0]} images, not data.val_size={cfg.data.val_size}: at most a "
            f"tenth of the {cfg.data.dataset} training split is held out",
            file=sys.stderr,
        )
    n_train = train_u8.shape[0]
    in_channels = train_u8.shape[1]
    train_u8 = train_u8.to(device)
    val_clean = val_u8.float().div(255.0)
    val_noisy = make_noisy(val_clean, noise.spec, cfg.eval_seed)  # same noisy set every epoch and run
    # What the best checkpoint was chosen on: a resume with another noise, eval_seed or data scores anew.
    val_set = hashlib.sha256(val_u8.numpy().tobytes() + val_noisy.numpy().tobytes()).hexdigest()[:16]
    val_noisy, val_clean = val_noisy.to(device), val_clean.to(device)
    if t.channels_last:
        val_noisy = val_noisy.contiguous(memory_format=torch.channels_last)

    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("in_channels", in_channels)
    # One training per run folder (see _run_lock). A resume takes the lock before it reads the checkpoints,
    # which a training still running there could be writing or pruning; a fresh run takes it just before its
    # first write, so that a run refused before then (a bad setting) creates no folder.
    claim_early = resume and ckpt_dir.is_dir()
    if claim_early:
        _claim_run(run_dir, resume, world, held)
    ck = latest_good_generation(ckpt_dir, quiet=not world.main) if resume else None
    # The damaged generations a resume skipped: newer than the one it resumed from (see prune_generations).
    abandoned = (
        {r.name for r in ckpt_dir.glob("step-*.json") if r.name > paths_for(ck.path)[2].name}
        if ck is not None
        else set()
    )
    if ck is not None and ck.model.dae_name == cfg.model.name:
        saved, given = ck.model.dae_kwargs, json.loads(json.dumps(kwargs))  # tuples compared as JSON lists
        if all(saved.get(k) == v for k, v in given.items()):
            # Continue the network that was saved, even if one of its defaults has changed since.
            kwargs = dict(saved)
    model = create_model(cfg.model.name, **kwargs).to(device)
    fixed = getattr(model, "fixed_size", None)  # (C, H, W) of fc; found at the first step, after writing
    if fixed is not None and tuple(train_u8.shape[-2:]) != tuple(fixed[1:]):
        _, h, w = fixed
        raise UsageError(
            f"model {cfg.model.name} takes only {h}x{w} images and the training images are "
            f"{train_u8.shape[-2]}x{train_u8.shape[-1]}; for a folder give --data.patch_size={h}, or build the "
            "model for that size (--model.kwargs.height=... --model.kwargs.width=...)"
        )
    built_for = getattr(model, "in_channels", in_channels)
    if built_for != in_channels:  # found at the first step, after the run folder was made
        raise UsageError(
            f"model {cfg.model.name} was built for {built_for}-channel images and the training images have "
            f"{in_channels}: leave model.kwargs.in_channels out (dae sets it from the data) or set it to "
            f"{in_channels}"
        )
    # "auto" weighs the network on a CPU: the same choice in every process, and again on a resume here.
    chosen = auto_precision(device, model, train_u8.shape[1:]) if t.precision == "auto" else t.precision
    amp, precision = autocast_for(device, chosen)
    run_on = trained_with(device, precision, world.size)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = get_loss(t.loss)
    optimizer = make_optimizer(cfg, model)
    # Each process draws its own noise; DistributedDataParallel averages the gradients of the processes'
    # replicas in backward, so they stay equal.
    net = world.replicate(model)
    noise_gen = torch.Generator(device=device).manual_seed(noise_seed(cfg.seed, world.rank))
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler then passes through).
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    # The compiled module shares `model`'s parameters; checkpoints and validation use the eager `model`, so
    # saved state_dicts keep their plain keys and eval mode does not trigger a second compilation.
    compiled = _compiled(net, device) if t.compile else None

    if t.batch_size < world.size:
        raise UsageError(
            f"train.batch_size {t.batch_size} is the whole batch, shared by {world.size} processes: make it at "
            f"least {world.size}"
        )
    # train.batch_size is the whole batch, shared by the processes; a last batch too small to give each process
    # an image is left out of the epoch (in a world of one, only an empty one).
    full, rest = divmod(n_train, t.batch_size)
    batches_per_epoch = full + (rest >= world.size)
    if batches_per_epoch == 0:
        raise UsageError(
            f"{n_train} training image(s) cannot make a batch for {world.size} processes; train on more images "
            "(data.limit) or in fewer processes"
        )
    if n_train < t.batch_size and world.main:
        print(
            f"dae: train.batch_size {t.batch_size} is more than the {n_train} training images: each step trains on "
            f"all {n_train}, one step an epoch",
            file=sys.stderr,
        )
    total_steps = min(
        t.steps if t.steps is not None else math.inf,
        t.epochs * batches_per_epoch if t.epochs is not None else math.inf,
    )
    if not claim_early:  # the run folder's first write comes next
        _claim_run(run_dir, resume, world, held)
    step, epoch, batch_index, elapsed_before, best_psnr = 0, 0, 0, 0.0, -math.inf
    best_sound = True  # False while best.safetensors is a damaged or missing one a resume found
    if ck is not None:
        try:
            model.load_state_dict(ck.model.state_dict())
            optimizer.load_state_dict(ck.state["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            saved = ck.record.get("model", {})
            raise UsageError(
                f"{ck.path} holds model {_described(saved.get('name'), saved.get('kwargs'))}; this config's "
                f"{_described(cfg.model.name, cfg.model.kwargs)} (or its optimizer) cannot continue it; resume "
                "with the run's own settings or use another --out"
            ) from None
        if "grad_scaler" in ck.state:
            scaler.load_state_dict(ck.state["grad_scaler"])
        torch.set_rng_state(ck.state["torch_rng"])
        step, epoch, batch_index = int(ck.state["step"]), int(ck.state["epoch"]), int(ck.state["batch_index"])
        streams = ck.state.get("noise_rng_world") or [ck.state["noise_rng"]]  # streams[0] is noise_rng
        # In as many processes each continues its own stream exactly; in another number only the first does.
        saved = streams[world.rank] if len(streams) == world.size or world.rank == 0 else None
        fresh_stream = image_seed(noise_seed(cfg.seed, world.rank), step)
        continued = _continue_stream(noise_gen, saved, fresh_stream)
        if len(streams) != world.size and world.main:
            print(
                f"dae: {ck.path.name} was trained by {len(streams)} process(es), this resume has {world.size}: "
                + (
                    "it continues the first process's noise stream"
                    if world.size == 1
                    else "the first continues its noise stream, the others start new ones"
                ),
                file=sys.stderr,
            )
        if not continued and world.main:  # the main process always had a saved stream: another device's
            print(
                f"dae: {ck.path.name} drew its noise on another kind of device than {device.type}: the noise "
                "starts a new stream (weights, optimiser and data order continue exactly)",
                file=sys.stderr,
            )
        if batch_index >= batches_per_epoch:  # a larger batch or a smaller data.limit ended this epoch sooner
            epoch, batch_index = epoch + 1, 0
        elapsed_before, best_psnr = float(ck.state["elapsed_s"]), float(ck.state["best_val_psnr"])
        if world.main:
            _truncate_metrics(run_dir / "metrics.csv", step)
            print(f"dae: resuming {run_dir} from step {step} (epoch {epoch}, {ck.path.name})")
        if ck.state.get("val_set", val_set) != val_set:  # older checkpoints do not record it
            # Its best score was measured on other images or other noise: no later score could be compared
            # with it, and best.safetensors would stay the model for a set-up the run has left.
            best_psnr = -math.inf
            if world.main:
                print(
                    f"dae: the validation images or their noise differ from {ck.path.name}'s (train.noise, "
                    "eval_seed or the data changed): the best checkpoint is chosen afresh from here",
                    file=sys.stderr,
                )
        elif (damage := _best_damage(ckpt_dir / "best.safetensors")) is not None:
            # Kept as it was, it would be reported as the run's best, and a better score would be needed to
            # replace it: the next validation saves a new one.
            best_psnr, best_sound = -math.inf, False
            if world.main:
                print(f"dae: {damage}: the next validation saves a new best checkpoint", file=sys.stderr)
    # A resumed run that had already reached its stop condition trains no further step, and keeps the config
    # it ran under rather than recording stop settings it never ran with.
    done = resume and (step >= total_steps or (t.time_budget is not None and elapsed_before >= t.time_budget))
    if done and ck is not None:
        # Nothing trains here, so the result says what the run last trained on, not what this process would have
        # (a finished bf16 run resumed on a machine without bf16 printed "fp32"); checkpoints saved before
        # trained_with was recorded leave this process's.
        run_on = ck.record.get("trained_with") or run_on
    # A fresh run records its config now, a resume with its first checkpoint: settings that fail before one (a
    # learning rate that diverges) must not become the run's, for the next plain --resume to fail on again.
    config_pending = world.main and not done and resume
    if world.main:  # one process writes the run; the others train beside it
        make_folder(run_dir / "figures")
        if not done and not resume:
            save_config(cfg, run_dir / "config.yaml")
    writer = _tensorboard(run_dir) if world.main else None

    def save_generation(metrics: dict[str, float]) -> Path:
        nonlocal best_psnr, config_pending, abandoned, best_sound
        is_best = metrics.get("val_psnr", -math.inf) > best_psnr
        best_psnr = max(best_psnr, metrics.get("val_psnr", -math.inf))
        path = ckpt_dir / f"step-{step:08d}.safetensors"
        # Every process's noise stream, so that a resume in as many processes continues each one exactly.
        streams = world.gather(noise_gen.get_state())
        if not world.main:
            return path
        state = {
            "optimizer": optimizer.state_dict(),
            "noise_rng": streams[0],
            **({"noise_rng_world": streams} if world.size > 1 else {}),
            **({"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "epoch": epoch,
            "batch_index": batch_index,
            "elapsed_s": elapsed(),
            "best_val_psnr": best_psnr,
            "val_set": val_set,
        }
        meta = {
            "config": cfg.to_dict(),
            "metrics": metrics,
            "step": step,
            "epoch": epoch,
            "trained_with": run_on,
        }
        try:
            save_checkpoint(model, path, train_state=state, **meta)
        except ResourceError as e:
            complete = (
                f"the last complete checkpoint is {last_path} (resume from it"
                if last_path
                else "no checkpoint was completed (start the run again"
            )
            raise ResourceError(
                f"{e}; stopped at step {step}; {complete} once the folder can take more)"
            ) from None
        if config_pending:  # a resume's settings, now that a checkpoint was trained under them
            save_config(cfg, run_dir / "config.yaml")
            config_pending = False
        if is_best:
            try:
                save_checkpoint(model, ckpt_dir / "best.safetensors", **meta)
                best_sound = True
            except ResourceError as e:  # the step's generation is complete: a resume continues from it
                raise ResourceError(
                    f"{e}; stopped at step {step}; {path} is complete (resume from it)"
                ) from None
        prune_generations(ckpt_dir, t.keep_last, step, abandoned)
        abandoned = set()  # from here on, those names may hold this run's own generations
        return path

    start = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    # The time trained so far as the processes agree on it: their mean, summed in each step's stop check. Under
    # a time budget the learning rate follows it, and processes reading their own clocks set learning rates a
    # few microseconds apart, so their replicas drifted apart (4e-4 in the weights after 450 steps).
    clock = elapsed_before

    def training_progress() -> float:
        p = step / total_steps if total_steps < math.inf else 0.0
        return max(p, clock / t.time_budget) if t.time_budget else p

    bar = _progress_bar(progress and world.main, total_steps, step)
    history: list[dict[str, float]] = []
    last_path: Path | None = ck.path if resume else None
    window_loss, window_images, window_start = 0.0, 0, time.perf_counter()
    model.train()
    with StopSignals() as stop:
        if done and world.main:
            print(f"dae: {run_dir} already reached its stop condition at step {step}; nothing to do")
        while not done:
            if data.redraw is not None and epoch != drawn_epoch:  # a folder's crops are new each epoch
                train_u8 = None  # let the last epoch's crops go before drawing the next
                try:
                    train_u8, drawn_epoch = data.redraw(epoch).to(device), epoch
                # A picture not held in memory, changed (DataError) or removed (ResourceError) since the start.
                except (DataError, ResourceError) as e:
                    raise DataError(
                        f"{e}; the image folder changed during training: stopped at step {step} (epoch {epoch}); "
                        f"restore it and --resume from {last_path or 'the run'}"
                    ) from None
            order = epoch_permutation(n_train, cfg.seed, epoch).to(device)
            while batch_index < batches_per_epoch:
                # One step: index a batch, corrupt it in one vectorised call, fit the clean target.
                idx = order[batch_index * t.batch_size : (batch_index + 1) * t.batch_size]
                clean = to_float(train_u8[world.share(idx)], t.channels_last)  # (B, C, H, W) in [0, 1]
                noisy = noise(clean, noise_gen)
                lr = lr_at(cfg, step, training_progress())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # The graph is specialised to the full batch; an epoch's short last batch runs eager (same
                # parameters, same maths) rather than paying for a second compilation.
                forward = compiled if compiled is not None and idx.shape[0] == t.batch_size else net
                with amp:
                    out = forward(noisy)
                loss = loss_fn(out.float(), clean, model.output_kind)  # the mean over this process's share
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(world.whole_batch(loss, clean.shape[0], idx.shape[0])).backward()
                # The whole batch's loss, summed over the processes (in a world of one, this process's own).
                loss_sum, images = world.sum(loss.item() * clean.shape[0], clean.shape[0])
                if not math.isfinite(loss_sum):
                    raise TrainingError(
                        f"loss became {loss_sum / images} at step {step + 1} (epoch {epoch}); stopped without "
                        f"saving this step's weights; try a lower --train.lr (now {t.lr:g})"
                    )
                if t.grad_clip:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch_index += 1
                window_loss += loss_sum
                window_images += int(images)

                user_stop = bool(on_step(step, loss_sum / images)) if on_step else False
                over = step >= total_steps or (t.time_budget is not None and elapsed() >= t.time_budget)
                # The processes stop together: when any of them was told to, signalled or is out of time.
                user_stop, sigint, sigterm, out_of_budget, clocks = world.sum(
                    user_stop, stop.signum == signal.SIGINT, stop.signum == signal.SIGTERM, over, elapsed()
                )
                clock = clocks / world.size
                signum = signal.SIGINT if sigint else signal.SIGTERM if sigterm else None
                due = t.val_every is not None and step % t.val_every == 0
                epoch_end = batch_index >= batches_per_epoch
                if epoch_end:
                    epoch, batch_index = epoch + 1, 0
                if due or epoch_end or out_of_budget or user_stop or signum:
                    world.align(model)  # every process validates the model that is saved
                    rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                    row = {
                        "epoch": epoch,
                        "step": step,
                        "time_s": round(elapsed(), 3),
                        "lr": lr,
                        "train_loss": window_loss / max(window_images, 1),
                        "images_per_s": rate,
                        **validate(model, loss_fn, val_noisy, val_clean, amp, world),
                    }
                    history.append(row)
                    if world.main:
                        _append_metrics(run_dir / "metrics.csv", row)
                    if writer is not None:
                        for k, v in row.items():
                            writer.add_scalar(k, v, step)
                    last_path = save_generation(
                        {k: row[k] for k in ("val_loss", "val_psnr", "val_ssim", "train_loss")}
                    )
                    bar.set_postfix(
                        loss=f"{row['train_loss']:.4f}",
                        val_psnr=f"{row['val_psnr']:.2f}",
                        img_s=f"{rate:.0f}",
                    )
                    window_loss, window_images, window_start = 0.0, 0, time.perf_counter()
                bar.update(1)
                if signum:
                    bar.close()
                    world.wait()  # the checkpoint is complete before any process ends
                    raise Interrupted(
                        f"{signum.name}: stopped at step {step}; checkpoint saved to {last_path}", signum
                    )
                if out_of_budget or user_stop:
                    done = True
                    break
                if epoch_end:
                    break  # a new epoch draws a new order
    bar.close()
    if writer is not None:
        writer.close()
    world.wait()  # the main process's last checkpoint is written before any process looks for it
    best = ckpt_dir / "best.safetensors"
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best if best.exists() and best_sound else None,
        last_checkpoint=last_path,
        step=step,
        epoch=epoch,
        elapsed_s=elapsed(),
        best_val_psnr=best_psnr,
        history=history,
        trained_with=run_on,
    )


def _described(name: Any, kwargs: Any) -> str:
    """'unet {'width': 8}', or 'unet' alone (not 'unet ' before the next word)."""
    return f"{name} {kwargs}" if kwargs else str(name)


def _best_damage(path: Path) -> str | None:
    """Why a run's best checkpoint cannot serve (missing, or failing its own checks); None when it can."""
    if not path.exists():
        return f"{path} is missing"
    try:
        load_checkpoint(path)
    except (CheckpointError, ResourceError) as e:
        return str(e)
    return None


def trained_with(device: torch.device, precision: str, processes: int) -> dict[str, Any]:
    """What a training segment ran on, for its checkpoints and the report: the config keeps what was asked for
    (precision "auto"), so that a resume on another machine resolves it there; this is what it resolved to."""
    return {
        "device": str(device),
        "precision": precision,
        "processes": processes,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _progress_bar(enabled: bool, total_steps: float, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=None if total_steps == math.inf else int(total_steps),
        initial=initial,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
    )


def _tensorboard(run_dir: Path):
    """A TensorBoard writer when tensorboard is installed; CSV logging always happens regardless."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


# `dae.train(...)` calls this module's train(); see dae.CallableModule.
make_callable(sys.modules[__name__])  # also sets the module's __signature__ to train's
