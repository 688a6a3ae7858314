"""The run report: one self-contained HTML page (figures inlined as base64 PNG, inline CSS, no other files).

`write_report(run_dir)` reads what a run left behind (config.yaml, metrics.csv, checkpoints/best.*, eval/) and
builds whatever it can: a missing piece becomes a short note in its section, never a crash. The page helpers
(`render_html`, `img_tag`, `table_html`, `Html`) are public so that other reports (the study) look the same.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as _dt
import html
import json
import math
import os
import re
import shlex
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dae.checks import is_whole
from dae.config import dump_yaml, load_config_file
from dae.errors import DaeError, DataError, ResourceError, UsageError
from dae.fileio import WriteError, make_folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------
# page helpers (shared with other reports)


class Html(str):
    """Markup that is already safe: `table_html` and `render_html` insert it as is (all else is escaped)."""


def esc(value: Any) -> Html:
    """Escape any value for HTML text or attributes."""
    return Html(html.escape(str(value), quote=True))


def img_tag(png_path: str | Path, alt: str = "") -> Html:
    """An <img> with the PNG inlined as a data: URI, so the page needs no other file.

    Example:
        >>> img_tag("runs/demo/figures/training_curves.png", alt="training curves")
    """
    path = Path(png_path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ResourceError(f"cannot read figure {path}: {e.strerror}") from None
    if not data.startswith(PNG_MAGIC):
        raise DataError(f"figure {path} is not a PNG file")
    b64 = base64.b64encode(data).decode("ascii")
    return Html(f'<img src="data:image/png;base64,{b64}" alt="{esc(alt or path.stem)}">')


def figure_html(png_path: str | Path, caption: str = "", alt: str = "") -> Html:
    """An inlined image with an (escaped) caption below it."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Html(f"<figure>{img_tag(png_path, alt or caption)}{cap}</figure>")


def note_html(text: str) -> Html:
    """A short boxed note, used where a piece of the report had to be skipped."""
    return Html(f'<p class="note">{esc(text)}</p>')


def format_value(value: Any) -> str:
    """Table cell text: floats to 4 significant digits, None as a dash, everything else as str()."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table_html(
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    columns: Sequence[str],
    caption: str | None = None,
    *,
    numeric: Sequence[str] = (),
) -> Html:
    """A <table> with `columns` as header; rows are mappings (looked up by column) or sequences (in order).

    Cells are escaped unless they are `Html`; numbers and the `numeric` columns are right-aligned.

    Example:
        >>> table_html([{"method": "unet", "psnr": 27.31}], ["method", "psnr"])
    """

    right = [c in numeric for c in columns]

    def cell(value: Any, force_right: bool) -> str:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        text = value if isinstance(value, Html) else esc(format_value(value))
        return f'<td class="num">{text}</td>' if is_number or force_right else f"<td>{text}</td>"

    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    heads = [
        (c if isinstance(c, Html) else esc(c), ' class="num"' if r else "")
        for c, r in zip(columns, right, strict=True)
    ]
    out.append("<thead><tr>" + "".join(f"<th{cls}>{text}</th>" for text, cls in heads) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        out.append(
            "<tr>"
            + "".join(cell(v, r) for v, r in zip(values, right + [False] * len(values), strict=False))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return Html("".join(out))


CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; }
header { border-bottom: 1px solid var(--line); margin-bottom: 8px; }
h1 { font-size: 26px; margin: 8px 0 2px; }
.subtitle { color: var(--muted); margin: 0 0 14px; }
nav { font-size: 14px; margin: 10px 0 8px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
section { margin-top: 28px; }
h2 { font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
p { margin: 6px 0 10px; }
figure { margin: 10px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 900px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 13px; padding-top: 6px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
tbody tr:nth-child(even) { background: #fbfcfd; }
th.num { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 13em; }
.scroll { overflow-x: auto; }
.row { display: flex; flex-wrap: wrap; gap: 0 20px; align-items: flex-start; }
.row figure { flex: 1 1 440px; min-width: 0; }
.note { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 6px 12px; border-radius: 0 4px 4px 0;
        color: #4d3800; font-size: 14px; }
.muted { color: var(--muted); }
b.best { color: #1a7f37; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 4px; padding: 10px 14px;
      overflow-x: auto; font-size: 13px; line-height: 1.4; }
details summary { cursor: pointer; color: var(--accent); }
footer { margin-top: 36px; border-top: 1px solid var(--line); padding-top: 8px; color: var(--muted);
         font-size: 13px; }
"""


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def render_html(
    title: str, sections: Sequence[tuple[str, str]], *, subtitle: str | None = None, footer: str | None = None
) -> str:
    """A complete self-contained HTML page: escaped title, a table of contents, then each (heading, fragment).

    Headings, subtitle and footer are plain text (escaped); fragments are HTML built with the helpers here.

    Example:
        >>> page = render_html("dae study", [("Results", table_html(rows, ["method", "psnr"]))])
    """
    used: set[str] = set()
    ids = [_slug(h, used) for h, _ in sections]
    nav = "".join(f'<a href="#{i}">{esc(h)}</a>' for i, (h, _) in zip(ids, sections, strict=True))
    body = "\n".join(
        f'<section id="{i}">\n<h2>{esc(h)}</h2>\n{frag}\n</section>'
        for i, (h, frag) in zip(ids, sections, strict=True)
    )
    from dae import __version__

    foot = footer or f"generated by dae {__version__} on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    sub = f'<p class="subtitle">{esc(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header>\n<h1>{esc(title)}</h1>\n{sub}\n<nav>{nav}</nav>\n</header>\n"
        f"{body}\n<footer>{esc(foot)}</footer>\n</main>\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------------------------------
