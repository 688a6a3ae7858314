"""Figures and the self-contained run report, on a synthetic run directory built here (no dataset needed)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from dae import plots
from dae.checkpoint import save_checkpoint
from dae.errors import DataError, ResourceError, UsageError
from dae.models import MODELS, create_model
from dae.models.base import Denoiser
from dae.report import Html, img_tag, load_records, render_html, table_html, write_report

LEVELS = (0.3, 0.5, 0.7)


class TinyConv(Denoiser):
    """Two stride-2 convs down to a (8, 7, 7) code, two transposed convs back up."""

    size_multiple = 4

    def __init__(self, width: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU()
        )
        self.up = nn.Sequential(  # deliberately not called "decoder": layers are found by running decode()
            nn.ConvTranspose2d(2 * width, width, 2, 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 2, 2),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 1, 3, 1, 1)

    def encode(self, x):
        return self.encoder(x)  # (N, 2w, H/4, W/4)

    def decode(self, code):
        return self.head(self.up(code))


class TinyFC(Denoiser):
    fixed_size = (1, 28, 28)

    def __init__(self, code: int = 12):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(784, code), nn.ReLU())
        self.dec = nn.Sequential(nn.Linear(code, 32), nn.ReLU(), nn.Linear(32, 784))

    def encode(self, x):
        return self.enc(x)  # (N, code)

    def decode(self, code):
        return self.dec(code).view(-1, 1, 28, 28)


TINY_MODELS = {"_report_tiny_conv": TinyConv, "_report_tiny_fc": TinyFC}


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    """Register the tiny models for each test only, so tests that walk list_models() never meet them."""
    for name, cls in TINY_MODELS.items():
        monkeypatch.setitem(MODELS._items, name, cls)


def digits(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Digit-like test images: a bright random stroke (box) on black, (n, 1, 28, 28) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        r, c = torch.randint(4, 14, (2,), generator=g).tolist()
        h, w = torch.randint(6, 12, (2,), generator=g).tolist()
        x[i, 0, r : r + h, c : c + w] = 0.9
        x[i, 0, r + 2 : r + h - 2, c + 2 : c + w - 2] = 0.0
    return x


def make_synthetic_run(
    root: Path,
    *,
    name: str = "synthetic",
    model: str = "_report_tiny_conv",
    eval: bool = True,
    metrics: bool = True,
    checkpoint: bool = True,
    trained: torch.nn.Module | None = None,
    trained_with: dict | None = None,
    precision: str | None = None,
) -> Path:
    """A run directory as documented: config.yaml, metrics.csv, checkpoints/best.*, eval/results.*."""
    run = root / name
    (run / "figures").mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "seed": 0,
        "eval_seed": 1234,
        "data": {"dataset": "mnist", "data_dir": None},
        "model": {"name": model, "kwargs": {}},
        "train": {
            "noise": "gaussian:0.5",
            "loss": "mse",
            "optimizer": "adamw",
            "lr": 0.003,
            "batch_size": 64,
            **({"precision": precision} if precision else {}),
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if metrics:
        with open(run / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "epoch",
                    "step",
                    "time_s",
                    "lr",
                    "train_loss",
                    "val_loss",
                    "val_psnr",
                    "val_ssim",
                    "images_per_s",
                ]
            )
            for i in range(1, 9):
                w.writerow(
                    [i, 100 * i, 7.5 * i, 0.003, 0.08 / i, 0.09 / i, 14 + 1.2 * i - 0.05 * i * i, 0.5, 2500]
                )
    if checkpoint:
        torch.manual_seed(0)
        net = trained if trained is not None else create_model(model)
        save_checkpoint(
            net,
            run / "checkpoints" / "best.safetensors",
            config=config,
            metrics={"val_psnr": 21.0},
            trained_with=trained_with,
        )
    if eval:
        records = []
        for lv in LEVELS:
            for method, kind, train, psnr in (
                (f"{model}@{name}", "learned", "gaussian:0.5", 26 - 6 * lv),
                ("median", "baseline", None, 22 - 9 * lv),
                ("noisy input", "noisy", None, 19 - 12 * lv),
            ):
                records.append(
                    {
                        "method": method,
                        "kind": kind,
                        "noise": f"gaussian:{lv:g}",
                        "level": lv,
                        "psnr": psnr,
                        "ssim": psnr / 30,
                        "mse": 10 ** (-psnr / 10),
                        "n_images": 100,
                        "seed": 1234,
                        "train_noise": train,
                    }
                )
        (run / "eval").mkdir()
        (run / "eval" / "results.json").write_text(
            json.dumps({"notes": ["synthetic <notes>"], "records": records})
        )
        with open(run / "eval" / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    return run


def assert_png(path: Path, min_w: int = 100, min_h: int = 50) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        im.load()  # decodes the pixels: a truncated file fails here
        assert im.width >= min_w and im.height >= min_h
        return im.size


# ------------------------------------------------------------------------------------------------ plots


def test_denoise_grid_has_a_row_pair_per_level(tmp_path):
    x = digits(6)
    noisy = {f"gaussian:{lv}": (x + lv * torch.randn_like(x)).clamp(0, 1) for lv in LEVELS}
    den = {k: v * 0.5 for k, v in noisy.items()}
    one = assert_png(plots.plot_denoise_grid(x, dict(list(noisy.items())[:1]), den, tmp_path / "g1.png", n=4))
    three = assert_png(plots.plot_denoise_grid(x, noisy, den, tmp_path / "sub" / "g3.png", n=4))
    assert three[1] > 2 * one[1]  # 7 rows against 3
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_code_layer_maps_and_vector(tmp_path):
    model = TinyConv().eval()
    code = model.encode(digits(1))[0]
    assert code.shape == (8, 7, 7)
    assert_png(plots.plot_code_layer(code, tmp_path / "maps.png", "code <layer>"))
    assert_png(plots.plot_code_layer(torch.rand(64), tmp_path / "vec.png", "fc code"))
    assert_png(
        plots.plot_code_layer(torch.rand(1, 13), tmp_path / "prime.png")
    )  # batch dim dropped, 1x13 strip
    with pytest.raises(UsageError):
        plots.plot_code_layer(torch.rand(2, 3, 4, 5, 6), tmp_path / "bad.png")


def test_decoder_layers_found_by_running_decode():
    layers, out = plots.decoder_activations(TinyConv(), digits(1))
    names = [n for n, _, _ in layers]
    assert names == ["up.0", "up.2", "head"]  # the encoder's convs are not included although they are convs
    assert out.shape == (1, 1, 28, 28) and 0 <= out.min() and out.max() <= 1
    fc_layers, _ = plots.decoder_activations(TinyFC(), digits(1))
    assert [n for n, _, _ in fc_layers] == ["dec.0", "dec.2"]


def test_plot_activations_conv_and_fc(tmp_path):
    assert_png(plots.plot_activations(TinyConv(), digits(1), tmp_path / "a.png"))
    assert_png(plots.plot_activations(TinyFC(), digits(1)[0], tmp_path / "b.png"))  # (C, H, W) accepted


def test_training_curves(tmp_path):
    run = make_synthetic_run(tmp_path, checkpoint=False, eval=False)
    assert_png(plots.plot_training_curves(run / "metrics.csv", tmp_path / "c.png"), min_w=600)
    (tmp_path / "empty.csv").write_text("epoch,step,val_psnr\n")
    with pytest.raises(DataError, match="no rows"):
        plots.plot_training_curves(tmp_path / "empty.csv", tmp_path / "e.png")


def test_training_curves_name_the_loss_and_the_noise_and_step_whole_numbers(tmp_path, monkeypatch):
    # The axis said "loss" (bce and mse differ in scale), the PSNR panel no noise (a blind run's spans levels),
    # one row gave ticks at 0.96 ... 1.04, and a hand-edited inf read "best inf dB" with no star drawn.
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [{"step": 1, "train_loss": 0.5, "val_loss": 0.4, "val_psnr": 12.0}]
    plots.plot_training_curves(rows, tmp_path / "c.png", loss="bce", noise="gaussian:0.1-0.9")
    ax_loss, ax_psnr = figures[0].axes
    assert ax_loss.get_ylabel() == "bce loss" and ax_psnr.get_title() == "validation PSNR (gaussian:0.1-0.9)"
    for ax in (ax_loss, ax_psnr):
        assert all(float(t).is_integer() for t in ax.get_xticks())
    plots.plot_training_curves([*rows, {"step": 2, "val_psnr": "inf"}], tmp_path / "d.png")
    texts = [t.get_text() for t in figures[1].axes[1].texts]
    assert texts == ["best 12.00 dB at step 1"]


def test_psnr_vs_noise_one_panel_per_family(tmp_path):
    run = make_synthetic_run(tmp_path, checkpoint=False, metrics=False)
    records, _ = load_records(run / "eval")
    w1, _ = assert_png(plots.plot_psnr_vs_noise(records, tmp_path / "p.png"))
    sp = [dict(r, noise=f"salt_pepper:{r['level']:g}") for r in records]
    w2, _ = assert_png(plots.plot_psnr_vs_noise(records + sp, tmp_path / "p2.png", metric="ssim"))
    assert w2 > w1 * 1.4
    csv_records, _ = load_records(tmp_path)  # no results here
    assert csv_records == []
    with pytest.raises(DataError):
        plots.plot_psnr_vs_noise([{"method": "m", "psnr": None}], tmp_path / "none.png")


def test_matrix_from_mapping_records_and_matrix_csv(tmp_path):
    lv = ["0.1", "0.5", "0.9"]
    mapping = {t: {s: 25 - 10 * abs(float(t) - float(s)) for s in lv} for t in lv}
    assert_png(plots.plot_matrix(mapping, tmp_path / "m1.png", title="train x test"))
    records = [
        {"method": f"m{t}", "kind": "learned", "noise": f"gaussian:{s}", "level": float(s), "psnr": v,
         "train_noise": f"gaussian:{t}"}
        for t, row in mapping.items()
        for s, v in row.items()
    ] + [{"method": "median", "kind": "baseline", "noise": "gaussian:0.5", "level": 0.5, "psnr": 9.0,
          "train_noise": None}]  # fmt: skip
    assert plots._matrix_from(records, "psnr")[0] == ["gaussian:0.1", "gaussian:0.5", "gaussian:0.9"]
    assert_png(plots.plot_matrix(records, tmp_path / "m2.png"))
    # matrix.csv as dae.evaluate writes it: label columns train_noise and method, then a column per test spec
    (tmp_path / "matrix.csv").write_text(
        "train_noise,method,gaussian:0.1,gaussian:0.5\ngaussian:0.1,a,25.0,20.5\ngaussian:0.5,b,22.0,24.0\n"
    )
    rows, cols, values = plots._matrix_from(tmp_path / "matrix.csv", "psnr")
    # Named by training noise alone, as the records' matrix is: "gaussian:0.8 (upsample@upsample_gaussian_0.8_bce)"
    # squeezed the heatmap of the report (which reads matrix.csv) to a strip.
    assert rows == ["gaussian:0.1", "gaussian:0.5"] and cols == ["gaussian:0.1", "gaussian:0.5"]
    assert values.tolist() == [[25.0, 20.5], [22.0, 24.0]]
    assert_png(plots.plot_matrix(tmp_path / "matrix.csv", tmp_path / "m3.png"))
    wide = [
        {"train_noise": r["train_noise"], "method": r["method"], r["noise"]: r["psnr"]} for r in records[:-1]
    ]
    by_row: dict = {}
    for r in wide:
        by_row.setdefault((r.pop("train_noise"), r.pop("method")), {}).update(r)
    wide = [{"train_noise": t, "method": m, **cells} for (t, m), cells in by_row.items()]
    assert plots._matrix_from(wide, "psnr")[0] == plots._matrix_from(records, "psnr")[0]
    (tmp_path / "matrix.csv").write_text(  # two models trained on one noise: the method tells them apart
        "train_noise,method,gaussian:0.5\ngaussian:0.5,unet@long_run_name,25.0\ngaussian:0.5,fc@other,20.5\n"
    )
    assert plots._matrix_from(tmp_path / "matrix.csv", "psnr")[0] == [
        "gaussian:0.5 (fc@other)",
        "gaussian:0.5 (unet@long_run_name)",
    ]
    narrow = assert_png(plots.plot_matrix({"a": {"0.5": 1.0}}, tmp_path / "m4.png"))
    labelled = assert_png(plots.plot_matrix({"a" * 60: {"0.5": 1.0}}, tmp_path / "m5.png"))
    assert labelled[0] > narrow[0] + 300  # long labels widen the figure, not squeeze the cells


@pytest.mark.parametrize(
    "noisy, denoised",
    [
        (lambda x: x[:, :, :20], lambda x: x),  # another size
        (lambda x: x[:2], lambda x: x),  # fewer images than shown
        (lambda x: x, lambda x: x.repeat(1, 3, 1, 1)),  # colour output for grey images
    ],
)
def test_denoise_grid_refuses_images_unlike_the_clean_ones(tmp_path, noisy, denoised):
    x = digits(4)
    # these were numpy's "operands could not be broadcast" from the PSNR in the row label
    with pytest.raises(
        UsageError, match=r"plot_denoise_grid: (noisy|denoised) images at level 0.5 has shape"
    ):
        plots.plot_denoise_grid(x, {"0.5": noisy(x)}, {"0.5": denoised(x)}, tmp_path / "g.png", n=4)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("name", "magic"),
    [
        ("f.jpg", b"\xff\xd8\xff"),
        ("f.SVG", b"<?xml"),
        ("f.pdf", b"%PDF"),
        ("psnr_0.5", b"\x89PNG"),
        ("f", b"\x89PNG"),
    ],
)
def test_figures_are_written_in_the_format_their_name_says(tmp_path, name, magic):
    x = digits(2)
    out = plots.plot_denoise_grid(x, {"0.5": x}, {}, tmp_path / name)
    assert out.read_bytes().startswith(magic)  # a .jpg path used to get PNG bytes


@pytest.mark.parametrize(
    "draw",
    [
        lambda path: plots.plot_denoise_grid(digits(2), {}, {}, path, n=-2),  # was matplotlib's ValueError
        lambda path: plots.plot_denoise_grid(digits(2), {}, {}, path, n=1.5),
        lambda path: plots.plot_code_layer(torch.rand(0), path),  # was "max() arg is an empty sequence"
        lambda path: plots.plot_code_layer(torch.rand(0, 3, 3), path),  # was ZeroDivisionError
        lambda path: plots.plot_code_layer(torch.rand(4, 3, 3), path, max_maps=0),
    ],
)
def test_figures_of_nothing_are_a_usage_error(tmp_path, draw):
    with pytest.raises(UsageError, match=r"plot_(denoise_grid|code_layer): "):
        draw(tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_figure_paths_that_cannot_be_written_are_one_line(tmp_path):
    x = digits(2)
    with pytest.raises(UsageError, match=r"cannot write '\.bmp' files; use \.png"):
        plots.plot_denoise_grid(x, {"0.5": x}, {}, tmp_path / "f.bmp")
    with pytest.raises(UsageError, match="is a folder"):
        plots.plot_denoise_grid(x, {"0.5": x}, {}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_psnr_vs_noise_names_records_of_the_wrong_kind(tmp_path):
    with pytest.raises(UsageError, match="records are evaluation rows"):
        plots.plot_psnr_vs_noise("results.json", tmp_path / "p.png")  # was AttributeError: 'str' ... 'get'


def test_error_maps(tmp_path):
    x = digits(4)
    outs = {"noisy": (x + 0.3 * torch.randn_like(x)).clamp(0, 1), "blur": x * 0.8}
    assert_png(plots.plot_error_maps(x, outs, tmp_path / "e.png", n=3))
    with pytest.raises(UsageError, match="shape"):
        plots.plot_error_maps(x, {"bad": x[:, :, :20]}, tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------------ report


def test_html_helpers_escape_and_inline(tmp_path):
    png = plots.plot_code_layer(torch.rand(16), tmp_path / "v.png")
    tag = img_tag(png, alt='a "quoted" <alt>')
    assert tag.startswith('<img src="data:image/png;base64,iVBORw0KGgo') and "&lt;alt&gt;" in tag
    t = table_html([{"m": "<x>", "v": 27.123456}, ["raw", Html("<b>ok</b>")]], ["m", "v"])
    assert "&lt;x&gt;" in t and "27.12" in t and "<b>ok</b>" in t and 'class="num"' in t
    page = render_html("t <1>", [("Results & more", t), ("Results & more", "<p>2</p>")], subtitle="s")
    assert "<title>t &lt;1&gt;</title>" in page and 'id="results-more-2"' in page
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError):
        img_tag(tmp_path / "x.png")


def external_refs(page: str) -> list[str]:
    """Anything the page would fetch: src/href that is not data: or #anchor, url(), @import, link/script."""
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    bad = [r for r in refs if not (r.startswith("data:image/png;base64,") or r.startswith("#"))]
    bad += re.findall(r"url\(|@import|<link|<script|https?://", page)
    return bad


