"""Self-describing checkpoints nothing can corrupt.

A checkpoint `NAME.safetensors` is three files in one directory:
  NAME.safetensors  weights (safetensors; the JSON record is also embedded in its metadata)
  NAME.state.pt     optional training state (optimiser, step, RNG states), only ever read with weights_only=True
  NAME.json         the record: model name + kwargs, resolved config, metrics, dae version, and the SHA-256 and
                    size of the other two files. It is written last, so its presence marks a complete generation.
Every file is written atomically (temp file in the same directory, fsync, os.replace, fsync the directory).

The weights file verifies itself: its embedded record holds the SHA-256 of its tensor bytes and of the state
file (written first). So when a crash lands between replacing `best.safetensors` and `best.json`, the new
weights still load, under their own record, instead of failing against the stale sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dae.errors import CheckpointError, ResourceError, TrainingError, UsageError
from dae.fileio import WriteError, atomic_write_bytes, expand_user

FORMAT = "dae-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"
# safetensors caps its JSON header at 100 MB; a larger length is not a safetensors file.
_MAX_HEADER = 100_000_000


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def paths_for(weights: str | Path) -> tuple[Path, Path, Path]:
    """(weights, state, record) paths of one checkpoint generation."""
    weights = Path(weights)
    name = weights.name
    # Any one of a generation's three files names it (a user may well pass step-N.state.pt or step-N.json).
    for suffix in (WEIGHTS_SUFFIX, STATE_SUFFIX):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        stem = weights.stem
    return (
        weights.with_name(stem + WEIGHTS_SUFFIX),
        weights.with_name(stem + STATE_SUFFIX),
        weights.with_name(stem + ".json"),
    )


def save_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    step: int | None = None,
    epoch: int | None = None,
    trained_with: dict[str, Any] | None = None,
) -> Path:
    """Write `path` (.safetensors) plus its JSON record (and training state if given); returns the weights path.

    `trained_with` says what the training ran on (device, precision as resolved, processes, threads): the
    config records what was asked for (e.g. precision "auto"), which a resume elsewhere resolves anew.

    Example:
        >>> save_checkpoint(model, "runs/x/checkpoints/best.safetensors", metrics={"val_psnr": 21.3})
    """
    from dae import __version__

    weights_path, state_path, record_path = paths_for(path)
    if not hasattr(model, "dae_name"):
        raise CheckpointError(
            "model was not built with dae.create_model, so it cannot describe itself; use create_model"
        )
    tensors = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise TrainingError(f"refusing to save non-finite weights ({key}) to {weights_path}")
        tensors[key] = (
            value.detach().to("cpu").contiguous().clone()
        )  # clone: safetensors refuses shared storage
    record: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dae_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "name": model.dae_name,
            "kwargs": model.dae_kwargs,
            "output_kind": getattr(model, "output_kind", None),
            "num_parameters": sum(t.numel() for t in model.parameters()),
        },
        "config": config or {},
        "metrics": metrics or {},
        "step": step,
        "epoch": epoch,
        **({"trained_with": trained_with} if trained_with else {}),
    }
    try:
        return _write_generation(tensors, record, train_state, weights_path, state_path, record_path)
    except (OSError, WriteError) as e:
        # A full disk or a read-only folder: the temp files are gone and the old generation stays. A state file
        # written first is of no use without the rest, and only takes up room.
        if train_state is not None and not record_path.exists():
            with contextlib.suppress(OSError):  # a folder that is gone or a file: the error below says why
                state_path.unlink(missing_ok=True)
        reason = e.reason if isinstance(e, WriteError) else e.strerror or e
        raise ResourceError(f"cannot write checkpoint {weights_path}: {reason}") from None


def _write_generation(
    tensors: dict[str, torch.Tensor],
    record: dict[str, Any],
    train_state: dict[str, Any] | None,
    weights_path: Path,
    state_path: Path,
    record_path: Path,
) -> Path:
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        state_blob = buf.getvalue()
        atomic_write_bytes(state_path, state_blob)
        files["state"] = {
            "file": state_path.name,
            "sha256": sha256_bytes(state_blob),
            "bytes": len(state_blob),
        }
    else:
        state_path.unlink(missing_ok=True)
    # The tensor bytes do not depend on the metadata, so serialise once to hash them, then again with the hash.
    record["tensors_sha256"] = sha256_bytes(_tensor_bytes(st_save(tensors)))
    record["files"] = dict(files)
    blob = st_save(tensors, metadata={"dae": json.dumps(record, default=str)})
    atomic_write_bytes(weights_path, blob)
    files["weights"] = {"file": weights_path.name, "sha256": sha256_bytes(blob), "bytes": len(blob)}
    record["files"] = files
    atomic_write_bytes(record_path, json.dumps(record, indent=2, default=str).encode())
    return weights_path


def _tensor_bytes(blob: bytes) -> bytes:
    """The data section of a safetensors blob: everything after the 8-byte length and the JSON header."""
    n = int.from_bytes(blob[:8], "little")
    return blob[8 + n :]


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a .safetensors, .state.pt or .json path, a checkpoints/ directory or a run directory; return the
    weights path."""
    if not isinstance(path, str | os.PathLike):
        raise UsageError(f"a checkpoint is a path (file or run folder), got {type(path).__name__}")
    if not os.fspath(path):  # Path("") is the current folder, whose checkpoints/ would load without a word
        raise UsageError("the checkpoint path is empty; pass a checkpoint file or run folder")
    p = expand_user(path, "checkpoint")  # ~/runs/x from a config or the library, as a shell would
    if p.is_dir():
        for candidate in (p / "checkpoints" / "best.safetensors", p / "best.safetensors"):
            if candidate.exists():
                return candidate
        raise ResourceError(f"no checkpoint in directory {p} (looked for checkpoints/best.safetensors)")
    given = p
    if p.suffix == ".json" or p.name.endswith(STATE_SUFFIX):
        p = paths_for(p)[0]
    if not p.exists() and paths_for(p)[0].is_file():
        p = paths_for(p)[0]  # the name save_checkpoint(model, "mine") gave its weights: mine.safetensors
    if not p.exists():
        if given != p and given.is_file():  # e.g. results.json: say what it lacks, not a path never named
            raise CheckpointError(f"{given} is not a dae checkpoint: there is no {p.name} beside it")
        raise ResourceError(f"checkpoint {p} does not exist")
    return p


