"""One inference measurement in a fresh process, so peak memory (ru_maxrss) belongs to that measurement alone.

Usage: python bench/probe.py '{"kind": "mnist"|"image", "model": NAME, ...}'  -> one JSON line on stdout.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def maxrss_bytes() -> int:
    """Peak resident memory of this process so far.

    On Linux this is VmHWM, the peak of this process's own address space: ru_maxrss also counts the
    parent's pages that the fork copied before exec, so a probe started by a large benchmark process would
    report the parent's size (seen here: 927 MiB 'peak' for every probe).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux kilobytes


def build_model(spec: dict):
    if spec.get("checkpoint"):
        from dae.checkpoint import load_model

        return load_model(spec["checkpoint"]), "checkpoint"
    from dae.models import create_model

    torch.manual_seed(0)
    return create_model(spec["model"]), "random init (speed and memory do not depend on the weights)"


def main(spec: dict) -> dict:
    from dae.allocator import keep_freed_memory
    from dae.inference import denoise

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])  # the benchmark's own thread count
    # As `dae denoise` and `dae eval` run; "allocator": "system" measures the C library's defaults instead.
    allocator = spec.get("allocator", "keep")
    if allocator not in ("keep", "system"):
        raise SystemExit(f"probe: allocator must be keep or system, got {allocator!r}")
    kept = allocator == "keep" and keep_freed_memory()
    model, weights = build_model(spec)
    model.eval()
    # dae.denoise's own precision setting: "auto" (dae as it runs: bf16 on a CPU with native bf16), "fp32" or
    # "bf16". An autocast around the call would not do: denoise sets its own, so "fp32" measured bf16.
    precision = spec.get("precision", "auto")
    from dae.train import autocast_for

    repeats = int(spec.get("repeats", 1))
    result: dict = {
        "kind": spec["kind"],
        "model": spec["model"],
        "weights": weights,
        "precision": precision,
        "ran_in": autocast_for(torch.device("cpu"), precision)[1],
        "freed_memory_kept": kept,
    }
    if spec["kind"] == "mnist":
        import common

        n = int(spec.get("n_images", 10000))
        clean = common.load_float("test", limit=n)
        from dae.data.noise import make_noisy

        noisy = make_noisy(clean, common.EVAL_NOISE, common.EVAL_SEED)
        from dae.inference import DEFAULT_BATCH

        # dae's own default batch unless the spec names one: the benchmark measures dae as it runs.
        batch = int(spec.get("batch_size") or DEFAULT_BATCH)
        base = maxrss_bytes()  # after imports, model and data: what remains is the inference itself
        with torch.inference_mode():
            denoise(model, noisy[:batch], batch_size=batch, precision=precision)  # warm-up: oneDNN, allocator
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = denoise(model, noisy, batch_size=batch, precision=precision)
                times.append(time.perf_counter() - t0)
        from dae.metrics import psnr

        best = min(times)
        result.update(
            n_images=noisy.shape[0],
            batch_size=batch,
            seconds=times,
            images_per_s=noisy.shape[0] / best,
            images_per_s_median=noisy.shape[0] / statistics.median(times),
            psnr_db=float(psnr(out.float(), clean).mean()),
        )
    elif spec["kind"] == "image":
        size = int(spec["size"])
        base = maxrss_bytes()  # after imports and model; the image and the work count toward the peak
        g = torch.Generator().manual_seed(0)
        image = torch.rand((1, 1, size, size), generator=g)
        kwargs = {"precision": precision} | ({} if spec.get("tile") is None else {"tile": int(spec["tile"])})
        with torch.inference_mode():
            t0 = time.perf_counter()
            denoise(model, image, **kwargs)
            first = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                denoise(model, image, **kwargs)
                times.append(time.perf_counter() - t0)
        result.update(
            size=size,
            tile=spec.get("tile"),
            first_call_s=first,
            latency_s=statistics.median(times),
            seconds=times,
            input_bytes=image.numel() * 4,
        )
    else:
        raise SystemExit(f"probe: unknown kind {spec['kind']!r}")
    peak = maxrss_bytes()
    result.update(baseline_rss_bytes=base, peak_rss_bytes=peak, peak_minus_baseline_bytes=peak - base)
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