def test_write_report_full(tmp_path):
    run = make_synthetic_run(tmp_path, name="run<1>")
    out = write_report(run, images=digits(8), levels=LEVELS, n_images=6)
    assert out == run / "report.html" and out.stat().st_mode & 0o777 == 0o644
    page = out.read_text()
    for section in ("Summary", "Model", "Training", "Evaluation", "Configuration"):
        assert f"<h2>{section}</h2>" in page
    assert "run&lt;1&gt;" in page and "run<1>" not in page  # the run name is escaped everywhere
    assert "synthetic &lt;notes&gt;" in page
    assert page.count("data:image/png;base64,") == 6  # grid, code, activations, curves, psnr, ssim
    assert external_refs(page) == []
    for fig in (
        "denoise_grid",
        "code_layer",
        "activations",
        "training_curves",
        "psnr_vs_noise",
        "ssim_vs_noise",
    ):
        assert_png(run / "figures" / f"{fig}.png")
    assert "gaussian:0.3, gaussian:0.5, gaussian:0.7 fixed by seed 1234" in page
    assert re.search(r"best val PSNR</th><td>\d+\.\d\d dB \(step \d+", page)
    assert "_report_tiny_conv" in page and ">0.3<" in page  # eval table header carries the levels
    # the best learned cell is bold, the noisy floor never is
    assert page.count('<b class="best">') == len(LEVELS)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_write_report_fc_model_and_matrix(tmp_path):
    run = make_synthetic_run(tmp_path, model="_report_tiny_fc")
    (run / "eval" / "matrix.csv").write_text(
        "train_noise,method,gaussian:0.3,gaussian:0.5\ng:0.3,a,25,20\ng:0.5,b,22,24\n"
    )
    page = write_report(run, images=digits(4), levels=(0.5,), n_images=4).read_text()
    assert "Train noise x test noise" in page and (run / "figures" / "matrix.png").exists()
    assert page.count("data:image/png;base64,") == 7


