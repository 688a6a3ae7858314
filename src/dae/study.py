"""`dae study`: the classic tutorials' experiments in one command, answered from the numbers it measures.

Each distinct (model, kwargs, training noise, loss) is trained once and cached in OUT/models/<key>/, so the
experiments share models and a rerun with the same settings reuses them (and resumes the one an interrupt
stopped, from its last checkpoint). Every answer paragraph in the
report is written by a function below from the measured records, never typed in by hand: if the numbers
change, so does the text.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dae.errors import DaeError, Interrupted, PartialFailure
from dae.fileio import atomic_write_bytes, folder_lock, make_folder, output_folder

# ----------------------------------------------------------------------------------------------------
# settings and the models the experiments need

GAUSS_LEVELS = (0.3, 0.5, 0.7, 0.9)
MATRIX_LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
WHITE = "white-noise share"  # label of the reference row in the artefact table


@dataclass
class StudySettings:
    """How much compute the study spends: training seconds per model, training/test set sizes."""

    train_seconds: float
    limit: int | None  # training images per model (None: the whole training split)
    val_size: int
    n_test: int
    slow_limit: int  # images for slow baselines (nlm)
    batch_size: int = 128
    baselines: tuple[str, ...] = ("median", "tv", "wavelet", "nlm")

    @classmethod
    def preset(cls, quick: bool, budget: str | None = None) -> StudySettings:
        from dae.config import parse_duration

        s = (
            cls(train_seconds=8.0, limit=4096, val_size=500, n_test=300, slow_limit=40, batch_size=64)
            if quick
            else cls(train_seconds=60.0, limit=None, val_size=1000, n_test=2000, slow_limit=200)
        )
        if budget is not None:
            s.train_seconds = parse_duration(budget)
        return s


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: architecture, its kwargs, training noise and loss."""

    model: str
    noise: str = "gaussian:0.5"
    loss: str = "bce"
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        kw = f"({','.join(str(v) for _, v in self.kwargs)})" if self.kwargs else ""
        return f"{self.model}{kw} @{self.noise} {self.loss}"

    @property
    def key(self) -> str:
        kw = "".join(f"-{k}={v}" for k, v in self.kwargs)
        return re.sub(r"[^A-Za-z0-9.=-]+", "_", f"{self.model}{kw}_{self.noise}_{self.loss}")


def _network(sp: ModelSpec) -> dict[str, Any]:
    from dae.models import MODELS, resolved_kwargs

    return resolved_kwargs(MODELS.get(sp.model), {"in_channels": 1, **dict(sp.kwargs)})


def spec(model: str, noise: str = "gaussian:0.5", loss: str | None = None, **kwargs: Any) -> ModelSpec:
    # bce, as in the tutorials, for models that output logits: at budgets of seconds mse-on-sigmoid often sits
    # on the "all background" plateau (9.8 dB on MNIST); dncnn outputs the image itself and uses mse.
    loss = loss or ("mse" if model == "dncnn" else "bce")
    return ModelSpec(model, noise, loss, tuple(kwargs.items()))


# The tutorials' conv autoencoder (Conv + MaxPool encoder, UpSampling decoder) is the reference model.
CONV = "upsample"
M = {
    "g03": spec(CONV, "gaussian:0.3"),
    "g08": spec(CONV, "gaussian:0.8"),
    "blind": spec(CONV, "gaussian:0.1-0.9"),
    "conv": spec(CONV),
    "strided": spec("strided"),
    "fc": spec("fc"),
    "transpose": spec("transpose"),
    "unpool_zeros": spec("unpool", method="zeros"),
    "unpool_nearest": spec("unpool", method="nearest"),
    "unpool_argmax": spec("unpool", method="argmax"),
    "unpool_sigmoid": spec("unpool", method="argmax", activation="sigmoid"),
    "conv_mse": spec(CONV, loss="mse"),
    "block": spec(CONV, "block:third"),
    "unet": spec("unet"),
    "dncnn": spec("dncnn"),
    "unet_sp": spec("unet", "salt_pepper:0.2"),
    "dncnn_sp": spec("dncnn", "salt_pepper:0.2"),
    "unet_mask": spec("unet", "mask:0.5"),
    "dncnn_mask": spec("dncnn", "mask:0.5"),
}


