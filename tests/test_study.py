import csv
import json
import math

import pytest
import torch

from dae.errors import Interrupted, PartialFailure
from dae.study import (
    WHITE,
    StudySettings,
    answer_artefacts,
    answer_beyond,
    answer_compare,
    answer_occlusion,
    answer_train_level,
    caveat,
    not_denoising,
    period2_share,
    run_experiments,
    white_share,
)


def rec(method, noise, psnr, kind="learned", train_noise=None, level=None, n_images=10):
    if level is None and ":" in noise:
        try:
            level = float(noise.split(":")[1])
        except ValueError:
            level = None
    return {
        "method": method,
        "kind": kind,
        "noise": noise,
        "level": level,
        "psnr": psnr,
        "train_noise": train_noise,
        "n_images": n_images,
    }


def matrix_records(lo_scores, hi_scores, blind_scores, levels=(0.3, 0.5, 0.7, 0.9)):
    out = []
    for name, tn, scores in (
        ("a", "gaussian:0.3", lo_scores),
        ("b", "gaussian:0.8", hi_scores),
        ("c", "gaussian:0.1-0.9", blind_scores),
    ):
        out += [
            rec(name, f"gaussian:{lv:g}", s, train_noise=tn) for lv, s in zip(levels, scores, strict=True)
        ]
    return out


def test_train_level_answer_follows_the_numbers():
    crossing = answer_train_level(matrix_records([30, 25, 20, 15], [28, 24, 21, 18], [29, 25, 21, 17]))
    assert "higher PSNR than training at 0.3 at test levels >= 0.7" in crossing
    assert "by up to 3.00 dB" in crossing and "better by up to 2.00 dB" in crossing
    assert "at most 1.00 dB behind the better specialist (0.50 dB behind on average)." in crossing
    ahead = answer_train_level(matrix_records([30, 25, 20, 15], [28, 24, 21, 18], [29.5, 27, 23, 20]))
    assert "at most 0.50 dB behind the better specialist (1.38 dB ahead on average)" in ahead
    # A blind model not tested at 0.3: each gap is put beside its own level (they were zipped with the list)
    partial = [
        r for r in matrix_records([30, 25, 20, 15], [28, 24, 21, 18], [9, 26, 20, 19]) if r["psnr"] != 9
    ]
    assert "(0.33 dB ahead on average); it beat both at 0.5, 0.9." in answer_train_level(partial)
    always = answer_train_level(matrix_records([20, 19, 18, 17], [28, 24, 21, 18], [29, 25, 22, 19]))
    assert "Training at 0.8 gave higher PSNR than training at 0.3 at every test level" in always
    assert "matched or beat both specialists" in always
    never = answer_train_level(matrix_records([30, 25, 22, 19], [28, 24, 21, 18], [29, 25, 21, 17]))
    assert "Training at 0.3 gave higher PSNR than training at 0.8 at every test level" in never
    assert len({crossing, always, never}) == 3


def test_compare_answer_names_the_measured_winner():
    recs = [
        rec("mse", "gaussian:0.5", 20.0),
        rec("bce", "gaussian:0.5", 21.5),
        rec("mse", "gaussian:0.7", 18.0),
        rec("bce", "gaussian:0.7", 17.0),
    ]
    text = answer_compare(recs, ["mse", "bce"])
    assert text.startswith("bce had the highest mean PSNR (19.25 dB") and "best at 1 of 2" in text
    recs[1]["psnr"] = 19.0
    assert answer_compare(recs, ["mse", "bce"]).startswith("mse had the highest mean PSNR (19.00 dB")
    assert "Not enough" in answer_compare(recs, ["mse", "missing"])


def test_artefact_measure_and_answer():
    h = w = 28
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(w)] for i in range(h)])
    assert period2_share(checker) == pytest.approx(1.0)
    noise = torch.randn(200, h, w, generator=torch.Generator().manual_seed(0))
    assert period2_share(noise) == pytest.approx(white_share(h, w), rel=0.1)
    white = white_share(h, w)
    rows = [
        {"method": "transpose", "period2_share": 0.30, "mean_map_share": 0.5, "white_share": white},
        {"method": "upsample", "period2_share": 0.06, "mean_map_share": 0.1, "white_share": white},
        {"method": WHITE, "period2_share": white, "mean_map_share": white, "white_share": white},
    ]
    text = answer_artefacts(rows)
    assert text.startswith("transpose concentrated") and "Above 1.5x white: transpose" in text
    rows[0]["period2_share"] = 0.05
    assert "None exceeded 1.5x" in answer_artefacts(rows)