# reading a run


class _Skip(Exception):
    """A piece of the report cannot be built; the message becomes a note in its section."""


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` looks like a `dae train` output directory."""
    p = Path(path)
    markers = ("metrics.csv", "checkpoints/best.safetensors", "checkpoints/best.json")
    return p.is_dir() and (any((p / m).exists() for m in markers) or _is_dae_config(p / "config.yaml"))


def _trained_with(run_on: Any, asked: Any) -> str | None:
    """'bf16 (asked: auto) on cpu, 1 process x 2 threads, torch 2.13.0' from a checkpoint's trained_with
    record (what the segment that wrote it ran on; None for checkpoints from before dae recorded it)."""
    if not isinstance(run_on, dict) or not run_on.get("precision"):
        return None
    precision = str(run_on["precision"])
    text = precision + (f" (asked: {asked})" if asked and str(asked) != precision else "")
    procs, threads = run_on.get("processes"), run_on.get("threads")
    text += f" on {run_on.get('device', '?')}"
    if isinstance(procs, int) and isinstance(threads, int):
        text += (
            f", {procs} process{'es' if procs != 1 else ''} x {threads} thread{'s' if threads != 1 else ''}"
        )
    return text + (f", torch {run_on['torch']}" if run_on.get("torch") else "")


def _is_dae_config(path: Path) -> bool:
    """A config.yaml that `dae train` wrote (a model and a train section), not another tool's."""
    try:
        config = _read_yaml(path)
    except _Skip:  # missing, unreadable, or not a mapping
        return False
    return isinstance(config.get("model"), dict) and "train" in config


def _read_yaml(path: Path) -> dict[str, Any]:
    """A run's config.yaml, read as `dae train` reads it (YAML 1.2, text fields as written)."""
    try:
        data = load_config_file(path)
    except DaeError as e:  # missing, unreadable, not YAML, not a mapping
        raise _Skip(str(e)) from None
    if not data:
        raise _Skip(f"{path} does not hold a mapping")
    return data


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _Skip(f"{path} could not be read ({e})") from None


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _get(d: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "\u2014"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def load_records(eval_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records and notes from eval/results.json (typed), else eval/results.csv; ([], []) if neither exists."""
    records, notes, _ = _load_results(eval_dir)
    return records, notes


def _load_results(eval_dir: str | Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """load_records, and the checkpoints results.json says were scored ({} where it does not)."""
    eval_dir = Path(eval_dir)
    js, cs = eval_dir / "results.json", eval_dir / "results.csv"
    if js.exists():
        try:
            data = json.loads(js.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{js} is not valid JSON ({e})") from None
        records, notes = None, []
        if isinstance(data, list):
            records = data
        elif isinstance(data, dict) and isinstance(data.get("records"), list):
            records, notes = data["records"], data.get("notes") or []
        if records is None or not isinstance(notes, list):
            raise DataError(f"{js} holds neither a list of records nor {{'records': [...]}}")
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise DataError(
                    f"{js}: record {i} is {type(r).__name__}, not an object of method, noise, psnr, ..."
                )
        scored = data.get("checkpoints") if isinstance(data, dict) else None
        return [dict(r) for r in records], [str(n) for n in notes], scored if isinstance(scored, dict) else {}
    if cs.exists():
        try:
            rows = _read_csv_rows(cs)
        except _Skip as e:
            raise DataError(str(e)) from None
        for r in rows:
            for key in ("level", "psnr", "ssim", "mse"):
                if key in r:
                    r[key] = _num(r[key]) if r[key] not in ("", "None") else None
        return rows, [], {}
    return [], [], {}


# ----------------------------------------------------------------------------------------------------
# the run report


def _run_rate(metrics: list[dict[str, Any]]) -> str | None:
    """Training images/s over the whole run: each metrics row gives its window's rate over the steps since the
    row before, so the run's rate is the steps over the summed window times. The batch size cancels while it
    stays one size; a resume with another weighs its windows by steps (metrics.csv records no batch size).
    The last row alone was one window, which ranged 1.5x and more within a run."""
    steps = seconds = 0.0
    prev = 0.0
    for row in metrics:
        step, rate = _num(row.get("step")), _num(row.get("images_per_s"))
        if math.isfinite(step) and math.isfinite(rate) and rate > 0 and step > prev:
            steps += step - prev
            seconds += (step - prev) / rate
        if math.isfinite(step):
            prev = step
    return f"{steps / seconds:,.0f} images/s (mean over the run's training steps)" if seconds else None


def _without_levels(noise: str | None) -> str:
    """A noise spec with its levels taken out: 'gaussian:0.1-0.9,clip=false' -> 'gaussian,clip=false'."""
    return re.sub(r":[-+0-9.eE]+", "", str(noise or "gaussian"))


def _noise_specs(train_noise: str | None, levels: Sequence[float] | None) -> list[tuple[str, float]]:
    """Specs of the training noise's family at `levels` (gaussian if the family takes no single level).

    levels=None takes every other point of the family's sweep from its third: 0.3, 0.5, 0.7, 0.9 for most
    families, photon peaks 5, 20, 50 for poisson (whose 0.3 would be near-pure noise)."""
    if levels is not None and len(levels) == 0:
        raise UsageError(
            "levels is empty: give the noise levels of the denoising grid, or None for the default"
        )
    # Composed or level-free training noise: the canonical gaussian sweep. Levels the family does not take
    # are the caller's to hear about.
    return _family_specs(_sweep_family(train_noise) or "gaussian", levels)


def _sweep_family(train_noise: str | None) -> str | None:
    """The training noise's family with its options ('gaussian,clip=false'), as written in any case or spacing
    parse_noise takes; None when it has no levels to sweep (composed, none, block:third)."""
    from dae.data.noise import parse_noise

    try:
        spec = parse_noise(train_noise).spec if train_noise else "gaussian"
    except DaeError:
        spec = str(train_noise)
    family = _without_levels(spec)
    try:
        _family_specs(family, None)
    except UsageError:
        return None
    return family


def _family_specs(family: str, shown: Sequence[float] | None) -> list[tuple[str, float]]:
    from dae.data.noise import NOISES
    from dae.evaluate import noise_specs

    shown = shown if shown is not None else NOISES.get(family.partition(",")[0]).sweep[2::2]
    found = noise_specs(family, shown)
    if any(lv is None for _, lv in found):  # a spec with no level (none, block:third): not a sweep
        raise UsageError(f"{family} takes no level")
    return [(s, float(lv)) for s, lv in found if lv is not None]


def _test_images(
    dataset: str, config: Mapping[str, Any], data_dir: str | Path | None, n: int
) -> tuple[Tensor, str]:
    """The run's test images for its figures, and what they are (the grid's caption).

    Found as `dae eval` finds them (evaluate.trained_data_dir); a folder run's cropped at the size it trained
    on (fc takes no other), one crop per test picture while there are pictures enough.
    """
    from dae.data.datasets import load_images
    from dae.evaluate import trained_data_dir

    if data_dir is None:
        data_dir = trained_data_dir(config.get("data") or {})
    if dataset != "folder":
        return load_images(
            dataset, "test", root=data_dir, limit=n
        ).float(), f"First {n} test images of {dataset}"
    size = _get(config, "data.patch_size")
    crop = {} if size is None else {"patch_size": size}
    clean = load_images("folder", "test", root=data_dir, patches_per_image=1, **crop)
    pictures = len(clean)
    if pictures < n:  # a small folder: several crops of each picture, taken in turn (picture 0, 1, ..., 0, 1)
        k = -(-n // pictures)
        crops = load_images("folder", "test", root=data_dir, patches_per_image=k, **crop)
        clean = crops.unflatten(0, (pictures, k)).transpose(0, 1).flatten(0, 1)
    clean = clean[:n].float()
    side = clean.shape[-1]
    return clean, f"{len(clean)} {side}x{side} crops of the folder's {pictures} test picture(s)"


def _code_of(model: Any, x: Tensor) -> Tensor:
    """The code layer of one image: encode(pad(x)), taking the tensor out of a (code, skips) tuple or dict."""
    if isinstance(model, torch.nn.Module):  # the model may live on a GPU (evaluation moved it there)
        from dae.models.base import module_device

        x = x.to(module_device(model, default=x.device))
    xp = model.pad(x)[0] if hasattr(model, "pad") else x
    with torch.inference_mode():
        code = model.encode(xp)
    if isinstance(code, Mapping):
        code = code.get("code", next((v for v in code.values() if isinstance(v, Tensor)), None))
    elif isinstance(code, tuple | list):
        code = next((v for v in code if isinstance(v, Tensor)), None)
    if not isinstance(code, Tensor):
        raise _Skip(f"{type(model).__name__}.encode returned no tensor to show")
    return code[0].cpu()


def write_report(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    levels: Sequence[float] | None = None,
    n_images: int = 8,
    seed: int = 1234,
    images: Tensor | None = None,
) -> Path:
    """Write RUN_DIR/report.html (figures also saved under RUN_DIR/figures/) and return its path.

    `images` replaces the run's test images (default: the first `n_images` of its dataset's test split);
    `levels` are the noise levels of the denoising grid (default: 0.3, 0.5, 0.7, 0.9 of the run's noise
    family; photon peaks 5, 20, 50 for poisson).

    Example:
        >>> from dae.report import write_report
        >>> write_report("runs/demo")
        PosixPath('runs/demo/report.html')
    """
    from dae import __version__, plots

    # The arguments first, as evaluate() checks its own: a bad one once gave a TypeError, or a report whose
    # figures were replaced by a note.
    from dae.evaluate import as_levels, check_images
    from dae.fileio import atomic_write_bytes

    levels = as_levels(levels)
    if not is_whole(n_images) or n_images < 1:
        raise UsageError(f"n_images must be a whole number >= 1, got {n_images!r}")
    if images is not None:
        check_images(images)

    run = Path(run_dir)
    if not is_run_dir(run):
        what, error = (
            ("does not exist", ResourceError) if not run.exists() else ("is not a run directory", UsageError)
        )
        why = (
            "its config.yaml was not written by dae train (no model and train sections)"
            if (run / "config.yaml").is_file()
            else "no config.yaml, metrics.csv or checkpoints/best.safetensors"
        )
        raise error(f"{run} {what} ({why}); give the --out directory of `dae train`")
    out = run / "report.html"
    if out.exists() and not out.is_file():  # found only when the page was written, after every figure
        raise UsageError(f"{out} is not a file: the report is written there; move it away")
    figures = make_folder(run / "figures")
    for folder in (run, figures):  # before any drawing: a report without its page or figures is no report
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ResourceError(f"{folder} is not writable: the report and its figures are written there")
    # What figures/ held of the report's own figures: one not drawn again below is an earlier report's.
    before = {name: _identity(figures / name) for name in REPORT_FIGURES}
    notes: dict[str, list[Html]] = {}

    def skip(section: str, text: str) -> None:
        notes.setdefault(section, []).append(note_html(text))

    # --- what the run left behind
    config: dict[str, Any] = {}
    if (run / "config.yaml").exists():
        try:
            config = _read_yaml(run / "config.yaml")
        except _Skip as e:
            skip("Summary", str(e))
    model, record = None, {}
    weights = run / "checkpoints" / "best.safetensors"
    no_model = f"no checkpoint yet ({weights.relative_to(run)} is missing)"
    if weights.exists():
        from dae.checkpoint import load_checkpoint, read_record

        try:
            ck = load_checkpoint(weights)
            model, record = ck.model.eval(), ck.record
        except DaeError as e:
            skip("Summary", f"best checkpoint not loaded: {e}")
            no_model = "the best checkpoint could not be loaded (see the summary)"
            try:
                record = read_record(weights)
            except DaeError:
                record = {}
    config = config or record.get("config") or {}
    metrics: list[dict[str, str]] = []
    if (run / "metrics.csv").exists():
        try:
            metrics = _read_csv_rows(run / "metrics.csv")
        except _Skip as e:
            skip("Training", str(e))
        # dae writes a step and a time on every row; a row without both numbers is not a validation pass (a
        # hand edit, a foreign file): left out and counted, so neither the pass count nor the summary's last
        # step and time come from it.
        kept = [r for r in metrics if not any(math.isnan(_num(r.get(k))) for k in ("step", "time_s"))]
        if len(kept) < len(metrics):
            skip(
                "Training",
                f"{len(metrics) - len(kept)} row(s) of metrics.csv without a step and time left out",
            )
        metrics = kept

    # --- summary
    psnrs = [_num(r.get("val_psnr")) for r in metrics]
    best_i = max((i for i, v in enumerate(psnrs) if not math.isnan(v)), key=lambda i: psnrs[i], default=None)
    last = metrics[-1] if metrics else {}
    best_psnr = psnrs[best_i] if best_i is not None else _num(_get(record, "metrics.val_psnr"))
    model_name = _get(record, "model.name") or _get(config, "model.name") or "\u2014"
    # The loaded model's own arguments: an old record may name only some, the rest filled in when it loaded.
    kwargs = (
        getattr(model, "dae_kwargs", None)
        or _get(record, "model.kwargs")
        or _get(config, "model.kwargs")
        or {}
    )
    n_params = _get(record, "model.num_parameters")
    if n_params is None and model is not None:
        n_params = sum(p.numel() for p in model.parameters())
    train_noise = _get(config, "train.noise")
    specs = _noise_specs(train_noise, levels)  # levels the noise does not take: refused, whatever gets drawn
    summary_rows: list[tuple[str, Any]] = [
        ("run", str(run.resolve())),
        ("model", f"{model_name} {json.dumps(kwargs, default=str)}" if kwargs else model_name),
        ("parameters", f"{n_params:,}" if isinstance(n_params, int) else None),
        ("dataset", _get(config, "data.dataset")),
        ("training noise", train_noise),
        ("loss", _get(config, "train.loss")),
        (
            "optimizer",
            f"{_get(config, 'train.optimizer', '?')}, lr {_get(config, 'train.lr', '?')}, "
            f"batch {_get(config, 'train.batch_size', '?')}"
            if _get(config, "train")
            else None,
        ),
        ("steps", last.get("step") or _get(record, "step")),
        ("epochs", last.get("epoch") or _get(record, "epoch")),
        ("training time", _duration(_num(last.get("time_s")))),
        ("throughput", _run_rate(metrics)),
        (
            "trained with",  # both from the checkpoint: config.yaml holds the latest segment's settings
            _trained_with(record.get("trained_with"), _get(record, "config.train.precision")),
        ),
        (
            "best val PSNR",
            None
            if math.isnan(best_psnr)
            else f"{best_psnr:.2f} dB"
            + (
                f" (step {metrics[best_i].get('step')}, SSIM {_num(metrics[best_i].get('val_ssim')):.4f})"
                if best_i is not None
                else ""
            ),
        ),
        ("seed", _get(config, "seed")),
        (
            "checkpoint",
            f"{weights.relative_to(run)}, dae {record.get('dae_version', '?')}, "
            f"written {record.get('created', '?')}"
            if record
            else None,
        ),
        ("report", f"dae {__version__}"),
    ]
    summary = Html(
        '<table class="kv"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(format_value(v))}</td></tr>" for k, v in summary_rows)
        + "</tbody></table>"
    )
    sections: list[tuple[str, str]] = [("Summary", Html("".join(notes.get("Summary", [])) + summary))]

    # --- model figures: denoising grid, code layer, decoder activations
    model_parts: list[str] = []
    clean, shown = None, ""
    if model is not None:
        dataset = _get(config, "data.dataset", "mnist")
        if images is not None:
            clean, shown = images[:n_images].float(), f"The {min(n_images, len(images))} images given"
        else:
            if data_dir is not None and not Path(data_dir).is_dir():  # given, so not a note
                raise ResourceError(f"data dir {data_dir} does not exist (--data-dir)")
            try:
                clean, shown = _test_images(dataset, config, data_dir, n_images)
            except DaeError as e:
                model_parts.append(note_html(f"test images not loaded, so no model figures: {e}"))
    if clean is not None:
        from dae.data.noise import make_noisy

        try:
            noisy = {spec: make_noisy(clean, spec, seed) for spec, _ in specs}
            denoised = {spec: model.denoise(x) for spec, x in noisy.items()}
            grid = plots.plot_denoise_grid(clean, noisy, denoised, figures / "denoise_grid.png", n=n_images)
            model_parts.append(
                "<h3>Clean, noisy and denoised</h3>"
                + figure_html(
                    grid,
                    f"{shown}; noise "
                    f"{', '.join(s for s, _ in specs)} fixed by seed {seed} (make_noisy). "
                    "Row labels give the mean PSNR of the images shown."
                    + (
                        ""
                        if _sweep_family(train_noise) is not None
                        else f" The run trained on {train_noise}, which has no levels to sweep, so the grid "
                        "shows gaussian noise instead."
                    ),
                )
            )
            mid_spec = specs[len(specs) // 2][0]
            one = noisy[mid_spec][:1]
            code = _code_of(model, one)
            shape = "x".join(str(s) for s in code.shape)
            path = plots.plot_code_layer(
                code, figures / "code_layer.png", f"code layer, test image 0 at {mid_spec}"
            )
            model_parts.append(
                "<h3>Code layer</h3>"
                + figure_html(
                    path,
                    f"encode() output ({shape}) for test image 0 with {mid_spec} noise; "
                    + (
                        "feature maps share one colour scale, so all-dark maps are inactive channels."
                        if code.dim() == 3 and code.shape[1:].numel() > 1
                        else "a vector code: one bar per unit, and the same values as a tile."
                    ),
                )
            )
            path = plots.plot_activations(model, one, figures / "activations.png")
            model_parts.append(
                "<h3>Decoder activations</h3>"
                + figure_html(
                    path,
                    "Outputs of the decoder's layers (the conv, transposed conv, upsample and unpool "
                    "modules that run inside decode(); Linear layers for fully connected models) for the "
                    "same input: the first channels of each, each on its own colour scale. Steps taken by "
                    "function calls, such as the unpool model's unpooling, are not modules and are not shown.",
                )
            )
        except WriteError:  # a folder that takes no file: stop, rather than note every figure
            raise
        except (DaeError, _Skip) as e:
            model_parts.append(note_html(f"model figures stopped: {e}"))
    elif model is None:
        model_parts.append(
            note_html(f"{no_model}: denoising examples, code layer and activations are skipped")
        )
    sections.append(("Model", Html("".join(model_parts))))

    # --- training curves
    train_parts: list[str] = list(notes.get("Training", []))
    if metrics:
        try:
            path = plots.plot_training_curves(
                metrics,
                figures / "training_curves.png",
                loss=_get(config, "train.loss"),
                noise=_get(config, "train.noise"),
            )
            train_parts.append(
                figure_html(
                    path,
                    f"{len(metrics)} validation passes from metrics.csv; "
                    "the star marks the best validation PSNR (the best checkpoint).",
                )
            )
        except WriteError:
            raise
        except DaeError as e:
            train_parts.append(note_html(f"training curves skipped: {e}"))
    elif not train_parts:
        what = (
            "no validation pass in metrics.csv yet"
            if (run / "metrics.csv").exists()
            else "no metrics.csv yet"
        )
        train_parts.append(note_html(f"{what}: training curves skipped"))
    sections.append(("Training", Html("".join(train_parts))))

    # --- evaluation
    sections.append(("Evaluation", _eval_section(run, figures, record)))

    # --- configuration
    if config:
        text = dump_yaml(config)
        sections.append(
            (
                "Configuration",
                Html(f"<details open><summary>config.yaml</summary><pre>{esc(text)}</pre></details>"),
            )
        )

    run_name = _get(config, "name") or run.resolve().name
    subtitle = f"{model_name} on {_get(config, 'data.dataset', '?')}"
    if train_noise:
        subtitle += f", trained with {train_noise} noise"
    page = render_html(f"dae run report \u2014 {run_name}", sections, subtitle=subtitle)
    atomic_write_bytes(out, page.encode("utf-8"))
    # An earlier report's figure that this one did not draw (its eval/ since removed, say) would sit in
    # figures/ beside a page that no longer shows it. Each figure is written to a new file and renamed into
    # place, so one drawn now is another file than before: no clock is compared (a share's may run behind).
    for name, was in before.items():
        if was is not None and _identity(figures / name) == was:
            with contextlib.suppress(OSError):
                (figures / name).unlink()
    return out


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, mtime in ns) of a file, None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


# The figures write_report draws into RUN_DIR/figures/ (the page inlines them; the files are for other use).
REPORT_FIGURES = (
    "denoise_grid.png",
    "code_layer.png",
    "activations.png",
    "training_curves.png",
    "psnr_vs_noise.png",
    "ssim_vs_noise.png",
    "matrix.png",
)


def _stale_evaluation(run: Path, scored: Mapping[str, Any], best: Mapping[str, Any]) -> str | None:
    """Why eval/ no longer describes the run's best checkpoint (training went on after it), or None.

    `scored` is results.json's map of the weights behind each learned method (older results have none: they
    get no note).
    """
    if not best.get("tensors_sha256"):
        return None
    entries = {m: e for m, e in scored.items() if isinstance(e, dict)}
    if any(e.get("tensors_sha256") == best["tensors_sha256"] for e in entries.values()):
        return None  # the current best was scored
    # This run's checkpoints among those scored: its best, or another generation named by file (`dae eval
    # --checkpoint RUN/checkpoints/step-N.safetensors` writes to RUN/eval too).
    here = run.resolve() / "checkpoints"
    ours = {m: e for m, e in entries.items() if Path(str(e.get("file"))).parent == here}
    if not ours:  # the run folder has moved since: its checkpoints by their place in the run
        tail = (run.resolve().name, "checkpoints")
        ours = {m: e for m, e in entries.items() if Path(str(e.get("file"))).parts[-3:-1] == tail}
    if len(ours) != 1:  # none, or runs of the same name scored together: which was this one is not known
        return None
    ((method, entry),) = ours.items()
    then = f" at step {entry['step']}" if entry.get("step") is not None else ""
    now = f", step {best['step']}," if best.get("step") is not None else ""
    rerun = f"rerun `dae eval --checkpoint {shlex.quote(str(run))}`"
    name = Path(str(entry.get("file"))).name
    if name != "best.safetensors":
        step = f" (step {best['step']})" if best.get("step") is not None else ""
        return (
            f"these results are of {name} ({method}{then}), not of the run's best checkpoint{step}: {rerun}"
        )
    return (
        f"these results are of an earlier best checkpoint ({method}{then}); the run's best{now} was saved after "
        f"the evaluation: {rerun}"
    )


