"""The command line end to end: exit codes, one-line errors, real (tiny) runs."""

import importlib.util
import re
import subprocess
import sys

import pytest

from dae.baselines import create_baseline, list_baselines
from dae.errors import ResourceError


def dae(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "dae", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_unknown_flag_is_usage_error():
    code, _, err = dae("train", "--bogus")
    assert code == 2
    assert err.startswith("dae: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args, line",
    [
        (["nosuchcmd"], "dae: argument COMMAND: invalid choice: 'nosuchcmd'"),
        (
            ["eval", "--limit", "abc"],
            "dae: argument --limit: invalid int value: 'abc' (see 'dae eval --help')",
        ),
    ],
)
def test_a_parser_error_says_dae_once(args, line):
    code, _, err = dae(*args)
    assert code == 2 and err.startswith(line), err  # was "dae: dae eval: argument --limit: ..."


@pytest.mark.parametrize("argv", [["study", "--budget", "-5s"], ["train", "--time-budget", "-1m"]])
def test_a_value_that_looks_like_an_option_gets_a_hint(argv, capsys):
    from dae.cli import main

    # argparse takes "-5s" for an option; the bare "expected one argument" hid what to type instead
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"is written {argv[1]}=VALUE" in err


@pytest.mark.parametrize(
    "command",
    [
        # Bounded, should the refusal ever go: on the old code `dae train` trained the default model here.
        ["train", "--steps", "1"],
        ["eval", "--baselines", "median", "--limit", "20", "--levels", "0.5"],
        ["report", "run"],
        ["data", "check", "mnist"],
        ["study", "--quick", "--budget", "1s"],
    ],
)
def test_an_empty_data_dir_is_refused_by_every_command(command, capsys, tmp_path, monkeypatch):
    from dae.cli import main

    monkeypatch.chdir(tmp_path)  # and nothing it might write lands in the checkout

    # `dae train` ignored it (DAE_DATA_DIR was used), `dae data check` read it as the current folder.
    assert main([*command, "--data-dir", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --data-dir: an empty path" in err


@pytest.mark.parametrize(
    "argv",
    [
        # Bounded by --steps 1 and --limit 5 should the refusal ever go: each was read as no option at all.
        ["train", "--steps", "1", "--model", ""],
        ["train", "--steps", "1", "--time-budget", " "],
        ["train", "--steps", "1", "--out", ""],
        ["train", "--steps", "1", "--recipe", ""],
        ["train", "--steps", "1", "--dataset", ""],
        ["train", "--steps", "1", "--name", ""],
        ["train", "--steps", "1", "--config", ""],
        ["eval", "--baselines", "median", "--limit", "5", "--levels", "0.5", "--out", ""],
        ["eval", "--baselines", "median", "--limit", "5", "--levels", "0.5", "--dataset", ""],
        ["study", "--quick", "--budget", "1s", "--out", ""],
        ["study", "--quick", "--budget", ""],
    ],
)
def test_an_empty_value_is_refused_not_ignored(argv, capsys, tmp_path, monkeypatch):
    from dae.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {argv[-2]}: an empty" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "alias"),
    [
        (["--model", "fc"], "--model.name=strided"),
        (["--steps", "1"], "--train.steps=2"),
        (["--epochs", "1"], "--train.epochs=1"),
        (["--steps", "1"], "---train.steps=2"),  # parse_override takes any number of dashes
    ],
)
def test_a_flag_and_its_dotted_alias_together_are_refused(flag, alias, capsys, tmp_path, monkeypatch):
    from dae.cli import main

    monkeypatch.chdir(tmp_path)
    # The dotted one won without a word. Bounded by --steps 1 should the refusal ever go.
    bound = [] if flag[0] == "--steps" else ["--steps", "1"]
    assert main(["train", *bound, *flag, alias]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dae: --{alias.split('=')[0].lstrip('-')} and {flag[0]} both given; give one of them"
    assert list(tmp_path.iterdir()) == []


def test_bad_override_names_field(data_dir):
    code, _, err = dae("train", "--train.lrr=1", "--data-dir", data_dir)
    assert code == 2 and "train.lrr" in err and "Traceback" not in err


def test_unknown_model_lists_valid_names(tmp_path, data_dir):
    code, _, err = dae(
        "train", "--model", "nope", "--steps", "1", "--data-dir", data_dir, "--out", tmp_path / "r"
    )
    assert code == 2 and "valid names" in err and "unet" in err


def test_models_and_recipes_listed():
    code, out, _ = dae("models")
    assert code == 0 and "unet" in out and "fc" in out
    code, out, _ = dae("models", "--recipes")
    assert code == 0 and len(out.strip().splitlines()) >= 5


def test_models_lists_each_models_options_with_their_defaults(tmp_path, data_dir):
    # `dae train --help` sends there for --model.kwargs.OPTION, and it named none of fc's hidden, strided's
    # kernel_size or unet's residual.
    code, out, _ = dae("models")
    lines = out.splitlines()
    options = {
        lines[i - 1].split()[0]: line.split("options: ")[1]
        for i, line in enumerate(lines)
        if "options:" in line
    }
    assert code == 0 and "hidden=64" in options["fc"] and "kernel_size=5" in options["strided"]
    assert "residual=false" in options["unet"] and "in_channels" not in out
    # Written as listed, an option trains.
    code, _, err = dae(
        "train",
        "--model",
        "strided",
        "--model.kwargs.channels=16-32",
        "--model.kwargs.kernel_size=3",
        "--steps",
        "1",
        "--data.limit=64",
        "--data.val_size=8",
        "--data-dir",
        data_dir,
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err


def test_listings_give_whole_summaries_and_what_is_unavailable():
    code, out, _ = dae("models")
    unet = next(line for line in out.splitlines() if line.startswith("unet "))
    assert code == 0 and "shuffle" in unet  # the whole first paragraph, not a line cut mid-sentence
    code, out, _ = dae("baselines")
    bm3d = next(line for line in out.splitlines() if line.startswith("bm3d "))
    assert code == 0 and ("[not available" in bm3d) == (importlib.util.find_spec("bm3d") is None)


def test_data_without_an_action_shows_its_actions():
    code, out, _ = dae("data")
    assert code == 2 and "check" in out and "usage: dae data" in out


def test_data_check_without_the_files_points_at_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DAE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    code, _, err = dae("data", "check", "fashion-mnist", "--data-dir", tmp_path / "empty")
    if code == 0:
        pytest.skip("fashion-mnist is installed system-wide here (/usr/share/datasets)")
    assert code == 5 and "pass --download" in err and len(err.strip().splitlines()) == 1


def test_data_check_verifies_shared_data(data_dir):
    code, out, _ = dae("data", "check", "mnist", "--data-dir", data_dir)
    assert code == 0
    assert out.count("ok") >= 4


def test_train_eval_denoise_round_trip(tmp_path, data_dir):
    run = tmp_path / "run"
    code, out, err = dae(
        "train",
        "--model",
        "strided",
        "--steps",
        "20",
        "--data-dir",
        data_dir,
        "--out",
        run,
        "--quiet",
        "--data.limit=512",
        "--data.val_size=100",
        "--train.batch_size=32",
    )
    assert code == 0, err
    # What precision "auto" resolved to on this machine is said, not only the "auto" asked for.
    assert re.search(r"time: \d+\.\ds \((bf16|fp32) on cpu\)  best val PSNR", out), out
    ckpt = run / "checkpoints" / "best.safetensors"
    assert ckpt.exists()
    code, out, err = dae(
        "eval",
        "--checkpoint",
        ckpt,
        "--baselines",
        "identity,median",
        "--levels",
        "0.3,0.5",
        "--limit",
        "50",
        "--data-dir",
        data_dir,
        "--out",
        tmp_path / "eval",
        "--quiet",
    )
    assert code == 0, err
    assert (tmp_path / "eval" / "results.csv").exists() and (tmp_path / "eval" / "results.json").exists()
    assert "median" in out and "gaussian:0.5" in out

    from PIL import Image

    img = tmp_path / "in.png"
    Image.new("L", (37, 53), 40).save(img)
    code, _, err = dae(
        "denoise", img, "--checkpoint", ckpt, "-o", tmp_path / "out", "--add-noise", "gaussian:0.3"
    )
    assert code == 0, err
    assert (tmp_path / "out" / "in.png").exists()
    code, _, err = dae("denoise", img, "--checkpoint", ckpt, "-o", tmp_path / "out")
    assert code == 5 and "exists" in err and "Traceback" not in err  # output exists, no --force
    for device, want in (("gpu", 2), ("cuda:7", 5)):
        code, _, err = dae("denoise", img, "--checkpoint", ckpt, "-o", tmp_path / "o2", "--device", device)
        assert code == want and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("L", (20, 20), 40).save(folder / "a.png")
    Image.new("L", (20, 20), 40).save(folder / "b.webp")
    code, out, err = dae("denoise", folder, "--checkpoint", ckpt, "-o", tmp_path / "o3")
    assert code == 0 and "wrote 1 file(s)" in out
    assert err.startswith("dae: skipped 1 file(s) dae cannot read or write") and err.strip().endswith(
        "b.webp"
    )
    Image.new("L", (20, 20), 90).save(tmp_path / "o3" / "mine.png")  # the user's own, not an output
    code, out, err = dae("denoise", folder, "--checkpoint", ckpt, "-o", folder / "sub")
    assert code == 0 and "wrote 1 file(s)" in out
    (folder / "sub" / "mine.png").write_bytes((tmp_path / "o3" / "mine.png").read_bytes())
    code, out, err = dae("denoise", folder, "--checkpoint", ckpt, "-o", folder / "sub")
    assert code == 0 and "kept 1 existing output(s)" in out, out
    left = [line for line in err.splitlines() if "left out" in line]
    assert left == [
        f"dae: left out 1 image(s) already in the output folder {folder / 'sub'}, which dae does not denoise "
        f"(choose an output folder outside the inputs to include them): {folder / 'sub' / 'mine.png'}"
    ], err

    # eval of a run directory writes beside the run, not into the working directory
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    code, _, err = dae(
        "eval", "--checkpoint", run, "--baselines", "identity", "--levels", "0.5", "--limit", "5",
        "--data-dir", data_dir, "--quiet", cwd=elsewhere,
    )  # fmt: skip
    assert code == 0, err
    assert (run / "eval" / "results.csv").exists() and not (elsewhere / "eval").exists()
    code, out, err = dae(
        "eval", "--noise", "none", "--baselines", "identity", "--limit", "5", "--data-dir", data_dir,
        "--out", tmp_path / "e2", "--quiet",
    )  # fmt: skip
    assert code == 0 and "none" in out, err


def test_corrupt_checkpoint_exit_code(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = dae("eval", "--checkpoint", bad, "--limit", "5")
    assert code == 4 and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "--levels", "a,b", "--baselines", "identity"],
        ["eval", "--noise", "gausian"],
        ["eval", "--baselines", "nlm", "--slow-limit", "0"],
    ],
)
def test_eval_bad_args(args):
    code, _, err = dae(*args)
    assert code == 2 and "Traceback" not in err


def test_resume_continues_under_the_runs_own_config(tmp_path, data_dir):
    run = tmp_path / "run"
    common = ["--data-dir", data_dir, "--out", run, "--quiet"]
    code, _, err = dae(
        "train", "--model", "strided", "--steps", "4", "--data.limit=256", "--data.val_size=64", *common
    )
    assert code == 0, err
    # No flags again: the saved config (strided, 4 steps) holds, so the finished run has nothing to do.
    code, out, err = dae("train", "--resume", *common)
    assert code == 0 and "nothing to do" in out, err
    code, out, err = dae("train", "--resume", "--steps", "6", *common)
    assert code == 0 and "steps: 6" in out, err
    assert "name: strided" in (run / "config.yaml").read_text()
    code, _, err = dae("train", "--resume", "--model", "unet", *common)
    assert code == 2 and "cannot continue" in err and len(err.strip().splitlines()) == 1


def test_log_lines_carry_the_dae_prefix(tmp_path, monkeypatch, data_dir):
    # A bad file in the cache is passed over with a warning; it reads like every other dae message.
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    for official in (data_dir / "mnist").iterdir():
        (cache / official.name).write_bytes(official.read_bytes())
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    monkeypatch.setenv("DAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DAE_DATA_DIR", raising=False)
    code, _, err = dae("data", "check", "mnist")
    lines = err.strip().splitlines()
    assert code in (0, 5) and lines and all(line.startswith("dae: ") for line in lines)
    assert any("ignoring" in line and "t10k-labels" in line for line in lines)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_empty_noise_is_refused_not_replaced_by_the_default(tmp_path, command):
    extra = ["--steps", "1", "--out", tmp_path / "r"] if command == "train" else ["--baselines", "median"]
    code, _, err = dae(command, "--noise", "", *extra)
    assert code == 2 and err.startswith("dae: empty noise spec") and not (tmp_path / "r").exists()


def _tiny_checkpoint(tmp_path):
    from dae.checkpoint import save_checkpoint
    from dae.models import create_model

    return save_checkpoint(create_model("strided"), tmp_path / "ck" / "m.safetensors")


def test_sigterm_while_denoising_unwinds_like_ctrl_c(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from PIL import Image

    from dae.cli import main

    ckpt = _tiny_checkpoint(tmp_path)
    img = tmp_path / "in.png"
    Image.new("L", (40, 30), 9).save(img)
    real_save = Image.Image.save

    def killed_mid_write(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")  # part of the file is on disk when the signal comes
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", killed_mid_write)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["denoise", str(img), "--checkpoint", str(ckpt), "-o", str(tmp_path / "out")]) == 143
    assert capsys.readouterr().err.strip() == "dae: terminated (SIGTERM)"
    assert list((tmp_path / "out").iterdir()) == []  # was a .in.png.*.tmp of the half-written file
    assert signal.getsignal(signal.SIGTERM) is before  # main gives the handler back


def test_a_full_disk_at_the_end_of_eval_keeps_the_printed_tables(data_dir, tmp_path, monkeypatch, capsys):
    import dae.fileio
    from dae.cli import main
    from dae.fileio import WriteError

    def full(path, data):
        raise WriteError(path, "No space left on device")

    monkeypatch.setattr(dae.fileio, "atomic_write_bytes", full)
    argv = ["eval", "--baselines", "median", "--limit", "5", "--levels", "0.5", "--data-dir", str(data_dir)]
    assert main([*argv, "--out", str(tmp_path / "eval"), "--quiet"]) == 5
    out, err = capsys.readouterr()
    # The numbers were printed only after the files were written, so a full disk lost them.
    assert "median" in out and "gaussian:0.5" in out and "wrote:" not in out
    assert err.strip() == f"dae: {tmp_path / 'eval' / 'results.csv'}: cannot write (No space left on device)"


@pytest.mark.parametrize("which", ["input", "output", "checkpoint"])
def test_an_empty_path_on_the_command_line_is_a_usage_error(tmp_path, which):
    from PIL import Image

    ckpt = _tiny_checkpoint(tmp_path)
    Image.new("L", (40, 30), 9).save(tmp_path / "in.png")
    args = {"input": "in.png", "output": "out", "checkpoint": str(ckpt), which: ""}
    code, _, err = dae(
        "denoise", args["input"], "--checkpoint", args["checkpoint"], "-o", args["output"], cwd=tmp_path
    )
    assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "in.png"]


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["denoise", "a.png", "--checkpoint", "ck", "-o", "-x"], "is written --output=VALUE"),  # -o/--output
        (["train", "--out"], None),  # a missing value: nothing starts with '-'
    ],
)
def test_the_dash_hint_names_the_long_option_and_only_when_it_applies(argv, hint, capsys):
    from dae.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (hint in err) if hint else "starts with '-'" not in err