def test_occlusion_and_beyond_answers():
    occ = [
        rec("noisy input", "block:third", 10.0, kind="noisy"),
        rec("g", "block:third", 12.0),
        rec("blk", "block:third", 15.0),
    ]
    assert "blk restored best (15.00 dB, +5.00 dB" in answer_occlusion(occ)
    # Every method below the occluded input (a quick study's models, and a slow baseline's subset floor):
    # was "g restored best (9.00 dB, -1.00 dB over the occluded input ...)".
    occ = [
        rec("noisy input", "block:third", 10.0, kind="noisy"),
        rec("noisy input, first 200", "block:third", 11.0, kind="noisy"),
        rec("g", "block:third", 9.0),
        rec("blk", "block:third", 8.5),
    ]
    text = answer_occlusion(occ)
    assert "no method restored the image: the occluded input itself scores 10.00 dB" in text
    assert "the best, g, 9.00 dB (-1.00 dB; worst 8.50 dB)" in text and "restored best" not in text
    assert "g restored best (9.00 dB; worst 8.50 dB)." in answer_occlusion(occ[2:])  # no floor: no "nan dB"
    beyond = [
        rec("unet", "salt_pepper:0.1", 25.0),
        rec("median", "salt_pepper:0.1", 22.0, kind="baseline"),
        rec("unet", "salt_pepper:0.2", 20.0),
        rec("median", "salt_pepper:0.2", 21.0, kind="baseline"),
    ]
    text = answer_beyond(beyond)
    assert "at 1 of 2 levels (margin -1.00 to +3.00 dB)" in text


def test_models_no_better_than_their_input_are_named():
    g = "gaussian:0.5"
    records = [
        rec("noisy input", "gaussian:0.3", 13.0, kind="noisy"),
        rec("noisy input", "gaussian:0.5", 9.0, kind="noisy"),
        rec("noisy input", "block:third", 13.2, kind="noisy"),
        rec("median", "gaussian:0.3", 5.0, kind="baseline"),  # only learned models are judged
        rec("good", "gaussian:0.3", 20.0, train_noise=g),
        rec("good", "gaussian:0.5", 18.0, train_noise=g),
        rec("good", "block:third", 11.3, train_noise=g),  # worse on noise it never saw: a finding, not a flag
        rec("flat", "gaussian:0.3", 6.3, train_noise=g),
        rec("flat", "gaussian:0.5", 6.3, train_noise=g),
        rec("equal", "gaussian:0.3", 13.0, train_noise="gaussian:0.1-0.9"),
        rec("equal", "gaussian:0.5", 9.0, train_noise="gaussian:0.1-0.9"),
        rec("mixed", "gaussian:0.3", 12.0, train_noise=g),  # worse at 0.3, better at 0.5: it did learn
        rec("mixed", "gaussian:0.5", 11.0, train_noise=g),
        rec("occluder", "block:third", 10.0, train_noise="block:quarter"),  # same family: judged
        rec("noisy input", "gaussian:0.9", 6.4, kind="noisy"),
        # Beats the input at 0.3 and 0.9, yet worse at its own 0.5: it did not learn (seen in a quick study).
        rec("lucky", "gaussian:0.3", 13.5, train_noise=g),
        rec("lucky", "gaussian:0.5", 6.5, train_noise=g),
        rec("lucky", "gaussian:0.9", 6.5, train_noise=g),
        # The same score whatever the noise: a constant output, better than the input at heavy noise.
        rec("constant", "gaussian:0.3", 10.2, train_noise=g),
        rec("constant", "gaussian:0.5", 10.24, train_noise=g),
        rec("constant", "gaussian:0.9", 10.22, train_noise=g),
        rec("learned", "gaussian:0.3", 21.0, train_noise=g),
        rec("learned", "gaussian:0.5", 19.0, train_noise=g),
        rec("learned", "gaussian:0.9", 15.0, train_noise=g),
    ]
    assert not_denoising(records) == ["flat", "equal", "occluder", "lucky", "constant"]
    assert not_denoising([r for r in records if r["kind"] != "noisy"]) == []  # nothing to judge against
    text = caveat(["flat", "equal"], 8)
    assert text.startswith("Not a finding: flat and equal had not learned to denoise")
    assert "in 8 s of training" in text and "--budget" in text
    assert caveat([], 8) == ""