def _eval_section(run: Path, figures: Path, best: Mapping[str, Any]) -> Html:
    """PSNR/SSIM-vs-noise figures, the train x test matrix and the method x level table from eval/."""
    from dae import plots

    eval_dir = run / "eval"
    try:
        records, eval_notes, scored = _load_results(eval_dir)
    except DaeError as e:
        return note_html(f"evaluation results unreadable: {e}")
    stale = _stale_evaluation(run, scored, best)
    if not records:
        if not (run / "checkpoints" / "best.safetensors").is_file():
            return note_html("no evaluation yet, and no checkpoints/best.safetensors to evaluate")
        # `dae eval` evaluates on the data the run trained on and writes RUN/eval by default.
        return note_html(
            f"no evaluation yet ({eval_dir.relative_to(run)}/results.csv is missing); run "
            f"`dae eval --checkpoint {shlex.quote(str(run))}`"
        )
    parts: list[str] = [note_html(stale)] if stale else []
    parts += [f'<p class="muted">{esc(n)}</p>' for n in eval_notes]
    curves: list[str] = []
    for metric, label in (("psnr", "PSNR"), ("ssim", "SSIM")):
        if any(not math.isnan(_num(r.get(metric))) for r in records):
            try:
                path = plots.plot_psnr_vs_noise(records, figures / f"{metric}_vs_noise.png", metric=metric)
            except WriteError:
                raise
            except DaeError as e:
                parts.append(note_html(f"{label} plot skipped: {e}"))
                continue
            caption = (
                f"{label} against noise level: learned solid, baselines dashed, noisy input dotted (dash-dotted: "
                "its floor on the slow baselines' subset)."
            )
            curves.append(figure_html(path, caption))
    if curves:
        parts.append('<div class="row">' + "".join(curves) + "</div>")
    matrix_src: Any = None
    if (eval_dir / "matrix.csv").exists():
        matrix_src = eval_dir / "matrix.csv"
    elif (
        len(
            {
                str(r.get("train_noise"))
                for r in records
                if r.get("kind") == "learned" and r.get("train_noise")
            }
        )
        > 1
    ):
        matrix_src = records
    if matrix_src is not None:
        try:
            path = plots.plot_matrix(matrix_src, figures / "matrix.png")
            parts.append(
                "<h3>Train noise x test noise</h3>"
                + figure_html(
                    path,
                    "PSNR of each trained model at each test level; the best model for "
                    "each test level in bold.",
                )
            )
        except WriteError:
            raise
        except DaeError as e:
            parts.append(note_html(f"train x test matrix skipped: {e}"))
    parts.append("<h3>Results table</h3>" + eval_table(records))
    return Html("".join(parts))