def test_write_report_missing_pieces_are_notes(tmp_path):
    run = make_synthetic_run(tmp_path, eval=False, metrics=False)
    page = write_report(run, images=digits(4), levels=(0.5,), n_images=4).read_text()
    assert "no evaluation yet" in page and "no metrics.csv yet" in page
    (run / "metrics.csv").write_text(
        "epoch,step,time_s,lr,train_loss,images_per_s,val_loss,val_psnr,val_ssim\n"
    )
    page = write_report(run, images=digits(4), levels=(0.5,), n_images=4).read_text()
    assert "no validation pass in metrics.csv yet" in page
    assert page.count("data:image/png;base64,") == 3  # grid, code layer, activations only

    bare = make_synthetic_run(tmp_path, name="bare", eval=False, checkpoint=False)
    page = write_report(bare).read_text()
    assert page.count("no checkpoint yet") == 1 and "no evaluation yet" in page
    assert page.count("data:image/png;base64,") == 1  # only the curves


def test_write_report_corrupt_checkpoint_is_a_note(tmp_path):
    run = make_synthetic_run(tmp_path, eval=False)
    weights = run / "checkpoints" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    page = write_report(run, images=digits(2)).read_text()
    assert "best checkpoint not loaded" in page and "truncated or corrupted" in page