def test_study_end_to_end_tiny(tmp_path, data_dir):
    settings = StudySettings(
        train_seconds=1.5, limit=256, val_size=64, n_test=40, slow_limit=5, baselines=("median",)
    )
    experiments = ["loss", "code"]
    lines = []
    html, sections = run_experiments(
        tmp_path / "study",
        settings,
        experiments,
        str(data_dir),
        seed=0,
        log=lambda *a, **k: lines.append(" ".join(map(str, a))),
    )
    assert html.exists() and (tmp_path / "study" / "study.json").exists()
    page = html.read_text()
    assert "MSE vs cross-entropy" in page and "code layer" in page and "data:image/png;base64" in page
    data = json.loads((tmp_path / "study" / "study.json").read_text())
    assert set(data["experiments"]) == set(experiments)
    loss = data["experiments"]["loss"]
    assert {r["method"] for r in loss["records"]} >= {
        "upsample @gaussian:0.5 bce",
        "upsample @gaussian:0.5 mse",
    }
    assert all(math.isfinite(r["psnr"]) for r in loss["records"])
    # Models that had not learned in 1.5 s are named, and the answer says it is not a finding.
    # What each model's budget bought, and how it does on its own noise, are in the json, csv and page.
    training = {r["method"]: r for r in loss["training"]}
    assert set(training) == {r["method"] for r in loss["records"] if r["kind"] == "learned"}
    for row in training.values():
        assert row["train_noise"] == "gaussian:0.5" and 0 < row["best_step"] <= row["steps"]
    # Named: those the section's own numbers condemn, and exactly those others no better than the noisy input
    # on their own noise (these models' own noise is among the section's levels: nobody else is named).
    own_failures = {m for m, row in training.items() if row["psnr"] <= row["noisy_psnr"]}
    assert set(loss["not_denoising"]) == set(not_denoising(loss["records"])) | own_failures
    assert "Training (same seconds each)" in page
    assert loss["answer"].startswith("Not a finding") == bool(loss["not_denoising"])
    assert ("Read this first" in page) == bool(loss["not_denoising"])
    answer = loss["answer"].removeprefix(caveat(loss["not_denoising"], settings.train_seconds) + " ")
    assert answer.split(" had the highest")[0] in {r["method"] for r in loss["records"]}
    assert data["experiments"]["code"]["extra"] and data["experiments"]["code"]["extra"][0]["code_size"] > 0
    with open(tmp_path / "study" / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["experiment"] for r in rows} == set(experiments)
    assert {r["method"] for r in rows if r["kind"] == "training" and r["experiment"] == "loss"} == set(
        training
    )
    assert any(r["psnr"] and float(r["psnr"]) > 0 for r in rows if r["experiment"] == "loss")
    assert any(line.startswith("[study] train") for line in lines)
    # A second run reuses the cached models instead of training them again.
    lines.clear()
    run_experiments(
        tmp_path / "study",
        settings,
        ["loss"],
        str(data_dir),
        seed=0,
        log=lambda *a, **k: lines.append(" ".join(map(str, a))),
    )
    assert not any(line.startswith("[study] train") for line in lines)
    assert sum(line.startswith("[study] reuse") for line in lines) == 2


def test_a_model_that_never_learned_is_named_where_only_other_noise_is_tested(
    tmp_path, data_dir, monkeypatch
):
    # The occlusion experiment tests gaussian-trained models on blocks only: one that had 7 steps (and was
    # worse than its input on its own noise) read as "no method restored the image", a finding.
    import dae.study as study

    sp = study.spec("unet")

    def experiment(st):
        st.checkpoints[sp] = tmp_path / "unused.safetensors"
        sec = study.Section("occ", "Occlusion", "set-up")
        sec.records = [
            rec("noisy input", "block:third", 14.4, kind="noisy"),
            rec(sp.label, "block:third", 6.8),
        ]
        sec.answer = answer_occlusion(sec.records)
        return sec

    def evaluate(self, specs, noise, levels, baselines=()):
        assert [s.label for s in specs] == [sp.label] and noise == sp.noise  # its own noise, nothing else
        return [rec("noisy input", noise, 9.4, kind="noisy"), rec(sp.label, noise, 6.8, train_noise=noise)]

    monkeypatch.setitem(study.EXPERIMENTS, "occ", experiment)
    monkeypatch.setattr(study.Study, "evaluate", evaluate)
    block_only = [
        rec("noisy input", "block:third", 14.4, kind="noisy"),
        rec(sp.label, "block:third", 6.8, train_noise=sp.noise),
    ]
    assert not_denoising(block_only) == []  # the section's records alone cannot tell
    _, (sec,) = run_experiments(
        tmp_path / "s", StudySettings(1, 256, 64, 40, 5), ["occ"], str(data_dir), log=print
    )
    assert sec.not_denoising == [sp.label]
    assert sec.answer.startswith("Not a finding: " + sp.label)
    assert sec.training == [
        {
            "method": sp.label,
            "train_noise": "gaussian:0.5",
            "steps": None,  # no run folder here: left out, not a failure
            "best_step": None,
            "psnr": 6.8,
            "noisy_psnr": 9.4,
        }
    ]


