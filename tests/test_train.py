import contextlib
import os
import re
import signal

import pytest
import torch

import dae.train as train_module  # the module, for patching its helpers
from dae.checkpoint import load_checkpoint, load_model
from dae.errors import CheckpointError, ResourceError, Terminated, TrainingError, UsageError
from dae.train import Interrupted, train


def small_config(tmp_path, data_dir, name="run", **train_kw):
    train_cfg = {"batch_size": 64, "lr": 2e-3, "warmup_steps": 2, "noise": "gaussian:0.5", **train_kw}
    return {
        "out": str(tmp_path / name),
        "data": {"data_dir": str(data_dir), "limit": 256, "val_size": 128},
        "model": {"name": "strided"},
        "train": train_cfg,
    }


def weights(path):
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_loss_goes_down_and_run_dir_is_complete(tmp_path, data_dir):
    losses = []
    cfg = small_config(tmp_path, data_dir, steps=40)
    cfg["data"]["limit"] = 1024
    result = train(cfg, progress=False, on_step=lambda step, loss: losses.append(loss) and False)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    run = result.run_dir
    assert (run / "config.yaml").exists() and (run / "metrics.csv").exists()
    assert (run / "checkpoints" / "best.safetensors").exists() and (
        run / "checkpoints" / "best.json"
    ).exists()
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "val_psnr" in header and "images_per_s" in header
    assert result.best_val_psnr > 10


def test_resume_is_bitwise_exact(tmp_path, data_dir):
    straight = train(small_config(tmp_path, data_dir, "a", epochs=2), progress=False)
    # Same run, stopped after the first epoch (4 steps) as a signal would stop it, then resumed.
    train(small_config(tmp_path, data_dir, "b", epochs=2), progress=False, on_step=lambda s, _: s == 4)
    resumed = train(small_config(tmp_path, data_dir, "b", epochs=2), resume=True, progress=False)
    assert resumed.step == straight.step == 8
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_epoch_is_bitwise_exact(tmp_path, data_dir):
    straight = train(small_config(tmp_path, data_dir, "a", epochs=2), progress=False)
    # Stopped after step 3 of the 4 in an epoch: resuming must pick up the same epoch order and position.
    train(small_config(tmp_path, data_dir, "b", epochs=2), progress=False, on_step=lambda s, _: s == 3)
    resumed = train(small_config(tmp_path, data_dir, "b", epochs=2), resume=True, progress=False)
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_run_whose_noise_was_drawn_on_another_device(tmp_path, data_dir, monkeypatch, capsys):
    # A CUDA generator's state is 16 bytes (seed, offset), a CPU one's 5056: a run started on a GPU machine and
    # resumed on a laptop (or back) once died in Generator.set_state with a traceback.
    train(small_config(tmp_path, data_dir, epochs=2), progress=False, on_step=lambda s, _: s == 4)
    load = train_module.load_checkpoint

    def from_a_gpu(*args, **kwargs):
        ck = load(*args, **kwargs)
        if ck.state is not None:  # the training state, not the best checkpoint's check
            ck.state["noise_rng"] = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0] + [0] * 8, dtype=torch.uint8)
        return ck

    monkeypatch.setattr(train_module, "load_checkpoint", from_a_gpu)
    capsys.readouterr()
    resumed = train(small_config(tmp_path, data_dir, epochs=2), resume=True, progress=False)
    assert resumed.step == 8
    assert "drew its noise on another kind of device than cpu" in capsys.readouterr().err


def test_resume_of_a_finished_run_trains_nothing(tmp_path, data_dir, capsys):
    done = train(small_config(tmp_path, data_dir, steps=4), progress=False)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    again = train(small_config(tmp_path, data_dir, steps=3), resume=True, progress=False)
    assert again.step == done.step == 4 and again.last_checkpoint == done.last_checkpoint
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # not rewritten with steps it never ran


def test_resume_of_a_finished_run_reports_what_it_trained_on(tmp_path, data_dir, monkeypatch):
    """Not what this process would have resolved "auto" to: it trained nothing."""
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    cfg = {**small_config(tmp_path, data_dir, steps=2, precision="auto"), "model": {"name": "unet"}}
    done = train(cfg, progress=False)  # unet: a network "auto" trains in bf16 on such a CPU
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    again = train(cfg, resume=True, progress=False)
    assert again.step == done.step == 2
    assert again.trained_with == done.trained_with and again.trained_with["precision"] == "bf16"


def test_resume_with_another_model_is_a_usage_error(tmp_path, data_dir):
    from dae.errors import UsageError

    train(small_config(tmp_path, data_dir, steps=2), progress=False)
    cfg = small_config(tmp_path, data_dir, steps=4)
    cfg["model"] = {"name": "unet"}
    with pytest.raises(
        UsageError, match=r"holds model strided \{.*\}; this config's unet \(or its optimizer\) cannot"
    ):
        train(cfg, resume=True, progress=False)  # was "unet  (or", two spaces


def test_keep_last_zero_is_refused(tmp_path, data_dir):
    from dae.errors import UsageError

    with pytest.raises(UsageError, match="keep_last"):
        train(small_config(tmp_path, data_dir, steps=2, keep_last=0), progress=False)


def test_one_epoch_then_resume_for_a_second_matches_two_epochs(tmp_path, data_dir):
    straight = train(small_config(tmp_path, data_dir, "a", epochs=2, schedule="constant"), progress=False)
    train(small_config(tmp_path, data_dir, "b", epochs=1, schedule="constant"), progress=False)
    resumed = train(
        small_config(tmp_path, data_dir, "b", epochs=2, schedule="constant"), resume=True, progress=False
    )
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_trains_with_loss_scaling_and_resumes_exactly(tmp_path, data_dir):
    # fp16 autocast runs on the CPU too, so the GradScaler path (GPU's fp16) is exercised here.
    cfg = small_config(tmp_path, data_dir, "long", steps=40, precision="fp16")
    cfg["data"]["limit"] = 1024
    assert train(cfg, progress=False).best_val_psnr > 10  # as fp32 reaches in 40 steps (10.46 dB both, here)
    straight = train(small_config(tmp_path, data_dir, "a", epochs=2, precision="fp16"), progress=False)
    state = load_checkpoint(straight.last_checkpoint, with_state=True).state
    assert state["grad_scaler"]["scale"] > 0
    train(
        small_config(tmp_path, data_dir, "b", epochs=2, precision="fp16"),
        progress=False,
        on_step=lambda s, _: s == 4,
    )
    resumed = train(
        small_config(tmp_path, data_dir, "b", epochs=2, precision="fp16"), resume=True, progress=False
    )
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_falls_back_to_previous_good_generation(tmp_path, data_dir, capsys):
    cfg = small_config(tmp_path, data_dir, epochs=2)
    first = train(cfg, progress=False)
    gens = sorted((first.run_dir / "checkpoints").glob("step-*.safetensors"))
    assert len(gens) == 2
    gens[-1].write_bytes(gens[-1].read_bytes()[:-50])  # truncate the newest
    cfg["train"]["epochs"] = 3
    # Under torchrun every process reads the generations; only the first names what it skipped.
    assert train_module.latest_good_generation(first.run_dir / "checkpoints", quiet=True).path == gens[0]
    assert capsys.readouterr().err == ""
    resumed = train(cfg, resume=True, progress=False)
    assert "skipping bad checkpoint" in capsys.readouterr().err
    assert resumed.step == 12  # resumed from step 4, not 8


