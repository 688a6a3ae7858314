"""Errors meant for people: one line, naming what was wrong and where, each class with its own exit code."""

from __future__ import annotations


class DaeError(Exception):
    """Base class for expected failures; the CLI prints `dae: <message>` and exits with `exit_code`."""

    exit_code = 1


class UsageError(DaeError):
    """Bad command-line arguments, config values or names (unknown model, bad noise spec)."""

    exit_code = 2


class DataError(DaeError):
    """Bad input data: malformed IDX, checksum mismatch, unreadable or hostile image file."""

    exit_code = 3


class CheckpointError(DaeError):
    """Corrupt, truncated, foreign or unsafe checkpoint."""

    exit_code = 4


class ResourceError(DaeError):
    """Missing resources: dataset not found anywhere, output exists, no such device."""

    exit_code = 5


class TrainingError(DaeError):
    """Training diverged (non-finite loss); nothing non-finite was written."""

    exit_code = 6


class PartialFailure(DaeError):
    """Some items of a batch job failed (each reported); the good ones were written."""

    exit_code = 7


class PeerFailure(DaeError):
    """Under torchrun: another training process stopped (its own error says why), so this one stopped too."""

    exit_code = 8


class Interrupted(DaeError):
    """SIGINT/SIGTERM during training: the current step finished and a checkpoint was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them


class Terminated(BaseException):
    """SIGTERM that stops at once: the `dae` command's handler outside training, or a second SIGTERM during it.

    It unwinds as Ctrl-C's KeyboardInterrupt does (temp files removed, nothing half-written) and, like it, is
    a BaseException, so that no `except DaeError` or `except Exception` on the way (a file that failed, a figure
    left out) takes it for a failure of its own. The CLI reports it in one line with exit code 143.
    """

    exit_code = 143