def test_an_interrupt_stops_the_study_instead_of_failing_one_model(tmp_path, data_dir, monkeypatch):
    # Interrupted is a DaeError; the study once caught it as "model failed" and trained the next model.
    import dae.train
    from dae.errors import Interrupted

    calls = []

    def interrupted(cfg, **kwargs):
        calls.append(cfg["model"]["name"])
        raise Interrupted("SIGINT: stopped at step 3; checkpoint saved", 130)

    monkeypatch.setattr(dae.train, "train", interrupted)
    settings = StudySettings(train_seconds=1.0, limit=64, val_size=16, n_test=8, slow_limit=2)
    with pytest.raises(Interrupted):
        run_experiments(tmp_path / "s", settings, ["loss"], str(data_dir), log=lambda *a, **k: None)
    assert len(calls) == 1


def test_a_rerun_resumes_the_model_an_interrupt_stopped(tmp_path, data_dir, monkeypatch):
    import os
    import signal

    import dae.train
    from dae.errors import Interrupted

    real_train = dae.train.train
    steps = []

    def interrupt_at_step_3(cfg, **kwargs):
        # A real SIGINT in the middle of the first model's training: the loop saves a checkpoint and stops.
        def on_step(step, loss):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

        return real_train(cfg, on_step=on_step, **kwargs)

    settings = StudySettings(train_seconds=2.0, limit=128, val_size=16, n_test=8, slow_limit=2, batch_size=16)
    lines = []

    def study(train):
        lines.clear()
        monkeypatch.setattr(dae.train, "train", train)
        return run_experiments(
            tmp_path / "s", settings, ["loss"], str(data_dir), log=lambda *a, **k: lines.append(a[0])
        )

    with pytest.raises(Interrupted, match="stopped at step 3"):
        study(interrupt_at_step_3)
    [run] = (tmp_path / "s" / "models").iterdir()
    assert (run / "study-pending.json").exists() and not (run / "study.json").exists()

    def recording(cfg, **kwargs):
        result = real_train(cfg, **kwargs)
        steps.append((kwargs.get("resume"), [row["step"] for row in result.history]))
        return result

    study(recording)
    assert any(line.startswith("[study] resume upsample @gaussian:0.5 bce") for line in lines)
    assert steps[0][0] is True and steps[0][1][0] > 3  # it continued past the saved step 3
    with open(run / "metrics.csv", newline="") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert logged == sorted(set(logged)) and logged[0] == 3  # one log, no step twice
    assert (run / "study.json").exists() and not (run / "study-pending.json").exists()
    assert steps[1][0] is False  # the second model had never started: trained afresh


TINY = dict(train_seconds=1.0, limit=64, val_size=16, n_test=8, slow_limit=2)


def _loss_study(tmp_path, data_dir):
    return run_experiments(
        tmp_path / "s", StudySettings(**TINY), ["loss"], str(data_dir), log=lambda *a, **k: None
    )


def _training_fails_after_a_checkpoint(monkeypatch, error):
    """Each model of the study saves a checkpoint at step 2, then `error` stops its training; returns the undo."""
    import dae.train

    real_train = dae.train.train

    def fails_after_a_checkpoint(cfg, **kwargs):
        real_train({**cfg, "train": {**cfg["train"], "time_budget": None, "steps": 2}}, **kwargs)
        raise error

    monkeypatch.setattr(dae.train, "train", fails_after_a_checkpoint)
    return lambda: monkeypatch.setattr(dae.train, "train", real_train)


def _resumes_on_rerun(tmp_path, data_dir, monkeypatch) -> list:
    """Run the loss experiment again; how each model's training was started (resume=True or False)."""
    import dae.train

    real_train, resumes = dae.train.train, []

    def recording(cfg, **kwargs):
        resumes.append(kwargs.get("resume"))
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(dae.train, "train", recording)
    _loss_study(tmp_path, data_dir)
    return resumes


