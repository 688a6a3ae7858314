"""Denoise a real photograph: classical baselines and (optionally) a learned model, behind one interface.

A clean photo gets Gaussian noise of a known level (s = 25/255 is the "sigma 25" of the denoising
literature). Each method then denoises the same noisy copy, is scored against the clean photo, and writes
its result as an image file. Learned models go through `dae.denoise`, which tiles large images so memory
stays bounded whatever the photo's size.

Run (the default photo is scikit-image's 512x512 "camera"; any PNG/JPEG/TIFF works):

    python examples/denoise_photo.py --out runs/photo
    python examples/denoise_photo.py my_photo.png --level 0.1 --checkpoint runs/photos/checkpoints/best.safetensors

A model trained on MNIST digits has never seen a photograph; train one on your own pictures with
`dae train --dataset folder --data-dir PHOTOS --out runs/photos`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import dae
from dae.baselines import create_baseline
from dae.errors import DaeError
from dae.fileio import make_folder, output_folder
from dae.imageio import read_image, write_image
from dae.metrics import psnr, ssim
from dae.plots import plot_error_maps

BASELINES = ("median", "gaussian_blur", "tv", "wavelet", "nlm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", nargs="?", help="image file (default: scikit-image's camera)")
    parser.add_argument(
        "--level", type=float, default=25 / 255, help="gaussian noise level s (default 25/255)"
    )
    parser.add_argument("--checkpoint", help="a trained dae model to compare with the baselines")
    parser.add_argument("--out", default="runs/photo", help="folder for the images and the figure")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    args = parser.parse_args(argv)
    out = output_folder(args.out)  # a file in the way is refused before any work

    # The clean photo as float32 (1, C, H, W) in [0, 1]; `info` remembers how to write it back.
    if args.photo:
        photo, info = read_image(args.photo)
    else:
        from skimage.data import camera

        photo, info = torch.from_numpy(camera()).float().div(255)[None], None
    clean = photo[None]
    noisy = dae.add_noise(clean, f"gaussian:{args.level!r}", seed=args.seed)
    # Baselines that need the noise level are told the noise the photo really holds, as `dae eval --sigma
    # given` does: clipping to [0, 1] leaves less than the nominal level (about 0.25 of 0.3 on "camera").
    measured = (noisy - clean).flatten(1).std(dim=1).tolist()

    # One interface: a baseline and a learned model both take (N, C, H, W) in [0, 1] and return the same.
    methods = {name: create_baseline(name) for name in BASELINES}
    outputs = {"noisy": noisy}
    for name, method in methods.items():
        outputs[name] = method.denoise(noisy, sigma=measured)
    if args.checkpoint:
        outputs["learned"] = dae.denoise(dae.load_model(args.checkpoint), noisy)  # tiled when large

    # Scored before anything is written: a photo too small for SSIM leaves no empty folder behind.
    scores = {name: (psnr(y, clean).mean(), ssim(y, clean).mean()) for name, y in outputs.items()}
    make_folder(out)
    print(f"{'method':<14} {'PSNR dB':>8} {'SSIM':>7}")
    for name, y in outputs.items():
        print(f"{name:<14} {scores[name][0]:8.2f} {scores[name][1]:7.3f}")
        write_image(out / f"{name}.png", y[0], info)
    plot_error_maps(clean, outputs, out / "error_maps.png", n=1)
    print(f"images and error_maps.png in {out}/")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DaeError as e:  # an expected mistake gets dae's one-line message and exit code, not a traceback
        print(f"{Path(__file__).name}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
