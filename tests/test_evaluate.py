import json
import math
from pathlib import Path

import pytest
import torch

from dae.data.noise import make_noisy
from dae.errors import ResourceError, UsageError
from dae.evaluate import DEFAULT_LEVELS, evaluate, noise_specs, train_test_matrix
from dae.models import create_model


def test_noise_specs_expand_levels_and_keep_options():
    assert noise_specs("gaussian,clip=false", [0.1, 0.5]) == [
        ("gaussian:0.1,clip=false", 0.1),
        ("gaussian:0.5,clip=false", 0.5),
    ]
    assert noise_specs("salt_pepper:0.2", None) == [("salt_pepper:0.2", 0.2)]
    with pytest.raises(UsageError):
        noise_specs("gaussian:0.3", [0.1])
    with pytest.raises(UsageError):
        noise_specs("gausian", [0.1])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Gaussian:0.3", [("gaussian:0.3", 0.3)]),  # was recorded as typed, with no level: no plot
        ("gaussian: 0.3", [("gaussian:0.3", 0.3)]),
        ("gaussian:1e-1", [("gaussian:0.1", 0.1)]),
        ("gaussian:1e-5", [("gaussian:1e-05", 1e-05)]),
        ("block:third", [("block:third", None)]),
        ("gaussian:0.1-0.5", [("gaussian:0.1-0.5", None)]),
        ("none+gaussian:0.3", [("none+gaussian:0.3", None)]),  # a composition has no one level
    ],
)
def test_a_full_spec_is_recorded_as_the_parser_writes_it_with_its_level(given, expected):
    assert noise_specs(given, None) == expected


def test_levels_given_twice_are_evaluated_once_and_any_sequence_will_do():
    import numpy as np

    assert noise_specs("Gaussian", [0.5, 0.1, 0.5]) == [("gaussian:0.5", 0.5), ("gaussian:0.1", 0.1)]
    res = evaluate(
        baselines=["median"], images=torch.rand(2, 1, 16, 16), levels=np.array([0.1, 0.3]), verbose=False
    )
    assert [r["level"] for r in res.records if r["method"] == "median"] == [
        0.1,
        0.3,
    ]  # was numpy's "ambiguous"


@pytest.mark.parametrize(
    "levels",
    [
        lambda: torch.tensor([0.3, 0.7]),
        lambda: torch.tensor([0.3, 0.7], dtype=torch.bfloat16),
        lambda: __import__("numpy").array([0.3, 0.7], dtype="float32"),
    ],
)
def test_float32_levels_label_the_results_as_written(levels):
    res = evaluate(baselines=["identity"], images=torch.rand(2, 1, 16, 16), levels=levels(), verbose=False)
    rows = [r for r in res.records if r["method"] == "identity"]
    assert [r["noise"] for r in rows] == ["gaussian:0.3", "gaussian:0.7"]  # not gaussian:0.300000011921
    assert [r["level"] for r in rows] == [0.3, 0.7]
    one = evaluate(
        baselines=["identity"], images=torch.rand(2, 1, 16, 16), levels=torch.tensor(0.5), verbose=False
    )
    assert {r["noise"] for r in one.records} == {"gaussian:0.5"}


def test_levels_built_with_linspace_or_in_long_double_read_as_meant():
    import numpy as np

    from dae.evaluate import as_levels

    assert as_levels(torch.linspace(0.1, 0.9, 9)) == [
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
    ]  # 0.19999999
    assert as_levels(np.array([0.3, 0.7], dtype=np.longdouble)) == [0.3, 0.7]  # was refused as "not numbers"


@pytest.mark.parametrize("levels", ["", ",", []])
def test_empty_levels_are_refused_not_read_as_the_default_sweep(levels):
    with pytest.raises(UsageError, match="levels is empty: .* or leave it out for the family's sweep"):
        evaluate(baselines=["median"], images=torch.rand(2, 1, 16, 16), levels=levels, verbose=False)