def test_an_interrupted_model_with_a_damaged_checkpoint_is_trained_again(tmp_path, data_dir, monkeypatch):
    undo = _training_fails_after_a_checkpoint(monkeypatch, Interrupted("SIGINT: stopped at step 2", 130))
    with pytest.raises(Interrupted):
        _loss_study(tmp_path, data_dir)
    undo()
    [run] = (tmp_path / "s" / "models").iterdir()
    for weights in (run / "checkpoints").glob("step-*.safetensors"):
        weights.write_bytes(b"damaged")
    assert _resumes_on_rerun(tmp_path, data_dir, monkeypatch) == [False, False]
    assert (run / "study.json").exists()


def test_bad_budget_or_missing_data_refused_before_anything_is_written(tmp_path, data_dir):
    from dae.errors import ResourceError, UsageError

    settings = StudySettings(train_seconds=0.0, limit=64, val_size=16, n_test=8, slow_limit=2)
    with pytest.raises(UsageError, match="training budget must be more than 0 s"):
        run_experiments(tmp_path / "a", settings, ["loss"], str(data_dir), log=lambda *a, **k: None)
    settings.train_seconds = 1.0
    with pytest.raises(ResourceError, match="nowhere does not exist"):
        run_experiments(
            tmp_path / "b", settings, ["loss"], str(tmp_path / "nowhere"), log=lambda *a, **k: None
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_model_whose_training_failed_is_trained_afresh_not_resumed(tmp_path, data_dir, monkeypatch):
    from dae.errors import TrainingError

    undo = _training_fails_after_a_checkpoint(monkeypatch, TrainingError("loss became nan at step 3"))
    with pytest.raises(PartialFailure, match="2 model"):
        _loss_study(tmp_path, data_dir)
    undo()
    # The diverged run's checkpoint was not continued.
    assert _resumes_on_rerun(tmp_path, data_dir, monkeypatch) == [False, False]


def test_a_second_study_into_the_same_folder_is_refused(tmp_path, data_dir, monkeypatch):
    import dae.study
    from dae.errors import ResourceError
    from dae.fileio import folder_lock

    # Was: the second study cleared the model folder the first was training in, and a rerun reused a model
    # that mixed the two.
    monkeypatch.setattr(dae.study.Study, "ensure", lambda *a, **k: pytest.fail("trained beside the first"))
    out = tmp_path / "s"
    with folder_lock(out, "study folder", "study"):  # the first study, in this process
        with pytest.raises(
            ResourceError, match=r"study folder .*/s is in use by another study \(process \d+\); wait for it"
        ):
            run_experiments(out, StudySettings(**TINY), ["loss"], str(data_dir), log=lambda *a, **k: None)


def test_a_slow_baseline_on_fewer_images_is_not_ranked_against_the_rest():
    beyond = [
        rec("unet", "gaussian:0.5", 20.0, n_images=300),
        rec("tv", "gaussian:0.5", 18.0, kind="baseline", n_images=300),
        rec("bm3d", "gaussian:0.5", 21.0, kind="baseline", n_images=40),  # its first 40 images are easier
    ]
    text = answer_beyond(beyond)
    assert "beat the best classical baseline (tv) at 1 of 1 levels (margin +2.00 to +2.00 dB)" in text
    assert "bm3d, scored on fewer images, not ranked against them" in text


def test_the_code_layer_answer_is_flagged_when_its_models_never_learned(tmp_path, data_dir, monkeypatch):
    import dae.study

    # The code layer's section has no records, only each model's code: its models went unchecked, so an answer
    # on untrained models read as a finding.
    spec = dae.study.ModelSpec("fc")
    seen = {}

    def section(st):
        st.checkpoints[spec] = tmp_path / "unused.safetensors"  # as st.ensure() leaves a trained model
        sec = dae.study.Section("code", "8. The code layer", "setup")
        sec.extra = [{"method": spec.label, "code_size": 64, "code_shape": "64", "zero_fraction": 0.5}]
        sec.answer = f"the sparsest was {spec.label}"
        seen["sec"] = sec
        return sec

    monkeypatch.setitem(dae.study.EXPERIMENTS, "code", section)
    monkeypatch.setattr(dae.study.Study, "training_row", lambda self, sp: {"method": sp.label})
    monkeypatch.setattr(  # no better than its own noisy input
        dae.study.Study,
        "own_noise_records",
        lambda self, sp: [
            rec(sp.label, sp.noise, 9.0, train_noise=sp.noise),
            rec("noisy input", sp.noise, 12.0, kind="noisy"),
        ],
    )
    run_experiments(tmp_path / "s", StudySettings(**TINY), ["code"], str(data_dir), log=lambda *a, **k: None)
    assert seen["sec"].not_denoising == [spec.label]
    assert seen["sec"].answer.startswith("Not a finding")