def _read_verified(path: Path, entry: dict[str, Any] | None, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror}") from None
    if entry is not None and not _matches(data, entry):
        raise _manifest_mismatch(path, data, entry, what)
    return data


def _manifest_mismatch(path: Path, data: bytes, entry: dict[str, Any], what: str) -> CheckpointError:
    return CheckpointError(
        f"{what} {path} does not match its manifest ({len(data)} bytes, expected {entry.get('bytes')}): "
        "truncated or corrupted"
    )


def _matches(data: bytes, entry: dict[str, Any]) -> bool:
    return len(data) == entry.get("bytes") and sha256_bytes(data) == entry.get("sha256")


class _UnreadableRecord(CheckpointError):
    """A sidecar record that is not JSON at all (cut short, overwritten): the weights may vouch for themselves.
    One that parses but says the wrong thing (edited by hand) stays an error."""


def read_record(weights_path: Path) -> dict[str, Any]:
    """The JSON record beside a weights file; falls back to the copy embedded in the safetensors header."""
    _, _, record_path = paths_for(weights_path)
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _UnreadableRecord(f"checkpoint record {record_path} is not valid JSON ({e})") from None
        return _well_formed(record, record_path)
    return _well_formed(_embedded_record(weights_path), weights_path)  # name the file the record came from


