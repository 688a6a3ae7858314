"""Training under torchrun: two CPU processes (gloo) must train the run one process would, and stop together."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import dae
from dae import cli
from dae.checkpoint import load_checkpoint, load_model
from dae.distributed import ALONE, join
from dae.errors import Interrupted, ResourceError, UsageError
from dae.models import list_models


def torchrun(*args: str, nproc: int = 2, cwd=None, background: bool = False):
    """`torchrun --standalone --nproc-per-node N ARGS` (a free port each time): its CompletedProcess, or the
    running Popen in the `background`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if background:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def config(tmp_path, data_dir, name, **train):
    return {
        "out": str(tmp_path / name),
        "data": {"data_dir": str(data_dir), "limit": 256, "val_size": 64},
        "model": {"name": "strided"},
        "train": {"batch_size": 64, "lr": 2e-3, "warmup_steps": 2, "noise": "gaussian:0.5", **train},
    }


# A library caller under torchrun: dae.train with an on_step that only the last process uses to ask for a stop.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    import dae

    cfg, stop_at, resume = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "resume"
    rank = int(os.environ["RANK"])
    on_step = (lambda step, loss: rank == 1 and step == stop_at) if stop_at else None
    result = dae.train(cfg, resume=resume, progress=False, on_step=on_step)
    with open(f"{sys.argv[4]}/result-{rank}.json", "w") as f:  # the processes share one stdout
        json.dump({"rank": rank, "step": result.step, "last": str(result.last_checkpoint)}, f)
    """
)


def run_worker(tmp_path, cfg, stop_at=0, resume=False) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    for old in tmp_path.glob("result-*.json"):
        old.unlink()
    done = torchrun(
        str(script), json.dumps(cfg), str(stop_at), "resume" if resume else "fresh", str(tmp_path)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]


def weights(path):
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_a_world_of_one_leaves_everything_as_it_is():
    model = torch.nn.Linear(2, 2)
    batch = torch.arange(5)
    assert ALONE.replicate(model) is model
    assert ALONE.share(batch) is batch
    assert ALONE.sum(1, True, 2.5) == [1.0, 1.0, 2.5]
    assert ALONE.gather("x") == ["x"] and ALONE.main


def test_outside_torchrun_join_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = join(torch.device("cpu"))
    assert (world.rank, world.size, world.main) == (0, 1, True)


@pytest.mark.parametrize("value", ["two", "0"])
def test_a_bad_world_size_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        join(torch.device("cpu"))


def test_a_half_set_torchrun_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ResourceError, match=r"^cannot join the 2 training processes \(gloo\): .*MASTER_ADDR"):
        join(torch.device("cpu"))


@pytest.mark.parametrize("device, message", [("cuda:1", "LOCAL_RANK"), ("mps", "runs on cpu or cuda")])
def test_devices_processes_cannot_share_are_refused(monkeypatch, device, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match=message):
        join(torch.device(device))


@pytest.mark.parametrize(
    "env, error, expected",
    [
        ({}, UsageError("bad"), "dae: bad\n"),
        ({"RANK": "1"}, UsageError("bad"), "dae: bad\n"),  # RANK alone is not torchrun's
        ({"RANK": "1", "WORLD_SIZE": "2"}, UsageError("bad"), "dae (process 1): bad\n"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, Interrupted("SIGTERM: stopped", 15), "dae: SIGTERM: stopped\n"),
        ({"RANK": "1", "WORLD_SIZE": "2"}, Interrupted("SIGTERM: stopped", 15), ""),  # the first one says it
    ],
)
def test_errors_name_the_process_that_met_them(monkeypatch, capsys, env, error, expected):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli._report(error)
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--baselines", "median", "--limit", "20"],
        ["denoise", "in.png", "--checkpoint", "run", "-o", "out"],
        ["study", "--quick"],
        ["report", "run"],
        ["models"],
    ],
)
def test_commands_that_do_not_share_work_refuse_torchrun(monkeypatch, capsys, tmp_path, argv):
    # Each process would do the whole job and write the same files; one line before any work instead.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"dae {argv[0]} runs in one process" in err and "without torchrun" in err
    assert list(tmp_path.iterdir()) == []


def test_two_processes_train_the_run_one_process_trains(tmp_path, data_dir):
    # Without noise both runs see the same images in the same order, so only the arithmetic differs: two shares
    # of 5 and 4 images (an odd batch) and a last batch of 7 must still give the gradient of the whole batch.
    # In fp32: precision "auto" is bf16 on CPUs with AVX512-BF16, whose rounding differs between a share and the
    # whole batch, and Adam magnifies that in the near-zero gradients (8e-5 in the weights after 10 steps on a
    # Zen 4 core, against 7e-9 in fp32 and 7e-4 for shares weighted wrongly).
    common = ["--data.data_dir", str(data_dir), "--data.limit", "70", "--data.val_size", "50"]
    settings = ["--model", "strided", "--noise", "none", "--steps", "10", "--train.batch_size", "9"]
    settings += ["--train.precision", "fp32"]
    two = torchrun("-m", "dae", "train", *common, *settings, "--out", str(tmp_path / "two"), "--quiet")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("best checkpoint:") == 1  # the first process speaks for the run
    one = dae.train(
        {
            "out": str(tmp_path / "one"),
            "data": {"data_dir": str(data_dir), "limit": 70, "val_size": 50},
            "model": {"name": "strided"},
            "train": {"noise": "none", "steps": 10, "batch_size": 9, "precision": "fp32"},
        },
        progress=False,
    )
    a, b = (
        weights(one.last_checkpoint),
        weights(tmp_path / "two" / "checkpoints" / "step-00000010.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    # One metrics row per validation (epoch end at step 8, then the last step), written once, scored alike.
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["8", "10"]
    psnr = float(rows[-1].split(",")[6])
    assert psnr == pytest.approx(one.history[-1]["val_psnr"], abs=1e-3)


def test_one_process_asking_to_stop_stops_all_and_the_run_resumes_exactly(tmp_path, data_dir):
    straight = run_worker(tmp_path, config(tmp_path, data_dir, "a", epochs=2))
    assert [r["step"] for r in straight] == [8, 8]
    # Only process 1 asks to stop after step 3 (mid-epoch); process 0 must stop with it and save step 3.
    stopped = run_worker(tmp_path, config(tmp_path, data_dir, "b", epochs=2), stop_at=3)
    assert [r["step"] for r in stopped] == [3, 3]
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000003.safetensors", with_state=True)
    assert len(ck.state["noise_rng_world"]) == 2  # each process's noise stream, for an exact resume
    resumed = run_worker(tmp_path, config(tmp_path, data_dir, "b", epochs=2), resume=True)
    assert [r["step"] for r in resumed] == [8, 8]
    a, b = weights(straight[0]["last"]), weights(resumed[0]["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_two_process_run_resumes_in_one_process(tmp_path, data_dir, capsys):
    run_worker(tmp_path, config(tmp_path, data_dir, "b", epochs=2), stop_at=3)
    result = dae.train(config(tmp_path, data_dir, "b", epochs=2), resume=True, progress=False)
    assert result.step == 8
    err = capsys.readouterr().err
    assert "trained by 2 process(es), this resume has 1: it continues the first process's noise stream" in err
    assert "the others" not in err  # there are none


def test_a_one_process_run_resumes_in_two_processes(tmp_path, data_dir):
    dae.train(config(tmp_path, data_dir, "b", epochs=2), progress=False, on_step=lambda step, _: step == 3)
    resumed = run_worker(tmp_path, config(tmp_path, data_dir, "b", epochs=2), resume=True)
    assert [r["step"] for r in resumed] == [8, 8]
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000008.safetensors", with_state=True)
    assert len(ck.state["noise_rng_world"]) == 2


def test_every_model_trains_in_two_processes(tmp_path, data_dir):
    # DistributedDataParallel refuses models with parameters a forward pass leaves unused; none may have any.
    script = tmp_path / "each.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import dae
            for name in {list_models()!r}:
                dae.train({{"out": r"{tmp_path}/" + name, "model": {{"name": name}},
                           "data": {{"data_dir": r"{data_dir}", "limit": 16, "val_size": 8}},
                           "train": {{"steps": 2, "batch_size": 4, "time_budget": None}}}}, progress=False)
            """
        )
    )
    done = torchrun(str(script))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in list_models():
        assert (tmp_path / name / "checkpoints" / "step-00000002.safetensors").exists(), name