def test_resume_with_no_good_generation_errors(tmp_path, data_dir, capsys):
    cfg = small_config(tmp_path, data_dir, epochs=1)
    first = train(cfg, progress=False)
    for p in (first.run_dir / "checkpoints").glob("step-*.safetensors"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no good checkpoint") as e:
        train(cfg, resume=True, progress=False)
    # Each damaged generation was named once, on its own line; the error itself stays one short line.
    assert "generation(s) are damaged (each named above)" in str(e.value) and "\n" not in str(e.value)
    assert len(capsys.readouterr().err.strip().splitlines()) == len(
        list(first.run_dir.glob("checkpoints/step-*.json"))
    )


def test_resume_where_no_run_was_made_is_a_missing_resource(tmp_path, data_dir):
    # Nothing is corrupt (exit 4): there is nothing to continue (exit 5).
    with pytest.raises(ResourceError, match="no checkpoint to resume from .* start the run without --resume"):
        train(small_config(tmp_path, data_dir, steps=2), resume=True, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_resume_replaces_a_damaged_or_missing_best_checkpoint(tmp_path, data_dir, capsys, damage):
    """It was reported as the run's best (exit 0), and `dae eval` on the run then failed."""
    first = train(small_config(tmp_path, data_dir, steps=2, val_every=1), progress=False)
    best = first.run_dir / "checkpoints" / "best.safetensors"
    if damage == "truncated":
        best.write_bytes(best.read_bytes()[:500])
    else:
        best.unlink()
    finished = train(small_config(tmp_path, data_dir, steps=2), resume=True, progress=False)
    assert finished.best_checkpoint is None  # nothing trained, so nothing better to offer
    assert "the next validation saves a new best checkpoint" in capsys.readouterr().err
    again = train(small_config(tmp_path, data_dir, steps=3, val_every=1), resume=True, progress=False)
    assert again.best_checkpoint == best and load_model(best) is not None
    assert again.best_val_psnr == load_checkpoint(best).record["metrics"]["val_psnr"]


def test_a_fresh_start_does_not_replace_a_best_checkpoint_left_alone(tmp_path, data_dir):
    first = train(small_config(tmp_path, data_dir, steps=2), progress=False)
    for record in (first.run_dir / "checkpoints").glob("step-*"):
        record.unlink()  # the training state is gone; the best model is still there
    kept = (first.run_dir / "checkpoints" / "best.safetensors").read_bytes()
    with pytest.raises(ResourceError, match="already holds checkpoints"):
        train(small_config(tmp_path, data_dir, steps=2), progress=False)
    with pytest.raises(
        ResourceError, match=r"no training state \(step-\*\.json\) is left .* another directory"
    ):
        train(small_config(tmp_path, data_dir, steps=2), resume=True, progress=False)
    assert (first.run_dir / "checkpoints" / "best.safetensors").read_bytes() == kept


def test_an_out_under_home_is_the_home_folder_not_a_folder_named_tilde(tmp_path, data_dir, monkeypatch):
    """`out: ~/runs/x` made ./~/runs/x, for an `rm -rf ~` to clean up."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cfg = small_config(tmp_path, data_dir, steps=2)
    cfg["out"] = "~/runs/x"
    result = train(cfg, progress=False)
    assert result.run_dir == tmp_path / "home" / "runs" / "x" and not (tmp_path / "~").exists()
    assert train(cfg, resume=True, progress=False).step == 2  # reads the same folder's config
    assert load_model("~/runs/x") is not None


def test_a_model_built_for_other_channels_is_refused_before_the_run_folder_is_made(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=2)
    cfg["model"] = {"name": "dncnn", "kwargs": {"in_channels": 3}}
    with pytest.raises(UsageError, match="built for 3-channel images and the training images have 1"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # was config.yaml, figures/ and .lock


def test_running_out_of_memory_is_one_line_naming_the_batch_size(tmp_path, data_dir):
    def allocator_refuses(step, loss):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(
        ResourceError, match=r"^out of memory training strided at batch size 64: use a smaller"
    ):
        train(small_config(tmp_path, data_dir, steps=2), progress=False, on_step=allocator_refuses)


def test_existing_run_needs_resume(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=2)
    train(cfg, progress=False)
    with pytest.raises(ResourceError, match="--resume"):
        train(cfg, progress=False)


def test_sigint_finishes_step_saves_and_exits_130(tmp_path, data_dir):
    def interrupt(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    with pytest.raises(Interrupted) as info:
        train(small_config(tmp_path, data_dir, steps=50), progress=False, on_step=interrupt)
    assert info.value.exit_code == 130
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000003.safetensors", with_state=True)
    assert ck.state["step"] == 3


def test_nan_loss_stops_without_writing_weights(tmp_path, data_dir, monkeypatch):
    real = train_module.get_loss("mse")
    calls = []

    def flaky(out, target, kind):
        calls.append(1)
        loss = real(out, target, kind)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(train_module, "get_loss", lambda name: flaky)
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        train(small_config(tmp_path, data_dir, steps=10), progress=False)
    assert not list((tmp_path / "run").glob("checkpoints/*.safetensors"))


def test_bad_values_rejected_before_work(tmp_path, data_dir):
    from dae.errors import UsageError

    with pytest.raises(UsageError, match="unknown loss"):
        train(small_config(tmp_path, data_dir, steps=1, loss="hinge"), progress=False)
    with pytest.raises(UsageError, match="train.steps"):
        train(small_config(tmp_path, data_dir, steps=0), progress=False)
    with pytest.raises(UsageError, match="noise"):
        train(small_config(tmp_path, data_dir, steps=1, noise="gausian:0.5"), progress=False)
    assert not (tmp_path / "run").exists()


def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path, data_dir, monkeypatch):
    # torch.compile changes how the step runs, not what it computes: the same seeds give the same weights up
    # to float reassociation, and the checkpoint holds the eager module's keys (no "_orig_mod." prefix).
    # Batch 96 on 256 images: the third step is the epoch's short batch of 64, which runs eager.
    real_compile, compiled_calls = torch.compile, []

    def spy(model, **kw):
        compiled_calls.append(kw)
        return real_compile(model, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    kw = {"steps": 3, "batch_size": 96, "precision": "fp32"}
    eager = train(small_config(tmp_path, data_dir, "eager", **kw), progress=False)
    assert compiled_calls == []
    compiled = train(small_config(tmp_path, data_dir, "compiled", compile=True, **kw), progress=False)
    assert compiled_calls == [{"dynamic": False}]
    a, b = weights(eager.last_checkpoint), weights(compiled.last_checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert abs(eager.best_val_psnr - compiled.best_val_psnr) < 0.05


def test_resume_continues_the_saved_network_after_a_default_changed(tmp_path, data_dir, monkeypatch):
    import functools

    from dae.models import MODELS

    cfg = small_config(tmp_path, data_dir, steps=4)
    cfg["model"] = {"name": "unet", "kwargs": {"width": 8}}
    first = train(cfg, progress=False, on_step=lambda s, _: s == 2)
    saved_convs = load_model(first.last_checkpoint).dae_kwargs["convs"]
    # A later release changes a default the run never named: resuming must keep the run's own network.
    monkeypatch.setitem(MODELS._items, "unet", functools.partial(MODELS.get("unet"), convs=saved_convs + 1))
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.step == 4 and load_model(resumed.last_checkpoint).dae_kwargs["convs"] == saved_convs


def test_compile_without_a_cpu_compiler_is_a_resource_error(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(train_module.shutil, "which", lambda name: None)
    with pytest.raises(ResourceError, match="needs a C\\+\\+ compiler"):
        train(small_config(tmp_path, data_dir, steps=1, compile=True, device="cpu"), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work was written


@pytest.fixture
def allocator_calls(monkeypatch):
    """The allocator calls train() makes, in order, with glibc itself left untouched."""
    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(train_module, "release_freed_memory", lambda: calls.append("release") or True)
    return calls


@pytest.mark.parametrize("keep", [True, False])
def test_freed_memory_is_kept_while_training_and_given_back_after(tmp_path, data_dir, allocator_calls, keep):
    train(small_config(tmp_path, data_dir, steps=2, keep_memory=keep), progress=False)
    assert allocator_calls == (["keep", "release"] if keep else [])


def test_freed_memory_is_given_back_when_training_fails(tmp_path, data_dir, monkeypatch, allocator_calls):
    real = train_module.get_loss("mse")
    monkeypatch.setattr(train_module, "get_loss", lambda name: lambda *a: real(*a) * float("nan"))
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train(small_config(tmp_path, data_dir, steps=5), progress=False)
    assert allocator_calls == ["keep", "release"]


@pytest.mark.parametrize(
    ("section", "field", "value", "rule"),
    [
        ("train", "lr", -1.0, "a number > 0"),
        ("train", "lr", float("nan"), "a number > 0"),
        ("train", "weight_decay", -1.0, ">= 0"),
        ("train", "grad_clip", -1.0, "> 0"),  # would flip every gradient and train uphill
        ("train", "grad_clip", 0.0, "> 0"),
        ("train", "val_every", 0, ">= 1"),
        ("train", "val_every", -1, ">= 1"),
        ("train", "threads", -1, ">= 0"),
        ("train", "grad_clip", float("nan"), "> 0"),
        ("train", "warmup_steps", -5, ">= 0"),
        ("train", "keep_last", 0, ">= 1"),
        ("train", "schedule", "xx", "cosine or constant"),
        ("train", "optimizer", "sgd", "adam or adamw"),
        ("train", "time_budget", -3.0, "a finite number of seconds > 0"),
        ("train", "time_budget", float("inf"), "a finite number of seconds > 0"),  # ran until killed
        ("data", "val_size", 0, ">= 1"),
        ("data", "limit", 0, ">= 1"),
    ],
)
def test_settings_that_cannot_train_are_refused_before_anything_is_written(
    tmp_path, data_dir, section, field, value, rule
):
    cfg = small_config(tmp_path, data_dir, steps=2)
    cfg[section][field] = value
    with pytest.raises(UsageError, match=rf"^{section}\.{field} must be {re.escape(rule)}"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_refused_for_a_bad_setting_leaves_the_runs_config_alone(tmp_path, data_dir):
    train(small_config(tmp_path, data_dir, steps=2), progress=False)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(UsageError, match="train.schedule"):
        train(small_config(tmp_path, data_dir, steps=4, schedule="xx"), resume=True, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    assert train(small_config(tmp_path, data_dir, steps=4), resume=True, progress=False).step == 4


def test_out_that_is_a_file_is_refused_before_loading_data(tmp_path, data_dir, monkeypatch):
    (tmp_path / "run").write_text("mine")
    monkeypatch.setattr(train_module, "load_train_val", lambda cfg: pytest.fail("data loaded first"))
    with pytest.raises(UsageError, match="run: output path exists and is not a folder"):
        train(small_config(tmp_path, data_dir, steps=1), progress=False)
    assert (tmp_path / "run").read_text() == "mine"


def test_a_file_in_place_of_the_checkpoints_folder_is_refused_before_loading_data(
    tmp_path, data_dir, monkeypatch
):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("mine")
    monkeypatch.setattr(train_module, "load_train_val", lambda cfg: pytest.fail("data loaded first"))
    # Was a NotADirectoryError traceback at the first checkpoint, after the training it lost.
    with pytest.raises(UsageError, match="checkpoints: output path exists and is not a folder"):
        train(small_config(tmp_path, data_dir, steps=1), progress=False)
    assert (tmp_path / "run" / "checkpoints").read_text() == "mine"


def test_a_checkpoints_folder_that_becomes_a_file_is_a_resource_error(tmp_path):
    from dae.checkpoint import save_checkpoint
    from dae.errors import ResourceError
    from dae.models import create_model

    (tmp_path / "checkpoints").write_text("in the way")
    with pytest.raises(ResourceError, match="cannot write checkpoint"):
        save_checkpoint(
            create_model("fc"), tmp_path / "checkpoints" / "step-1.safetensors", train_state={"a": 1}
        )


@pytest.mark.parametrize("change", [{"train": {"batch_size": 128}}, {"data": {"limit": 96}}])
def test_resume_past_the_end_of_a_shorter_epoch_starts_the_next_one(tmp_path, data_dir, change):
    cfg = small_config(tmp_path, data_dir, steps=6, batch_size=32)  # 8 batches per epoch: stops at batch 6
    train(cfg, progress=False)

    def hung(signum, frame):
        raise AssertionError("resume spun without training")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        more = {
            "out": cfg["out"],
            "train": {"steps": 8, **change.get("train", {})},
            "data": change.get("data", {}),
        }
        resumed = train(
            more, resume=True, progress=False
        )  # with 128 per batch (or 96 images) an epoch is 2 or 3
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert resumed.step == 8 and resumed.epoch >= 1


def test_a_library_resume_continues_under_the_runs_saved_config(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=2)
    cfg["seed"] = 7
    train(cfg, progress=False)
    before = train_module.load_config_file(tmp_path / "run" / "config.yaml")
    resumed = train({"out": cfg["out"], "train": {"steps": 3}}, resume=True, progress=False)
    after = train_module.load_config_file(tmp_path / "run" / "config.yaml")
    assert resumed.step == 3  # a strided run, although unet is the default model
    before["train"]["steps"] = 3
    assert after == before  # seed 7, limit 256, val_size 128 kept
    (tmp_path / "run" / "config.yaml").unlink()  # lost: the checkpoints' records still hold the config
    assert train({"out": cfg["out"], "train": {"steps": 4}}, resume=True, progress=False).step == 4
    assert "seed: 7" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_recipe_in_a_library_config_is_applied(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=1)
    del cfg["model"], cfg["train"]["noise"]
    cfg["recipe"] = "tf-strided-0.3"
    train(cfg, progress=False)
    saved = train_module.load_config_file(tmp_path / "run" / "config.yaml")
    assert saved["recipe"] == "tf-strided-0.3" and saved["model"]["name"] == "strided"
    assert saved["train"]["noise"] == "gaussian:0.3" and saved["train"]["steps"] == 1  # its own keys win
    with pytest.raises(UsageError, match="no-such-recipe"):
        train({**cfg, "recipe": "no-such-recipe"}, progress=False)
    with pytest.raises(UsageError, match="no-such-recipe"):
        train(train_module.Config(recipe="no-such-recipe"), progress=False)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("seed", 2**70, "seed must be a whole number from -2\\*\\*63 to 2\\*\\*64 - 2"),
        ("seed", -(2**63) - 1, "seed must be"),
        ("seed", 2**64 - 1, "seed must be"),
        ("eval_seed", 2**64, "eval_seed must be"),
    ],
)
def test_seeds_torch_cannot_take_are_refused(tmp_path, data_dir, key, value, match):
    cfg = {**small_config(tmp_path, data_dir, steps=1), key: value}
    with pytest.raises(UsageError, match=match):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [2**64 - 2, -(2**63), 2**45])
def test_every_seed_the_check_lets_through_trains(tmp_path, data_dir, seed):
    # The epoch order was seeded with seed * 1_000_003 + epoch: any seed past about 1.8e13 overflowed
    # torch's 64-bit seed at the first step ("Overflow when unpacking long long").
    result = train({**small_config(tmp_path, data_dir, steps=2), "seed": seed}, progress=False)
    assert result.step == 2


def test_training_gives_the_callers_random_stream_back(tmp_path, data_dir):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train({**small_config(tmp_path, data_dir, steps=1), "seed": 1234}, progress=False)
    assert torch.equal(torch.rand(3), expected)  # not the stream cfg.seed started for the model's weights


def test_cpu_training_leaves_the_gpus_generators_alone(tmp_path, data_dir, monkeypatch):
    # torch.manual_seed also reseeded every GPU's generator, which a CPU training never gave back.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", seeded.append)
    train({**small_config(tmp_path, data_dir, steps=1), "seed": 1234}, progress=False)
    assert seeded == []


@pytest.mark.parametrize("name", ["meta", "xpu", "bogus"])
def test_devices_dae_cannot_run_on_are_refused(name):
    with pytest.raises(UsageError, match=f"unknown device '{name}'; use auto, cpu, cuda or mps"):
        train_module.select_device(name)


def test_a_stop_condition_given_replaces_the_saved_and_the_recipes(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, epochs=1)  # 4 steps of 64 over 256 images
    train(cfg, progress=False)
    resumed = train({"out": cfg["out"], "train": {"steps": 6}}, resume=True, progress=False)
    assert resumed.step == 6  # the saved epochs: 1 no longer stops it at step 4
    t = train_module.resolve_config({"recipe": "tf-strided-0.3", "train": {"time_budget": 3600}}).train
    assert (t.time_budget, t.epochs, t.steps) == (3600, None, None)  # not also the recipe's 10 epochs
    t = train_module.resolve_config({"recipe": "tf-strided-0.3", "train": {"lr": 1e-4}}).train
    assert (t.epochs, t.lr) == (10, 1e-4)  # no stop given: the recipe's stands


def test_folder_validation_takes_whole_pictures_the_training_crops_never_see(tmp_path):
    # A folder's crops come picture by picture; holding out the last n // 10 crops once split a picture between
    # training and validation, so the best checkpoint was picked on training data.
    import numpy as np
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for i in range(8):  # file 0 is the test split's (every 10th file): 7 training pictures
        Image.fromarray(np.full((20, 24), 10 * (i + 1), np.uint8)).save(root / f"p{i}.png")
    cfg = train_module.resolve_config({"data": {"dataset": "folder", "data_dir": str(root), "patch_size": 8}})
    data = train_module.load_train_val(cfg)
    assert data.val.shape[0] == 16  # 7 * 16 crops: a tenth is 11, rounded up to one whole picture
    val_values = set(data.val.unique().tolist())
    assert len(val_values) == 1 and data.train.shape[0] == 6 * 16
    for epoch in range(3):  # no epoch's crops come from the held-out picture
        assert not val_values & set(data.redraw(epoch).unique().tolist())


def test_folder_validation_pictures_are_spread_over_the_folder(tmp_path):
    # The last files by name were held out: often one day's photos, or a folder's smallest.
    import numpy as np
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for i in range(41):  # files 0, 10, ..., 40 are the test split's: 36 training pictures
        Image.fromarray(np.full((12, 12), i, np.uint8)).save(root / f"p{i:02d}.png")
    data = {
        "dataset": "folder",
        "data_dir": str(root),
        "patch_size": 11,
        "patches_per_image": 2,
        "val_size": 6,
    }
    picked = train_module.load_train_val(train_module.resolve_config({"data": data}))
    assert sorted(set(picked.val.unique().tolist())) == [1, 21, 39]  # the first, middle and last of the 36
    assert picked.train.shape[0] == 33 * 2


def test_a_folders_training_crops_are_drawn_afresh_each_epoch(tmp_path):
    root = _photos(tmp_path / "photos", n=4, size=(40, 48))
    data = {"dataset": "folder", "data_dir": str(root), "patch_size": 16, "patches_per_image": 5}
    loaded = train_module.load_train_val(train_module.resolve_config({"data": data, "seed": 3}))
    assert loaded.train.shape == (2 * 5, 1, 16, 16)  # 3 training pictures, one of them held out
    assert torch.equal(loaded.redraw(0), loaded.train)
    second = loaded.redraw(1)
    assert not torch.equal(second, loaded.train)  # were the same 16 crops of each picture for the whole run
    assert torch.equal(loaded.redraw(1), second)  # from (seed, epoch) alone: a resume draws the same
    other_seed = train_module.load_train_val(train_module.resolve_config({"data": data, "seed": 4}))
    assert torch.equal(other_seed.val, loaded.val)  # validation is fixed by eval_seed, not the seed
    assert not torch.equal(other_seed.train, loaded.train)
    limited = train_module.load_train_val(
        train_module.resolve_config({"data": {**data, "limit": 7}, "seed": 3})
    )
    assert torch.equal(limited.redraw(1), second[:7])
    assert limited.redraw(1).untyped_storage().nbytes() == 7 * 16 * 16  # not a view keeping every crop


def test_a_folder_changed_during_training_stops_it_with_where_to_resume(tmp_path, monkeypatch):
    import dae.data.datasets as D
    from dae.errors import DataError

    root = _photos(tmp_path / "photos", n=6, size=(30, 34))
    monkeypatch.setattr(D, "MAX_HELD_BYTES", 0)  # decoded again each epoch, as a large folder is
    cfg = _folder_config(root, tmp_path / "run", {"epochs": 2, "batch_size": 8}, patches_per_image=4)

    def remove_a_picture(step, loss):
        if step == 2:  # the end of the first epoch
            (root / "p2.png").unlink()
        return False

    with pytest.raises(
        DataError, match=r"p2.png: .*the image folder changed during training: stopped at step 2 "
    ):
        train(cfg, progress=False, on_step=remove_a_picture)


def test_a_folder_run_holds_only_its_training_pictures(tmp_path, monkeypatch):
    # The validation pictures' crops are drawn once: holding their decoded pictures for the whole run was a
    # tenth of the folder's memory spent on nothing.
    import dae.data.datasets as D

    made = []
    monkeypatch.setattr(D.FolderDataset, "__init__", _recording(D.FolderDataset.__init__, made))
    root = _photos(tmp_path / "photos", n=12, size=(30, 34))  # 10 training pictures, one held out
    data = {"dataset": "folder", "data_dir": str(root), "patch_size": 12, "patches_per_image": 4}
    loaded = train_module.load_train_val(train_module.resolve_config({"data": data}))
    (folder,) = made
    assert len(folder.files) == 10 and loaded.val.shape[0] == 4  # one picture held out for validation
    assert len(folder._held) == 9
    assert loaded.redraw(1).shape[0] == 9 * 4
    assert len(folder._held) == 9  # and training draws never decode it again


def _recording(init, made):
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    return wrapper


def test_a_torchrun_machines_processes_share_the_budget_for_held_pictures(tmp_path, monkeypatch):
    import dae.data.datasets as D

    root = _photos(tmp_path / "photos", n=4, size=(30, 34))
    monkeypatch.setattr(D, "MAX_HELD_BYTES", 4 * 30 * 34)
    assert D.create_dataset("folder", "all", root=root, patch_size=12)._held is not None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert D.create_dataset("folder", "all", root=root, patch_size=12)._held is None


def test_training_names_the_pictures_padded_up_to_a_crop(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = _photos(tmp_path / "photos", n=6, size=(30, 34))
    Image.fromarray(np.zeros((9, 40), np.uint8)).save(root / "strip.png")  # sorted last: a training picture
    train(_folder_config(root, tmp_path / "run", {"steps": 1}), progress=False)
    err = capsys.readouterr().err
    assert "1 picture(s) smaller than the 12x12 crops are padded by reflection" in err and "strip.png" in err


@pytest.mark.parametrize("pictures, shared", [(2, True), (3, False)])
def test_training_says_when_its_one_picture_is_also_the_validation_picture(
    tmp_path, capsys, pictures, shared
):
    root = _photos(tmp_path / "photos", n=pictures, size=(30, 34))  # the first is the test split
    train(_folder_config(root, tmp_path / "run", {"steps": 1}), progress=False)
    said = "the folder's training split is one picture" in capsys.readouterr().err
    assert said == shared


def test_a_folder_run_resumed_after_its_first_epoch_matches_an_uninterrupted_one(tmp_path):
    root = _photos(tmp_path / "photos", n=6, size=(30, 34))

    def run(name, epochs, resume=False):
        train_cfg = {"epochs": epochs, "batch_size": 8, "schedule": "constant"}
        cfg = _folder_config(root, tmp_path / name, train_cfg, patches_per_image=4)
        return train(cfg, resume=resume, progress=False)

    straight = run("a", 2)
    run("b", 1)
    resumed = run("b", 2, resume=True)
    assert resumed.step == straight.step == 2 * 2  # 16 training crops, batches of 8
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ a run folder's trouble


def logged_steps(run_dir):
    """The step of each row of a run's metrics.csv, in order."""
    return [int(row.split(",")[1]) for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]]


def full_disk_for(monkeypatch, refused):
    """Make checkpoint file writes whose path `refused` picks fail as on a full disk; returns the undo."""
    import dae.checkpoint

    real = dae.checkpoint.atomic_write_bytes

    def write(path, data):
        if refused(path):
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(dae.checkpoint, "atomic_write_bytes", write)
    return lambda: monkeypatch.setattr(dae.checkpoint, "atomic_write_bytes", real)


@contextlib.contextmanager
def another_training_holds(run_dir):
    """The run folder's lock, held as another training's process would hold it (its pid is 4242)."""
    import fcntl

    with open(run_dir / ".lock", "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        yield


def _rewrite_state(ckpt_json, edit):
    """Damage a generation's training state the way a hand edit or another program would: the manifest's hash
    is updated too, so only the contents are wrong."""
    import hashlib
    import io
    import json

    from dae.checkpoint import paths_for

    _, state_path, _ = paths_for(ckpt_json)
    state = torch.load(state_path, weights_only=True)
    buf = io.BytesIO()
    torch.save(edit(state), buf)
    state_path.write_bytes(buf.getvalue())
    record = json.loads(ckpt_json.read_text())
    record["files"]["state"].update(
        sha256=hashlib.sha256(buf.getvalue()).hexdigest(), bytes=len(buf.getvalue())
    )
    ckpt_json.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: {k: v for k, v in s.items() if k != "torch_rng"},  # was KeyError
        lambda s: {k: v for k, v in s.items() if k != "optimizer"},  # was "this config cannot continue it"
        lambda s: {**s, "step": "abc"},  # was ValueError
        lambda s: {**s, "step": -5},  # was "resuming from step -5", and the metrics log emptied
        lambda s: {**s, "torch_rng": torch.zeros(3)},  # was TypeError from torch.set_rng_state
        lambda s: list(s.values()),  # was TypeError
    ],
)
def test_a_training_state_with_bad_fields_is_a_damaged_generation(tmp_path, data_dir, capsys, edit):
    cfg = small_config(tmp_path, data_dir, epochs=2)
    first = train(cfg, progress=False)
    newest = sorted((first.run_dir / "checkpoints").glob("step-*.json"))[-1]
    _rewrite_state(newest, edit)
    cfg["train"]["epochs"] = 3
    resumed = train(cfg, resume=True, progress=False)
    assert "skipping bad checkpoint generation: training state" in capsys.readouterr().err
    assert resumed.step == 12  # from step 4, the generation before
    assert logged_steps(first.run_dir) == [4, 8, 12]