# ----------------------------------------------------------------------------------------------------
# small helpers on records


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def pivot(records: Sequence[Mapping[str, Any]], metric: str = "psnr") -> dict[str, dict[str, float]]:
    """{method: {noise spec: value}} from evaluation records."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        out.setdefault(str(r["method"]), {})[str(r["noise"])] = _num(r.get(metric))
    return out


def _level(spec_text: str) -> float:
    m = re.match(r"^[a-z_]+:([0-9.]+)$", spec_text)
    return float(m.group(1)) if m else math.nan


def _fmt_levels(levels: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in levels)


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


# ----------------------------------------------------------------------------------------------------
# answers: text computed from numbers


def _family(spec: Any) -> str:
    return str(spec).split(":")[0].split(",")[0]


def not_denoising(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Learned methods that have not learned to denoise (too few steps in their budget, or a failed run).

    A model is named when it does no better than the noisy input on the very noise it was trained on (or, if
    that spec was not tested, at every tested setting of its family), or when its score hardly moves across
    settings of that family while the input's falls by several dB: its output ignores its input (a constant
    image, say), which can still beat the input at heavy noise. Only noise of the training noise's family
    counts: doing worse than the input on noise a model never saw (a gaussian model on occlusion) can be the
    very finding.
    """
    noisy = {str(r["noise"]): _num(r["psnr"]) for r in records if r.get("method") == "noisy input"}
    scores: dict[str, dict[str, float]] = {}
    trained_on: dict[str, str] = {}
    for r in records:
        if r.get("kind") != "learned" or not r.get("train_noise"):
            continue
        spec, value = str(r["noise"]), _num(r["psnr"])
        if spec in noisy and _family(spec) == _family(r["train_noise"]) and not math.isnan(value):
            scores.setdefault(str(r["method"]), {})[spec] = value
            trained_on[str(r["method"])] = str(r["train_noise"])
    failed = []
    for method, by_spec in scores.items():
        own = trained_on[method]
        if own in by_spec:
            no_better = by_spec[own] <= noisy[own]
        else:
            no_better = all(v <= noisy[spec] for spec, v in by_spec.items())
        values, floors = list(by_spec.values()), [noisy[spec] for spec in by_spec]
        ignores_input = (
            len(values) >= 3 and max(floors) - min(floors) >= 3.0 and max(values) - min(values) < 0.5
        )
        if no_better or ignores_input:
            failed.append(method)
    return failed


def caveat(failed: Sequence[str], train_seconds: float) -> str:
    """The sentence that stops an answer built on models that did not learn from reading as a finding."""
    if not failed:
        return ""
    who = f"{failed[0]} had" if len(failed) == 1 else f"{', '.join(failed[:-1])} and {failed[-1]} had"
    return (
        f"Not a finding: {who} not learned to denoise in {train_seconds:g} s of training (no better than the "
        "noisy input on the noise it was trained for, or about the same score at every noise level), so the "
        "comparison below does not show what the models can do; rerun with a larger --budget (the full study "
        "trains each model for 60 s)."
    )


def answer_train_level(records: Sequence[Mapping[str, Any]]) -> str:
    """Which training level wins at which test level, and how the blind model compares to the specialists."""
    learned = [r for r in records if r.get("kind") == "learned" and r.get("train_noise")]
    by_train: dict[str, dict[float, float]] = {}
    for r in learned:
        by_train.setdefault(str(r["train_noise"]), {})[_num(r["level"])] = _num(r["psnr"])
    fixed = sorted((t for t in by_train if not math.isnan(_level(t))), key=_level)
    blind = [t for t in by_train if math.isnan(_level(t))]
    if len(fixed) < 2:
        return "Not enough trained models to compare training levels."
    lo, hi = fixed[0], fixed[-1]
    a, b = _level(lo), _level(hi)
    levels = sorted(set(by_train[lo]) & set(by_train[hi]))
    diff = {t: by_train[hi][t] - by_train[lo][t] for t in levels}
    hi_wins = [t for t in levels if diff[t] > 0]
    parts = []
    if not hi_wins:
        parts.append(
            f"Training at {a:g} gave higher PSNR than training at {b:g} at every test level measured."
        )
    elif len(hi_wins) == len(levels):
        parts.append(
            f"Training at {b:g} gave higher PSNR than training at {a:g} at every test level measured."
        )
    elif hi_wins == levels[len(levels) - len(hi_wins) :]:
        gain = max(diff[t] for t in hi_wins)
        loss = max(-diff[t] for t in levels if t not in hi_wins)
        parts.append(
            f"Training at {b:g} gave higher PSNR than training at {a:g} at test levels >= {hi_wins[0]:g} "
            f"(by up to {gain:.2f} dB); below that, training at {a:g} was better by up to {loss:.2f} dB."
        )
    else:
        parts.append(
            f"Training at {b:g} beat training at {a:g} at test levels {_fmt_levels(hi_wins)} and lost at "
            f"{_fmt_levels([t for t in levels if t not in hi_wins])}."
        )
    for t in blind:
        # The blind model minus the better specialist, at the levels all three were tested at.
        gap = {v: by_train[t][v] - max(by_train[lo][v], by_train[hi][v]) for v in levels if v in by_train[t]}
        if not gap:
            continue
        wins = [v for v, g in gap.items() if g > 0]
        worst, mean = min(gap.values()), _mean(list(gap.values()))
        if worst >= 0:
            parts.append(f"The blind model ({t}) matched or beat both specialists at every level.")
        else:
            won = f"; it beat both at {_fmt_levels(wins)}" if wins else ""
            # "mean gap +0.49 dB" after "behind" read as behind on average; say which way.
            on_average = f"{abs(mean):.2f} dB {'ahead' if mean > 0 else 'behind'} on average"
            parts.append(
                f"The blind model ({t}) was at most {-worst:.2f} dB behind the better specialist "
                f"({on_average}){won}."
            )
    return " ".join(parts)