def test_a_batch_smaller_than_the_world_is_refused_by_every_process(tmp_path, data_dir):
    out = tmp_path / "run"
    done = torchrun(
        "-m", "dae", "train", "--data-dir", str(data_dir), "--steps", "2", "--train.batch_size", "1",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode != 0
    assert "dae: train.batch_size 1 is the whole batch, shared by 2 processes" in done.stderr
    assert "dae (process 1): train.batch_size 1" in done.stderr
    assert not re.search(r'File ".*/dae/', done.stderr)  # torchrun's own traceback is torchrun's
    assert not (out / "checkpoints").exists()


def test_sigterm_to_torchrun_stops_every_process_with_a_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    launcher = torchrun(
        "-m", "dae", "train", "--data-dir", str(data_dir), "--model", "strided", "--data.limit", "2048",
        "--time-budget", "10m", "--train.val_every", "5", "--quiet", "--out", str(out), background=True,
    )  # fmt: skip
    metrics = out / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) > 1
    ):
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to each process
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "dae: SIGTERM: stopped at step" in err
    assert "dae (process 1)" not in err  # the first process speaks for the run
    step = int(err.split("dae: SIGTERM: stopped at step ")[1].split(";")[0])
    ck = load_checkpoint(out / "checkpoints" / f"step-{step:08d}.safetensors", with_state=True)
    assert ck.state["step"] == step and len(ck.state["noise_rng_world"]) == 2