def eval_table(records: Sequence[Mapping[str, Any]]) -> Html:
    """Method x noise table of 'PSNR / SSIM' cells, the best PSNR per column in bold, the noisy floor last.

    Example:
        >>> eval_table(dae.evaluate([...], ["median"]).records)
    """
    from dae.evaluate import on_most_images
    from dae.plots import _level_key, _short_levels, level_label

    specs = sorted({str(r.get("noise")) for r in records}, key=_level_key)
    rank = {"learned": 0, "baseline": 1, "noisy": 2}
    methods = sorted(
        dict.fromkeys(str(r.get("method")) for r in records),
        key=lambda m: next(rank.get(str(r.get("kind")), 1) for r in records if str(r.get("method")) == m),
    )
    cells = {(str(r.get("method")), str(r.get("noise"))): r for r in records}
    kinds = {str(r.get("method")): str(r.get("kind", "")) for r in records}
    best = {}
    for s in specs:
        # Ranked on the same images only: a slow baseline scored on the first few is not set against the rest.
        ranked, _ = on_most_images([cells[m, s] for m in methods if (m, s) in cells and kinds[m] != "noisy"])
        cands = [(_num(r.get("psnr")), str(r.get("method"))) for r in ranked]
        cands = [c for c in cands if not math.isnan(c[0])]
        if cands:
            best[s] = max(cands)[1]
    heads, family = _short_levels(specs)
    rows = []
    for m in methods:
        row: list[Any] = [m, kinds[m]]
        for s in specs:
            r = cells.get((m, s))
            if r is None:
                row.append(Html('<span class="muted">\u2014</span>'))
                continue
            text = f"{_num(r.get('psnr')):.2f} / {_num(r.get('ssim')):.3f}"
            row.append(Html(f'<b class="best">{esc(text)}</b>' if best.get(s) == m else esc(text)))
        counts = sorted({str(r.get("n_images")) for r in records if str(r.get("method")) == m})
        row.append(", ".join(counts))
        rows.append(row)
    level_heads = heads
    seeds = sorted({str(r.get("seed")) for r in records if r.get("seed") is not None})
    caption = (
        (f"Columns: {level_label(family)}. " if family else "")
        + "Each cell: PSNR (dB, data range 1.0, per image then averaged) / SSIM (11x11 Gaussian window); "
        "best PSNR per noise level in bold, among the methods scored on the most images"
        + (f"; noise fixed by seed {', '.join(seeds)}" if seeds else "")
        + "."
    )
    return Html(
        '<div class="scroll">'
        + table_html(
            rows, ["method", "kind", *level_heads, "images"], caption, numeric=[*level_heads, "images"]
        )
        + "</div>"
    )