def answer_compare(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    extra: Mapping[str, str] | None = None,
    what: str = "",
) -> str:
    """Rank `methods` by mean PSNR over the noise specs they share; name the winner and the spread."""
    table = pivot(records)
    methods = [m for m in methods if m in table]
    if len(methods) < 2:
        return f"Not enough models to compare{(' ' + what) if what else ''}."
    shared = sorted(set.intersection(*(set(table[m]) for m in methods)), key=lambda s: (_level(s), s))
    means = {m: _mean([table[m][s] for s in shared]) for m in methods}
    order = sorted(methods, key=lambda m: -means[m])
    best, worst = order[0], order[-1]
    per_spec = [s for s in shared if max(methods, key=lambda m: table[m][s]) == best]
    text = (
        f"{best} had the highest mean PSNR ({means[best]:.2f} dB over {len(shared)} test settings), "
        f"{means[best] - means[worst]:.2f} dB above {worst}"
    )
    text += (
        "; it was best at every setting."
        if len(per_spec) == len(shared)
        else f"; it was best at {len(per_spec)} of {len(shared)} settings."
    )
    if len(order) > 2:
        text += " Ranking: " + " > ".join(f"{m} ({means[m]:.2f})" for m in order) + "."
    if extra:
        text += " " + " ".join(extra[m] for m in order if m in extra)
    return text