def test_every_method_sees_the_same_noisy_images(mnist_test, tmp_path):
    images = mnist_test[:60].clone()
    model = create_model("strided")
    res = evaluate(
        baselines=["identity", "median", "nlm"],
        models=[model],
        images=images,
        levels=[0.3, 0.6],
        slow_limit=25,
        batch_size=16,
        out=tmp_path,
        verbose=False,
    )
    by = {(r["method"], r["noise"]): r for r in res.records}
    for level in ("gaussian:0.3", "gaussian:0.6"):
        # identity returns the noisy input, so it must score exactly the noisy floor.
        assert by[("identity", level)]["psnr"] == pytest.approx(by[("noisy input", level)]["psnr"])
        assert by[("median", level)]["psnr"] > by[("noisy input", level)]["psnr"]
        assert by[("nlm", level)]["n_images"] == 25 and by[("median", level)]["n_images"] == 60
        # nlm's 25 images have a floor of their own beside the 60 images' (nlm was read against the latter).
        subset_floor = by[("noisy input, first 25", level)]
        assert subset_floor["n_images"] == 25 and subset_floor["kind"] == "noisy"
        assert subset_floor["psnr"] != by[("noisy input", level)]["psnr"]
    assert by[("noisy input", "gaussian:0.3")]["psnr"] > by[("noisy input", "gaussian:0.6")]["psnr"]
    assert any("nlm is slow" in note for note in res.notes)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]) == len(res.records) == 2 * 6
    assert (tmp_path / "results.csv").read_text().startswith("method,kind,noise,level,psnr")
    assert (tmp_path / "psnr_vs_noise.png").stat().st_size > 1000


class SigmaSpy:
    """A denoiser of one's own that keeps the noise level evaluation hands it."""

    name, needs_sigma, slow = "spy", True, False

    def __init__(self):
        self.given = []

    def denoise(self, x, sigma=None):
        self.given.append(sigma)
        return x.clone()


def test_given_sigma_is_the_noise_measured_in_each_image(mnist_test):
    # The nominal s was handed over, though clipping leaves less noise than that (about 0.31 at 0.5):
    # non-local means then flattened the digits, 2-3 dB below its own estimate.
    images = mnist_test[:30].clone()
    spy = SigmaSpy()
    res = evaluate(models=[spy], images=images, levels=[0.5], batch_size=16, verbose=False)
    given = [s for batch in spy.given for s in batch]
    assert [len(batch) for batch in spy.given] == [16, 14] and len(set(given)) == 30  # one per image
    assert all(0.2 < s < 0.4 for s in given)
    noisy = make_noisy(images, "gaussian:0.5", 1234)
    assert given[3] == pytest.approx((noisy[3] - images[3]).std().item())
    spied = next(r for r in res.records if r["method"] == "spy")
    assert spied["sigma"] == "given" and any("measured against the clean image" in n for n in res.notes)

    spy = SigmaSpy()
    res = evaluate(models=[spy], images=images, noise="salt_pepper:0.1", verbose=False)
    assert spy.given == [None] and res.records[-1]["sigma"] == "estimated"  # not Gaussian: estimated
    spy = SigmaSpy()
    res = evaluate(models=[spy], images=images, levels=[0.5], sigma="estimate", verbose=False)
    assert spy.given == [None] and res.records[-1]["sigma"] == "estimated"
    assert {r["sigma"] for r in res.records if r["method"] == "noisy input"} == {None}


def test_results_json_is_strict_json_after_an_occlusion_that_erases_everything(mnist_test, tmp_path):
    images = mnist_test[:8].clone()
    res = evaluate(baselines=["tv", "wavelet"], images=images, noise="mask:1", out=tmp_path, verbose=False)
    assert all(math.isfinite(r["psnr"]) for r in res.records)
    json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)  # NaN was written bare


def test_same_seed_same_numbers_batch_size_irrelevant(mnist_test):
    images = mnist_test[:40].clone()
    a = evaluate(baselines=["median"], images=images, levels=[0.5], batch_size=7, verbose=False)
    b = evaluate(baselines=["median"], images=images, levels=[0.5], batch_size=40, verbose=False)
    c = evaluate(baselines=["median"], images=images, levels=[0.5], seed=99, verbose=False)
    assert [r["psnr"] for r in a.records] == [r["psnr"] for r in b.records]
    assert a.records[1]["psnr"] != c.records[1]["psnr"]


