"""Checks of command-line values where they enter the library: ranges and output paths, one line each."""

from __future__ import annotations

import os
from pathlib import Path

from cofre.errors import CofreError

# Bounds that catch typos (a budget of 10^25) before they turn into an hours-long run or an overflow.
MAX_BUDGET = 1_000_000  # transformer-block evaluations per sample
MAX_COUNT = 10_000_000  # samples, batches, repeats, steps
MAX_SEED = 2**63 - 1


def check_range(option: str, value: int | float | None, low: int | float, high: int | float | None = None) -> None:
    """`value` (None: not given) must lie in [low, high]; the message names the option and the range."""
    if value is None:
        return
    if value != value or value < low or (high is not None and value > high):
        allowed = f"in {low}..{high}" if high is not None else f">= {low}"
        raise CofreError(f"{option} must be {allowed}, got {value}")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_parent(path: Path, option: str) -> None:
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise CofreError(f"{option} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CofreError(f"{option} {path}: permission denied to write in {parent}")


def check_output_file(path: Path | None, option: str) -> None:
    """An output file may be created or replaced at `path`: not a directory, in a writable place."""
    if path is None:
        return
    if path.is_dir():
        raise CofreError(f"{option} {path} is a directory; give a file name")
    _check_writable_parent(path, option)


def check_output_dir(path: Path | None, option: str) -> None:
    """Files may be written into the folder `path`: not an existing file, in a writable place."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise CofreError(f"{option} {path} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CofreError(f"{option} {path}: permission denied to write in it")
        return
    _check_writable_parent(path, option)