def use_loader(monkeypatch, fn):
    """Stand in for dae.data.datasets.load_images (the module may not exist yet in a partial checkout)."""
    try:
        import dae.data.datasets as mod
    except ImportError:
        mod = types.ModuleType("dae.data.datasets")
        monkeypatch.setitem(sys.modules, "dae.data.datasets", mod)
    monkeypatch.setattr(mod, "load_images", fn, raising=False)


def test_write_report_loads_the_runs_test_images(tmp_path, monkeypatch):
    calls = []

    def load_images(name, split, root=None, limit=None):
        calls.append((name, split, root, limit))
        return digits(limit)

    use_loader(monkeypatch, load_images)
    run = make_synthetic_run(tmp_path, eval=False, metrics=False)
    here = str(tmp_path)
    page = write_report(run, data_dir=here, levels=(0.5,), n_images=3).read_text()
    assert calls == [("mnist", "test", here, 3)]
    assert "First 3 test images of mnist" in page
    with pytest.raises(ResourceError, match="data dir /data/here does not exist"):  # was a note, exit 0
        write_report(run, data_dir="/data/here")

    # Found as dae eval finds them: the folder training read while it exists, else DAE_DATA_DIR and the cache.
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["data_dir"] = str(tmp_path / "moved away")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    calls.clear()
    write_report(run, n_images=2)  # was the recorded folder, gone, whatever DAE_DATA_DIR said
    config["data"]["data_dir"] = here
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_report(run, n_images=2)
    assert calls == [("mnist", "test", None, 2), ("mnist", "test", here, 2)]
    bare = make_synthetic_run(tmp_path, name="bare", eval=False, checkpoint=False)
    write_report(bare, data_dir="/data/here")  # draws nothing from data: a missing one is no matter

    def missing(name, split, root=None, limit=None):
        raise ResourceError(f"dataset {name} not found under {root}")

    use_loader(monkeypatch, missing)
    page = write_report(run, levels=(0.5,)).read_text()
    assert "test images not loaded" in page and "dataset mnist not found" in page
    assert page.count("data:image/png;base64,") == 0