def test_batchnorm_processes_validate_the_model_that_is_saved(tmp_path, data_dir):
    # Each CPU process's BatchNorm statistics follow its own share of the batch; the scores written for a
    # checkpoint must be that checkpoint's, not a blend of the processes' models.
    from contextlib import nullcontext

    from dae.data.noise import make_noisy
    from dae.losses import get_loss
    from dae.train import load_train_val, resolve_config, validate

    # fp32, as the check below validates: "auto" is bf16 on CPUs with AVX512-BF16.
    cfg = config(
        tmp_path, data_dir, "bn", steps=6, val_every=6, batch_size=16, noise="gaussian:0.5", precision="fp32"
    )
    cfg["model"] = {"name": "unet", "kwargs": {"norm": "batch"}}
    cfg["data"].update(limit=96, val_size=64)
    script = tmp_path / "bn.py"
    script.write_text(
        f"import dae, json\ndae.train(json.loads({json.dumps(json.dumps(cfg))}), progress=False)\n"
    )
    done = torchrun(str(script))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no SyncBatchNorm on CPUs" in done.stderr
    resolved = resolve_config(cfg)
    val_u8 = load_train_val(resolved).val
    clean = val_u8.float() / 255
    noisy = make_noisy(clean, resolved.train.noise, resolved.eval_seed)
    model = load_model(tmp_path / "bn" / "checkpoints" / "step-00000006.safetensors")
    scored = validate(model, get_loss(resolved.train.loss), noisy, clean, nullcontext())
    header, *rows = (tmp_path / "bn" / "metrics.csv").read_text().splitlines()
    logged = dict(zip(header.split(","), rows[-1].split(","), strict=True))
    assert float(logged["val_loss"]) == pytest.approx(scored["val_loss"], rel=1e-6, abs=1e-7)
    assert float(logged["val_psnr"]) == pytest.approx(scored["val_psnr"], abs=1e-5)