def test_a_resume_leaves_out_metrics_rows_without_a_step(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, epochs=1)
    first = train(cfg, progress=False)
    with open(first.run_dir / "metrics.csv", "a") as f:
        f.write("x,abc,,,,,,,\n\n")  # was ValueError: invalid literal for int()
    cfg["train"]["epochs"] = 2
    train(cfg, resume=True, progress=False)
    assert logged_steps(first.run_dir) == [4, 8]


def test_an_emptied_config_yaml_resumes_under_the_checkpoints_record(tmp_path, data_dir):
    first = train(small_config(tmp_path, data_dir, steps=2), progress=False)
    (first.run_dir / "config.yaml").write_text("")
    # Was: the default model (unet), refused as "this config's unet cannot continue it".
    resumed = train({"out": str(first.run_dir), "train": {"steps": 3}}, resume=True, progress=False)
    assert resumed.step == 3 and load_model(resumed.last_checkpoint).dae_name == "strided"


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_naming_the_last_good_one(
    tmp_path, data_dir, monkeypatch
):
    undo = full_disk_for(monkeypatch, lambda path: path.name.startswith("step-00000004"))
    with pytest.raises(ResourceError) as e:
        train(small_config(tmp_path, data_dir, steps=6, val_every=2), progress=False)
    message = str(e.value)
    assert (
        "cannot write checkpoint" in message and "No space left on device" in message and "\n" not in message
    )
    assert "stopped at step 4" in message and "step-00000002.safetensors" in message
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("step-*")) == [
        "step-00000002.json",
        "step-00000002.safetensors",
        "step-00000002.state.pt",
    ]
    assert not list(ckpt.glob(".*.tmp"))
    undo()
    assert (
        train(small_config(tmp_path, data_dir, steps=6, val_every=2), resume=True, progress=False).step == 6
    )