def test_a_folder_runs_figures_show_crops_of_its_size_from_different_pictures(tmp_path):
    # They were 64x64 crops (the folder's default, not the run's), all of the first test picture: an fc run
    # drew none, and the caption spoke of "test images".
    import numpy as np

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(41):  # files 0, 10, 20, 30, 40 are the test split
        Image.fromarray(np.full((40, 48), 5 * i, np.uint8)).save(photos / f"p{i:02d}.png")
    run = make_synthetic_run(tmp_path, eval=False, metrics=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = {"dataset": "folder", "data_dir": str(photos), "patch_size": 16}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    from dae.report import _test_images

    clean, caption = _test_images("folder", config, None, 4)
    assert clean.shape == (4, 1, 16, 16) and caption == "4 16x16 crops of the folder's 5 test picture(s)"
    assert sorted(round(v * 255) for v in clean.amax(dim=(1, 2, 3)).tolist()) == [0, 50, 100, 150]
    clean, caption = _test_images("folder", config, None, 12)  # more than the pictures: several of each
    assert clean.shape[0] == 12 and len(clean.unique()) == 5
    page = write_report(run, levels=(0.5,), n_images=4).read_text()
    assert "4 16x16 crops of the folder&#x27;s 5 test picture(s); noise gaussian:0.5" in page
    page = write_report(run, images=digits(3), levels=(0.5,)).read_text()
    assert "The 3 images given; noise" in page  # not "First 3 test images of folder"


@pytest.mark.parametrize(
    ("name", "error"), [("empty", UsageError), ("missing", ResourceError), ("foreign", UsageError)]
)
def test_write_report_not_a_run(tmp_path, name, error):
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    # Another tool's config.yaml made a report of dashes (exit 0) and a figures/ folder.
    (tmp_path / "foreign" / "config.yaml").write_text("services:\n  web: {image: nginx}\n")
    with pytest.raises(error) as info:
        write_report(tmp_path / name)
    assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)
    assert not (tmp_path / name / "figures").exists()
    if name == "foreign":
        assert "its config.yaml was not written by dae train" in str(info.value)


def test_a_run_folder_that_cannot_be_written_is_one_line_and_draws_nothing(tmp_path, monkeypatch):
    # A read-only mount was a traceback (OSError from the temp file of the first figure), exit 1.
    import errno
    import os

    from dae import cli, fileio

    run = make_synthetic_run(tmp_path, eval=False, metrics=False)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "figures" and real_access(p, mode))
    with pytest.raises(ResourceError, match=r"figures is not writable"):
        write_report(run, images=digits(2))
    assert list((run / "figures").iterdir()) == []
    monkeypatch.setattr(os, "access", real_access)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)  # the folder turned read-only after the check
    with pytest.raises(ResourceError, match=r"denoise_grid.png: cannot write \(Read-only file system\)"):
        write_report(run, images=digits(2))
    use_loader(monkeypatch, lambda *a, **k: digits(2))
    assert cli.main(["report", str(run)]) == 5
    assert not (run / "report.html").exists()


def test_an_evaluation_of_an_earlier_best_checkpoint_is_flagged(tmp_path):
    # Evaluate, train on (resume), report: the table showed the old best's scores beside the new best's
    # summary, and nothing said they were of different weights.
    from dae.evaluate import evaluate

    run = make_synthetic_run(tmp_path, name="grown", eval=False, metrics=False)
    best = run / "checkpoints" / "best.safetensors"
    config = yaml.safe_load((run / "config.yaml").read_text())
    torch.manual_seed(0)
    save_checkpoint(create_model("_report_tiny_conv"), best, config=config, step=100)
    result = evaluate([best], images=digits(4), levels=[0.5], out=run / "eval", verbose=False)
    assert result.checkpoints["_report_tiny_conv@grown"]["step"] == 100
    page = write_report(run, images=digits(2), levels=(0.5,)).read_text()
    assert "earlier best checkpoint" not in page  # still the weights that were scored

    torch.manual_seed(1)
    save_checkpoint(create_model("_report_tiny_conv"), best, config=config, step=382)
    page = write_report(run, images=digits(2), levels=(0.5,)).read_text()
    assert re.search(
        r"these results are of an earlier best checkpoint \(_report_tiny_conv@grown at step 100\); the run"
        r"&#x27;s best, step 382, was saved after the evaluation: rerun `dae eval --checkpoint .*grown`",
        page,
    )
    (tmp_path / "elsewhere").mkdir()
    moved = run.rename(tmp_path / "elsewhere" / "grown")  # the run's best is known by its place in the run
    assert "earlier best checkpoint" in write_report(moved, images=digits(2), levels=(0.5,)).read_text()

    # Another run of the same name scored beside it, and this run's current best among the scored: no note
    # (the other run's older step read as this one's "earlier best").
    twin = make_synthetic_run(tmp_path / "other", name="grown", eval=False, metrics=False)
    torch.manual_seed(2)
    save_checkpoint(create_model("_report_tiny_conv"), twin / "checkpoints" / "best.safetensors", step=5)
    both = [moved / "checkpoints" / "best.safetensors", twin / "checkpoints" / "best.safetensors"]
    evaluate(both, images=digits(4), levels=[0.5], out=moved / "eval", verbose=False)
    assert "earlier best checkpoint" not in write_report(moved, images=digits(2), levels=(0.5,)).read_text()