def test_a_process_that_fails_alone_stops_the_others_without_a_traceback(tmp_path, data_dir):
    # The main process cannot write its metrics (a full disk, say); the other one must stop with one line.
    script = tmp_path / "failing.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            import dae.train
            from dae import cli
            from dae.errors import ResourceError

            def full(path, row):
                raise ResourceError(f"{path}: cannot write (No space left on device)")

            if os.environ["RANK"] == "0":
                dae.train._append_metrics = full
            sys.exit(cli.main(sys.argv[1:]))
            """
        )
    )
    done = torchrun(
        str(script), "train", "--data-dir", str(data_dir), "--model", "strided", "--steps", "20",
        "--train.val_every", "5", "--data.limit", "256", "--data.val_size", "32", "--quiet",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert done.returncode != 0
    assert "cannot write (No space left on device)" in done.stderr
    assert "dae (process 1): another training process stopped" in done.stderr
    assert "[rank1]: Traceback" not in done.stderr and not re.search(r'File ".*/dae/', done.stderr)


def test_the_main_process_names_an_unnamed_run_for_all(tmp_path, data_dir):
    # Processes reading the clock either side of a second would otherwise name different run folders.
    script = tmp_path / "clock.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, time
            import dae

            rank = os.environ["RANK"]
            time.strftime = lambda fmt, *a: "second-" + rank
            cfg = {{"model": {{"name": "fc"}}, "train": {{"steps": 2, "batch_size": 8}},
                   "data": {{"data_dir": r"{data_dir}", "limit": 32, "val_size": 8}}}}
            result = dae.train(cfg, progress=False)
            with open(f"result-{{rank}}.json", "w") as f:
                json.dump({{"run": str(result.run_dir), "best": str(result.best_checkpoint)}}, f)
            """
        )
    )
    done = torchrun(str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1] and results[0]["run"] == "runs/fc-second-0"
    assert (tmp_path / results[1]["best"]).exists()


def test_a_run_folder_in_use_refuses_every_process(tmp_path, data_dir):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as holder:  # another training holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        done = torchrun(
            "-m", "dae", "train", "--data-dir", str(data_dir), "--model", "strided", "--steps", "2",
            "--data.limit", "256", "--data.val_size", "32", "--quiet", "--out", str(out),
        )  # fmt: skip
    assert done.returncode != 0
    # Only the first process takes the lock; the other was left to wait in the first step's all-reduce and
    # stopped as "another process failed". Now each says so in its own line.
    assert "dae: run directory" in done.stderr and "in use by another training (process 4242)" in done.stderr
    assert "dae (process 1): the first process could not take run directory" in done.stderr
    assert not re.search(r'File ".*/dae/', done.stderr)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_under_a_time_budget_every_process_sets_the_same_learning_rate(tmp_path, data_dir):
    # The learning rate follows the time trained; each process read its own clock, so the rates differed by a
    # few microseconds' worth at nearly every step and the replicas' weights drifted apart.
    cfg = config(tmp_path, data_dir, "budget", time_budget=3, batch_size=16)
    script = tmp_path / "lrs.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            import dae, dae.train

            rates, lr_at = [], dae.train.lr_at

            def recorded(cfg, step, progress):
                rates.append(lr_at(cfg, step, progress))
                return rates[-1]

            dae.train.lr_at = recorded
            dae.train(json.loads({json.dumps(json.dumps(cfg))}), progress=False)
            with open(f"rates-{{os.environ['RANK']}}.json", "w") as f:
                json.dump(rates, f)
            """
        )
    )
    done = torchrun(str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rates-{rank}.json").read_text()) for rank in (0, 1))
    assert len(first) > 10 and len(set(first)) > 10  # the schedule moved with the time
    assert first == second
