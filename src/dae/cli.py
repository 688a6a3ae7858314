"""The `dae` command: each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from dae.errors import DaeError, Interrupted, PartialFailure, ResourceError, Terminated, UsageError
from dae.fileio import signals_held


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message: str):
        option = re.fullmatch(r"argument ([-\w/]+): expected one argument", message)
        if option and _value_like_an_option(option[1].split("/")):
            # argparse reads `--budget -5s` as two options, so the real complaint (a negative value) never shows
            message += f"; a value that starts with '-' is written {option[1].split('/')[-1]}=VALUE"
        # main() puts "dae: " in front of every error; the help hint names the subcommand.
        raise UsageError(f"{message} (see '{self.prog} --help')")


_ARGV: list[str] = []  # the arguments main() is parsing, for _Parser.error's hint


def _value_like_an_option(names: list[str]) -> bool:
    """Whether one of the option `names` is followed on the command line by a token that starts with '-'."""
    return any(a in names and b.startswith("-") for a, b in zip(_ARGV, _ARGV[1:], strict=False))


# ------------------------------------------------------------------------------------------------ train


# The dotted overrides that a flag of `dae train` also sets.
_FLAG_ALIASES = {
    "data.dataset": "--dataset",
    "data.data_dir": "--data-dir",
    "model.name": "--model",
    "train.noise": "--noise",
    "train.epochs": "--epochs",
    "train.steps": "--steps",
    "train.time_budget": "--time-budget",
}


def _train_config(args: argparse.Namespace, overrides: list[str]):
    from dae.config import load_config_file, merge, parse_duration, parse_override
    from dae.train import check_config_layer, lay_over, resolve_config

    # The file, then the flags, then dotted overrides; resolve_config lays them over the resumed run's saved
    # config and the recipe, exactly as for a library caller.
    own: dict[str, Any] = {}
    for path in args.config or []:  # several files lay over each other in the order given
        layer = load_config_file(path)
        check_config_layer(layer, f"config file {path}")
        own = lay_over(own, layer)
    flags: dict[str, Any] = {"data": {}, "model": {}, "train": {}}
    if args.recipe:
        flags["recipe"] = args.recipe
    if args.dataset:
        flags["data"]["dataset"] = args.dataset
    if args.data_dir:
        flags["data"]["data_dir"] = args.data_dir
    if args.model:
        flags["model"]["name"] = args.model
    if args.noise is not None:  # an empty --noise "" is refused by the parser, not ignored
        flags["train"]["noise"] = args.noise
    if args.epochs is not None:
        flags["train"]["epochs"] = args.epochs
    if args.steps is not None:
        flags["train"]["steps"] = args.steps
    if args.time_budget:
        flags["train"]["time_budget"] = parse_duration(args.time_budget)
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.out:
        flags["out"] = args.out
    if args.name:
        flags["name"] = args.name
    given: dict[str, Any] = flags
    for item in overrides:
        key = item.partition("=")[0].lstrip("-")  # parse_override reads ---train.steps as train.steps
        section, _, name = key.partition(".")
        if key in _FLAG_ALIASES and name in flags.get(section, {}):
            # Which one wins would be a guess about what was meant (the dotted one did, silently).
            raise UsageError(f"--{key} and {_FLAG_ALIASES[key]} both given; give one of them")
        given = merge(given, parse_override(item))
    # A stop given on the command line replaces the file's, as it replaces a recipe's and a resumed run's:
    # `--config RUN/config.yaml --epochs 8` must not stop at the file's steps without a word; and --model
    # strided over a file's unet set-up must not hand strided the unet's options.
    return resolve_config(lay_over(own, given), resume=args.resume)


def _collect_overrides(rest: list[str]) -> list[str]:
    """Accept --a.b=value and --a.b value; anything else is an unknown argument."""
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            if "=" in arg:
                out.append(arg[2:])
            elif i + 1 < len(rest):
                out.append(f"{arg[2:]}={rest[i + 1]}")
                i += 1
            else:
                raise UsageError(f"override {arg} needs a value, e.g. {arg}=VALUE")
        else:
            raise UsageError(f"unrecognised argument {arg!r} (overrides look like --train.lr=1e-3)")
        i += 1
    return out


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.train import train

    cfg = _train_config(args, _collect_overrides(rest))
    if args.resume and not cfg.out:
        raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    if _torchrun_rank() != 0:
        return 0  # under torchrun the first process speaks for the run
    print(
        f"run: {result.run_dir}  steps: {result.step}  time: {result.elapsed_s:.1f}s "
        f"({result.trained_with['precision']} on {result.trained_with['device']})  "
        f"best val PSNR: {result.best_val_psnr:.2f} dB"
    )
    print(f"best checkpoint: {result.best_checkpoint}")
    return 0


# ------------------------------------------------------------------------------------------------ eval


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.allocator import keep_freed_memory
    from dae.checkpoint import resolve_checkpoint
    from dae.evaluate import check_results_folder, evaluate, format_table, parse_levels, write_results

    levels = parse_levels(args.levels)  # None: the family's own sweep, a full spec as it is
    baselines = [b for b in (args.baselines or "").split(",") if b]
    keep_freed_memory()  # batch after batch of the same size: reuse the memory instead of faulting it in
    # Beside the (first) run: RUN/eval whether RUN, RUN/checkpoints or a .safetensors file was named.
    out = args.out or "runs/eval"
    if args.checkpoint and not args.out:
        weights = resolve_checkpoint(args.checkpoint[0])
        out = str(
            (weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent) / "eval"
        )
    check_results_folder(Path(out))  # refused before the work, as evaluate(out=...) would
    result = evaluate(
        args.checkpoint or [],
        baselines,
        dataset=args.dataset,
        noise="gaussian" if args.noise is None else args.noise,
        levels=levels,
        limit=args.limit,
        slow_limit=args.slow_limit,
        seed=args.seed,
        sigma=args.sigma,
        data_dir=args.data_dir,
        device=args.device,
        verbose=not args.quiet,
    )
    # The tables first: a full disk at the end of a long evaluation must not take its numbers with it. Nor
    # may a stdout that fails (`| head` closing the pipe, a full log file) take the files.
    unprinted = None
    try:
        for note in result.notes:
            print(f"note: {note}")
        print(format_table(result.records, "psnr"))
        print()
        print(format_table(result.records, "ssim"), flush=True)
    except OSError as e:
        unprinted = e
    files = write_results(result, Path(out))
    if isinstance(unprinted, BrokenPipeError):
        raise unprinted  # the reader has gone, as for every command
    if unprinted is not None:
        raise ResourceError(
            f"cannot print the results ({unprinted.strerror or unprinted}); they are in {out}"
        )
    print(f"wrote: {', '.join(str(f) for f in files)}")
    return 0


# ------------------------------------------------------------------------------------------------ denoise


def cmd_denoise(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.allocator import keep_freed_memory
    from dae.inference import denoise_files

    keep_freed_memory()  # tile after tile of (nearly) one size: reuse the memory instead of faulting it in

    if args.max_pixels is not None and args.max_pixels < 0:
        raise UsageError(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    if args.baseline is not None:
        from dae.baselines import create_baseline

        method = create_baseline(args.baseline)  # an unknown name is a usage error listing the valid ones
    else:
        method = args.checkpoint
    report = denoise_files(
        args.inputs,  # as typed: Path("") would already be the current folder
        method,
        args.output,
        add_noise=args.add_noise,
        seed=args.seed,
        force=args.force,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        **({} if args.max_pixels is None else {"max_pixels": args.max_pixels or None}),
    )
    for line in report.error_lines():
        print(f"dae: {line}", file=sys.stderr)
    print(
        f"wrote {len(report.written)} file(s) to {args.output}"
        + (f"; kept {len(report.kept)} existing output(s) (--force overwrites them)" if report.kept else "")
        + (f"; {len(report.failed)} failed" if report.failed else "")
    )
    if report.skipped:
        print(
            f"dae: skipped {len(report.skipped)} file(s) dae cannot read or write (webp, gif, ...) or that "
            f"link to nothing: {_first_few(report.skipped)}",
            file=sys.stderr,
        )
    if report.left_out:
        print(
            f"dae: left out {len(report.left_out)} image(s) already in the output folder {args.output}, "
            "which dae does not denoise (choose an output folder outside the inputs to include them): "
            f"{_first_few(report.left_out)}",
            file=sys.stderr,
        )
    if report.failed:
        raise PartialFailure(f"{len(report.failed)} of {report.total} input(s) failed (listed above)")
    return 0


def _first_few(paths: list[Path], shown: int = 5) -> str:
    """The first `shown` paths, comma-separated, and "..." when there are more: a line, not a listing."""
    return ", ".join(str(p) for p in paths[:shown]) + (", ..." if len(paths) > shown else "")


# ------------------------------------------------------------------------------------------------ misc


def cmd_report(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.report import write_report

    path = write_report(Path(args.run_dir), data_dir=args.data_dir)
    print(f"wrote {path}")
    return 0


def cmd_models(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.models import MODELS, create_model
    from dae.recipes import get_recipe, list_recipes

    if args.recipes:
        for name in list_recipes():
            r = get_recipe(name)
            print(f"{name:<28} {r.description}")
        return 0
    for name in MODELS.names():
        model = create_model(name)
        summary = _summary(MODELS.get(name)) or _summary(type(model))
        print(f"{name:<12} {model.num_parameters():>9,d} params  {model.output_kind:<7} {summary}")
        options = _model_options(MODELS.get(name))
        if options:  # what --model.kwargs.OPTION=VALUE takes (dae train --help points here)
            print(f"{'':<12} options: {options}")
    return 0


def _model_options(builder: Any) -> str:
    """A model builder's options with their defaults, read from its signature (in_channels is dae's to set)."""
    import inspect

    shown = []
    for p in inspect.signature(builder).parameters.values():
        if p.name == "in_channels" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        shown.append(f"{p.name}={'(required)' if p.default is p.empty else _as_typed(p.default)}")
    return ", ".join(shown)


def _as_typed(value: Any) -> str:
    """A default as one would type it on the command line: none, true/false, 16-32 for a sequence."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "-".join(str(v) for v in value)
    return str(value)