def test_matrix_needs_two_training_levels():
    recs = [
        {
            "method": f"m{t}",
            "kind": "learned",
            "train_noise": f"gaussian:{t}",
            "noise": f"gaussian:{s}",
            "psnr": t + s,
        }
        for t in (0.3, 0.8)
        for s in (0.3, 0.5)
    ]
    table = train_test_matrix(recs)
    assert table[0] == ["train_noise", "method", "gaussian:0.3", "gaussian:0.5"]
    assert table[1][2] == pytest.approx(0.6)
    assert train_test_matrix(recs[:2]) is None


def test_nothing_to_evaluate_is_usage_error():
    with pytest.raises(UsageError, match="nothing to evaluate"):
        evaluate(images=torch.rand(2, 1, 28, 28), levels=[0.5])


def test_output_path_that_is_a_file_is_refused_before_evaluating(tmp_path, monkeypatch):
    import dae.evaluate as module

    target = tmp_path / "results.txt"
    target.write_text("mine")
    monkeypatch.setattr(module, "resolve_methods", lambda *a: pytest.fail("evaluated first"))
    with pytest.raises(UsageError, match="results.txt: output path exists and is not a folder"):
        evaluate(baselines=["median"], images=torch.rand(2, 1, 28, 28), levels=[0.5], out=target)
    assert target.read_text() == "mine"


def test_strings_where_lists_belong_are_read_as_on_the_command_line():
    images = torch.rand(3, 1, 28, 28)
    as_lists = evaluate(baselines=["median", "tv"], images=images, levels=[0.3, 0.5], verbose=False)
    as_text = evaluate(baselines="median,tv", images=images, levels="0.3,0.5", verbose=False)
    assert as_text.records == as_lists.records
    one = evaluate(baselines="median", images=images, levels=0.3, verbose=False)
    assert {r["noise"] for r in one.records} == {"gaussian:0.3"}
    with pytest.raises(ResourceError, match="no/such/run"):  # one path, not the letters of one
        evaluate("no/such/run", images=images, levels=[0.3])


def test_levels_default_to_the_sweep_for_a_family_and_a_full_spec_runs_as_is():
    images = torch.rand(2, 1, 28, 28)
    swept = evaluate(baselines=["identity"], images=images, verbose=False)
    assert [r["level"] for r in swept.records if r["kind"] == "noisy"] == list(DEFAULT_LEVELS)
    for spec in ("gaussian:0.3", "none", "block:third", "gaussian:0.2+mask:0.1"):
        res = evaluate(baselines=["identity"], images=images, noise=spec, verbose=False)
        assert {r["noise"] for r in res.records} == {spec}
    with pytest.raises(UsageError, match="already has a level; drop the levels"):
        evaluate(baselines=["identity"], images=images, noise="gaussian:0.3", levels=[0.5])


@pytest.mark.parametrize("family", ["gaussian", "salt_pepper", "mask", "block", "poisson", "speckle"])
def test_each_family_alone_sweeps_levels_in_its_own_units(family):
    from dae.data.noise import NOISES, add_noise

    specs = noise_specs(family, None)
    assert [level for _, level in specs] == [float(v) for v in NOISES.get(family).sweep]
    # The sweep goes from light to heavy: the lightest point keeps the image recognisable. Poisson's peaks are
    # photon counts (fewer is noisier); at 0.1-1.0 every point was nearly pure noise.
    x = torch.rand(4, 1, 28, 28) * 0.5 + 0.25
    error = [float((add_noise(x, spec, seed=0) - x).abs().mean()) for spec, _ in specs]
    lightest = min(error)
    assert lightest < 0.1, (family, error)
    assert max(error) > 2 * lightest


def test_a_level_is_run_exactly_as_recorded():
    specs = noise_specs("gaussian", [0.123456789, 0.5, 1.0, 0.1 + 0.2])
    assert specs == [
        ("gaussian:0.123456789", 0.123456789),
        ("gaussian:0.5", 0.5),
        ("gaussian:1", 1.0),
        ("gaussian:0.3", 0.3),  # float noise in a level is not carried into the spec
    ]
    with pytest.raises(UsageError, match="noise 'none' takes no levels"):
        noise_specs("none", [0.3])


