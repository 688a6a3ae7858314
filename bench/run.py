"""dae benchmark suite: training throughput, time to quality, inference, FLOP efficiency, torchrun processes.

    python bench/run.py --out bench/results [--quick] [--only throughput,time_to_quality,inference,flops,...]

Each benchmark writes bench/results/<name>.json (with the machine record; --quick: bench/results-quick/, so a
quick run never replaces the full results); SUMMARY.md is rebuilt from every JSON file present, so the suite
can be run in parts with --only. Numbers are measurements, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dae.errors import DaeError, Interrupted
from dae.fileio import atomic_write_text, output_folder

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BENCHMARKS = ("throughput", "time_to_quality", "inference", "flops", "distributed")
GIB = 1 << 30


# ----------------------------------------------------------------------------------------------- helpers


def train_config(out: str, model: str, train: dict[str, Any], data: dict[str, Any] | None = None) -> dict:
    """The model's recipe, then the benchmark's own fields (which win), on the CPU.

    The suite measures CPUs: the tutorial-style reference loop and the inference probes run there, so dae's loop
    is pinned there too; on a GPU machine "auto" would time dae on the GPU against a reference on the CPU.
    """
    from dae.config import merge

    layer = {
        "out": out,
        "data": {"data_dir": common.data_dir(), **(data or {})},
        "model": {"name": model},
        "train": {**train, "device": "cpu"},
    }
    return merge(common.recipe_layer(model), layer)


def steady_rate(history: list[dict[str, float]], batch_size: int) -> float:
    """images/s over all logging windows but the first (which holds warm-up)."""
    rows = history[1:] if len(history) > 1 else history
    images, seconds, prev = 0.0, 0.0, history[0]["step"] if len(history) > 1 else 0
    for row in rows:
        n = (row["step"] - prev) * batch_size
        images += n
        seconds += n / row["images_per_s"]
        prev = row["step"]
    return images / seconds


def dae_throughput(
    model: str,
    *,
    batch_size: int,
    window: int,
    windows: int,
    precision: str = "fp32",
    compile: bool = False,
    tmp: str,
) -> dict[str, Any]:
    """Steady-state images/s of dae.train: `window` warm-up steps, then `windows` timed windows of as many."""
    from dae.train import train

    out = f"{tmp}/{model}-{precision}{'-compiled' if compile else ''}"
    cfg = throughput_config(out, model, batch_size, window, windows, precision=precision, compile=compile)
    result = train(cfg, progress=False)
    rate = steady_rate(result.history, batch_size)
    return {
        "images_per_s": rate,
        # What the first window cost beyond a steady one: warm-up, and compilation when compiling.
        "first_window_extra_s": result.history[0]["time_s"] - window * batch_size / rate,
        "steps_timed": window * windows,
        "windows_images_per_s": [row["images_per_s"] for row in result.history],
        "final_val_psnr": result.best_val_psnr,
        "precision": result.trained_with["precision"],  # what it ran in ("auto" resolved)
    }


def throughput_config(
    out: str, model: str, batch_size: int, window: int, windows: int, precision: str, compile: bool = False
) -> dict[str, Any]:
    """A run of `windows` + 1 logging windows of `window` steps, the first of them warm-up."""
    train = {
        "steps": window * (windows + 1),
        "val_every": window,
        "batch_size": batch_size,
        "noise": common.EVAL_NOISE,
        "optimizer": "adam",
        "precision": precision,
        "compile": compile,
    }
    return train_config(out, model, train, data={"val_size": 64})


def torchrun_throughput(
    model: str, *, batch_size: int, window: int, windows: int, processes: int, tmp: str
) -> dict[str, Any]:
    """Steady-state images/s of `dae train` in `processes` torchrun processes of one thread each, on the same
    global batch as dae_throughput's single process."""
    out = f"{tmp}/{model}-torchrun"
    config = Path(f"{out}.yaml")
    # JSON is YAML: the run's config file, as a user would pass it.
    config.write_text(
        json.dumps(throughput_config(out, model, batch_size, window, windows, precision="fp32"))
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd += ["-m", "dae", "train", "--config", str(config), "--quiet"]
    done = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"torchrun training of {model} failed: {done.stderr.strip()[-2000:]}")
    with open(f"{out}/metrics.csv", newline="") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    rates = [row["images_per_s"] for row in history]
    return {"images_per_s": steady_rate(history, batch_size), "windows_images_per_s": rates}


def calibrate_window(model_name: str, batch_size: int, target_s: float, minimum: int) -> int:
    """Steps per timing window so one lasts about `target_s` (tiny models need many steps to time well)."""
    model = common.build_model(model_name)
    optimizer = torch.optim.Adam(model.parameters())
    shape = model.fixed_size or (1, 28, 28)
    x = torch.rand((batch_size, *shape))
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        loss = (model(x) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    step_s = min(times[1:])
    return max(minimum, min(5000, math.ceil(target_s / max(step_s, 1e-6))))


def model_flops(
    model_name: str, shape: tuple[int, int, int] = (1, 28, 28), batch: int = 8
) -> tuple[float, float]:
    """(forward, training step) FLOPs per image, both counted by FlopCounterMode (matmuls and convolutions;
    a multiply-add = 2). The training count runs a real backward pass instead of assuming 3x forward: the
    first layer needs no input gradient, so the true figure is a little under 3x."""
    from torch.utils.flop_counter import FlopCounterMode

    model = common.build_model(model_name, in_channels=shape[0])
    x = torch.rand((batch, *shape))
    forward = FlopCounterMode(display=False)
    with torch.no_grad(), forward:
        model.eval()(x)
    step = FlopCounterMode(display=False)
    with step:
        model.train()(x).float().mean().backward()
    return forward.get_total_flops() / batch, step.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of torch.mm on n x n matrices with the default thread count (best of `repeats`)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand((n, n), generator=g).to(dtype), torch.rand((n, n), generator=g).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "repeats": repeats,
        "gflops": 2 * n**3 / best / 1e9,
    }


