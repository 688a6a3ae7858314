"""The classic MNIST denoising-autoencoder tutorial, done with dae's library from top to bottom.

The tutorials corrupt digits with clip(x + s*N(0,1), 0, 1), train an encoder/decoder to map noisy to clean,
compare a fully connected autoencoder with conv ones, test at noise levels they were not trained at, show
reconstructions and the code layer, and ask whether a model can restore a digit of which only a third is
visible. Each step below is one library call; `dae study` runs the full set of experiments.

Run (about 3 x BUDGET seconds of training, then well under a minute of evaluation on 2 CPU cores):

    python examples/mnist_walkthrough.py --budget 30 --out runs/walkthrough

MNIST is found as everywhere in dae (--data-dir, $DAE_DATA_DIR, the cache, /usr/share/datasets, or downloaded
and verified); `--dataset fashion-mnist` runs the same steps on Fashion-MNIST. Running it again reuses the
models already trained under --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dae
from dae.config import load_config_file
from dae.errors import DaeError
from dae.evaluate import format_table
from dae.plots import plot_code_layer, plot_denoise_grid, plot_psnr_vs_noise
from dae.study import code_of

# The tutorials' fully connected 784-64-784 autoencoder, their conv + max-pool / nearest-upsample model,
# and dae's default denoiser.
MODELS = ("fc", "upsample", "unet")
TRAIN_NOISE = "gaussian:0.5"
TEST_LEVELS = (0.3, 0.5, 0.7, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=30, help="training seconds per model (default 30)")
    parser.add_argument(
        "--out",
        default=None,
        help="folder for runs and figures (default runs/walkthrough, or -DATASET after it)",
    )
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset (default: dae's search)")
    parser.add_argument("--limit", type=int, default=1000, help="test images to evaluate (default 1000)")
    parser.add_argument(
        "--dataset", default="mnist", choices=("mnist", "fashion-mnist"), help="the images (default mnist)"
    )
    args = parser.parse_args(argv)
    if not args.budget > 0:  # said before the data is looked for (and perhaps downloaded)
        parser.error(f"--budget must be > 0 seconds, got {args.budget:g}")
    default_out = "runs/walkthrough" + ("" if args.dataset == "mnist" else f"-{args.dataset}")
    out = Path(args.out or default_out)
    for name in MODELS:  # a rerun reuses these runs: one trained on other images is no model of these
        saved = out / name / "config.yaml"
        trained_on = load_config_file(saved).get("data", {}).get("dataset") if saved.is_file() else None
        if trained_on not in (None, args.dataset):
            parser.error(f"{out / name} was trained on {trained_on}, not {args.dataset}: give another --out")

    # 1. Data: the first test digits as float32 (N, 1, 28, 28) in [0, 1].
    clean = dae.load_images(args.dataset, "test", root=args.data_dir, limit=args.limit)

    # 2. Train each model for the same wall-clock budget at one noise level. resume=True makes a rerun reuse
    #    a finished run (and finish an interrupted one) instead of refusing to overwrite it.
    checkpoints = []
    for name in MODELS:
        config = {
            "model": {"name": name},
            "data": {"dataset": args.dataset, "data_dir": args.data_dir},
            "train": {"time_budget": args.budget, "noise": TRAIN_NOISE},
            "out": str(out / name),
        }
        # A run folder with a complete checkpoint generation (step-*.json is written last) can be resumed.
        resumable = any((out / name / "checkpoints").glob("step-*.json"))
        result = dae.train(config, resume=resumable, progress=False)
        print(f"{name}: trained {result.step} steps, best validation PSNR {result.best_val_psnr:.2f} dB")
        checkpoints.append(result.best_checkpoint)

    # 3. Every model and classical baseline sees the same fixed-seed noisy copies of the test digits, at the
    #    training level and at levels the models never saw. The noisy input itself is the floor.
    result = dae.evaluate(
        checkpoints, ["median", "tv", "wavelet"], levels=TEST_LEVELS, images=clean, verbose=False
    )
    print(format_table(result.records))
    plot_psnr_vs_noise(result.records, out / "psnr_vs_noise.png", title=f"trained at {TRAIN_NOISE}")

    # 4. Reconstructions: clean digits, then noisy and denoised rows per level, for the conv tutorial model.
    conv = dae.load_model(checkpoints[1])
    noisy = {f"{s:g}": dae.add_noise(clean[:8], f"gaussian:{s}", seed=0) for s in TEST_LEVELS}
    denoised = {level: dae.denoise(conv, x) for level, x in noisy.items()}
    plot_denoise_grid(clean[:8], noisy, denoised, out / "reconstructions_upsample.png")

    # 5. The code layer: the feature maps the conv encoder squeezes one noisy digit into (8 maps of 4x4).
    code = code_of(conv, noisy["0.5"][:1])
    plot_code_layer(code, out / "code_layer_upsample.png", "upsample code layer")

    # 6. Occlusion: only a band covering a third of each digit stays visible. Models trained on gaussian noise
    #    were never asked to fill in missing parts; `dae study` also trains them on occlusion.
    occluded = dae.evaluate(
        checkpoints, ["median"], noise="block:third", levels=None, images=clean, verbose=False
    )
    print(format_table(occluded.records))

    print(f"figures in {out}/: psnr_vs_noise.png, reconstructions_upsample.png, code_layer_upsample.png")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DaeError as e:  # an expected mistake gets dae's one-line message and exit code, not a traceback
        print(f"{Path(__file__).name}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