@pytest.mark.parametrize(
    "images, message",
    [
        ((torch.rand(3, 1, 28, 28) * 255).to(torch.uint8), r"float .* got torch.uint8.*"),
        (torch.rand(3, 1, 28, 28) * 255, r"\[0, 1\], got values from .* \(uint8 data: divide by 255\)"),
        (torch.full((2, 1, 28, 28), float("nan")), r"must lie in \[0, 1\], but holds NaN values$"),
        (torch.rand(3, 1, 28, 28) - 0.5, r"got values from -0\.\d+ to 0\.\d+$"),  # no uint8 hint for these
        (torch.rand(0, 1, 28, 28), "images is empty"),
        (torch.rand(28, 28), r"float \(N, C, H, W\) tensor in \[0, 1\], got torch.float32 \(28, 28\)"),
        (torch.rand(2, 1, 8, 8), "8x8 pixels are smaller than SSIM's 11x11 window"),
        ([[0.5]], "got list"),
    ],
)
def test_bad_images_are_refused_before_any_denoising(images, message, monkeypatch):
    import dae.evaluate as module

    monkeypatch.setattr(module, "resolve_methods", lambda *a: [module.Method("m", "baseline", Recorder())])
    monkeypatch.setattr("dae.data.noise.make_noisy", lambda *a: pytest.fail("noised first"))
    with pytest.raises(UsageError, match=message):
        evaluate(baselines=["median"], images=images, levels=[0.5], verbose=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),  # was range()'s ValueError
        ({"batch_size": -1}, "batch_size must be an integer >= 1"),  # was torch.cat's
        ({"levels": []}, "levels is empty"),  # was a message about the spec 'gaussian' needing a value
    ],
)
def test_bad_sizes_and_empty_levels_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        evaluate(
            baselines=["median"],
            images=torch.rand(2, 1, 28, 28),
            verbose=False,
            **{"levels": [0.5], **kwargs},
        )


def test_a_numpy_integer_is_a_batch_size():
    import numpy as np

    res = evaluate(
        baselines=["identity"], images=torch.rand(2, 1, 28, 28), levels=[0.5], batch_size=np.int64(1)
    )
    assert res.records


def test_none_for_a_list_of_methods_means_none():
    res = evaluate(
        None, ["identity"], models=None, images=torch.rand(2, 1, 28, 28), levels=[0.5], verbose=False
    )
    assert {r["method"] for r in res.records} >= {"identity"}


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_limit_must_be_a_positive_count(limit):
    with pytest.raises(UsageError, match="limit must be a positive whole number"):
        evaluate(baselines=["median"], images=torch.rand(4, 1, 28, 28), levels=[0.5], limit=limit)


def test_notes_name_the_images_and_only_the_noise_used():
    images = torch.rand(3, 1, 28, 28)
    note = evaluate(baselines=["median"], images=images, noise="salt_pepper:0.1", verbose=False).notes[0]
    assert note.startswith("the images given, 3 images") and "gaussian" not in note
    note = evaluate(baselines=["median"], images=images, levels=[0.3], verbose=False).notes[0]
    assert "clip(x + s*N(0,1), 0, 1)" in note


class Recorder:
    """A denoiser that returns its input and keeps what it was given."""

    name, needs_sigma = "recorder", False

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def denoise(self, x, sigma=None):
        self.seen.append(x.clone())
        return x


@pytest.mark.parametrize(
    "spec", ["gaussian:0.1-0.9", "block:third", "gaussian:0.3+mask:0.1", "salt_pepper:0.1"]
)
def test_limit_k_sees_the_first_k_noisy_images_of_a_larger_evaluation(mnist_test, spec):
    images = mnist_test[:30].clone()
    few, many = Recorder(), Recorder()
    evaluate(models=[few], images=images, limit=10, noise=spec, verbose=False)
    evaluate(models=[many], images=images, noise=spec, verbose=False)
    assert torch.equal(few.seen[0], many.seen[0][:10])


def test_an_earlier_evaluations_figures_are_not_left_beside_new_results(tmp_path):
    for name in ("matrix.csv", "matrix.png", "psnr_vs_noise.png"):
        (tmp_path / name).write_text("from an earlier evaluation")
    (tmp_path / "notes.txt").write_text("mine")
    res = evaluate(
        baselines=["median"], images=torch.rand(2, 1, 28, 28), noise="none", out=tmp_path, verbose=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "results.csv", "results.json"]
    assert res.files == [tmp_path / "results.csv", tmp_path / "results.json"]


