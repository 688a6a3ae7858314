"""The training loop the way the classic tutorials write it, as the yardstick for dae's loop.

A torch Dataset whose __getitem__ turns one uint8 image into float and adds its own torch.randn noise, a
DataLoader (shuffle=True, num_workers=0), the same model and loss as dae, Adam. Nothing here is tuned.

The benchmark runs it in a fresh interpreter, as a tutorial script runs, so it gets the C library's default
allocator and not the settings dae's loop made in the benchmark's own process:

    python bench/reference_loop.py '{"model": "strided", "batch_size": 128, "warmup_steps": 5,
                                     "measure_steps": 20, "loss": "bce", "images": 4096}'
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class NoisyImages(Dataset):
    """One (noisy, clean) pair per index, float in [0, 1], noise drawn per sample as the tutorials do."""

    def __init__(self, images_u8: Tensor, noise_factor: float):
        self.images = images_u8
        self.noise_factor = noise_factor

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        clean = self.images[i].float() / 255.0  # (C, H, W)
        noisy = clean + self.noise_factor * torch.randn_like(clean)
        return noisy.clamp(0.0, 1.0), clean


def reference_throughput(
    model: torch.nn.Module,
    images_u8: Tensor,
    *,
    batch_size: int = 128,
    warmup_steps: int = 5,
    measure_steps: int = 20,
    noise_factor: float = 0.5,
    loss: str = "mse",
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Steady-state images/s of the tutorial loop: steps after `warmup_steps` timed, loading included.

    `model` is built by the caller exactly as dae's loop builds it, and `loss` is the recipe's, so the two
    loops differ only in how they feed and run the network.
    """
    from dae.losses import get_loss

    torch.manual_seed(seed)
    loss_fn = get_loss(loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(
        NoisyImages(images_u8, noise_factor), batch_size=batch_size, shuffle=True, num_workers=0
    )
    model.train()
    step, images, start, loading = 0, 0, time.perf_counter(), 0.0
    total = warmup_steps + measure_steps
    while step < total:
        fetch_start = time.perf_counter()
        for noisy, clean in loader:
            loading += time.perf_counter() - fetch_start  # the DataLoader's share of this step
            out = model(noisy)
            loss_value = loss_fn(out, clean, model.output_kind)
            optimizer.zero_grad()
            loss_value.backward()
            optimizer.step()
            images += clean.shape[0]
            step += 1
            if step == warmup_steps:  # the clock starts here, so the next batch's loading is timed too
                start, images, loading = time.perf_counter(), 0, 0.0
            if step >= total:
                break
            fetch_start = time.perf_counter()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": images / seconds,
        # The share of the timed steps spent producing batches: the most any loop can save by feeding the
        # same network faster. 1 / (1 - share) bounds the speed-up from data handling alone.
        "loading_share": loading / seconds,
        "steps_timed": measure_steps,
        "seconds": seconds,
        "final_loss": float(loss_value.detach()),
    }


def main(spec: dict[str, Any]) -> dict[str, Any]:
    import common  # bench/common.py: this file's folder is sys.path[0] when run as a script

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])  # the benchmark's own thread count, as dae's loop ran
    return reference_throughput(
        common.build_model(spec["model"]),
        common.load_split("train", limit=spec["images"]),
        batch_size=spec["batch_size"],
        warmup_steps=spec["warmup_steps"],
        measure_steps=spec["measure_steps"],
        loss=spec["loss"],
    )


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
