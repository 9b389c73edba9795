"""Checks of user values where they enter the library, one line each: ranges, sizes against memory, names that become
file names, and output paths."""

from __future__ import annotations

import math
import os
import unicodedata
from pathlib import Path

from cofre.errors import CofreError

# Bounds that catch typos (a budget of 10^25) before they turn into an hours-long run, an overflow or an allocation.
MAX_BUDGET = 1_000_000  # transformer-block evaluations per sample; a step costs at least one, so also steps per sample
MAX_COUNT = 10_000_000  # samples, batches, repeats, optimiser steps
MAX_SEED = 2**63 - 1  # a seed given on the command line (torch takes 64-bit seeds)
# A recipe's seed is combined with steps, epochs and pool indices (seed x 1_000_003 + step, seed x 2^40 + pool) into
# torch's 64-bit seeds: this bound keeps every derived seed in range.
MAX_RECIPE_SEED = 2**23 - 1
MAX_INT = 2**63 - 1  # no integer cofre reads may exceed what torch and numpy hold
MAX_NAME = 100  # characters of a user string that becomes part of a file name


def shown(value: object) -> str:
    """A value as a message shows it: an integer too long to print (Python refuses > 4300 digits) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        digits = math.floor(math.log10(abs(value))) + 1  # str() refuses > 4300 digits; log10 may round up
        return f"a number of {digits - (abs(value) < 10 ** (digits - 1))} digits"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:60]) + f"... ({len(value)} characters)"
    return str(value)


def check_range(option: str, value: int | float | None, low: int | float, high: int | float | None = None) -> None:
    """`value` (None: not given) must lie in [low, high]; the message names the option and the range."""
    if value is None:
        return
    if value != value or value < low or (high is not None and value > high):
        allowed = f"in {low}..{high}" if high is not None else f">= {low}"
        raise CofreError(f"{option} must be {allowed}, got {shown(value)}")


def check_name(option: str, text: str, longest: int = MAX_NAME) -> str:
    """A user string that becomes (part of) a file name: not empty, no path separator, no '..', no control or
    invisible characters, at most `longest` characters; returned stripped, so every output stays in its folder."""
    name = text.strip()
    bad = [c for c in name if unicodedata.category(c)[0] == "C"]  # control, format, unassigned, private use
    if not name or name in (".", "..") or "/" in name or "\\" in name or bad or len(name) > longest:
        why = ("it is empty" if not name else "it holds a control character" if bad else
               f"it is longer than {longest} characters" if len(name) > longest else "it is not a plain file name")
        raise CofreError(f"{option} {shown(text)}: {why}; give a name without '/', '\\' or '..' (it names files)")
    return name


# -- memory: refuse what cannot fit before it is allocated ------------------------------------------------------
def memory_of(device: object = None) -> tuple[int, str]:
    """Bytes of memory on `device` (a CUDA device's total, else this machine's RAM) and its name in messages."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(device)
        return int(properties.total_memory), f"{device} ({properties.name})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def gib(size: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size / 2**10:,.1f} KiB"


def check_memory(option: str, need: float, what: str, device: object = None) -> None:
    """Refuse, naming `option`, what needs more bytes than `device` has at all (not what is free now: other work
    comes and goes; this only stops what can never fit)."""
    have, where = memory_of(device)
    if need > have:
        raise CofreError(f"{option}: {what} needs about {gib(need)}, more than the {gib(have)} of {where}")


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