def test_suggested_eval_command_is_quoted_and_only_made_when_there_is_a_checkpoint(tmp_path):
    run = make_synthetic_run(tmp_path, name="my run", eval=False, metrics=False)
    page = write_report(run, images=digits(4), levels=(0.5,), n_images=4).read_text()
    assert f"run `dae eval --checkpoint &#x27;{run}&#x27;`" in page  # dae eval uses the run's own data
    bare = make_synthetic_run(tmp_path, name="bare", eval=False, metrics=False, checkpoint=False)
    page = write_report(bare).read_text()
    assert "no checkpoints/best.safetensors to evaluate" in page and "dae eval" not in page


def test_matrix_rows_sorted_by_training_level():
    records = [
        {"method": m, "kind": "learned", "noise": f"gaussian:{s}", "level": s, "psnr": 20.0, "train_noise": t}
        for m, t in (("z", "gaussian:0.5"), ("a", "gaussian:0.3"), ("b", "gaussian:0.3"))
        for s in (0.3, 0.5)
    ]
    rows, cols, _ = plots._matrix_from(records, "psnr")
    assert rows == ["gaussian:0.3 (a)", "gaussian:0.3 (b)", "gaussian:0.5"]
    assert cols == ["gaussian:0.3", "gaussian:0.5"]


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"records": ["a"]}', '{"records": [], "notes": 5}'])
def test_results_json_of_the_wrong_shape_is_one_data_error(tmp_path, content):
    from dae.errors import DataError

    (tmp_path / "results.json").write_text(content)
    with pytest.raises(DataError, match="results.json"):  # was a TypeError or ValueError traceback
        load_records(tmp_path)


def test_the_summary_throughput_is_the_runs_not_its_last_window(tmp_path):
    # It showed the last window's rate, one of windows that ranged 1.5x and more within a run.
    run = make_synthetic_run(tmp_path, eval=False, checkpoint=False)
    rows = [(0, 100, 10.0, 1000.0), (0, 200, 20.0, 1000.0), (1, 400, 30.0, 4000.0)]
    (run / "metrics.csv").write_text(
        "epoch,step,time_s,lr,train_loss,val_loss,val_psnr,val_ssim,images_per_s\n"
        + "".join(f"{e},{st},{t},0.001,0.1,0.1,20,0.8,{r}\n" for e, st, t, r in rows)
    )
    page = write_report(run, images=digits(4), levels=(0.5,), n_images=4).read_text()
    # 400 steps: 100 + 100 at 1000 images/s, 200 at 4000: 400 / (0.1 + 0.1 + 0.05) = 1600 (x batch)/batch.
    assert "1,600 images/s (mean over the run&#x27;s training steps)" in page
    assert "4,000 images/s" not in page


def test_metrics_rows_without_a_step_are_left_out_and_counted(tmp_path):
    # Garbage rows once counted as validation passes, and the last one gave the summary's step and time.
    run = make_synthetic_run(tmp_path, eval=False)
    passes = len((run / "metrics.csv").read_text().splitlines()) - 1
    with open(run / "metrics.csv", "a") as f:
        f.write("foo,bar\n1,2,abc,def\n")
    page = write_report(run, images=digits(4), levels=(0.5,), n_images=4).read_text()
    assert f"{passes} validation passes from metrics.csv" in page
    assert "2 row(s) of metrics.csv without a step and time left out" in page


def test_psnr_vs_noise_legend_names_every_panels_methods_in_distinct_colours(tmp_path, monkeypatch):
    # The legend was once the first panel's only, and 9 colours went round 11 methods (wavelet in unet's).
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    records = [
        {
            "method": f"m{i}",
            "kind": "learned" if i < 6 else "baseline",
            "noise": f"gaussian:{lv}",
            "level": lv,
            "psnr": 20.0 - lv + i,
        }
        for i in range(11)
        for lv in (0.3, 0.5)
    ]
    records += [
        {"method": "sp-only", "kind": "learned", "noise": f"salt_pepper:{p}", "level": p, "psnr": 25.0 - p}
        for p in (0.1, 0.2)
    ]
    plots.plot_psnr_vs_noise(records, tmp_path / "p.png")
    (fig,) = figures
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(labels) == sorted([f"m{i}" for i in range(11)] + ["sp-only"])
    colours = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert len(set(colours.values())) == len(colours) == 12


@pytest.mark.parametrize(
    ("peaks", "labelled"),
    [
        ((5, 10, 20, 30, 50), ["5", "10", "20", "30", "50"]),
        ((10, 20), ["10", "20"]),
        # A dense sweep: peaks closer than a tenth of the span (in log terms) to the last label go unlabelled.
        ((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1000), ["1", "2", "4", "8", "100", "1000"]),
        # The largest peak is labelled even when the one before it was: it ends the axis.
        ((1, 2, 3, 4, 5, 6, 7, 8, 9, 10), ["1", "2", "3", "4", "6", "10"]),
        ((5, 100, 110), ["5", "110"]),
    ],
)
def test_poisson_axis_is_labelled_at_the_evaluated_peaks(tmp_path, monkeypatch, peaks, labelled):
    # On about a decade of peaks matplotlib's log axis labelled minor ticks "2x10^1", "3x10^1", "4x10^1",
    # and they ran into each other; the evaluated peaks, as plain numbers, say what was measured.
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    records = [
        {"method": "unet", "kind": "learned", "noise": f"poisson:{p}", "level": p, "psnr": 10.0 + p / 10}
        for p in peaks
    ]
    plots.plot_psnr_vs_noise(records, tmp_path / "p.png")
    (ax,) = figures[0].axes
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == labelled
    assert [t.get_text() for t in ax.get_xticklabels(minor=True)] == []


