"""The walkthroughs in examples/ run as documented and say what they claim (tiny budgets here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, env_data: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAE_DATA_DIR": str(env_data)} if env_data is not None else None
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env, timeout=600
    )


def scores(stdout: str) -> dict[str, float]:
    """'method  PSNR  SSIM' lines of denoise_photo.py -> {method: PSNR}."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+)\s+([0-9.]+)\s+[0-9.]+$", stdout, re.M)}


def test_denoise_photo_baselines_beat_the_noisy_input(tmp_path: Path):
    proc = run_example("denoise_photo.py", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    psnr = scores(proc.stdout)
    assert set(psnr) == {"noisy", "median", "gaussian_blur", "tv", "wavelet", "nlm"}
    # At sigma 25 on the camera photo every classical method is a real improvement (measured: +3.5 to +8 dB).
    assert all(psnr[m] > psnr["noisy"] + 2 for m in psnr if m != "noisy"), psnr
    assert {p.name for p in tmp_path.iterdir()} == {f"{m}.png" for m in psnr} | {"error_maps.png"}


def test_denoise_photo_missing_file_is_one_line_with_the_exit_code(tmp_path: Path):
    proc = run_example("denoise_photo.py", str(tmp_path / "nope.png"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 5
    assert proc.stderr.strip() == f"denoise_photo.py: {tmp_path / 'nope.png'}: no such file"
    assert not (tmp_path / "out").exists()


def test_denoise_photo_too_small_to_score_leaves_no_folder(tmp_path: Path):
    from PIL import Image

    Image.new("L", (5, 5), 128).save(tmp_path / "tiny.png")
    proc = run_example("denoise_photo.py", str(tmp_path / "tiny.png"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "ssim needs images of at least 11x11" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()  # it printed a header and made the folder


def test_mnist_walkthrough_runs_and_reuses_its_runs(tmp_path: Path, data_dir: Path):
    args = ("--budget", "1", "--limit", "32", "--out", str(tmp_path))
    proc = run_example("mnist_walkthrough.py", *args, env_data=data_dir)
    assert proc.returncode == 0, proc.stderr
    for name in ("fc", "upsample", "unet"):
        assert (tmp_path / name / "checkpoints" / "best.safetensors").is_file()
        assert re.search(rf"^{name}@{name}\s+[0-9.]+", proc.stdout, re.M), proc.stdout  # evaluated
    for figure in ("psnr_vs_noise.png", "reconstructions_upsample.png", "code_layer_upsample.png"):
        assert (tmp_path / figure).stat().st_size > 1000
    assert "block:third" in proc.stdout
    # A second run reuses the finished runs instead of refusing to overwrite them.
    again = run_example("mnist_walkthrough.py", *args, env_data=data_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("nothing to do") == 3


def test_mnist_walkthrough_will_not_reuse_models_of_another_dataset(tmp_path: Path):
    # --dataset fashion-mnist over an MNIST walkthrough's folder "resumed" the MNIST models (nothing to do) and
    # evaluated them on clothes.
    (tmp_path / "fc").mkdir()
    (tmp_path / "fc" / "config.yaml").write_text("data:\n  dataset: mnist\n")
    proc = run_example("mnist_walkthrough.py", "--dataset", "fashion-mnist", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert f"{tmp_path / 'fc'} was trained on mnist, not fashion-mnist: give another --out" in proc.stderr


def test_mnist_walkthrough_refuses_a_zero_budget_before_looking_for_data(tmp_path: Path):
    # It looked for MNIST first, and with none on the machine downloaded it (or asked PyPI) to refuse then.
    proc = run_example("mnist_walkthrough.py", "--budget", "0", "--data-dir", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "--budget must be > 0 seconds, got 0" in proc.stderr
    assert "does not exist" not in proc.stderr