def _summary(obj: object) -> str:
    """The first paragraph of a docstring on one line (a first line alone may stop mid-sentence)."""
    return " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())


def cmd_list(kind: str):
    def run(args: argparse.Namespace, rest: list[str]) -> int:
        if kind == "noises":
            from dae.data.noise import NOISES as registry
        else:
            from dae.baselines import BASELINES as registry
        for name in registry.names():
            note = ""
            if kind == "baselines":
                try:
                    registry.create(name)
                except ResourceError as e:  # an optional package that is not installed
                    note = f" [not available: {e}]"
            print(f"{name:<14} {_summary(registry.get(name))}{note}")
        return 0

    return run


class _Once(argparse.Action):
    """An option that may be given once: a second, different value is an error rather than the last one winning
    (two recipes are two whole set-ups; which was meant is a guess)."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest)
        if before is not None and before != values:
            raise UsageError(f"{option_string} given twice ({before}, {values}); give one")
        setattr(namespace, self.dest, values)


def _overrides_help() -> str:
    """The settings `dae train` takes as dotted overrides, with their defaults, read from the Config dataclasses
    themselves so that the list cannot fall behind them."""
    import dataclasses
    import textwrap

    from dae.config import Config

    def paragraph(text: str, indent: str = "") -> str:
        return textwrap.fill(text, 78, initial_indent=indent, subsequent_indent=indent and indent + "    ")

    cfg = Config()
    sections = ("data", "model", "train")
    top = [
        f"{f.name}={_as_typed(getattr(cfg, f.name))}"
        for f in dataclasses.fields(cfg)
        if f.name not in sections
    ]
    lines = [
        paragraph(
            "Settings, with their defaults: those in a section are also --SECTION.FIELD=VALUE after the flags "
            "(e.g. --train.lr=1e-3); all are keys of a --config file; dae/config.py says what each does."
        )
    ]
    for section in sections:
        part = getattr(cfg, section)
        values = [
            f"{f.name}={_as_typed(getattr(part, f.name))}"
            for f in dataclasses.fields(part)
            if f.name != "kwargs"
        ]
        if section == "model":
            values.append("kwargs.OPTION=VALUE (the model's options: dae models)")
        lines.append(paragraph(f"{section}: " + ", ".join(values), "  "))
    lines.append(paragraph("no section (flags, or a --config file): " + ", ".join(top), "  "))
    lines.append(
        paragraph(
            "Later layers win: the defaults, a recipe, --config files in order, the flags, the dotted "
            "overrides. --recipe may be given once; another flag given twice counts once, the last one."
        )
    )
    return "\n".join(lines)


def _nonempty(text: str) -> str:
    """A path option's value: an empty one ('--data-dir ""', an unset shell variable) is refused, not read as
    the current folder by one command and as no option at all by another."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def _filled(text: str) -> str:
    """A name or a duration: an empty one ('--model ""', an unset shell variable) is refused, not read as no
    option at all, which would train the default model or without the budget that was meant."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value")
    return text


def cmd_data_check(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.data.datasets import check_dataset

    for line in check_dataset(args.name, root=args.data_dir, download=args.download):
        print(line)
    return 0


def cmd_study(args: argparse.Namespace, rest: list[str]) -> int:
    from dae.study import run_study

    path = run_study(
        out=Path(args.out), quick=args.quick, budget=args.budget, data_dir=args.data_dir, seed=args.seed
    )
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from dae import __version__

    p = _Parser(prog="dae", description="Denoising autoencoders for images.")
    p.add_argument("--version", action="version", version=f"dae {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a denoiser (dotted overrides such as --train.lr=1e-3 accepted)",
        description="Train a denoiser. In several processes or on several GPUs, start it with torchrun:\n"
        "torchrun --standalone --nproc-per-node N -m dae train ... (the batch size stays the whole batch).",
        epilog=_overrides_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--config",
        type=_nonempty,
        action="append",
        help="YAML or TOML file setting config values (as RUN/config.yaml); repeatable, later files win",
    )
    t.add_argument("--dataset", type=_filled, help="mnist, fashion-mnist or folder (default mnist)")
    t.add_argument(
        "--data-dir",
        type=_nonempty,
        help="directory holding the dataset (default $DAE_DATA_DIR, cache, download)",
    )
    t.add_argument("--model", type=_filled, help="model name (see 'dae models'); default: the best model")
    t.add_argument("--recipe", type=_filled, action=_Once, help="a named preset (see 'dae models --recipes')")
    t.add_argument("--noise", help="training noise spec, e.g. gaussian:0.5 or gaussian:0.1-0.9")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps", type=int)
    t.add_argument(
        "--time-budget",
        type=_filled,
        help="wall-clock budget of the training loop (validation and checkpoints included; loading the data "
        "before it is not), e.g. 90s, 2m, 1h",
    )
    t.add_argument("--seed", type=int)
    t.add_argument("--out", type=_nonempty, help="run directory (default runs/<name>)")
    t.add_argument("--name", type=_filled, help="run name")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last good checkpoint"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train, allow_rest=True)

    e = sub.add_parser("eval", help="PSNR/SSIM of checkpoints and baselines across noise levels")
    e.add_argument(
        "--checkpoint", action="append", help="checkpoint (.safetensors) or run directory; repeatable"
    )
    e.add_argument("--baselines", help="comma-separated: identity,gaussian_blur,median,nlm,tv,wavelet,bm3d")
    e.add_argument(
        "--dataset",
        type=_filled,
        help="mnist, fashion-mnist or folder (default: what the checkpoints were trained on, else mnist)",
    )
    e.add_argument("--data-dir", type=_nonempty)
    e.add_argument(
        "--levels",
        help="comma-separated noise levels (default for a family: 0.1,0.2,...,1.0; poisson: peaks 1,2,5,...,100)",
    )
    e.add_argument("--noise", help="noise family or full spec (default gaussian, clipped)")
    e.add_argument("--limit", type=int, help="first N test images")
    e.add_argument("--slow-limit", type=int, default=200, help="images for slow baselines (nlm, bm3d)")
    e.add_argument("--seed", type=int, default=1234, help="evaluation noise seed")
    e.add_argument(
        "--sigma",
        choices=["given", "estimate"],
        default="given",
        help="noise level handed to baselines: given (the std of the noise in each image, measured against the "
        "clean image: an oracle; Gaussian noise of one level, other noise is estimated) or estimate (from the noisy "
        "image) (default: %(default)s)",
    )
    e.add_argument("--device", default="auto")
    e.add_argument(
        "--out", type=_nonempty, help="output directory (default RUN/eval for the first checkpoint)"
    )
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser(
        "denoise",
        help="denoise image files or folders",
        description="Denoise image files, and folders searched recursively for .png, .jpg, .jpeg, .tif, .tiff "
        "and .bmp files (other images are listed as skipped). Outputs keep each file's name, relative folder, "
        "format and bit depth (16-bit colour, and 16-bit grey with alpha, come back 8-bit: Pillow reads them "
        "so). A folder that cannot be read fails like a file (exit 7). Outputs already there are kept, so a "
        "rerun finishes an interrupted folder; after changing the checkpoint or --add-noise, pass --force to "
        "replace them. For one file given alone, an existing output is an error, and -o may name the output "
        "file itself.",
    )
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    method = d.add_mutually_exclusive_group(required=True)
    method.add_argument(
        "--checkpoint",
        help="checkpoint (.safetensors, its .json or .state.pt) or run directory",
    )
    method.add_argument(
        "--baseline",
        help="a classical method instead of a model: identity, gaussian_blur, median, nlm, tv, wavelet or bm3d "
        "(dae baselines); those that use the noise level estimate it from each image",
    )
    d.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder; for one input file, a file name such as clean.png (in the input's format)",
    )
    d.add_argument(
        "--add-noise",
        help="corrupt inputs first (for demos), e.g. gaussian:0.3; the noisy copy is saved as NAME.noisy.EXT "
        "(NAME.noisy.jpg.png for a JPEG, losslessly)",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="overwrite existing outputs")
    d.add_argument("--device", help="cpu, cuda or mps (default: the model's)")
    d.add_argument("--tile", type=int, help="tile size (default: automatic above 512x512; 0 never tiles)")
    d.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    d.add_argument(
        "--max-pixels",
        type=int,
        help="refuse images with more pixels, a decompression-bomb guard (default 100,000,000; 0: no limit)",
    )
    d.set_defaults(func=cmd_denoise)

    r = sub.add_parser("report", help="write RUN_DIR/report.html")
    r.add_argument("run_dir", type=_nonempty)
    r.add_argument("--data-dir", type=_nonempty)
    r.set_defaults(func=cmd_report)

    m = sub.add_parser("models", help="list models (or --recipes)")
    m.add_argument("--recipes", action="store_true")
    m.set_defaults(func=cmd_models)
    sub.add_parser("noises", help="list noise models").set_defaults(func=cmd_list("noises"))
    sub.add_parser("baselines", help="list classical baselines").set_defaults(func=cmd_list("baselines"))

    data = sub.add_parser("data", help="dataset tools")
    data.set_defaults(func=lambda args, rest: data.print_help() or 2)  # no ACTION: what the actions are
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    dc = dsub.add_parser(
        "check", help="locate a dataset's files and verify them (--download fetches missing ones)"
    )
    dc.add_argument("name")
    dc.add_argument("--data-dir", type=_nonempty)
    dc.add_argument("--download", action="store_true", help="download and verify if not found locally")
    dc.set_defaults(func=cmd_data_check)

    s = sub.add_parser("study", help="reproduce the tutorials' experiments and answer their open questions")
    s.add_argument(
        "--quick", action="store_true", help="8 s per model, a few minutes on 2 CPU cores (a smoke test)"
    )
    s.add_argument(
        "--budget", type=_filled, help="training time per model, e.g. 60s (default 60s, 8s with --quick)"
    )
    s.add_argument(
        "--out",
        type=_nonempty,
        default="runs/study",
        help="study folder; models trained there are reused (default: %(default)s)",
    )
    s.add_argument(
        "--data-dir",
        type=_nonempty,
        help="folder holding MNIST (default: $DAE_DATA_DIR, the cache, then download)",
    )
    s.add_argument("--seed", type=int, default=0, help="training seed of every model (default: %(default)s)")
    s.set_defaults(func=cmd_study)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a caller may redirect it between calls)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """dae's own log lines (a download, a bad cached file passed over) as 'dae: ...' on stderr, like errors."""
    logger = logging.getLogger("dae")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("dae: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # printed once, whatever logging the caller has set up


def _torchrun_size() -> int:
    """How many processes torchrun started; 1 outside torchrun (read without importing torch).

    A malformed WORLD_SIZE reads as 1 here: dae train's own check (dae.distributed) names it.
    """
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def _torchrun_rank() -> int:
    """This process's RANK among torchrun's processes; 0 outside torchrun."""
    try:
        return int(os.environ["RANK"]) if _torchrun_size() > 1 else 0
    except (KeyError, ValueError):
        return 0


def _report(e: DaeError) -> None:
    """The error's one line; under torchrun, labelled with the process that met it (the first speaks plainly)."""
    rank = _torchrun_rank()
    if rank == 0:
        print(f"dae: {e}", file=sys.stderr)
    elif not isinstance(e, Interrupted):  # all processes stop together; the first one says where
        print(f"dae (process {rank}): {e}", file=sys.stderr)


def _terminated(signum, frame):
    raise Terminated  # see dae.errors.Terminated; training installs its own handler, which saves a checkpoint


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    try:  # all of it: a signal in the first milliseconds (while the parser is built) is handled too
        _log_to_stderr()
        _ARGV[:] = sys.argv[1:] if argv is None else argv
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if rest and not getattr(args, "allow_rest", False):
            raise UsageError(f"unrecognised arguments: {' '.join(rest)}")
        if args.func is not cmd_train and _torchrun_size() > 1:
            # Every process would do the whole job and write the same files; only training shares its work.
            raise UsageError(
                f"dae {args.command} runs in one process; of dae's commands only `dae train` shares its work "
                "across torchrun's processes, so run this one without torchrun"
            )
        with signals_held():  # see there: a signal raised inside `import torch` crashed the unwinding
            import torch  # noqa: F401  (every command's work needs it)
        return args.func(args, rest)
    except DaeError as e:
        _report(e)
        return e.exit_code
    except KeyboardInterrupt:
        print("dae: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("dae: terminated (SIGTERM)", file=sys.stderr)
        return Terminated.exit_code
    except BrokenPipeError:
        return 0