@pytest.mark.parametrize("giant", [False, True])
@pytest.mark.parametrize("n_long", [1, 2, 3, 5])
def test_psnr_vs_noise_legend_fits_the_figure(tmp_path, monkeypatch, n_long, giant):
    # Three long run names were laid side by side in a 5.4-inch figure and cut off at both edges.
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    methods = [f"unpool@tf-unpool-argmax-relu-run-{i}" for i in range(n_long)]
    methods += ["noisy input"] + ["x" * 90] * giant  # and one longer than the figure is wide
    records = [
        {
            "method": m,
            "kind": "noisy" if m == "noisy input" else "learned",
            "noise": f"gaussian:{lv}",
            "level": lv,
            "psnr": 20.0 - lv,
        }
        for m in methods
        for lv in (0.3, 0.5)
    ]
    plots.plot_psnr_vs_noise(records, tmp_path / "p.png")
    fig = figures[0]
    fig.canvas.draw()
    box, frame = fig.legends[0].get_window_extent(), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1, (box, frame)
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == sorted(methods)


def test_error_map_titles_wrap_to_their_column(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    x = torch.rand(2, 1, 28, 28)
    names = ["upsample @gaussian:0.5 bce", "transpose @gaussian:0.5 mse"]
    plots.plot_error_maps(x, {n: torch.rand(2, 1, 28, 28) for n in names}, tmp_path / "e.png")
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_title() not in ("", "clean")]
    assert [t.replace("\n", " ") for t in titles] == names  # the whole label, in lines that fit a column
    assert max(len(line) for t in titles for line in t.splitlines()) <= 16


def test_a_poisson_runs_report_shows_photon_peaks_not_near_pure_noise():
    from dae.report import _noise_specs

    assert [level for _, level in _noise_specs("poisson:30", None)] == [5, 20, 50]
    assert [level for _, level in _noise_specs("gaussian:0.5", None)] == [0.3, 0.5, 0.7, 0.9]
    assert [spec for spec, _ in _noise_specs("block:third", None)][0] == "gaussian:0.3"  # no level of its own


@pytest.mark.parametrize(
    ("train_noise", "levels", "message"),
    [
        ("gaussian:0.5", [], "levels is empty"),
        ("gaussian:0.5", [-1], "gaussian level must be a finite number >= 0"),
        # Were drawn as gaussian:1.5 and gaussian:2, another family than the run's, without a word.
        ("salt_pepper:0.1", [1.5], "salt_pepper fraction must be in"),
        ("mask:0.25", [2], "mask fraction must be in"),
    ],
)
def test_report_levels_its_noise_does_not_take_are_refused(tmp_path, train_noise, levels, message):
    from dae.report import _noise_specs

    with pytest.raises(UsageError, match=message):  # was AssertionError("gaussian always has a sweep")
        _noise_specs(train_noise, levels)
    assert _noise_specs("salt_pepper:0.1", [0.2]) == [("salt_pepper:0.2", 0.2)]
    run = make_synthetic_run(tmp_path, eval=False, metrics=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["noise"] = train_noise
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match=message):
        write_report(run, images=digits(2), levels=levels)
    (run / "checkpoints" / "best.safetensors").unlink()  # no model to draw: still refused, not ignored
    with pytest.raises(UsageError, match=message):
        write_report(run, levels=levels)


@pytest.mark.parametrize(
    "run_on, row",
    [
        (
            {"device": "cpu", "precision": "bf16", "processes": 1, "threads": 2, "torch": "2.13.0+cpu"},
            "bf16 (asked: auto) on cpu, 1 process x 2 threads, torch 2.13.0+cpu",
        ),
        (
            {"device": "cuda:1", "precision": "fp32", "processes": 4, "threads": 1},
            "fp32 (asked: auto) on cuda:1, 4 processes x 1 thread",
        ),
        (None, "\u2014"),  # a checkpoint from before dae recorded it
    ],
)
def test_summary_says_what_the_training_ran_with(tmp_path, run_on, row):
    run = make_synthetic_run(tmp_path, eval=False, trained_with=run_on, precision="auto")
    # A later segment asked for fp32 (config.yaml); the best checkpoint is from the one that asked for auto.
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["precision"] = "fp32"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = write_report(run, images=digits(4), levels=LEVELS, n_images=4).read_text()
    assert f"<tr><th>trained with</th><td>{row}</td></tr>" in page


@pytest.mark.parametrize(
    ("specs", "caption"),
    [
        (["poisson:5", "poisson:50"], "Columns: poisson peak (photons; more is less noise)."),
        (["gaussian:0.3", "gaussian:0.5"], "Columns: gaussian noise level."),
    ],
)
def test_the_tables_columns_say_what_the_level_is(specs, caption):
    # Poisson's columns were called a "noise level"; they are photon peaks, as the figure's axis says.
    from dae.report import eval_table

    records = [{"method": "median", "kind": "baseline", "noise": s, "psnr": 20.0, "ssim": 0.5} for s in specs]
    assert caption in str(eval_table(records))