def run_script(script: str, spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run bench/<script> on a JSON spec in a fresh interpreter; its last stdout line is the JSON result."""
    path = Path(__file__).resolve().parent / script
    spec = {"threads": torch.get_num_threads(), **spec}  # --threads holds for every process of the run
    try:
        proc = subprocess.run(
            [sys.executable, str(path), json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{script} took longer than {timeout:.0f} s", **spec}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{script} failed (exit {proc.returncode}): {tail[0]}", **spec}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_probe(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """One inference measurement in a fresh interpreter (see probe.py)."""
    return run_script("probe.py", spec, timeout)


def throughput_runs(
    models: list[str] | None, quick: bool, window: int | None
) -> list[tuple[dict[str, Any], int, int]]:
    """(architecture row, recipe batch, steps per timing window) for each architecture to time; without
    `window`, each window is sized to last about 1.5 s (quick) or 4 s (full) of dae training."""
    runs = []
    for arch in arch_table(models):
        batch = common.recipe_batch_size(arch["model"])
        steps = window or calibrate_window(arch["model"], batch, 1.5 if quick else 4.0, minimum=5)
        runs.append((arch, batch, steps))
    return runs


def arch_table(models: list[str] | None) -> list[dict[str, Any]]:
    default = common.default_model()
    names = models or common.list_archs()
    return [{"model": m, "tutorial": common.is_tutorial(m), "default": m == default} for m in names]


# ----------------------------------------------------------------------------------------------- benchmarks


def bench_throughput(
    quick: bool = True, models: list[str] | None = None, window: int | None = None, windows: int | None = None
) -> dict[str, Any]:
    """dae.train's steady images/s against the tutorial DataLoader loop, per architecture, same batch size."""
    windows = windows or (2 if quick else 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, batch, steps in throughput_runs(models, quick, window):
            name = arch["model"]
            # dae as it runs by default: precision "auto" is bf16 on CPUs with native bf16, for networks
            # that do enough arithmetic per pixel.
            dae_r = dae_throughput(
                name, batch_size=batch, window=steps, windows=windows, precision="auto", tmp=tmp
            )
            # The reference runs in fp32: dae in fp32 too shows how much of the ratio is the loop and how
            # much is bf16 arithmetic (the same run when "auto" chose fp32).
            dae_fp32 = (
                dae_r
                if dae_r["precision"] == "fp32"
                else dae_throughput(
                    name, batch_size=batch, window=steps, windows=windows, precision="fp32", tmp=tmp
                )
            )
            # A fresh interpreter, as a tutorial script runs: dae's loop has changed this process's allocator.
            ref = run_script(
                "reference_loop.py",
                {
                    "model": name,
                    "batch_size": batch,
                    "warmup_steps": steps,
                    "measure_steps": steps * windows,
                    "loss": common.recipe_layer(name)["train"]["loss"],
                    "images": max(batch * steps * (windows + 2), 1024),
                },
            )
            if "error" in ref:
                raise RuntimeError(f"reference loop for {name}: {ref['error']}")
            rows.append(
                {
                    **arch,
                    "fingerprint": common.model_fingerprint(name),
                    "batch_size": batch,
                    "dae_images_per_s": dae_r["images_per_s"],
                    "dae_precision": dae_r["precision"],
                    "dae_fp32_images_per_s": dae_fp32["images_per_s"],
                    "reference_images_per_s": ref["images_per_s"],
                    "ratio": dae_r["images_per_s"] / ref["images_per_s"],
                    "ratio_fp32": dae_fp32["images_per_s"] / ref["images_per_s"],
                    "dae": dae_r,
                    "dae_fp32": dae_fp32,
                    "reference": ref,
                }
            )
            print(
                f"  throughput {name}: dae {rows[-1]['dae_images_per_s']:.0f} img/s ({dae_r['precision']}), "
                f"{rows[-1]['dae_fp32_images_per_s']:.0f} img/s (fp32), "
                f"reference {ref['images_per_s']:.0f} img/s, x{rows[-1]['ratio']:.2f} "
                f"(fp32 x{rows[-1]['ratio_fp32']:.2f})",
                flush=True,
            )
    return {
        "mode": "quick" if quick else "full",
        "method": (
            "dae: dae.train(steps, val_every=window, precision auto (each row's dae_precision) and again fp32, "
            "channels_last, freed memory kept, "
            "recipe model and loss), images/s of every logging window but the first (warm-up), validation "
            "and checkpoint time excluded; reference: in a fresh interpreter with the default allocator, "
            "torch Dataset with per-sample "
            "torch.randn noise, DataLoader(shuffle=True, num_workers=0), same model and loss, Adam, fp32, "
            "contiguous (NCHW) memory; "
            "same batch size; data loading timed"
        ),
        "rows": rows,
    }


def bench_distributed(
    quick: bool = True, models: list[str] | None = None, window: int | None = None, windows: int | None = None
) -> dict[str, Any]:
    """dae.train in one process of T threads against torchrun's T processes of one thread each (at least 2),
    same model and global batch: what data parallelism does on the cores one process would thread over."""
    threads = torch.get_num_threads()
    processes = max(2, threads)
    windows = windows or (2 if quick else 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, batch, steps in throughput_runs(models, quick, window):
            name = arch["model"]
            one = dae_throughput(
                name, batch_size=batch, window=steps, windows=windows, precision="fp32", tmp=tmp
            )
            many = torchrun_throughput(
                name, batch_size=batch, window=steps, windows=windows, processes=processes, tmp=tmp
            )
            rows.append(
                {
                    **arch,
                    "batch_size": batch,
                    "one_process_images_per_s": one["images_per_s"],
                    "processes_images_per_s": many["images_per_s"],
                    "ratio": many["images_per_s"] / one["images_per_s"],
                    "one_process": one,
                    "processes_run": many,
                }
            )
            print(
                f"  distributed {name}: 1 process x {threads} threads {one['images_per_s']:.0f} img/s, "
                f"{processes} processes x 1 thread {many['images_per_s']:.0f} img/s, x{rows[-1]['ratio']:.2f}",
                flush=True,
            )
    return {
        "mode": "quick" if quick else "full",
        "threads": threads,
        "processes": processes,
        "method": (
            "dae.train in this process (fp32, the recipe's model, loss and batch) against `torchrun --standalone "
            "--nproc-per-node P -m dae train` with OMP_NUM_THREADS=1 and the same config (gloo, "
            "DistributedDataParallel, each process a share of the same global batch); images/s of every "
            "logging window but the first"
        ),
        "rows": rows,
    }


def bench_time_to_quality(
    quick: bool = True,
    models: list[str] | None = None,
    budgets: list[float] | None = None,
    long_budget: float | None = None,
    eval_images: int = common.EVAL_IMAGES,
    as_written: bool | None = None,
) -> dict[str, Any]:
    """Test PSNR reached by each architecture within fixed wall-clock training budgets.

    Every architecture trains with dae's optimisation (the fair comparison the margin target uses). With
    `as_written` (default: full mode), each tutorial architecture also trains at the longest budget exactly as
    its tutorial recipe does (its loss, optimiser, lr, batch, constant lr, no clipping, fp32), which is what
    the tutorials themselves reached.
    """
    from dae.checkpoint import load_model
    from dae.train import train as run_training

    budgets = budgets or ([30.0] if quick else [30.0, 120.0])
    if long_budget is None and not quick:
        long_budget = 600.0
    as_written = (not quick) if as_written is None else as_written
    clean, noisy = common.eval_set(eval_images)
    default = common.default_model()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(a, b, "dae") for b in budgets for a in arch_table(models)]
        if as_written:
            plan += [(a, max(budgets), "as written") for a in arch_table(models) if a["tutorial"]]
        if long_budget:
            plan.append(
                (
                    {"model": default, "tutorial": common.is_tutorial(default), "default": True},
                    long_budget,
                    "dae",
                )
            )
        for arch, budget, recipe in plan:
            name = arch["model"]
            cfg = ttq_config(f"{tmp}/{name}-{budget:g}-{recipe.replace(' ', '-')}", name, budget, recipe)
            t0 = time.perf_counter()
            result = run_training(cfg, progress=False)
            wall = time.perf_counter() - t0
            model = load_model(result.best_checkpoint)
            test_psnr = common.eval_psnr(model, clean, noisy)
            runs.append(
                {
                    **arch,
                    "budget_s": budget,
                    "recipe": recipe,
                    "loss": cfg["train"].get("loss"),
                    "test_psnr_db": test_psnr,
                    "val_psnr_db": result.best_val_psnr,
                    "steps": result.step,
                    "epochs_completed": result.epoch,
                    "train_elapsed_s": result.elapsed_s,
                    "wall_s_incl_setup": wall,
                }
            )
            print(
                f"  time-to-quality {name} ({recipe}) @ {budget:g}s: {test_psnr:.2f} dB ({result.step} steps)",
                flush=True,
            )
    noisy_psnr = float(__import__("dae.metrics", fromlist=["psnr"]).psnr(noisy, clean).mean())
    return {
        "mode": "quick" if quick else "full",
        "eval": {
            "dataset": "mnist/test",
            "images": clean.shape[0],
            "noise": common.EVAL_NOISE,
            "seed": common.EVAL_SEED,
            "noisy_input_psnr_db": noisy_psnr,
        },
        "method": (
            "each architecture trained by dae.train with its default recipe's batch, lr and optimizer and "
            "dae's defaults (cosine schedule, warm-up, clipping, precision auto) for a wall-clock budget at "
            "gaussian 0.5, loss bce for logits models (the recipe's for image-output models), "
            "best-validation checkpoint evaluated on the fixed test subset; rows with recipe 'as written' "
            "train a tutorial architecture with its tutorial's own loss, optimiser, lr, batch and plain "
            "optimisation instead"
        ),
        "default_model": default,
        "budgets_s": budgets,
        "long_budget_s": long_budget,
        "runs": runs,
        "margins": margins(runs, default),
    }


def ttq_config(out: str, name: str, budget: float, recipe: str) -> dict[str, Any]:
    """The time-to-quality config of one run: the model's recipe with dae's optimisation ("dae") or the
    tutorial's own ("as written"), trained for `budget` seconds at the evaluation noise."""
    from dae.config import merge
    from dae.recipes import recipe_for

    # epochs None: the recipe's epoch count would end a fast model's run before its budget (unet-fast's
    # 5 epochs take ~150 s on 2 cores), and the budget is what is compared.
    train = {"time_budget": budget, "epochs": None, "noise": common.EVAL_NOISE}
    if recipe == "dae" and common.build_model(name).output_kind == "logits":
        # Every architecture gets its best known loss, not only the tutorial's: mse through a sigmoid
        # (tf-strided, tf-unpool) sits on the all-background plateau (~10.2 dB) at these budgets, and a
        # margin over a collapsed baseline would flatter the new models.
        train["loss"] = "bce"
    cfg = train_config(out, name, train)
    if recipe == "as written":
        cfg = merge(cfg, {"train": recipe_for(name).to_dict(exact=True)["train"] | train | {"device": "cpu"}})
    return cfg


def margins(runs: list[dict[str, Any]], default: str) -> dict[str, Any]:
    """Best new-model PSNR minus best tutorial-model PSNR, per budget (budgets where both kinds ran), all
    trained with dae's optimisation; and, where they ran, the default minus the best tutorial as written."""
    out = {}
    for budget in sorted({r["budget_s"] for r in runs}):
        at = [r for r in runs if r["budget_s"] == budget and r.get("recipe", "dae") == "dae"]
        new = [r for r in at if not r["tutorial"]]
        tut = [r for r in at if r["tutorial"]]
        if new and tut:
            bn = max(new, key=lambda r: r["test_psnr_db"])
            bt = max(tut, key=lambda r: r["test_psnr_db"])
            d = next((r for r in at if r["model"] == default), None)
            out[f"{budget:g}"] = {
                "best_new_model": bn["model"],
                "best_new_psnr_db": bn["test_psnr_db"],
                "best_tutorial_model": bt["model"],
                "best_tutorial_psnr_db": bt["test_psnr_db"],
                "margin_db": bn["test_psnr_db"] - bt["test_psnr_db"],
                "default_minus_best_tutorial_db": (d["test_psnr_db"] - bt["test_psnr_db"]) if d else None,
            }
            written = [r for r in runs if r["budget_s"] == budget and r.get("recipe") == "as written"]
            if written:
                bw = max(written, key=lambda r: r["test_psnr_db"])
                out[f"{budget:g}"] |= {
                    "best_tutorial_as_written_model": bw["model"],
                    "best_tutorial_as_written_psnr_db": bw["test_psnr_db"],
                    "default_minus_best_tutorial_as_written_db": (
                        (d["test_psnr_db"] - bw["test_psnr_db"]) if d else None
                    ),
                }
    return out


def bench_inference(
    quick: bool = True,
    model: str | None = None,
    n_images: int = 10000,
    sizes: tuple[int, ...] = (512, 2048),
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Default model: MNIST test images/s, latency and peak memory for large images; one process each."""
    model = model or common.default_model()
    repeats = 2 if quick else 3
    base = {"model": model, "checkpoint": checkpoint, "repeats": repeats}
    mnist = run_probe({**base, "kind": "mnist", "n_images": n_images})
    print(f"  inference {model}: {mnist.get('images_per_s', float('nan')):.0f} img/s", flush=True)
    images = []
    for size in sizes:
        r = run_probe(
            {**base, "kind": "image", "size": size, "repeats": 1 if (quick or size > 1024) else repeats}
        )
        images.append(r)
        if "error" not in r:
            print(
                f"  inference {size}x{size}: {r['latency_s']:.3f} s, process peak "
                f"{r['peak_rss_bytes'] / 2**20:.0f} MiB (+{r['peak_minus_baseline_bytes'] / 2**20:.0f} MiB "
                "over imports and model)",
                flush=True,
            )
    return {
        "mode": "quick" if quick else "full",
        "model": model,
        "fingerprint": common.model_fingerprint(model) if checkpoint is None else None,
        "method": (
            "each measurement in a fresh subprocess, freed memory kept as dae denoise/eval keep it; "
            "dae.inference.denoise under torch.inference_mode "
            "(large images take its default tiling); memory = the probe process's peak resident size (VmHWM) "
            "and that peak minus the size after imports and model construction (mnist: also after loading the "
            "data); latency after one warm-up call "
            "of the same size"
        ),
        "mnist": mnist,
        "images": images,
    }


def bench_flops(
    quick: bool = True,
    models: list[str] | None = None,
    results_dir: str | Path | None = None,
    bf16: bool = True,
    window: int | None = None,
    inference_images: int | None = None,
    compile: bool = True,
) -> dict[str, Any]:
    """FLOPs per image per model, measured fp32 matmul peak, achieved fraction of it (training, inference);
    also bf16 autocast and torch.compile against plain fp32 training of the default model."""
    from dae.train import autocast_for

    peak = matmul_peak(torch.float32, repeats=5 if quick else 10)
    peak_bf16 = matmul_peak(torch.bfloat16, repeats=2 if quick else 5) if bf16 else None
    prior = _load(results_dir, "throughput") if results_dir else None
    prior_rows = {r["model"]: r for r in (prior or {}).get("rows", [])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in arch_table(models):
            name = arch["model"]
            fwd, step_flops = model_flops(name)
            # Reuse throughput.json's rate only if it was measured on this very network.
            if prior_rows.get(name, {}).get("fingerprint") == common.model_fingerprint(name):
                rate, source = prior_rows[name]["dae_images_per_s"], "throughput.json (dae loop)"
                ran = prior_rows[name].get("dae_precision", autocast_for(torch.device("cpu"), "auto")[1])
            else:
                batch = common.recipe_batch_size(name)
                steps = window or calibrate_window(name, batch, 1.0 if quick else 3.0, minimum=5)
                # As throughput.json measures it: dae as it runs (precision auto), the precision the
                # summary judges against its peak.
                measured = dae_throughput(
                    name, batch_size=batch, window=steps, windows=2, precision="auto", tmp=tmp
                )
                rate, ran, source = (
                    measured["images_per_s"],
                    measured["precision"],
                    "measured here (dae loop)",
                )
            achieved = rate * step_flops
            rows.append(
                {
                    **arch,
                    "forward_flops_per_image": fwd,
                    "train_flops_per_image": step_flops,
                    "train_images_per_s": rate,
                    "train_images_per_s_source": source,
                    "train_precision": ran,
                    "train_gflops": achieved / 1e9,
                    "train_percent_of_fp32_peak": 100 * achieved / (peak["gflops"] * 1e9),
                }
            )
    out: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "method": (
            "FLOPs from torch.utils.flop_counter.FlopCounterMode on a forward pass of 28x28 images and on a "
            "forward+backward pass (training); peak = best torch.mm 2048x2048 in this run (measured before "
            "and after), default thread count"
        ),
        "fp32_peak": peak,
        "bf16_peak": peak_bf16,
        # What the default model's training ran in ("auto"; denoise's "auto" is bf16 wherever it is native): in
        # bf16 its share of the fp32 peak may pass 100% rightly, and the bf16 peak is the ceiling to check.
        "dae_precision": next(
            (r["train_precision"] for r in rows if r["default"]), autocast_for(torch.device("cpu"), "auto")[1]
        ),
        "rows": rows,
    }
    default = common.default_model()
    fwd_default = next((r["forward_flops_per_image"] for r in rows if r["model"] == default), None)
    if fwd_default is None:
        fwd_default = model_flops(default)[0]
    inf = _load(results_dir, "inference") if results_dir else None
    same = (inf or {}).get("fingerprint") == common.model_fingerprint(default)
    inf_rate = (inf or {}).get("mnist", {}).get("images_per_s") if same else None
    if inf_rate is None:
        inf_rate = run_probe(
            {
                "model": default,
                "kind": "mnist",
                "n_images": inference_images or (2000 if quick else 10000),
                "repeats": 2,
            }
        ).get("images_per_s")
    if inf_rate:
        out["inference"] = {
            "model": default,
            "images_per_s": inf_rate,
            "gflops": inf_rate * fwd_default / 1e9,
            "percent_of_fp32_peak": 100 * inf_rate * fwd_default / (peak["gflops"] * 1e9),
        }
    if bf16:
        out["bf16"] = bf16_default(quick, default, window, results_dir)
    if compile:
        out["compile"] = compile_default(quick, default, window)
    # Other work on a shared CPU lowers a peak measured at one moment; the best seen bounds it better.
    again = matmul_peak(torch.float32, repeats=5 if quick else 10)
    if again["gflops"] > peak["gflops"]:
        peak.update(again)
        for r in rows:
            r["train_percent_of_fp32_peak"] = 100 * r["train_gflops"] / peak["gflops"]
        if "inference" in out:
            out["inference"]["percent_of_fp32_peak"] = 100 * out["inference"]["gflops"] / peak["gflops"]
    return out


def compile_default(quick: bool, default: str, window: int | None) -> dict[str, Any]:
    """torch.compile for the default model: steady training images/s against eager, and what compiling costs,
    so the break-even training time can be read off (the README's advice on train.compile comes from here)."""
    batch = common.recipe_batch_size(default)
    window = window or calibrate_window(default, batch, 1.0 if quick else 3.0, minimum=5)
    out: dict[str, Any] = {
        "model": default,
        "batch_size": batch,
        "precision": "fp32",
        "inductor_cache": "cold",
    }
    with tempfile.TemporaryDirectory() as tmp, _empty_inductor_cache():
        for compiled in (False, True):
            r = dae_throughput(default, batch_size=batch, window=window, windows=3, compile=compiled, tmp=tmp)
            key = "compiled" if compiled else "eager"
            out[f"train_images_per_s_{key}"] = r["images_per_s"]
            out[f"first_window_extra_s_{key}"] = r["first_window_extra_s"]
    out["compile_cost_s"] = out["first_window_extra_s_compiled"] - out["first_window_extra_s_eager"]
    out["break_even_s"] = break_even_s(
        out["train_images_per_s_eager"], out["train_images_per_s_compiled"], out["compile_cost_s"]
    )
    return out


@contextlib.contextmanager
def _empty_inductor_cache():
    """Compile into an empty cache, as a first run on a machine does: inductor keeps compiled kernels on disk,
    and a warm cache cut the default model's compile from ~20 s to ~2 s here, which would flatter compiling."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read at each compilation, so this takes effect now
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def break_even_s(eager_rate: float, compiled_rate: float, cost_s: float) -> float | None:
    """Seconds of eager training after which a compiled run, which first spent `cost_s` compiling, has done as
    much work; None if compiling does not make steps faster. In t seconds the compiled run trains
    (t - cost) * compiled_rate images, the eager one t * eager_rate: equal at t = cost / (1 - eager/compiled).
    """
    if compiled_rate <= eager_rate:
        return None
    return max(cost_s, 0.0) / (1 - eager_rate / compiled_rate)


def bf16_default(
    quick: bool, default: str, window: int | None, results_dir: str | Path | None
) -> dict[str, Any]:
    """bf16 autocast for the default model: train and inference throughput; PSNR too in full mode."""
    batch = common.recipe_batch_size(default)
    window = window or calibrate_window(default, batch, 1.0 if quick else 3.0, minimum=5)
    out: dict[str, Any] = {"model": default}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            r = dae_throughput(
                default, batch_size=batch, window=window, windows=2, precision=precision, tmp=tmp
            )
            out[f"train_images_per_s_{precision}"] = r["images_per_s"]
        for precision in ("fp32", "bf16"):
            r = run_probe(
                {
                    "model": default,
                    "kind": "mnist",
                    "n_images": 2000,
                    "repeats": 2,
                    "precision": precision,
                }
            )
            out[f"inference_images_per_s_{precision}"] = r.get("images_per_s")
        if not quick:
            from dae.checkpoint import load_model
            from dae.train import train

            clean, noisy = common.eval_set()
            for precision in ("fp32", "bf16"):
                cfg = train_config(
                    f"{tmp}/psnr-{precision}",
                    default,
                    {"time_budget": 30.0, "noise": common.EVAL_NOISE, "precision": precision},
                )
                res = train(cfg, progress=False)
                model = load_model(res.best_checkpoint)
                # Scored in fp32, so that the training precision is all that differs; then the bf16-trained
                # model denoising in bf16 as well.
                out[f"test_psnr_db_30s_{precision}"] = common.eval_psnr(model, clean, noisy, precision="fp32")
                if precision == "bf16":
                    out["test_psnr_db_30s_bf16_train_bf16_infer"] = common.eval_psnr(
                        model, clean, noisy, precision="bf16"
                    )
        else:
            out["psnr_note"] = "PSNR under bf16 is measured in full mode only (it needs two 30 s trainings)"
    return out


# ----------------------------------------------------------------------------------------------- summary


def _load(results_dir: str | Path | None, name: str) -> dict[str, Any] | None:
    if results_dir is None:
        return None
    path = Path(results_dir) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _f(x: Any, fmt: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("pass" if ok else "MISS")


def _share_verdict(percent: float | None, flops: dict[str, Any] | None = None) -> str:
    """A share of the fp32 peak measured in the same run (target: 60%). Over 100% of the ceiling, the peak of the
    precision dae ran in (bf16 where the CPU has it natively, as the target allows), means the peak was measured
    low (the CPU was busy then), so neither can be trusted."""
    if percent is None:
        return _verdict(None)
    ceiling = _bf16_share(percent, flops)
    if (percent if ceiling is None else ceiling) > 100:
        return "no verdict: over 100% of the peak measured beside it (rerun on an idle machine)"
    return _verdict(percent >= 60)


def _bf16_share(percent: float, flops: dict[str, Any] | None) -> float | None:
    """`percent` of the fp32 peak as a share of the bf16 peak, when dae ran in bf16 and that peak was measured."""
    if (flops or {}).get("dae_precision") != "bf16" or not (flops or {}).get("bf16_peak"):
        return None
    return percent * flops["fp32_peak"]["gflops"] / flops["bf16_peak"]["gflops"]


def _share_text(percent: float, flops: dict[str, Any]) -> str:
    share = _bf16_share(percent, flops)
    return f"{_f(percent)}%" + ("" if share is None else f" (bf16: {_f(share)}% of the bf16 peak)")


def _ran(tp: dict[str, Any], row: dict[str, Any]) -> str:
    """The precision dae's own row ran in: recorded per row, or (older files) once for the whole run."""
    return row.get("dae_precision") or tp.get("dae_precision", "auto")


def targets(results_dir: str | Path) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every project target, from the result files present."""
    tp, ttq, inf, fl = (
        _load(results_dir, n) for n in ("throughput", "time_to_quality", "inference", "flops")
    )
    rows = []
    if tp:
        tut = [r for r in tp["rows"] if r["tutorial"]]
        if tut:
            worst = min(tut, key=lambda r: r["ratio"])
            text = ", ".join(f"{r['model']} x{r['ratio']:.2f}" for r in tut)
            if any(_ran(tp, r) == "bf16" for r in tut) and all("ratio_fp32" in r for r in tut):
                # The loop's own part: the reference runs in fp32.
                text += "; dae at fp32: " + ", ".join(f"x{r['ratio_fp32']:.2f}" for r in tut)
            rows.append(
                ("dae loop >= 3x reference loop (tutorial archs)", text, _verdict(worst["ratio"] >= 3))
            )
        else:
            rows.append(
                ("dae loop >= 3x reference loop (tutorial archs)", "no tutorial archs found", _verdict(None))
            )
    else:
        rows.append(("dae loop >= 3x reference loop (tutorial archs)", "—", _verdict(None)))
    d = next((r for r in (fl or {}).get("rows", []) if r["default"]), None)
    rows.append(
        (
            "training >= 60% of fp32 peak (default model)",
            f"{_share_text(d['train_percent_of_fp32_peak'], fl)} ({d['model']})" if d else "—",
            _share_verdict(d["train_percent_of_fp32_peak"] if d else None, fl),
        )
    )
    fi = (fl or {}).get("inference")
    rows.append(
        (
            "inference >= 60% of fp32 peak (default model)",
            _share_text(fi["percent_of_fp32_peak"], fl) if fi else "—",
            _share_verdict(fi["percent_of_fp32_peak"] if fi else None, fl),
        )
    )
    runs = (ttq or {}).get("runs", [])

    def default_at(budget: float) -> dict | None:
        return next((r for r in runs if r["default"] and r["budget_s"] == budget), None)

    r120 = default_at(120.0)
    rows.append(
        (
            "default model >= 20.5 dB within 120 s",
            f"{_f(r120['test_psnr_db'], '.2f')} dB" if r120 else _quick_note(default_at(30.0)),
            _verdict(r120["test_psnr_db"] >= 20.5 if r120 else None),
        )
    )
    m120 = (ttq or {}).get("margins", {}).get("120")
    rows.append(
        (
            "default model >= 2.3 dB above best tutorial arch at 120 s",
            (
                f"{_f(m120['default_minus_best_tutorial_db'], '.2f')} dB (vs {m120['best_tutorial_model']}); "
                f"best new minus best tutorial {_f(m120['margin_db'], '.2f')} dB, both with dae's "
                "optimisation"
                + (
                    f"; {_f(m120['default_minus_best_tutorial_as_written_db'], '.2f')} dB vs the best "
                    f"tutorial as written ({m120['best_tutorial_as_written_model']})"
                    if m120.get("default_minus_best_tutorial_as_written_db") is not None
                    else ""
                )
            )
            if m120
            else _quick_margin((ttq or {}).get("margins", {}).get("30")),
            _verdict(
                m120["default_minus_best_tutorial_db"] >= 2.3
                if m120 and m120["default_minus_best_tutorial_db"] is not None
                else None
            ),
        )
    )
    r600 = default_at(600.0)
    rows.append(
        (
            "default model >= 21 dB within 10 min",
            f"{_f(r600['test_psnr_db'], '.2f')} dB" if r600 else "— (full mode only)",
            _verdict(r600["test_psnr_db"] >= 21 if r600 else None),
        )
    )
    mn = (inf or {}).get("mnist", {})
    rate = mn.get("images_per_s")
    rows.append(
        (
            "inference >= 3000 img/s (MNIST test, default model)",
            f"{_f(rate, '.0f')} img/s" if rate else mn.get("error", "—"),
            _verdict(rate >= 3000 if rate else None),
        )
    )
    big = next((r for r in (inf or {}).get("images", []) if r.get("size") == 2048 and "error" not in r), None)
    rows.append(
        (
            "2048x2048 peak memory < 1 GiB (whole process)",
            f"{big['peak_rss_bytes'] / 2**20:.0f} MiB process peak "
            f"({big['peak_minus_baseline_bytes'] / 2**20:.0f} MiB above imports and model)"
            if big
            else "—",
            _verdict(big["peak_rss_bytes"] < GIB if big else None),
        )
    )
    return rows


def _quick_note(r30: dict | None) -> str:
    return f"— (quick mode; {r30['test_psnr_db']:.2f} dB at 30 s)" if r30 else "—"


def _quick_margin(m30: dict | None) -> str:
    if not m30 or m30.get("default_minus_best_tutorial_db") is None:
        return "—"
    d = m30["default_minus_best_tutorial_db"]
    return f"— (quick mode; {d:.2f} dB at 30 s vs {m30['best_tutorial_model']})"


def _name(r: dict[str, Any]) -> str:
    return f"{r['model']}{' (default)' if r['default'] else ''}"


def _share(s: float | None) -> str:
    return "—" if s is None else f"{100 * s:.0f}% (data alone: <= {1 / max(1 - s, 1e-9):.2f}x)"


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _bf16_line(b: dict[str, Any]) -> str:
    text = (
        f"bf16 autocast ({b['model']}): training {_f(b.get('train_images_per_s_bf16'), '.0f')} img/s "
        f"vs fp32 {_f(b.get('train_images_per_s_fp32'), '.0f')}; inference "
        f"{_f(b.get('inference_images_per_s_bf16'), '.0f')} img/s vs fp32 "
        f"{_f(b.get('inference_images_per_s_fp32'), '.0f')}"
    )
    if "test_psnr_db_30s_bf16" in b:
        return text + (
            f"; test PSNR after 30 s training, denoised in fp32: bf16-trained "
            f"{_f(b['test_psnr_db_30s_bf16'], '.2f')} dB, fp32-trained {_f(b.get('test_psnr_db_30s_fp32'), '.2f')} "
            f"dB; the bf16-trained model denoising in bf16 "
            f"{_f(b.get('test_psnr_db_30s_bf16_train_bf16_infer'), '.2f')} dB."
        )
    return text + f"; {b.get('psnr_note', '')}."


def _compile_line(c: dict[str, Any]) -> str:
    even = c.get("break_even_s")
    verdict = f"it pays after {even:.0f} s of training" if even is not None else "it never pays here"
    compiled, eager = _f(c["train_images_per_s_compiled"], ".0f"), _f(c["train_images_per_s_eager"], ".0f")
    return (
        f"torch.compile ({c['model']}, batch {c['batch_size']}, {c['precision']}, {c['inductor_cache']} compile "
        f"cache): training {compiled} img/s vs eager {eager}; compiling cost {_f(c['compile_cost_s'])} s, so "
        f"{verdict}."
    )


def write_summary(results_dir: str | Path) -> Path:
    """SUMMARY.md: targets with measured value and pass/miss, then one table per benchmark present."""
    results_dir = Path(results_dir)
    lines = ["# dae benchmark summary", ""]
    found = [r for r in (_load(results_dir, n) for n in BENCHMARKS) if r]
    if found:
        m = found[0]["machine"]
        lines += [
            f"Machine: {m['cpu_model']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
            f"{m['platform']}; torch {m['versions'].get('torch')}, dae {m['dae_version']}.",
            "",
            "The CPU may be shared with other work while these run: absolute numbers are noisy; "
            "ratios measured side by side in one run are the meaningful part.",
            "",
        ]
    lines += ["## Targets", ""] + _table(
        ["target", "measured", "verdict"], [list(t) for t in targets(results_dir)]
    )
    tp = _load(results_dir, "throughput")
    if tp:
        lines += ["", f"## Training throughput ({tp['mode']}, {tp['machine']['date']})", ""]
        lines += _table(
            [
                "model",
                "tutorial",
                "batch",
                "dae img/s (auto: ran in)",
                "dae img/s (fp32)",
                "reference img/s (fp32)",
                "ratio",
                "ratio at fp32",
                "reference time in DataLoader",
            ],
            [
                [
                    _name(r),
                    "yes" if r["tutorial"] else "no",
                    r["batch_size"],
                    f"{r['dae_images_per_s']:.0f} ({_ran(tp, r)})",
                    _f(r.get("dae_fp32_images_per_s"), ".0f"),
                    f"{r['reference_images_per_s']:.0f}",
                    f"{r['ratio']:.2f}",
                    _f(r.get("ratio_fp32"), ".2f"),
                    _share(r["reference"].get("loading_share")),
                ]
                for r in tp["rows"]
            ],
        )
        lines += [
            "",
            "dae runs as it does by default, precision auto: bf16 on a CPU with native bf16 for a network of "
            "at least 7,000 forward FLOPs per pixel, else fp32. The reference loop, written the common way, runs "
            "in fp32, and so does dae's second column: the ratio at fp32 is the loop's part alone. A reference "
            "loop that spends a share s of its time in the DataLoader can be sped up at most 1/(1-s)x by "
            "feeding the same network faster; the rest of any ratio comes from running the network faster "
            "(channels_last and freed memory kept here"
            + (", and bf16 arithmetic" if any(_ran(tp, r) == "bf16" for r in tp["rows"]) else "")
            + ").",
        ]
    dd = _load(results_dir, "distributed")
    if dd:
        lines += ["", f"## Training in several processes ({dd['mode']}, {dd['machine']['date']})", ""]
        lines += _table(
            [
                "model",
                "batch",
                f"1 process x {dd['threads']} threads img/s",
                f"{dd['processes']} processes x 1 thread img/s",
                "ratio",
            ],
            [
                [
                    _name(r),
                    r["batch_size"],
                    f"{r['one_process_images_per_s']:.0f}",
                    f"{r['processes_images_per_s']:.0f}",
                    f"{r['ratio']:.2f}",
                ]
                for r in dd["rows"]
            ],
        )
        lines += [
            "",
            "Both runs use the same cores: the processes' share of each batch is smaller and they add a gradient "
            "all-reduce per step, so on one CPU this measures the cost of data parallelism; its gain is on "
            "several GPUs or machines.",
        ]
    ttq = _load(results_dir, "time_to_quality")
    if ttq:
        e = ttq["eval"]
        lines += [
            "",
            f"## Time to quality ({ttq['mode']}, {ttq['machine']['date']})",
            "",
            f"Test PSNR on the first {e['images']} MNIST test images, {e['noise']} clipped, seed {e['seed']} "
            f"(noisy input: {e['noisy_input_psnr_db']:.2f} dB).",
            "",
        ]
        lines += _table(
            ["model", "tutorial", "recipe", "budget s", "test PSNR dB", "steps", "epochs"],
            [
                [
                    _name(r),
                    "yes" if r["tutorial"] else "no",
                    r.get("recipe", "dae"),
                    f"{r['budget_s']:g}",
                    f"{r['test_psnr_db']:.2f}",
                    r["steps"],
                    r["epochs_completed"],
                ]
                for r in ttq["runs"]
            ],
        )
        for b, m in ttq.get("margins", {}).items():
            lines += [
                "",
                f"At {b} s: best new model {m['best_new_model']} {m['best_new_psnr_db']:.2f} dB, "
                f"best tutorial {m['best_tutorial_model']} {m['best_tutorial_psnr_db']:.2f} dB, "
                f"margin {m['margin_db']:.2f} dB"
                + (
                    f"; best tutorial as written {m['best_tutorial_as_written_model']} "
                    f"{m['best_tutorial_as_written_psnr_db']:.2f} dB."
                    if "best_tutorial_as_written_model" in m
                    else "."
                ),
            ]
    inf = _load(results_dir, "inference")
    if inf:
        mn = inf["mnist"]
        rows = []
        if "error" in mn:
            rows.append(["MNIST test", mn["error"], "—"])
        else:
            rows.append(
                [
                    f"{mn['n_images']} MNIST test images, batch {mn['batch_size']}",
                    f"{mn['images_per_s']:.0f} img/s",
                    _mib(mn["peak_minus_baseline_bytes"]),
                ]
            )
        for r in inf["images"]:
            if "error" in r:
                rows.append([f"{r.get('size')}x{r.get('size')}", r["error"], "—"])
            else:
                rows.append(
                    [
                        f"one {r['size']}x{r['size']} grey image",
                        f"{r['latency_s'] * 1000:.0f} ms (first call {r['first_call_s'] * 1000:.0f} ms)",
                        _mib(r["peak_minus_baseline_bytes"]),
                    ]
                )
        lines += ["", f"## Inference ({inf['mode']}, model {inf['model']}, {inf['machine']['date']})", ""]
        lines += _table(["workload", "throughput / latency", "peak memory above baseline"], rows)
    fl = _load(results_dir, "flops")
    if fl:
        bf = f", bf16 {fl['bf16_peak']['gflops']:.1f} GFLOP/s" if fl.get("bf16_peak") else ""
        lines += [
            "",
            f"## FLOP efficiency ({fl['mode']}, {fl['machine']['date']})",
            "",
            f"Matmul peak (torch.mm 2048x2048, this run): fp32 {fl['fp32_peak']['gflops']:.1f} GFLOP/s{bf}.",
            "",
        ]
        lines += _table(
            [
                "model",
                "fwd MFLOP/img",
                "train step MFLOP/img",
                "train img/s",
                "train GFLOP/s",
                "% of fp32 peak",
            ],
            [
                [
                    _name(r),
                    f"{r['forward_flops_per_image'] / 1e6:.2f}",
                    f"{r['train_flops_per_image'] / 1e6:.2f}",
                    f"{r['train_images_per_s']:.0f}",
                    f"{r['train_gflops']:.2f}",
                    f"{r['train_percent_of_fp32_peak']:.1f}",
                ]
                for r in fl["rows"]
            ],
        )
        if fl.get("inference"):
            i = fl["inference"]
            lines += [
                "",
                f"Inference ({i['model']}): {i['images_per_s']:.0f} img/s = {i['gflops']:.2f} GFLOP/s = "
                f"{i['percent_of_fp32_peak']:.1f}% of fp32 peak.",
            ]
        if fl.get("bf16"):
            lines += ["", _bf16_line(fl["bf16"])]
        if fl.get("compile"):
            lines += ["", _compile_line(fl["compile"])]
    path = results_dir / "SUMMARY.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dae benchmark suite")
    parser.add_argument(
        "--out",
        default=None,
        help="folder for <name>.json and SUMMARY.md (default bench/results, and bench/results-quick for --quick, "
        "so that a quick run never replaces the full results)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs (about 15 minutes in all on 2 shared cores)"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument(
        "--models", default="", help="comma-separated architectures (default: all registered)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = "bench/results-quick" if args.quick else "bench/results"
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(BENCHMARKS)
    unknown = [s for s in only if s not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; valid: {', '.join(BENCHMARKS)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] or None
    # Everything a run needs is checked before it spends minutes measuring, not after.
    try:
        output_folder(args.out)
        for m in models or []:
            common.recipe_batch_size(m)  # a registered model with a default recipe
    except DaeError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None  # 2 for a usage mistake, 5 for an unwritable folder
    if args.threads:
        torch.set_num_threads(args.threads)
    if common.data_dir() is None:
        print("bench: no MNIST found; set DAE_DATA_DIR to the folder holding mnist/", file=sys.stderr)
    try:
        return run(only, args.quick, models, Path(args.out))
    except (Interrupted, KeyboardInterrupt) as e:
        # Training's message names a checkpoint in the benchmark's temporary folder, already removed.
        print(f"bench: interrupted; the results written before it are kept in {args.out}", file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 130
    except DaeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return e.exit_code


def run(only: list[str], quick: bool, models: list[str] | None, out: Path) -> int:
    """Run the benchmarks named in `only`, writing each one's JSON as it finishes, then the summary."""
    for name in only:
        print(f"bench: {name} ({'quick' if quick else 'full'})", flush=True)
        t0 = time.perf_counter()
        if name == "throughput":
            result = bench_throughput(quick, models)
        elif name == "time_to_quality":
            result = bench_time_to_quality(quick, models)
        elif name == "inference":
            result = bench_inference(quick)
        elif name == "distributed":
            result = bench_distributed(quick, models)
        else:
            result = bench_flops(quick, models, results_dir=out)
        result["bench_wall_s"] = time.perf_counter() - t0
        path = common.write_result(out, name, result)
        print(f"bench: wrote {path} ({result['bench_wall_s']:.0f} s)", flush=True)
    print(f"bench: wrote {write_summary(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
