"""Caches of derived data (packed corpora, image codes, corpus tokenizers): verified each time they are opened, and
rebuilt with one warning line when damaged. A cache is checked against what its meta.json says: the arrays load,
have the recorded shapes and dtype, and every id lies in its vocabulary. The full scan of the ids runs once per
version of a file (a stamp records the size and mtime it passed at); the shapes are checked on every open."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cofre.errors import CofreError, warn

T = TypeVar("T")
STAMP = "verified.json"  # per array: the size, mtime and id bound its full scan passed at
_SCAN_ROWS = 1 << 16  # rows per chunk of the id scan (memory-mapped: only a chunk is in memory)


class DamagedCache(Exception):
    """A cache that does not hold what its meta.json says; caught by `open_cache`, which rebuilds it."""


def open_cache(final: Path, build: Callable[[], None], verify: Callable[[Path], T]) -> T:
    """What `verify` reads from the cache folder `final`, built by `build` when missing; a damaged cache is moved
    aside and built again, with one warning line."""
    if final.exists():
        try:
            return verify(final)
        except DamagedCache as err:
            warn(f"{final}: damaged cache ({err}); building it again")
            discard(final)
    build()
    try:
        return verify(final)
    except DamagedCache as err:
        raise CofreError(f"{final}: the cache just built does not verify ({err})") from None


def discard(path: Path) -> None:
    """Remove a damaged cache folder or file: renamed aside first, so no reader ever sees half of it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.damaged.", dir=path.parent))
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)


def read_meta(folder: Path, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The cache's meta.json, holding `fields` with their types."""
    from cofre.runs import of_type

    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as err:  # missing, not text, not JSON
        raise DamagedCache(f"meta.json: {' '.join(str(err).split())[:80]}") from None
    wrong = [k for k, tp in fields.items() if not isinstance(meta, dict) or not of_type(meta.get(k), tp)]
    if wrong:
        raise DamagedCache(f"meta.json lacks {', '.join(wrong)}")
    return meta


def load_ids(path: Path, shape: tuple[int, ...], high: int) -> np.ndarray:
    """An int .npy array of exactly `shape`, every value in [0, high), memory-mapped copy-on-write (torch needs a
    writable array, and a stray in-place write must not reach the cache)."""
    try:
        array = np.load(path, mmap_mode="c")
    except (OSError, ValueError, EOFError) as err:  # missing, truncated (mmap longer than the file), not .npy
        raise DamagedCache(f"{path.name}: {' '.join(str(err).split())[:80]}") from None
    if array.dtype.kind not in "iu" or array.shape != shape:
        raise DamagedCache(f"{path.name} holds {array.dtype} {array.shape}, not integers of shape {shape}")
    _check_ids(path, array, high)
    return array


def _check_ids(path: Path, array: np.ndarray, high: int) -> None:
    """Every value in [0, high): scanned in chunks, once per version of the file (the stamp beside it says which)."""
    stat = path.stat()
    version = [stat.st_size, stat.st_mtime_ns, high]
    stamp_file = path.parent / STAMP
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    if not isinstance(stamps, dict):
        stamps = {}
    if stamps.get(path.name) == version:
        return
    rows = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    for start in range(0, len(rows), _SCAN_ROWS):
        chunk = rows[start:start + _SCAN_ROWS]
        if chunk.size and (int(chunk.min()) < 0 or int(chunk.max()) >= high):
            raise DamagedCache(f"{path.name} holds ids outside 0..{high - 1}")
    stamps[path.name] = version
    try:  # a read-only cache is scanned again next time
        from cofre.runs import atomic_write_text

        atomic_write_text(stamp_file, json.dumps(stamps))
    except OSError:
        pass