def test_a_second_training_into_a_run_folder_in_use_is_refused(tmp_path, data_dir):

    cfg = small_config(tmp_path, data_dir, steps=2)
    run = tmp_path / "run"
    run.mkdir()
    with another_training_holds(run):
        with pytest.raises(ResourceError, match=r"is in use by another training \(process 4242\)"):
            train(cfg, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # it wrote nothing
    assert train(cfg, progress=False).step == 2  # free again once the other one ends


def test_a_fresh_start_after_one_that_saved_nothing_logs_only_its_own_steps(tmp_path, data_dir):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    # A start killed before its first checkpoint: a metrics row and an unfinished generation's files.
    (run / "metrics.csv").write_text("epoch,step,time_s\n0,5,1.0\n")
    (run / "checkpoints" / "step-00000005.safetensors").write_bytes(b"half")
    (run / "checkpoints" / "step-00000005.state.pt").write_bytes(b"half")
    result = train(small_config(tmp_path, data_dir, steps=4, val_every=2, keep_last=1), progress=False)
    assert logged_steps(result.run_dir) == [2, 4]  # was 5, 2, 4: the old row stayed
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [
        "step-00000004.json",
        "step-00000004.safetensors",
        "step-00000004.state.pt",
    ]


@pytest.mark.parametrize(
    ("signum", "stops"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_a_second_signal_stops_at_once_as_that_signal(signum, stops):
    from dae.train import StopSignals

    with pytest.raises(stops):
        with StopSignals() as stop:
            os.kill(os.getpid(), signum)
            assert stop.signum == signum  # the first one only asks the loop to stop after its step
            os.kill(os.getpid(), signum)
    # A second SIGTERM was a KeyboardInterrupt, so `dae train` said "interrupted" and exited 130, not 143.


def test_a_refused_resume_creates_no_run_folder(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, "typo", steps=2)
    with pytest.raises(ResourceError, match="no checkpoint to resume from"):
        train(cfg, resume=True, progress=False)
    assert not (tmp_path / "typo").exists()  # was a folder holding .lock


def test_a_first_checkpoint_that_cannot_be_written_leaves_nothing_behind(tmp_path, data_dir, monkeypatch):
    undo = full_disk_for(monkeypatch, lambda path: path.suffix == ".safetensors")  # the state file fits
    with pytest.raises(ResourceError, match=r"no checkpoint was completed \(start the run again"):
        train(small_config(tmp_path, data_dir, steps=4, val_every=2), progress=False)
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # was an orphan step-2.state.pt
    undo()
    assert train(small_config(tmp_path, data_dir, steps=4, val_every=2), progress=False).step == 4


def test_a_damaged_generation_older_than_the_first_new_one_is_not_kept(tmp_path, data_dir):
    """Resumed from step 2 past a damaged step 3, the first new generation (4) counted the damaged 3 among the
    two kept and pruned the good 2: a second damaged generation then left nothing to resume from."""
    cfg = small_config(tmp_path, data_dir, steps=3, val_every=1, keep_last=2)
    first = train(cfg, progress=False)
    ckpts = first.run_dir / "checkpoints"
    damaged = ckpts / "step-00000003.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-50])
    cfg["train"].update(steps=4, val_every=4)
    assert train(cfg, resume=True, progress=False).step == 4
    assert sorted(p.name for p in ckpts.glob("step-*")) == [
        f"step-0000000{s}.{ext}" for s in (2, 4) for ext in ("json", "safetensors", "state.pt")
    ]
    newest = ckpts / "step-00000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:-50])
    cfg["train"].update(steps=5, val_every=5)
    assert train(cfg, resume=True, progress=False).step == 5  # from step 2 (was: no good checkpoint, exit 4)


def test_after_the_first_new_generation_the_skipped_names_are_this_runs_own(tmp_path, data_dir):
    """Past damaged 3 and 4, a resume from 2 saves 3, 4, 5: its own 3 and 4 are kept, not pruned as damaged."""
    cfg = small_config(tmp_path, data_dir, steps=4, val_every=1, keep_last=3)
    ckpts = train(cfg, progress=False).run_dir / "checkpoints"
    for s in (3, 4):
        damaged = ckpts / f"step-0000000{s}.safetensors"
        damaged.write_bytes(damaged.read_bytes()[:-50])
    cfg["train"]["steps"] = 5
    assert train(cfg, resume=True, progress=False).step == 5
    assert sorted(p.name for p in ckpts.glob("step-*.json")) == [f"step-0000000{s}.json" for s in (3, 4, 5)]
    assert all(load_checkpoint(ckpts / f"step-0000000{s}.safetensors") for s in (3, 4, 5))


def test_a_resume_past_a_damaged_generation_keeps_the_good_ones(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=4, val_every=2, keep_last=2)
    first = train(cfg, progress=False)
    newest = first.run_dir / "checkpoints" / "step-00000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:-50])
    # Resumed from step 2; the damaged step 4 counted among the newest kept, and pruned the good step 3 away.
    cfg["train"].update(steps=3, val_every=3, keep_last=1)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.last_checkpoint.exists()
    names = sorted(p.name for p in (first.run_dir / "checkpoints").glob("step-*.json"))
    assert names == ["step-00000003.json"]
    cfg["train"]["steps"] = 5
    assert train(cfg, resume=True, progress=False).step == 5


def test_a_resume_reads_no_checkpoint_while_another_training_holds_the_folder(
    tmp_path, data_dir, monkeypatch
):

    cfg = small_config(tmp_path, data_dir, steps=2)
    train(cfg, progress=False)
    reads = []
    real = train_module.latest_good_generation
    monkeypatch.setattr(train_module, "latest_good_generation", lambda d: reads.append(d) or real(d))
    with another_training_holds(tmp_path / "run"):
        cfg["train"]["steps"] = 4
        with pytest.raises(ResourceError, match="in use by another training"):
            train(cfg, resume=True, progress=False)
    # It could be writing or pruning them: a read then could report generations damaged that are not.
    assert reads == []


def test_a_best_checkpoint_that_cannot_be_written_names_the_complete_step(tmp_path, data_dir, monkeypatch):
    full_disk_for(monkeypatch, lambda path: path.name.startswith("best"))
    with pytest.raises(ResourceError, match=r"stopped at step 2; .*step-00000002\.safetensors is complete"):
        train(small_config(tmp_path, data_dir, steps=4, val_every=2), progress=False)


# ------------------------------------------------------------------------------ training on a folder


def _folder_config(root, out, train_cfg, **data):
    """A strided run on the image folder `root`, in 12x12 crops unless `data` says otherwise."""
    return {
        "data": {"dataset": "folder", "data_dir": str(root), "patch_size": 12, **data},
        "model": {"name": "strided"},
        "train": train_cfg,
        "out": str(out),
    }


def _photos(root, n=8, size=(40, 48)):
    import numpy as np
    from PIL import Image

    root.mkdir()
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def test_a_folder_patch_too_small_to_validate_is_refused_before_anything_is_written(tmp_path):
    root = _photos(tmp_path / "photos")
    cfg = {
        "data": {"dataset": "folder", "data_dir": str(root), "patch_size": 10},
        "out": str(tmp_path / "run"),
    }
    # Was: an epoch of training, then SSIM's "at least 11x11" at the first validation, with no checkpoint.
    with pytest.raises(UsageError, match=r"data.patch_size must be >= 11"):
        train({**cfg, "train": {"steps": 2}}, progress=False)
    assert not (tmp_path / "run").exists()


def test_fc_on_a_folder_is_refused_before_the_run_folder_and_trains_at_its_own_size(tmp_path, data_dir):
    from dae.evaluate import evaluate

    root = _photos(tmp_path / "photos", n=12)
    data = {"dataset": "folder", "data_dir": str(root), "val_size": 16}
    cfg = {"model": {"name": "fc"}, "train": {"steps": 2, "batch_size": 16}, "out": str(tmp_path / "run")}
    with pytest.raises(UsageError, match=r"takes only 28x28 images .* give --data.patch_size=28"):
        train({**cfg, "data": data}, progress=False)  # was refused at the first step, after writing the run
    assert not (tmp_path / "run").exists()
    result = train({**cfg, "data": {**data, "patch_size": 28}}, progress=False)
    # Scored on crops of the size it was trained on (was 64x64 crops, which fc cannot take).
    res = evaluate([result.best_checkpoint], levels=[0.5], verbose=False)
    assert {r["method"] for r in res.records} >= {"noisy input"} and len(res.records) == 2


def test_a_file_given_as_the_image_folder_is_named_as_a_file(tmp_path):
    from dae.data.datasets import load_images

    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(UsageError, match=r"one.png is a file; the folder dataset takes the folder"):
        load_images("folder", "test", root=tmp_path / "one.png")  # was "image folder ... does not exist"


def test_a_resume_with_other_noise_chooses_the_best_checkpoint_afresh(tmp_path, data_dir, capsys):
    # Scores at noise 0.9 are far below those at 0.1: compared with the old best, none would ever replace it,
    # and best.safetensors (what eval and denoise take from a run folder) stayed the model trained on 0.1.
    train(small_config(tmp_path, data_dir, steps=2, noise="gaussian:0.1"), progress=False)
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    assert load_checkpoint(best).record["step"] == 2
    resumed = train(
        small_config(tmp_path, data_dir, steps=4, noise="gaussian:0.9"), resume=True, progress=False
    )
    assert "the best checkpoint is chosen afresh" in capsys.readouterr().err
    assert load_checkpoint(best).record["step"] == 4
    assert resumed.best_val_psnr == resumed.history[-1]["val_psnr"]
    # The same noise again: the best so far stands, and nothing is said.
    again = train(
        small_config(tmp_path, data_dir, steps=6, noise="gaussian:0.9"), resume=True, progress=False
    )
    assert "afresh" not in capsys.readouterr().err
    assert again.best_val_psnr == max(r["val_psnr"] for r in [*resumed.history, *again.history])


def test_a_resume_that_fails_before_a_checkpoint_leaves_the_runs_config_alone(tmp_path, data_dir):
    train(small_config(tmp_path, data_dir, steps=2), progress=False)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(TrainingError, match="loss became"):
        train(
            small_config(tmp_path, data_dir, steps=4, lr=1e12, grad_clip=None, warmup_steps=0),
            resume=True,
            progress=False,
        )
    # A plain resume continues under the settings its checkpoint was trained with, not the failed ones.
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    resumed = train({"out": str(tmp_path / "run"), "train": {"steps": 4}}, resume=True, progress=False)
    assert resumed.step == 4
    assert "lr: 0.002" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_resume_given_the_runs_recipe_keeps_the_runs_own_changes(tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=1)
    del cfg["model"]  # the recipe's
    cfg["recipe"] = "fc-784-64"
    cfg["train"] = {"steps": 1, "lr": 1e-4, "batch_size": 32}
    train(cfg, progress=False)
    out = str(tmp_path / "run")
    # Laid over the saved config again, the recipe put back its own lr (Adam's 1e-3) and batch (256).
    resumed = train({"out": out, "recipe": "fc-784-64", "train": {"steps": 2}}, resume=True, progress=False)
    assert resumed.step == 2
    saved = load_checkpoint(resumed.last_checkpoint).record["config"]
    assert (saved["train"]["lr"], saved["train"]["batch_size"], saved["recipe"]) == (1e-4, 32, "fc-784-64")
    with pytest.raises(UsageError, match="was set up with recipe fc-784-64; a resume continues under"):
        train({"out": out, "recipe": "fc-784-300-64", "train": {"steps": 3}}, resume=True, progress=False)


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("train", "lr", "abc", "train.lr: cannot use 'abc'"),
        ("train", "batch_size", "many", "train.batch_size"),
        ("data", "limit", 0, "data.limit"),
    ],
)
def test_a_config_built_by_hand_is_checked_as_a_dict_is(
    section, field, value, message, tmp_path, monkeypatch
):
    from dae.config import Config

    monkeypatch.setattr(train_module, "load_train_val", lambda cfg: pytest.fail("data loaded first"))
    cfg = Config(out=str(tmp_path / "run"))
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(UsageError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_config_with_a_section_given_as_a_dict_trains(tmp_path, data_dir):
    from dae.config import Config

    cfg = Config(out=str(tmp_path / "run"), train={"steps": 1, "batch_size": 16})
    cfg.data.data_dir, cfg.data.limit, cfg.model.name = str(data_dir), 64, "strided"
    assert train(cfg, progress=False).step == 1


@pytest.mark.parametrize("damage", ["latin-1 bytes", "header deleted"])
def test_a_resume_keeps_the_readable_rows_of_a_damaged_metrics_log(damage, tmp_path, data_dir):
    cfg = small_config(tmp_path, data_dir, steps=2, val_every=1)
    train(cfg, progress=False)
    log = tmp_path / "run" / "metrics.csv"
    if damage == "latin-1 bytes":  # was UnicodeDecodeError, a traceback
        log.write_bytes(log.read_bytes() + b"\xe9t\xe9,1\n")
    else:  # the first validation's row was read as the header: every earlier row was dropped
        log.write_text("".join(log.read_text().splitlines(keepends=True)[1:]))
    train(small_config(tmp_path, data_dir, steps=3, val_every=1), resume=True, progress=False)
    header, *rows = log.read_text().splitlines()
    assert header.startswith("epoch,step,") and [r.split(",")[1] for r in rows] == ["1", "2", "3"]


def test_a_resume_with_a_folder_for_its_metrics_log_is_one_clear_error(tmp_path, data_dir):
    train(small_config(tmp_path, data_dir, steps=2), progress=False)
    log = tmp_path / "run" / "metrics.csv"
    log.unlink()
    log.mkdir()
    with pytest.raises(ResourceError, match=r"cannot read .*metrics.csv: Is a directory; move it away"):
        train(small_config(tmp_path, data_dir, steps=3), resume=True, progress=False)


def test_a_full_disk_at_the_run_lock_is_a_missing_resource(tmp_path, data_dir, monkeypatch):
    import builtins
    import errno

    class Full:  # a lock file on a full disk: opened, but no byte can be written
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, *args, **kwargs):
        f = builtins.open(path, *args, **kwargs)
        return Full(f) if str(path).endswith(".lock") else f

    import dae.fileio  # whose folder_lock takes the run's lock

    monkeypatch.setattr(dae.fileio, "open", fake_open, raising=False)
    with pytest.raises(ResourceError, match=r"cannot write .*run/\.lock: No space left on device"):
        train(small_config(tmp_path, data_dir, steps=1), progress=False)


@pytest.mark.parametrize(
    ("model", "resolved"), [("transpose", "fp32"), ("strided", "fp32"), ("unet", "bf16")]
)
def test_auto_trains_a_small_network_in_fp32_even_on_a_bf16_cpu(
    tmp_path, data_dir, monkeypatch, model, resolved
):
    # bf16 on every network: the small tutorial models trained slower (transpose 1994 img/s against 2558 in
    # fp32, the benchmark's figures), their conversions outweighing their arithmetic.
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    cfg = {**small_config(tmp_path, data_dir, steps=1, precision="auto"), "model": {"name": model}}
    assert train(cfg, progress=False).trained_with["precision"] == resolved
    assert "precision: auto" in (tmp_path / "run" / "config.yaml").read_text()  # a resume weighs it again


def test_a_model_that_cannot_be_weighed_on_the_meta_device_keeps_bf16(monkeypatch):
    # A model of one's own whose forward needs real data (.item(), numpy) must still train under "auto".
    class Opaque(torch.nn.Module):
        def forward(self, x):
            return x * float(x.mean())

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    assert train_module.auto_precision(torch.device("cpu"), Opaque(), (1, 28, 28)) == "bf16"


def test_the_flops_that_decide_auto_are_counted_without_touching_the_model():
    model = train_module.create_model("strided")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert train_module.forward_flops_per_pixel(model, (1, 28, 28)) == 3600.0  # 2.82 MFLOP / 784 pixels
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("native_bf16, resolved", [(True, "bf16"), (False, "fp32")])
def test_checkpoints_record_what_precision_auto_resolved_to(
    tmp_path, data_dir, monkeypatch, native_bf16, resolved
):
    """The config keeps "auto" (a resume elsewhere resolves it there); the checkpoints say what it was here."""
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native_bf16)
    cfg = {**small_config(tmp_path, data_dir, steps=2, precision="auto"), "model": {"name": "unet"}}
    result = train(cfg, progress=False)
    expected = {
        "device": "cpu",
        "precision": resolved,
        "processes": 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    assert result.trained_with == expected
    for name in ("best.safetensors", result.last_checkpoint.name):
        assert load_checkpoint(result.run_dir / "checkpoints" / name).record["trained_with"] == expected
    assert "precision: auto" in (result.run_dir / "config.yaml").read_text()


def test_a_validation_set_cut_to_a_tenth_is_said(tmp_path, data_dir, capsys):
    # val_size 100000 validated on 6000 images without a word, and config.yaml still says 100000.
    cfg = small_config(tmp_path, data_dir, steps=1)
    cfg["data"]["val_size"] = 100000
    train(cfg, progress=False)
    err = capsys.readouterr().err
    assert "validation holds 6000 images, not data.val_size=100000: at most a tenth of the mnist" in err
    cfg = small_config(tmp_path, data_dir, name="asked", steps=1)
    train(cfg, progress=False)
    assert "validation holds" not in capsys.readouterr().err  # 128 asked, 128 held out


def test_a_batch_larger_than_the_training_set_is_said(tmp_path, data_dir, capsys):
    cfg = {
        "out": str(tmp_path / "run"),
        "model": {"name": "strided"},
        "data": {"data_dir": str(data_dir), "limit": 256, "val_size": 64},
        "train": {"batch_size": 500, "epochs": 2},
    }
    result = train(cfg, progress=False)
    assert result.step == 2  # one step an epoch, on all 256 training images (the limit; validation is apart)
    err = capsys.readouterr().err
    assert "train.batch_size 500 is more than the 256 training images: each step trains on all 256" in err
    cfg["train"]["batch_size"] = 256
    cfg["out"] = str(tmp_path / "run2")
    train(cfg, progress=False)
    assert "batch_size" not in capsys.readouterr().err


def test_a_run_folder_held_by_a_study_says_a_study_holds_it(tmp_path, data_dir):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as holder:  # `dae study --out run` writes "PID study"
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4343 study\n")
        holder.flush()
        with pytest.raises(
            ResourceError, match=r"run directory .*run is in use by another study \(process 4343\)"
        ):
            train(small_config(tmp_path, data_dir, steps=1), progress=False)
