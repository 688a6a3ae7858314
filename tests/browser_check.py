"""Manual check, not a test: render the report of a synthetic run in headless Chromium and save a screenshot.

Builds a run with a tiny conv model trained for a few seconds on real MNIST (if the IDX files are found) or on
synthetic digits, writes its report, and screenshots it with Chromium (Debian: `apt-get install -y chromium`).

    .venv/bin/python tests/browser_check.py --data /work/shared/data/mnist --out /tmp/report_check
    # then look at /tmp/report_check/report.png
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dae.models import MODELS  # noqa: E402
from dae.report import write_report  # noqa: E402
from test_report import TINY_MODELS, TinyConv, create_model, digits, make_synthetic_run  # noqa: E402


def read_idx_images(path: Path, limit: int) -> torch.Tensor:
    """The first `limit` images of a gzipped IDX3 file as (N, 1, H, W) in [0, 1] (enough for this check)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    pixels = np.frombuffer(data, np.uint8, count=min(n, limit) * h * w, offset=16)
    return torch.from_numpy(pixels.reshape(-1, 1, h, w).astype(np.float32) / 255.0)


def quick_train(model: TinyConv, x: torch.Tensor, steps: int = 300) -> TinyConv:
    """A few hundred Adam steps at gaussian 0.5, enough for the figures to show something."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        clean = x[idx]
        noisy = (clean + 0.5 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/mnist"))
    p.add_argument("--out", type=Path, default=Path("/tmp/report_check"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=4000)
    args = p.parse_args()

    train_file, test_file = args.data / "train-images-idx3-ubyte.gz", args.data / "t10k-images-idx3-ubyte.gz"
    if train_file.exists() and test_file.exists():
        train_x, test_x = read_idx_images(train_file, 5000), read_idx_images(test_file, 8)
    else:
        train_x, test_x = digits(512, seed=1), digits(8)
    for name, cls in TINY_MODELS.items():
        MODELS.register(name)(cls)
    torch.manual_seed(0)
    model = quick_train(create_model("_report_tiny_conv", width=8), train_x)

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    run = make_synthetic_run(args.out, name="browser-check", trained=model)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("kwargs: {}", "kwargs:\n    width: 8"))
    report = write_report(run, images=test_x)
    shot = args.out / "report.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print(f"wrote {report}; no chromium found, so no screenshot", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--screenshot={shot}", f"--window-size={args.width},{args.height}",
            report.resolve().as_uri(),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"wrote {report} and {shot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