def answer_artefacts(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which decoder puts the most error energy at the 2-pixel period, relative to white noise."""
    rows = [r for r in rows if r["method"] != WHITE]
    if not rows:
        return "No decoder was measured."
    white = _num(rows[0].get("white_share"))
    ranked = sorted(rows, key=lambda r: -_num(r["period2_share"]))
    top, low = ranked[0], ranked[-1]
    text = (
        f"{top['method']} concentrated the largest share of its residual energy at the 2-pixel period "
        f"({100 * _num(top['period2_share']):.1f}%, {_num(top['period2_share']) / white:.1f}x the "
        f"{100 * white:.1f}% white noise would have); {low['method']} the smallest "
        f"({100 * _num(low['period2_share']):.1f}%)."
    )
    above = [r["method"] for r in ranked if _num(r["period2_share"]) > 1.5 * white]
    text += (
        f" Above 1.5x white: {', '.join(above)} (a checkerboard or sparse-dot pattern)."
        if above
        else " None exceeded 1.5x the white-noise share, so no decoder showed a strong checkerboard."
    )
    mean_top = max(rows, key=lambda r: _num(r["mean_map_share"]))
    text += (
        f" In the mean error map (systematic artefacts shared by all images) {mean_top['method']} led with "
        f"{100 * _num(mean_top['mean_map_share']):.1f}%."
    )
    return text


def answer_occlusion(records: Sequence[Mapping[str, Any]]) -> str:
    """Best restorer per occlusion and how much it gains over the occluded input, or that none gained."""
    table = pivot(records)
    floors = {str(r["method"]) for r in records if r.get("kind") == "noisy"}
    specs = list(dict.fromkeys(str(r["noise"]) for r in records))
    parts = []
    for s in specs:
        scores = {m: v[s] for m, v in table.items() if s in v and m not in floors}
        if not scores:
            continue
        best = max(scores, key=lambda m: scores[m])
        floor = table.get("noisy input", {}).get(s, math.nan)
        worst = f"worst {min(scores.values()):.2f} dB"
        if math.isnan(floor):  # no occluded input among the records: nothing to measure a gain against
            parts.append(f"On {s}, {best} restored best ({scores[best]:.2f} dB; {worst}).")
        elif scores[best] > floor:
            parts.append(
                f"On {s}, {best} restored best ({scores[best]:.2f} dB, {scores[best] - floor:+.2f} dB over the "
                f"occluded input; {worst})."
            )
        else:  # "restored best" would read as a restoration
            parts.append(
                f"On {s}, no method restored the image: the occluded input itself scores {floor:.2f} dB, and the "
                f"best, {best}, {scores[best]:.2f} dB ({scores[best] - floor:+.2f} dB; {worst})."
            )
    return " ".join(parts) or "No occlusion results."


def answer_beyond(records: Sequence[Mapping[str, Any]]) -> str:
    """Per noise family: does the best learned model beat the best classical baseline, by how much."""
    from dae.evaluate import on_most_images

    families = list(dict.fromkeys(_family(r["noise"]) for r in records))
    parts = []
    for fam in families:
        rs = [r for r in records if _family(r["noise"]) == fam]
        specs = list(dict.fromkeys(str(r["noise"]) for r in rs))
        margins, wins = [], 0
        names, subset = set(), set()
        for s in specs:
            # Ranked only on the same images: a slow baseline scored on the first few is left out.
            ranked, fewer = on_most_images(
                [r for r in rs if r["noise"] == s and r["kind"] in ("learned", "baseline")]
            )
            subset |= {r["method"] for r in fewer}
            learned = [r for r in ranked if r["kind"] == "learned"]
            base = [r for r in ranked if r["kind"] == "baseline"]
            if not learned or not base:
                continue
            bl = max(learned, key=lambda r: _num(r["psnr"]))
            bb = max(base, key=lambda r: _num(r["psnr"]))
            margins.append(_num(bl["psnr"]) - _num(bb["psnr"]))
            wins += margins[-1] > 0
            names.add(bb["method"])
        if margins:
            parts.append(
                f"{fam}: the best learned model beat the best classical baseline "
                f"({', '.join(sorted(names))}) at {wins} of {len(margins)} levels "
                f"(margin {min(margins):+.2f} to {max(margins):+.2f} dB)"
                + (
                    f"; {', '.join(sorted(subset))}, scored on fewer images, not ranked against them."
                    if subset
                    else "."
                )
            )
    return " ".join(parts) or "No learned-vs-baseline comparison was possible."


def answer_code(rows: Sequence[Mapping[str, Any]]) -> str:
    """Code sizes and sparsity across models."""
    if not rows:
        return "No code layers were captured."
    small = min(rows, key=lambda r: r["code_size"])
    sparse = max(rows, key=lambda r: r["zero_fraction"])
    return (
        f"The smallest code was {small['method']}'s ({small['code_shape']}, {small['code_size']} numbers); "
        f"the sparsest was {sparse['method']}'s, with {100 * sparse['zero_fraction']:.0f}% exact zeros "
        f"for this digit (mean over models {100 * _mean([r['zero_fraction'] for r in rows]):.0f}%)."
    )


# ----------------------------------------------------------------------------------------------------
# measurements that are not plain PSNR


def period2_share(residual: Tensor) -> float:
    """Fraction of a residual's (non-DC) spectral energy at 0.5 cycles/px in x or y (the 2-pixel period).

    For (N, H, W) residuals the share is computed per image and averaged. White noise gives about
    (H + W - 1) / (H * W - 1); a checkerboard or a grid of sparse dots gives much more.
    """
    r = residual.double()
    if r.dim() == 2:
        r = r[None]
    h, w = r.shape[-2:]
    power = torch.fft.fft2(r).abs().pow(2)  # (N, H, W)
    power[:, 0, 0] = 0.0  # the mean error (DC) is a bias, not a pattern
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 2, :] = h % 2 == 0  # Nyquist row/column exist only for even sizes
    mask[:, w // 2] |= w % 2 == 0
    total = power.sum(dim=(1, 2)).clamp_min(1e-20)
    return float((power[:, mask].sum(dim=1) / total).mean())


def white_share(h: int, w: int) -> float:
    n = (h + w - 1) if h % 2 == 0 and w % 2 == 0 else (w if h % 2 == 0 else h if w % 2 == 0 else 0)
    return n / (h * w - 1)


def code_of(model: Any, x: Tensor) -> Tensor:
    from dae.report import _code_of  # the run report's rule for finding the code layer; one rule, one place

    return _code_of(model, x)


# ----------------------------------------------------------------------------------------------------
# the study


@dataclass
class Section:
    key: str
    title: str
    setup: str
    answer: str = ""
    not_denoising: list[str] = field(default_factory=list)  # learned methods no better than their input
    records: list[dict[str, Any]] = field(default_factory=list)  # evaluation records
    extra: list[dict[str, Any]] = field(default_factory=list)  # other numbers (params, spectra, codes)
    # Per learned method: the steps its budget gave it and how it does on its own training noise.
    training: list[dict[str, Any]] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _records(marker: Path, wanted: Mapping[str, Any]) -> bool:
    """Whether the marker file holds exactly these settings (a missing or unreadable one does not)."""
    try:
        return json.loads(marker.read_text()) == json.loads(json.dumps(wanted))
    except (OSError, ValueError):
        return False


def _can_resume(ckpt_dir: Path) -> bool:
    from dae.train import latest_good_generation

    try:
        latest_good_generation(ckpt_dir)
    except DaeError:
        return False
    return True


class Study:
    """Trains (or reuses) the models, evaluates them on one fixed-seed test set, runs the experiments."""

    def __init__(self, out: Path, settings: StudySettings, data_dir: str | None, seed: int, log=print):
        self.out, self.s, self.data_dir, self.seed, self.log = Path(out), settings, data_dir, seed, log
        self.eval_seed = 1234
        self.figures = self.out / "figures"
        self.checkpoints: dict[ModelSpec, Path] = {}
        self.failures: dict[ModelSpec, str] = {}
        self._models: dict[ModelSpec, Any] = {}
        self._test: Tensor | None = None
        self._own: dict[ModelSpec, list[dict[str, Any]]] = {}  # records on each model's own training noise

    # -- models
    def ensure(self, specs: Sequence[ModelSpec]) -> list[ModelSpec]:
        """Train the specs not yet cached; returns those that are available."""
        from dae.train import train

        todo = [sp for sp in dict.fromkeys(specs) if sp not in self.checkpoints and sp not in self.failures]
        for i, sp in enumerate(todo, 1):
            run = self.out / "models" / sp.key
            marker = run / "study.json"
            wanted = {
                "spec": asdict(sp),
                # The whole network, defaults included: a changed default retrains instead of reusing.
                "network": _network(sp),
                "train_seconds": self.s.train_seconds,
                "limit": self.s.limit,
                "seed": self.seed,
                "batch_size": self.s.batch_size,
            }
            best = run / "checkpoints" / "best.safetensors"
            if best.exists() and _records(marker, wanted):
                self.checkpoints[sp] = best
                try:
                    self.model(sp)  # the model code may have changed since: reuse only what still loads
                    self.log(f"[study] reuse {sp.label} ({run})")
                    continue
                except DaeError as e:
                    del self.checkpoints[sp]
                    self.log(f"[study] cached {sp.label} does not load ({str(e)[:120]}); training again")
            # A model whose training was interrupted (Ctrl-C, SIGTERM) under these same settings continues from
            # its last good checkpoint; the time budget counts the time it had already trained.
            pending = run / "study-pending.json"
            resume = _records(pending, wanted) and _can_resume(run / "checkpoints")
            if run.exists() and not resume:
                shutil.rmtree(run)  # our own cache, trained with other settings
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(pending, json.dumps(wanted, indent=2).encode())
            what = "resume" if resume else "train"
            self.log(f"[study] {what} {sp.label} for {self.s.train_seconds:g}s ({i}/{len(todo)})", flush=True)
            cfg = {
                "out": str(run),
                "seed": self.seed,
                "data": {
                    "dataset": "mnist",
                    "data_dir": self.data_dir,
                    "limit": self.s.limit,
                    "val_size": self.s.val_size,
                },
                "model": {"name": sp.model, "kwargs": dict(sp.kwargs)},
                "train": {
                    "noise": sp.noise,
                    "loss": sp.loss,
                    "time_budget": self.s.train_seconds,
                    "batch_size": self.s.batch_size,
                    "warmup_steps": 10,  # second-long budgets give ~100 steps; 50 would eat half
                    "keep_last": 1,
                },
            }
            t0 = time.perf_counter()
            try:
                result = train(cfg, resume=resume, progress=False)
            except Interrupted:
                raise  # Ctrl-C or SIGTERM stops the study; a rerun reuses finished models and resumes this one
            except (DaeError, TypeError, ValueError) as e:  # a bad model or kwargs: skip it, report it
                pending.unlink(missing_ok=True)  # a failed model is trained afresh next time, not resumed
                self.failures[sp] = f"{type(e).__name__}: {e}"
                self.log(f"[study]   FAILED {sp.label}: {str(e).splitlines()[0]}")
                continue
            if result.best_checkpoint is None:
                pending.unlink(missing_ok=True)
                self.failures[sp] = "training produced no checkpoint"
                continue
            atomic_write_bytes(marker, json.dumps(wanted, indent=2).encode())
            pending.unlink(missing_ok=True)
            self.checkpoints[sp] = result.best_checkpoint
            self.log(
                f"[study]   {result.step} steps in {time.perf_counter() - t0:.1f}s, "
                f"val PSNR {result.best_val_psnr:.2f} dB"
            )
        return [sp for sp in dict.fromkeys(specs) if sp in self.checkpoints]

    def model(self, sp: ModelSpec) -> Any:
        from dae.checkpoint import load_model

        if sp not in self._models:
            m = load_model(self.checkpoints[sp]).eval()
            m.dae_name = sp.label  # evaluation names methods by this
            self._models[sp] = m
        return self._models[sp]

    @property
    def test(self) -> Tensor:
        from dae.data.datasets import load_images

        if self._test is None:
            self._test = load_images("mnist", "test", root=self.data_dir, limit=self.s.n_test)
        return self._test

    def evaluate(
        self,
        specs: Sequence[ModelSpec],
        noise: str,
        levels: Sequence[float] | None,
        baselines: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        from dae.evaluate import evaluate

        if not specs and not baselines:  # evaluate() refuses an empty method list
            return []
        # Slow baselines (nlm) see only the first slow_limit images, beside their own "noisy input, first N"
        # floor; evaluate does both.
        records = evaluate(
            baselines=baselines,
            models=[self.model(sp) for sp in specs],
            images=self.test,
            noise=noise,
            levels=levels,
            seed=self.eval_seed,
            slow_limit=self.s.slow_limit,
            verbose=False,
        ).records
        train_noise = {sp.label: sp.noise for sp in specs}
        for r in records:
            r["train_noise"] = train_noise.get(r["method"], r.get("train_noise"))
        return records

    def own_noise_records(self, sp: ModelSpec) -> list[dict[str, Any]]:
        """The model and the noisy input on the test images at the noise the model was trained on.

        Whether a model learned at all is judged here: an experiment that tests it on other noise only (the
        occlusion one) cannot tell a model that never learned from one that does not transfer.
        """
        if sp not in self._own:
            self._own[sp] = self.evaluate([sp], sp.noise, None)
        return self._own[sp]

    def training_row(self, sp: ModelSpec) -> dict[str, Any]:
        """What a model's budget bought (steps in all, the step of the best checkpoint scored) and how that
        checkpoint does on the test images at its own training noise, beside the noisy input."""
        from dae.checkpoint import read_record

        steps = best_step = None  # context for the answer, not part of it: unreadable files leave them out
        try:
            with open(self.out / "models" / sp.key / "metrics.csv", newline="") as f:
                steps = int(float(list(csv.DictReader(f))[-1]["step"]))
        except (OSError, UnicodeDecodeError, csv.Error, IndexError, KeyError, TypeError, ValueError):
            pass
        try:
            best_step = int(read_record(self.checkpoints[sp])["step"])
        except (DaeError, KeyError, TypeError, ValueError):
            pass
        psnr = {r["method"]: _num(r["psnr"]) for r in self.own_noise_records(sp)}
        return {
            "method": sp.label,
            "train_noise": sp.noise,
            "steps": steps,
            "best_step": best_step,
            "psnr": round(psnr.get(sp.label, math.nan), 2),
            "noisy_psnr": round(psnr.get("noisy input", math.nan), 2),
        }

    def outputs(
        self, specs: Sequence[ModelSpec], noise: str, n: int | None = None
    ) -> tuple[Tensor, Tensor, dict]:
        """Clean, noisy and each model's output on the first n test images at one noise spec."""
        from dae.data.noise import make_noisy

        clean = self.test if n is None else self.test[:n]
        noisy = make_noisy(clean, noise, self.eval_seed)
        outs = {sp.label: self.model(sp).denoise(noisy) for sp in specs}
        return clean, noisy, outs

    def fig(self, name: str) -> Path:
        make_folder(self.figures)
        return self.figures / name


# ----------------------------------------------------------------------------------------------------
# experiments: each fills one Section


def exp_matrix(st: Study) -> Section:
    from dae.plots import plot_matrix

    sec = Section(
        "matrix",
        "1. Training level x test level",
        f"{CONV} autoencoders trained on gaussian 0.3, 0.8 and blind on 0.1-0.9, each tested at "
        f"{_fmt_levels(MATRIX_LEVELS)}.",
    )
    specs = st.ensure([M["g03"], M["g08"], M["blind"]])
    if specs:
        sec.records = st.evaluate(specs, "gaussian", MATRIX_LEVELS)
        learned = [r for r in sec.records if r["kind"] == "learned"]
        sec.figures.append(
            (plot_matrix(learned, st.fig("matrix.png"), title="PSNR (dB)"), "train x test PSNR")
        )
    sec.answer = answer_train_level(sec.records)
    return sec


def exp_fc(st: Study) -> Section:
    from dae.plots import plot_error_maps

    sec = Section(
        "fc_vs_conv",
        "2. Convolutional vs fully connected",
        f"fc (784-64-784) vs conv denoisers ({CONV}, strided), same training budget, "
        "trained on gaussian 0.5.",
    )
    specs = st.ensure([M["fc"], M["conv"], M["strided"]])
    if specs:
        sec.records = st.evaluate(specs, "gaussian", GAUSS_LEVELS)
        params = {sp.label: st.model(sp).num_parameters() for sp in specs}
        sec.extra = [{"method": k, "parameters": v} for k, v in params.items()]
        clean, noisy, outs = st.outputs(specs, "gaussian:0.5", 3)
        sec.figures.append(
            (plot_error_maps(clean, {"noisy": noisy, **outs}, st.fig("fc_error_maps.png")), "|error| at 0.5")
        )
        extra = {k: f"{k} has {v:,} parameters." for k, v in params.items()}
        sec.answer = answer_compare(sec.records, list(params), extra)
    else:
        sec.answer = answer_compare([], [])
    return sec


DECODERS = ("transpose", "conv", "unpool_zeros", "unpool_nearest", "unpool_argmax")


def exp_decoders(st: Study) -> Section:
    from dae.plots import plot_error_maps

    sec = Section(
        "decoders",
        "3. Decoder designs and their artefacts",
        "transpose conv vs upsample+conv vs unpool (zeros / nearest / argmax), same budget, gaussian 0.5. "
        "Artefact measure: share of the residual's non-DC spectral energy at 0.5 cycles/px in x or y "
        "(the 2-pixel period), per image then averaged, and on the mean signed error map.",
    )
    specs = st.ensure([M[k] for k in DECODERS])
    if specs:
        sec.records = st.evaluate(specs, "gaussian", GAUSS_LEVELS)
        clean, noisy, outs = st.outputs(specs, "gaussian:0.5")
        h, w = clean.shape[-2:]
        white = white_share(h, w)
        for name, out in outs.items():
            res = (out - clean)[:, 0]  # (N, H, W)
            sec.extra.append(
                {
                    "method": name,
                    "period2_share": period2_share(res),
                    "mean_map_share": period2_share(res.mean(0)),
                    "white_share": white,
                }
            )
        sec.extra.append(
            {"method": WHITE, "period2_share": white, "mean_map_share": white, "white_share": white}
        )
        sec.figures.append(
            (
                plot_error_maps(clean[:3], {k: v[:3] for k, v in outs.items()}, st.fig("decoder_errors.png")),
                "|error| at gaussian 0.5",
            )
        )
    sec.answer = answer_artefacts(sec.extra) + " " + answer_compare(sec.records, [sp.label for sp in specs])
    return sec


def exp_activation(st: Study) -> Section:
    from dae.plots import plot_psnr_vs_noise

    sec = Section(
        "activation", "4. Decoder activation", "unpool (argmax) decoder with relu vs sigmoid activations."
    )
    specs = st.ensure([M["unpool_argmax"], M["unpool_sigmoid"]])
    if specs:
        sec.records = st.evaluate(specs, "gaussian", GAUSS_LEVELS)
        sec.figures.append((plot_psnr_vs_noise(sec.records, st.fig("activation.png")), "PSNR vs noise"))
    sec.answer = answer_compare(sec.records, [sp.label for sp in specs])
    return sec


def exp_loss(st: Study) -> Section:
    from dae.plots import plot_psnr_vs_noise

    sec = Section("loss", "5. Loss: MSE vs cross-entropy", f"{CONV} trained on gaussian 0.5 with bce vs mse.")
    specs = st.ensure([M["conv"], M["conv_mse"]])
    if specs:
        sec.records = st.evaluate(specs, "gaussian", GAUSS_LEVELS)
        sec.figures.append((plot_psnr_vs_noise(sec.records, st.fig("loss.png")), "PSNR vs noise"))
    sec.answer = answer_compare(sec.records, [sp.label for sp in specs])
    return sec


def exp_occlusion(st: Study) -> Section:
    from dae.plots import plot_denoise_grid

    sec = Section(
        "occlusion",
        "6. Occlusion",
        "Only a third / a quarter of each digit visible (a random band): models trained on gaussian noise "
        "and one trained on block:third.",
    )
    specs = st.ensure([M["conv"], M["blind"], M["unet"], M["block"]])
    for s in ("block:third", "block:quarter"):
        if specs:
            sec.records += st.evaluate(specs, s, None)
    if M["block"] in specs:
        clean, noisy_t, o_t = st.outputs([M["block"]], "block:third", 8)
        _, noisy_q, o_q = st.outputs([M["block"]], "block:quarter", 8)
        lab = M["block"].label
        sec.figures.append(
            (
                plot_denoise_grid(
                    clean,
                    {"third": noisy_t, "quarter": noisy_q},
                    {"third": o_t[lab], "quarter": o_q[lab]},
                    st.fig("occlusion.png"),
                ),
                f"restorations by {lab}",
            )
        )
    sec.answer = answer_occlusion(sec.records)
    return sec


def exp_beyond(st: Study) -> Section:
    from dae.plots import plot_psnr_vs_noise

    sec = Section(
        "beyond",
        "7. Beyond the tutorials: other noises, stronger models, classical baselines",
        "unet and dncnn trained on gaussian 0.5, salt_pepper 0.2 and mask 0.5, each tested on its noise "
        f"family against {', '.join(st.s.baselines)} (slow baselines on the first {st.s.slow_limit} images); "
        f"on gaussian noise also the tutorials' {M['conv'].label}, the mark the stronger models must beat.",
    )
    groups = [
        ("gaussian", GAUSS_LEVELS, [M["unet"], M["dncnn"], M["conv"]]),
        ("salt_pepper", (0.1, 0.2, 0.3), [M["unet_sp"], M["dncnn_sp"]]),
        ("mask", (0.25, 0.5, 0.75), [M["unet_mask"], M["dncnn_mask"]]),
    ]
    for family, levels, wanted in groups:
        specs = st.ensure(wanted)
        st.log(f"[study] evaluate {family} with baselines", flush=True)
        sec.records += st.evaluate(specs, family, levels, st.s.baselines)
    if sec.records:
        sec.figures.append((plot_psnr_vs_noise(sec.records, st.fig("beyond.png")), "PSNR vs noise"))
    sec.answer = answer_beyond(sec.records)
    return sec


def exp_code(st: Study) -> Section:
    from dae.plots import plot_code_layer

    sec = Section(
        "code", "8. The code layer", "Code-layer feature maps of the same test digit across models."
    )
    specs = st.ensure([M["fc"], M["conv"], M["strided"], M["transpose"], M["unpool_argmax"], M["unet"]])
    digit = st.test[:1]
    for sp in specs:
        try:
            code = code_of(st.model(sp), digit).float()
        except Exception as e:  # noqa: BLE001 - a model without a usable encode is a note, not a failed study
            sec.notes.append(f"{sp.label}: no code layer ({e})")
            continue
        sec.extra.append(
            {
                "method": sp.label,
                "code_shape": "x".join(str(d) for d in code.shape),
                "code_size": code.numel(),
                "zero_fraction": float((code.abs() <= 1e-6).float().mean()),
                "mean_activation": float(code.mean()),
            }
        )
        name = re.sub(r"[^A-Za-z0-9.=-]+", "_", sp.key)
        sec.figures.append((plot_code_layer(code, st.fig(f"code_{name}.png"), sp.label), sp.label))
    sec.answer = answer_code(sec.extra)
    return sec


EXPERIMENTS: dict[str, Callable[[Study], Section]] = {
    "matrix": exp_matrix,
    "fc_vs_conv": exp_fc,
    "decoders": exp_decoders,
    "activation": exp_activation,
    "loss": exp_loss,
    "occlusion": exp_occlusion,
    "beyond": exp_beyond,
    "code": exp_code,
}


# ----------------------------------------------------------------------------------------------------
# output


def _rows(sections: Sequence[Section]) -> list[dict[str, Any]]:
    rows = []
    for sec in sections:
        rows += [{"experiment": sec.key, **r} for r in sec.records]
        rows += [{"experiment": sec.key, "kind": "extra", **r} for r in sec.extra]
        rows += [{"experiment": sec.key, "kind": "training", **r} for r in sec.training]
    return rows


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _section_html(sec: Section) -> str:
    from dae.report import Html, esc, figure_html, note_html, table_html

    parts = [f"<p><b>Set-up.</b> {esc(sec.setup)}</p>", f"<p><b>Answer.</b> {esc(sec.answer)}</p>"]
    if sec.records:
        specs = list(dict.fromkeys(str(r["noise"]) for r in sec.records))
        table = pivot(sec.records)
        kinds = {str(r["method"]): r["kind"] for r in sec.records}
        rows = [[m, kinds[m], *[table[m].get(s, math.nan) for s in specs]] for m in table]
        parts.append(table_html(rows, ["method", "kind", *specs], "PSNR (dB)", numeric=specs))
        n = {r["n_images"] for r in sec.records}
        parts.append(f"<p>Test images: {esc(', '.join(str(v) for v in sorted(n)))}; noise seed fixed.</p>")
    if sec.extra:
        cols = list(dict.fromkeys(k for r in sec.extra for k in r))
        parts.append(table_html(sec.extra, cols))
    if sec.training:
        # Each model had the same seconds; the steps they bought differ by architecture and by machine load.
        keys = ["method", "train_noise", "steps", "best_step", "psnr", "noisy_psnr"]
        heads = ["method", "trained on", "steps", "best checkpoint's step", "PSNR on it", "noisy input"]
        parts.append(
            table_html(
                [[r.get(k) if r.get(k) is not None else "?" for k in keys] for r in sec.training],
                heads,
                "Training (same seconds each), and the test PSNR (dB) of the checkpoint scored on the noise "
                "it was trained on",
            )
        )
    for path, caption in sec.figures:
        parts.append(figure_html(path, caption))
    for note in sec.notes:
        parts.append(note_html(note))
    return Html("\n".join(parts))


def run_experiments(
    out: Path,
    settings: StudySettings,
    experiments: Sequence[str] | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    log: Callable[..., None] = print,
) -> tuple[Path, list[Section]]:
    """Run the named experiments (all by default); writes study.html, study.json and study.csv under `out`."""
    from dae.data.datasets import check_dataset
    from dae.errors import UsageError

    names = list(experiments or EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown study experiment(s) {', '.join(unknown)}; valid: {', '.join(EXPERIMENTS)}")
    if not settings.train_seconds > 0:
        raise UsageError(
            f"study: the training budget must be more than 0 s, got {settings.train_seconds:g} s"
        )
    # Every model trains on MNIST: find (or download) and verify it before anything is written.
    check_dataset("mnist", root=data_dir, download=True)
    out = make_folder(output_folder(out))
    # One study per folder: a second one would clear the model folder the first is training in (its cache of
    # a model it cannot resume), and the first would then mark the second's model as its own.
    with folder_lock(out, "study folder", "study", "wait for it to end or use another --out"):
        return _run_experiments(out, names, settings, data_dir, seed, log)


def _run_experiments(
    out: Path,
    names: list[str],
    settings: StudySettings,
    data_dir: str | None,
    seed: int,
    log: Callable[..., None],
) -> tuple[Path, list[Section]]:
    from dae.report import note_html, render_html

    st = Study(out, settings, data_dir, seed, log)
    t0 = time.perf_counter()
    sections = []
    for name in names:
        log(f"[study] experiment {name}", flush=True)
        t1 = time.perf_counter()
        failed_before = set(st.failures)
        sec = EXPERIMENTS[name](st)
        # The models an answer rests on: those scored in its records, and those its other numbers describe
        # (the code layer's section has no records, only each model's code).
        shown = {str(r["method"]) for r in sec.records if r.get("kind") == "learned"}
        shown |= {str(e["method"]) for e in sec.extra if "method" in e}
        used = [sp for sp in st.checkpoints if sp.label in shown]
        sec.training = [st.training_row(sp) for sp in used]
        own = [r for sp in used for r in st.own_noise_records(sp)]
        sec.not_denoising = not_denoising(sec.records + own)
        if sec.not_denoising:
            sec.answer = caveat(sec.not_denoising, settings.train_seconds) + " " + sec.answer
        sec.notes += [
            f"{sp.label} could not be trained: {m}"
            for sp, m in st.failures.items()
            if sp not in failed_before
        ]
        sections.append(sec)
        log(f"[study]   {sec.answer}")
        log(f"[study]   ({time.perf_counter() - t1:.0f}s)", flush=True)
    rows = _rows(sections)
    atomic_write_bytes(out / "study.csv", to_csv(rows).encode())
    meta = {
        "settings": asdict(settings),
        "seed": seed,
        "eval_seed": st.eval_seed,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "failures": {sp.label: msg for sp, msg in st.failures.items()},
        "experiments": {
            s.key: {
                "title": s.title,
                "setup": s.setup,
                "answer": s.answer,
                "not_denoising": s.not_denoising,
                "records": s.records,
                "extra": s.extra,
                "training": s.training,
                "notes": s.notes,
            }
            for s in sections
        },
    }
    atomic_write_bytes(out / "study.json", json.dumps(meta, indent=2, default=str).encode())
    html_sections = [(s.title, _section_html(s)) for s in sections]
    doubtful = [s for s in sections if s.not_denoising]
    if doubtful:
        html_sections.insert(
            0,
            (
                "Read this first",
                note_html(
                    f"{len(doubtful)} of {len(sections)} answers rest on models that had not learned to denoise "
                    f"in {settings.train_seconds:g} s of training ("
                    + "; ".join(f"{s.title}: {', '.join(s.not_denoising)}" for s in doubtful)
                    + "). Those answers are marked 'Not a finding'; a larger --budget gives every model time "
                    "to learn."
                ),
            ),
        )
    if st.failures:
        html_sections.append(
            ("Models that failed", note_html("; ".join(f"{sp.label}: {m}" for sp, m in st.failures.items())))
        )
    subtitle = (
        f"MNIST, {settings.train_seconds:g}s training per model on "
        f"{settings.limit or 'all'} images, {settings.n_test} test images, "
        f"seed {seed}, noise seed {st.eval_seed}"
    )
    page = render_html("dae study: the tutorials' questions, measured", html_sections, subtitle=subtitle)
    atomic_write_bytes(out / "study.html", page.encode())
    log(f"[study] done in {time.perf_counter() - t0:.0f}s", flush=True)
    if st.failures:
        raise PartialFailure(
            f"study written to {out / 'study.html'}, but {len(st.failures)} model(s) failed to train: "
            + "; ".join(f"{sp.label} ({m.splitlines()[0]})" for sp, m in st.failures.items())
        )
    return out / "study.html", sections


def run_study(out: Path, quick: bool, budget: str | None, data_dir: str | None, seed: int) -> Path:
    """Reproduce the tutorials' experiments; returns the path of the HTML report.

    Example:
        >>> run_study(Path("runs/study"), quick=True, budget=None, data_dir=None, seed=0)
    """
    settings = StudySettings.preset(quick, budget)
    path, _ = run_experiments(Path(out), settings, data_dir=data_dir, seed=seed)
    return path