def test_an_interrupted_write_keeps_the_earlier_evaluation_whole(tmp_path, monkeypatch):
    import dae.plots

    first = evaluate(
        baselines=["median"], images=torch.rand(2, 1, 28, 28), levels=[0.2], out=tmp_path, verbose=False
    )
    assert sorted(p.name for p in first.files) == ["psnr_vs_noise.png", "results.csv", "results.json"]
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the figure is drawn

    monkeypatch.setattr(dae.plots, "plot_psnr_vs_noise", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            baselines=["identity"], images=torch.rand(2, 1, 28, 28), levels=[0.4], out=tmp_path, verbose=False
        )
    # The first evaluation stays whole (was: its files deleted, and the second's results.csv alone, which
    # `dae report` showed as the run's evaluation); nothing of the second is left aside.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psnr_vs_noise.png", "results.csv", "results.json"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved


def test_a_full_disk_while_writing_results_keeps_the_earlier_evaluation(tmp_path, monkeypatch):
    import dae.fileio

    evaluate(baselines=["median"], images=torch.rand(2, 1, 28, 28), levels=[0.2], out=tmp_path, verbose=False)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = dae.fileio.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "results.json":
            raise dae.fileio.WriteError(Path(path), "No space left on device")
        real(path, data)

    monkeypatch.setattr(dae.fileio, "atomic_write_bytes", full)
    with pytest.raises(ResourceError, match="No space left"):
        evaluate(baselines=["tv"], images=torch.rand(2, 1, 28, 28), levels=[0.4], out=tmp_path, verbose=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved


def test_a_result_file_in_the_way_is_refused_before_the_work(tmp_path, monkeypatch):
    import dae.evaluate

    (tmp_path / "results.json").mkdir()
    monkeypatch.setattr(dae.evaluate, "resolve_methods", lambda *a, **k: pytest.fail("evaluated first"))
    with pytest.raises(ResourceError, match="results.json: cannot replace the earlier evaluation's file"):
        evaluate(
            baselines=["median"], images=torch.rand(2, 1, 28, 28), levels=[0.2], out=tmp_path, verbose=False
        )


def test_a_result_file_that_cannot_be_replaced_is_a_resource_error(tmp_path):
    (tmp_path / "matrix.png").mkdir()  # a folder where the earlier evaluation's figure would be
    with pytest.raises(ResourceError, match="matrix.png: cannot replace the earlier evaluation's file"):
        evaluate(
            baselines=["median"], images=torch.rand(2, 1, 28, 28), levels=[0.2], out=tmp_path, verbose=False
        )


def test_checkpoints_are_evaluated_on_the_data_they_were_trained_on(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import dae

    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(6):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(
            tmp_path / "photos" / f"p{i}.png"
        )
    monkeypatch.chdir(tmp_path)  # the run records its relative --data-dir as an absolute path
    data = {"dataset": "folder", "data_dir": "photos", "patch_size": 16, "val_size": 8}
    model = {"name": "strided", "kwargs": {"in_channels": 3}}
    dae.train(
        {"data": data, "model": model, "train": {"steps": 2, "batch_size": 4}, "out": "run"}, progress=False
    )
    monkeypatch.chdir(tmp_path / "run")
    res = evaluate([tmp_path / "run"], ["median"], levels=[0.2], verbose=False)
    assert res.notes[0].startswith("dataset folder/test")
    assert {r["n_images"] for r in res.records} == {16}  # the folder's test crops, not 10,000 MNIST digits


def test_checkpoints_trained_on_different_data_need_a_dataset(tmp_path):
    from dae.evaluate import Method, _training_data

    def method(data):
        return Method("m", "learned", None, trained_on=data)

    assert _training_data([method(None)]) == ("mnist", None)
    # MNIST is found the usual way when the run's recorded folder is gone (a run moved to another machine),
    # else read where training read it; a folder run's folder is kept.
    assert _training_data([method({"dataset": "mnist"}), method({"dataset": "mnist", "data_dir": "/d"})]) == (
        "mnist",
        None,
    )
    there = {"dataset": "mnist", "data_dir": str(tmp_path)}
    assert _training_data([method({"dataset": "mnist"}), method(there)]) == ("mnist", str(tmp_path))
    assert _training_data([method({"dataset": "folder", "data_dir": "/a"})]) == ("folder", "/a")
    for other in ({"dataset": "fashion-mnist"}, {"dataset": "folder", "data_dir": "/b"}):
        with pytest.raises(UsageError, match="trained on different data: .*; choose one with --dataset"):
            _training_data([method({"dataset": "folder", "data_dir": "/a"}), method(other)])


def test_two_checkpoints_of_one_run_are_labelled_by_file(tmp_path, data_dir):
    import dae

    cfg = {
        "model": {"name": "strided"},
        "data": {"data_dir": str(data_dir), "limit": 256, "val_size": 16},
        "train": {"steps": 4, "val_every": 2, "batch_size": 8},
        "out": str(tmp_path / "run"),
    }
    dae.train(cfg, progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    images = torch.rand(2, 1, 28, 28)
    paths = [ckpts / "best.safetensors", ckpts / "step-00000004.safetensors", ckpts / "best.safetensors"]
    res = evaluate(paths, images=images, levels=[0.5], verbose=False)
    assert [r["method"] for r in res.records[1:]] == [
        "strided@run:best#1",
        "strided@run:step-00000004",
        "strided@run:best#2",
    ]


def test_an_unknown_family_is_named_as_given():
    from dae.evaluate import noise_specs

    with pytest.raises(UsageError, match="unknown noise 'bogus'") as caught:
        noise_specs("bogus", [0.1, 0.3])
    assert "bogus:0.1" not in str(caught.value)  # once quoted a spec the user never typed


def test_the_terminal_table_keeps_long_noise_specs_apart():
    from dae.evaluate import format_table

    specs = ["gaussian:0.3,clip=false", "gaussian:0.5,clip=false"]
    records = [{"method": "median", "noise": s, "psnr": 20.0 + i} for i, s in enumerate(specs)]
    head, rule, row = format_table(records).splitlines()
    assert head.split() == ["PSNR", *specs]
    assert row.split() == ["median", "20.000", "21.000"]
    assert len(head) == len(rule) == len(row)  # the numbers stand under their specs


@pytest.mark.parametrize("levels", [["a"], [None], "0.3,x"])
def test_levels_that_are_not_numbers_are_a_usage_error(levels):
    with pytest.raises(UsageError, match="levels"):
        evaluate(baselines=["identity"], images=torch.rand(2, 1, 28, 28), levels=levels, verbose=False)


def test_ctrl_c_while_results_are_swapped_in_lands_after_the_whole_new_set(tmp_path, monkeypatch):
    import os
    import signal
    import threading

    import dae.evaluate

    evaluate(
        baselines=["identity"], images=torch.rand(2, 1, 28, 28), levels=[0.2], out=tmp_path, verbose=False
    )
    # A thread that does not hold the signal back, as torch's workers: the kernel gave it the Ctrl-C, and a
    # signal mask on the main thread alone then held back nothing.
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    real, swapped = os.replace, []

    def replace(src, dst):
        real(src, dst)
        if Path(dst).parent == tmp_path:  # one file of the set swapped in, the rest to come
            swapped.append(Path(dst).name)
            if len(swapped) == 1:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(dae.evaluate.os, "replace", replace)
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate(
                baselines=["median"],
                images=torch.rand(2, 1, 28, 28),
                levels=[0.4],
                out=tmp_path,
                verbose=False,
            )
    finally:
        stop.set()
        worker.join()
    assert swapped == ["results.csv", "psnr_vs_noise.png", "results.json"]  # all of it, before the interrupt
    assert "median" in (tmp_path / "results.csv").read_text()
    assert {r["method"] for r in json.loads((tmp_path / "results.json").read_text())["records"]} >= {"median"}
    assert "identity" not in (tmp_path / "results.json").read_text()


def test_two_evaluations_writing_into_one_folder_take_turns(tmp_path, monkeypatch):
    import threading

    import dae.evaluate
    from dae.fileio import folder_turn

    result = evaluate(baselines=["median"], images=torch.rand(2, 1, 28, 28), levels=[0.4], verbose=False)
    with folder_turn(tmp_path):  # another evaluation is writing
        writer = threading.Thread(target=dae.evaluate.write_results, args=(result, tmp_path))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and not (tmp_path / "results.json").exists()  # it waits its turn
    writer.join(timeout=30)
    assert not writer.is_alive() and "median" in (tmp_path / "results.json").read_text()
