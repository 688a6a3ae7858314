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
from dae.errors import Interrupted, UsageError
from dae.models import list_models


def torchrun(*args: str, nproc: int = 2, **popen) -> subprocess.Popen | subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N ARGS` (a free port each time); Popen when asked to."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(cmd, env=env, text=True, **popen)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


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


def test_two_processes_train_the_run_one_process_trains(tmp_path, data_dir):
    # Without noise both runs see the same images in the same order, so only the arithmetic differs: two shares
    # of 5 and 4 images (an odd batch) and a last batch of 7 must still give the gradient of the whole batch.
    common = ["--data.data_dir", str(data_dir), "--data.limit", "70", "--data.val_size", "50"]
    settings = ["--model", "strided", "--noise", "none", "--steps", "10", "--train.batch_size", "9"]
    two = torchrun("-m", "dae", "train", *common, *settings, "--out", str(tmp_path / "two"), "--quiet")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("best checkpoint:") == 1  # the first process speaks for the run
    one = dae.train(
        {
            "out": str(tmp_path / "one"),
            "data": {"data_dir": str(data_dir), "limit": 70, "val_size": 50},
            "model": {"name": "strided"},
            "train": {"noise": "none", "steps": 10, "batch_size": 9},
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
    assert "trained by 2 process(es), this resume has 1" in capsys.readouterr().err


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
        "--time-budget", "10m", "--train.val_every", "5", "--quiet", "--out", str(out),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