@pytest.mark.parametrize(
    ("train_noise", "said", "grid"),
    [
        ("block:third", True, "gaussian:0.3, gaussian:0.5"),
        ("gaussian:0.1-0.9", False, "gaussian:0.3, gaussian:0.5"),
        # Written as parse_noise takes them: the grid is the run's own family, and no stand-in is claimed.
        ("Gaussian:0.5", False, "gaussian:0.3, gaussian:0.5"),
        ("mask: 0.5", False, "mask:0.3, mask:0.5"),
    ],
)
def test_a_grid_of_another_noise_than_the_runs_says_so(tmp_path, train_noise, said, grid):
    # A run trained on occlusion got a gaussian grid whose caption did not say it was not its own noise.
    run = make_synthetic_run(tmp_path, eval=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["noise"] = train_noise
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = write_report(run, images=digits(4), n_images=4).read_text()
    assert (f"The run trained on {train_noise}, which has no levels to sweep" in page) == said
    assert f"noise {grid}" in page


def test_figures_the_report_no_longer_draws_are_taken_out_of_figures(tmp_path):
    # With eval/ removed, the next report left psnr_vs_noise.png and ssim_vs_noise.png behind in figures/.
    run = make_synthetic_run(tmp_path)
    write_report(run, images=digits(4), levels=LEVELS, n_images=4)
    assert (run / "figures" / "psnr_vs_noise.png").is_file()
    (run / "figures" / "mine.png").write_bytes(b"not the report's")
    shutil.rmtree(run / "eval")
    write_report(run, images=digits(4), levels=LEVELS, n_images=4)
    left = {p.name for p in (run / "figures").iterdir()}
    assert "psnr_vs_noise.png" not in left and "ssim_vs_noise.png" not in left
    assert {"denoise_grid.png", "training_curves.png", "mine.png"} <= left  # drawn again; not the report's


def test_figures_drawn_now_are_kept_whatever_the_file_systems_clock_says(tmp_path, monkeypatch):
    # Kept by "written after the report started": a share whose clock runs behind lost every figure drawn.
    import os
    import time

    run = make_synthetic_run(tmp_path)
    write_report(run, images=digits(4), levels=LEVELS, n_images=4)
    real = plots._save

    def behind(fig, path):
        drawn = real(fig, path)
        os.utime(drawn, (time.time() - 60, time.time() - 60))
        return drawn

    monkeypatch.setattr(plots, "_save", behind)
    write_report(run, images=digits(4), levels=LEVELS, n_images=4)
    left = {p.name for p in (run / "figures").iterdir()}
    assert {"denoise_grid.png", "training_curves.png", "psnr_vs_noise.png"} <= left, left


def test_a_folder_in_the_way_of_report_html_is_refused_before_any_drawing(tmp_path):
    run = make_synthetic_run(tmp_path)
    (run / "report.html").mkdir()
    with pytest.raises(UsageError, match=r"report\.html is not a file: the report is written there"):
        write_report(run, images=digits(4), levels=LEVELS, n_images=4)
    assert list((run / "figures").iterdir()) == []  # it was refused only after every figure was drawn


def test_the_bold_best_is_chosen_among_methods_scored_on_the_same_images():
    from dae.report import eval_table

    def r(method, psnr, n, kind="baseline"):
        return {
            "method": method,
            "kind": kind,
            "noise": "gaussian:0.5",
            "level": 0.5,
            "psnr": psnr,
            "ssim": 0.5,
            "n_images": n,
        }

    page = str(eval_table([r("unet", 20.0, 300, "learned"), r("tv", 18.0, 300), r("nlm", 25.0, 40)]))
    assert page.count('<b class="best">') == 1 and '<b class="best">20.00 / 0.500</b>' in page
    older = [{k: v for k, v in x.items() if k != "n_images"} for x in (r("unet", 20.0, 0), r("tv", 18.0, 0))]
    assert '<b class="best">20.00 / 0.500</b>' in str(eval_table(older))  # records without counts still rank


def test_an_evaluation_of_another_generation_than_the_best_is_flagged(tmp_path):
    from dae.evaluate import evaluate

    run = make_synthetic_run(tmp_path, name="gen", eval=False, metrics=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    torch.manual_seed(0)
    save_checkpoint(
        create_model("_report_tiny_conv"), run / "checkpoints" / "best.safetensors", config=config, step=222
    )
    torch.manual_seed(1)
    other = run / "checkpoints" / "step-00000216.safetensors"
    save_checkpoint(create_model("_report_tiny_conv"), other, config=config, step=216)
    evaluate([other], images=digits(4), levels=[0.5], out=run / "eval", verbose=False)
    page = write_report(run, images=digits(2), levels=(0.5,)).read_text()
    assert re.search(
        r"these results are of step-00000216.safetensors \(_report_tiny_conv@gen at step 216\), not of the run"
        r"&#x27;s best checkpoint \(step 222\): rerun `dae eval --checkpoint .*gen`",
        page,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": ["a"]}, "levels must be numbers"),
        ({"n_images": 0}, "n_images must be a whole number >= 1"),
        ({"n_images": -1}, "n_images must be a whole number >= 1"),
        ({"images": torch.full((2, 1, 28, 28), 128, dtype=torch.uint8)}, r"float \(N, C, H, W\) tensor"),
    ],
)
def test_bad_report_arguments_are_refused_before_anything_is_written(kwargs, message, tmp_path):
    run = make_synthetic_run(tmp_path, name="args")
    before = sorted(run.rglob("*"))
    with pytest.raises(UsageError, match=message):
        write_report(run, **kwargs)
    assert sorted(run.rglob("*")) == before


def test_one_report_level_may_be_given_as_a_number(tmp_path):
    run = make_synthetic_run(tmp_path, name="one")
    assert write_report(run, images=digits(2), levels=0.3).is_file()