def _well_formed(record: Any, where: Path) -> dict[str, Any]:
    """The record, once its fields have the types loading relies on (a hand-edited one may not)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a dae checkpoint record (no format: {FORMAT!r})")
    version, files = record.get("format_version", 0), record.get("files", {})
    model, config = record.get("model") or {}, record.get("config") or {}
    if not (
        isinstance(version, int)
        and not isinstance(version, bool)
        and isinstance(files, dict)
        and all(isinstance(entry, dict) for entry in files.values())
        and isinstance(model, dict)
        and isinstance(model.get("name"), str | None)
        and isinstance(config, dict)
        and all(_scalar(value) or isinstance(value, dict) for value in config.values())
    ):
        raise CheckpointError(
            f"{where} is a damaged dae checkpoint record (format_version, files, model or config)"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version}; this dae reads up to {FORMAT_VERSION}")
    return record


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _embedded_record(weights_path: Path, blob: bytes | None = None) -> dict[str, Any]:
    """The record in the safetensors header, parsed from `blob` when the file is already in memory."""
    try:
        with open(weights_path, "rb") if blob is None else contextlib.nullcontext() as f:
            head = blob[:8] if f is None else f.read(8)
            n = int.from_bytes(head, "little")
            # Checked before reading on: any other file's first 8 bytes make an arbitrary, often huge length.
            if len(head) < 8 or not 0 < n < _MAX_HEADER:
                raise ValueError
            header = json.loads(blob[8 : 8 + n] if f is None else f.read(n))
        return json.loads(header["__metadata__"]["dae"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{weights_path} is not a dae safetensors checkpoint (no readable dae metadata)"
        ) from None


def _self_verified_record(weights_path: Path, blob: bytes, entry: dict[str, Any] | None) -> dict[str, Any]:
    """The record embedded in the weights, once their tensor bytes match the hash it holds."""
    try:
        record = _well_formed(_embedded_record(weights_path, blob), weights_path)
    except CheckpointError:
        if entry is not None:  # the record beside it describes other bytes: say so, not "not a checkpoint"
            raise _manifest_mismatch(weights_path, blob, entry, "checkpoint weights") from None
        raise
    expected = record.get("tensors_sha256")
    if expected is None:  # written before dae embedded the hash: the sidecar was all there was to check
        if entry is not None:
            raise _manifest_mismatch(weights_path, blob, entry, "checkpoint weights")
        return record
    if sha256_bytes(_tensor_bytes(blob)) != expected:
        raise CheckpointError(
            f"checkpoint weights {weights_path} do not match its manifest or embedded hash: "
            "truncated or corrupted"
        )
    return record


@dataclass
class Checkpoint:
    model: torch.nn.Module
    record: dict[str, Any]
    state: dict[str, Any] | None
    path: Path


def _device(device: str | torch.device) -> torch.device:
    """A device this machine has, or one clear error (torch's own is an AssertionError for a missing CUDA)."""
    from dae.train import select_device  # imported here: dae.train imports this module

    if not isinstance(device, str | torch.device):
        raise UsageError(f"device must be a name such as 'cpu' or 'cuda', got {device!r}")
    return select_device(str(device))


def load_checkpoint(
    path: str | Path, *, with_state: bool = False, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Verify and load a checkpoint; the training state is read only when asked, and only as plain tensors."""
    from dae.models import MODELS

    device = _device(device)  # before any reading: a bad device is the caller's mistake, not the file's
    weights_path = resolve_checkpoint(path)
    try:
        record, damaged_sidecar = read_record(weights_path), None
    except _UnreadableRecord as e:  # the weights may still vouch for themselves, below
        record, damaged_sidecar = {}, e
    files = record.get("files", {})
    blob = _read_verified(weights_path, None, "checkpoint weights")  # read once, checked just below
    entry = files.get("weights")
    if entry is None or not _matches(blob, entry):
        # No sidecar, or a stale or damaged one (a crash between replacing weights and record): only the hash
        # embedded in the weights can vouch for them.
        try:
            record = _self_verified_record(weights_path, blob, entry)
        except CheckpointError as e:
            raise (damaged_sidecar or e) from None
        if damaged_sidecar is not None and record.get("tensors_sha256") is None:
            raise damaged_sidecar  # an older checkpoint, whose weights hold no hash to check them by
        files = record.get("files", {})
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{weights_path} is not a valid safetensors file ({str(e).splitlines()[0]})"
        ) from None
    model_info = record.get("model") or {}
    name, kwargs = model_info.get("name"), model_info.get("kwargs") or {}
    if name not in MODELS:
        raise CheckpointError(f"{weights_path} names model {name!r}, which this dae does not have")
    model = _rebuild(weights_path, name, kwargs, tensors)
    model.to(device).eval()

    state = None
    if with_state:
        _, state_path, _ = paths_for(weights_path)
        entry = files.get("state")
        if entry is None or not state_path.exists():
            raise CheckpointError(f"{weights_path} has no training state to resume from")
        state_blob = _read_verified(state_path, entry, "training state")
        try:
            state = torch.load(io.BytesIO(state_blob), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise CheckpointError(
                f"training state {state_path} refused: not plain tensors ({str(e).splitlines()[0]})"
            ) from None
    return Checkpoint(model=model, record=record, state=state, path=weights_path)


def _rebuild(path: Path, name: str, kwargs: dict[str, Any], tensors: dict[str, torch.Tensor]):
    """The recorded model holding the recorded weights.

    Records hold every constructor argument, defaults included. Those written before they did hold only the
    arguments given, so for them the defaults of earlier releases (the builder's `previous_defaults`, if any)
    are tried too, newest first. The first layout the weights fit exactly is taken as the one saved: this
    relies on every past default change having changed the weights' shapes, which the builder's
    `previous_defaults` must only list if true.
    """
    from dae.models import MODELS, create_model, resolved_kwargs

    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: record's model kwargs are not a mapping ({type(kwargs).__name__})")
    builder = MODELS.get(name)
    candidates = [kwargs]
    if not set(resolved_kwargs(builder, {})) <= set(kwargs):
        candidates += [{**old, **kwargs} for old in getattr(builder, "previous_defaults", ())]
    saved = {key: tuple(t.shape) for key, t in tensors.items()}
    misfit = None
    for i, candidate in enumerate(candidates):
        try:
            # Shapes first, on the meta device: no memory is spent on a layout the weights do not fit, however
            # large an edited record's kwargs make it (channels of 30000 would ask for tens of gigabytes).
            with torch.device("meta"):
                layout = {
                    key: tuple(t.shape) for key, t in create_model(name, **candidate).state_dict().items()
                }
        except Exception as e:  # a foreign or edited record: the kwargs do not build
            if i == 0:
                raise CheckpointError(f"{path}: cannot build model {name!r} from {kwargs} ({e})") from None
            continue  # an earlier release's layout that these kwargs cannot take
        if layout != saved:
            misfit = misfit or _layout_difference(layout, saved)
            continue
        model = create_model(name, **candidate)
        expected = model.state_dict()
        model.load_state_dict(tensors, strict=True)
        for key, t in tensors.items():
            # load_state_dict casts integers into float parameters and copies NaN without a word.
            if t.is_floating_point() != expected[key].is_floating_point():
                raise CheckpointError(
                    f"{path}: tensor {key} is {t.dtype}, the model holds {expected[key].dtype}"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values")
        return model
    tried = f"; also tried {len(candidates) - 1} earlier default layout(s)" if len(candidates) > 1 else ""
    raise CheckpointError(f"{path}: weights do not fit model {name!r} ({misfit}{tried})")


def _layout_difference(model: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]]) -> str:
    """The first way the saved tensors differ from the model's, in words."""
    missing, extra = sorted(set(model) - set(saved)), sorted(set(saved) - set(model))
    if missing:
        return f"no tensor {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if extra:
        return f"unexpected tensor {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    key = next(k for k in model if model[k] != saved[k])
    return f"tensor {key} is {list(saved[key])}, the model's is {list(model[key])}"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained model from its checkpoint alone, in eval mode.

    Example:
        >>> model = dae.load_model("runs/demo/checkpoints/best.safetensors")
        >>> clean = dae.denoise(model, noisy)
    """
    return load_checkpoint(path, device=device).model