@pytest.mark.parametrize("name", list_baselines())
def test_denoise_files_with_a_baseline(name, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import dae
    from dae.cli import main
    from dae.imageio import read_image

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (33, 21), dtype=np.uint8)).save(folder / "grey.png")
    argv = ["denoise", str(folder), "--baseline", name, "-o", str(tmp_path / "out")]
    try:
        method = create_baseline(name)
    except ResourceError:  # bm3d without its optional package: the same one-line error, exit 5
        assert main(argv) == 5
        assert capsys.readouterr().err.strip().count("\n") == 0
        assert not (tmp_path / "out").exists()
        return
    assert main(argv) == 0, capsys.readouterr().err
    for stem in ("rgb", "grey"):
        # The method as the library calls it, on the file as read (noise estimated from the image itself)
        x = read_image(folder / f"{stem}.png")[0]  # (C, H, W) in [0, 1]
        expected = dae.denoise(method, x[None])[0].mul(255).round()
        got = read_image(tmp_path / "out" / f"{stem}.png")[0].mul(255).round()
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1
        if name != "identity":  # a method that does something: the output is not the input
            assert (got - x.mul(255).round()).abs().mean() > 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baseline", "foo"], "unknown baseline 'foo'; valid names: "),
        (["--baseline", "tv", "--checkpoint", "run"], "not allowed with argument"),
        ([], "one of the arguments --checkpoint --baseline is required"),
    ],
)
def test_denoise_needs_one_method(argv, message, tmp_path, capsys):
    from PIL import Image

    from dae.cli import main

    Image.new("L", (8, 8), 40).save(tmp_path / "a.png")
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stop", [["--epochs", "2"], ["--train.epochs=2"]])
def test_a_stop_flag_replaces_the_config_files_stop(stop, tmp_path, data_dir, capsys):
    from dae.cli import main

    # The file stops at step 1; 256 training images (limit) in batches of 64 make 4 steps an epoch.
    file = tmp_path / "cfg.yaml"
    file.write_text(
        f"data: {{data_dir: {data_dir}, limit: 256, val_size: 128}}\nmodel: {{name: strided}}\n"
        "train: {steps: 1, batch_size: 64}\n"
    )
    assert main(["train", "--config", str(file), "--out", str(tmp_path / "run"), "--quiet", *stop]) == 0
    assert "steps: 8 " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {lr: abc}\n", "train.lr"),
        ("train: {time_budget: 2 weeks}\n", "bad duration"),
        ("model: 5\n", "model"),
        ("trian: {lr: 0.1}\n", "trian"),
        ("model: {name: nosuch}\n", "unknown model 'nosuch'"),
        ("model: {name: dncnn, kwargs: {bogus: 1}}\n", "bogus"),
        ("train: {noise: 'bogus:1'}\n", "bogus"),
        ("train: {loss: nosuch}\n", "nosuch"),
        ("recipe: nosuch\n", "unknown recipe 'nosuch'"),
        ("train: {lr: .nan}\n", "train.lr must be a number > 0"),  # checked after reading, once named nothing
        ("train: {batch_size: 0}\n", "train.batch_size must be >= 1"),
        ("train: {noise: off}\n", "unknown noise 'off'"),  # YAML 1.1 read False, and the noise "False"
        ("model: {name: unet, kwargs: {width: -3}}\n", "model unet: width must be an integer >= 1"),
    ],
)
def test_an_error_in_a_config_file_names_the_file(text, message, tmp_path, capsys, monkeypatch):
    from dae.cli import main

    monkeypatch.chdir(tmp_path)
    file = tmp_path / "cfg.yaml"
    file.write_text(text)
    assert main(["train", "--config", str(file), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dae: config file {file}: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_a_missing_config_file_is_exit_5_like_every_missing_file(tmp_path, capsys):
    from dae.cli import main

    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--steps", "1"]) == 5
    assert (
        capsys.readouterr().err.strip()
        == f"dae: cannot read config file {tmp_path / 'missing.yaml'}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("signame", "code", "message"),
    [("SIGINT", 130, "dae: interrupted"), ("SIGTERM", 143, "dae: terminated (SIGTERM)")],
)
def test_a_signal_during_the_torch_import_is_handled_once_the_import_is_done(signame, code, message):
    # The signal is sent as `import torch` begins. It used to interrupt the import itself, which left torch
    # and numpy half imported: at random moments a RecursionError or an abort, or the signal lost (exit 0).
    script = f"""
import os, signal, sys

class SignalAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signame})
        return None

# As started from a terminal: a shell starts background jobs (CI's among them) with SIGINT ignored, and Python
# then leaves it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.meta_path.insert(0, SignalAtTorch())
from dae.cli import main
code = main(["noises"])
torch = sys.modules.get("torch")
print("torch complete:", torch is not None and hasattr(torch, "Tensor"))
sys.exit(code)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code and proc.stderr.strip() == message, proc.stderr
    assert proc.stdout.splitlines() == [
        "torch complete: True"
    ]  # no command output: it stopped before its work


class _ClosedPipe:
    """A stdout whose reader has gone (`dae eval ... | head -1`), or (errno) one on a full disk."""

    def __init__(self, error: OSError):
        self.error = error

    def write(self, text):
        raise self.error

    def flush(self):
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"), [(BrokenPipeError(32, "Broken pipe"), 0), (OSError(28, "No space left on device"), 5)]
)
def test_eval_writes_its_files_when_stdout_fails(data_dir, tmp_path, monkeypatch, capsys, error, code):
    from dae.cli import main

    monkeypatch.setattr(sys, "stdout", _ClosedPipe(error))
    argv = ["eval", "--baselines", "median", "--limit", "5", "--levels", "0.5", "--data-dir", str(data_dir)]
    assert main([*argv, "--out", str(tmp_path / "eval"), "--quiet"]) == code
    # Printing first (so that a full disk keeps the tables) had made a closed pipe lose the files, exit 0.
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "psnr_vs_noise.png",
        "results.csv",
        "results.json",
    ]
    err = capsys.readouterr().err.strip()
    assert err == (
        ""
        if code == 0
        else f"dae: cannot print the results (No space left on device); they are in {tmp_path / 'eval'}"
    )


@pytest.mark.parametrize("signal_error", [KeyboardInterrupt, "Terminated"])
def test_a_signal_while_the_parser_is_built_is_handled(signal_error, monkeypatch, capsys):
    import dae.cli
    from dae.errors import Terminated

    error = Terminated if signal_error == "Terminated" else signal_error

    def interrupted():
        raise error

    monkeypatch.setattr(dae.cli, "build_parser", interrupted)
    # Was a traceback and exit 1: the parser was built before the try that handles signals.
    assert dae.cli.main(["noises"]) == (130 if error is KeyboardInterrupt else 143)
    assert capsys.readouterr().err.strip() in ("dae: interrupted", "dae: terminated (SIGTERM)")


@pytest.mark.parametrize(("device", "code"), [("", 2), ("cuda:3", 5), ("npu", 2)])
def test_a_baseline_with_a_bad_device_is_one_error_not_one_per_file(device, code, tmp_path, capsys):
    from PIL import Image

    from dae.cli import main

    for name in ("a", "b"):
        Image.new("L", (12, 12), 40).save(tmp_path / f"{name}.png")
    # Was exit 7 with the same line for every file.
    assert (
        main(
            [
                "denoise",
                str(tmp_path),
                "--baseline",
                "identity",
                "-o",
                str(tmp_path / "out"),
                "--device",
                device,
            ]
        )
        == code
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device" in err, err
    assert not (tmp_path / "out").exists()


def test_report_of_an_empty_run_dir_is_refused(tmp_path, monkeypatch, capsys):
    from dae.cli import main

    monkeypatch.chdir(tmp_path)  # "" was read as the current folder
    assert main(["report", ""]) == 2
    assert "argument run_dir: an empty path" in capsys.readouterr().err


def _resolved(argv):
    """The Config `dae train ARGV` would train under, without training."""
    from dae.cli import _collect_overrides, _train_config, build_parser

    args, rest = build_parser().parse_known_args(["train", *argv])
    return _train_config(args, _collect_overrides(rest))


def test_config_files_lay_over_each_other_in_the_order_given(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {name: unet, kwargs: {width: 8}}\ntrain: {steps: 3, lr: 0.01}\n")
    (tmp_path / "b.toml").write_text("[train]\nepochs = 1\nbatch_size = 32\n")
    cfg = _resolved(["--config", str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.toml")])
    assert cfg.model.kwargs == {"width": 8} and cfg.train.lr == 0.01 and cfg.train.batch_size == 32
    assert (cfg.train.epochs, cfg.train.steps) == (1, None)  # the later file's stop replaces the earlier's
    cfg = _resolved(["--config", str(tmp_path / "b.toml"), "--config", str(tmp_path / "a.yaml")])
    assert (cfg.train.epochs, cfg.train.steps) == (None, 3)


def test_a_config_error_names_the_file_it_is_in_when_there_are_several(tmp_path, capsys):
    from dae.cli import main

    (tmp_path / "a.yaml").write_text("train: {lr: 0.01}\n")
    (tmp_path / "b.yaml").write_text("train: {lr: -1}\n")
    argv = [
        "train",
        "--config",
        str(tmp_path / "a.yaml"),
        "--config",
        str(tmp_path / "b.yaml"),
        "--steps",
        "1",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"dae: config file {tmp_path / 'b.yaml'}: train.lr")


@pytest.mark.parametrize("model", [["--model", "strided"], ["--model.name=strided"]])
def test_another_model_on_the_command_line_drops_the_files_model_options(model, tmp_path):
    (tmp_path / "a.yaml").write_text("model: {name: unet, kwargs: {width: 8, convs: 2}}\n")
    cfg = _resolved(["--config", str(tmp_path / "a.yaml"), *model])
    assert (cfg.model.name, cfg.model.kwargs) == ("strided", {})  # unet's width is no option of strided
    cfg = _resolved(["--config", str(tmp_path / "a.yaml"), "--model", "unet"])
    assert cfg.model.kwargs == {"width": 8, "convs": 2}
    # Options given with the new model are its own.
    cfg = _resolved(["--config", str(tmp_path / "a.yaml"), *model, "--model.kwargs.activation=sigmoid"])
    assert cfg.model.kwargs == {"activation": "sigmoid"}


def test_two_recipes_are_refused_and_one_given_twice_is_one(capsys):
    from dae.cli import main

    assert main(["train", "--recipe", "unet-fast", "--recipe", "tf-upsample-0.5", "--steps", "1"]) == 2
    assert (
        capsys.readouterr().err.strip() == "dae: --recipe given twice (unet-fast, tf-upsample-0.5); give one"
    )
    assert _resolved(["--recipe", "unet-fast", "--recipe", "unet-fast"]).recipe == "unet-fast"


def test_train_help_lists_every_setting_with_its_default(capsys):
    import dataclasses

    from dae.cli import main
    from dae.config import Config

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cfg = Config()
    for section in ("data", "train"):
        for f in dataclasses.fields(getattr(cfg, section)):
            assert f"{f.name}=" in text, f"{section}.{f.name}"
    assert "lr=0.003" in text and "kwargs.OPTION=VALUE" in text and "eval_seed=1234" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [\n", "is not valid YAML"),
        ("train: {lr: -1}\n", "the run's config"),
        ("model: {name: nosuch}\n", "unknown model 'nosuch'"),
    ],
)
def test_a_broken_run_config_names_itself_and_says_how_to_resume(text, message, tmp_path, data_dir, capsys):
    from dae.cli import main

    run = tmp_path / "run"
    common = [
        "--data-dir",
        str(data_dir),
        "--out",
        str(run),
        "--quiet",
        "--data.limit=256",
        "--data.val_size=64",
    ]
    assert main(["train", "--model", "strided", "--steps", "2", *common]) == 0
    (run / "config.yaml").write_text(text)
    assert main(["train", "--resume", "--steps", "3", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run / "config.yaml") in err and message in err, err
    assert err.endswith("fix it, or move it away to resume under the config the checkpoints record)")
    # Moved away, the resume goes on under the config the checkpoint records (strided, as it was trained).
    (run / "config.yaml").unlink()
    assert main(["train", "--resume", "--steps", "3", *common]) == 0
    assert "name: strided" in (run / "config.yaml").read_text()
