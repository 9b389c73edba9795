"""The run directory (DESIGN.md §7): recipe, checkpoints, metrics, samples, evaluations, plots."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cofre.config import Recipe, dump_recipe, load_recipe, recipe_to_dict
from cofre.errors import CofreError

# Fields that may change when a run is resumed: extending training, and how it runs or is watched (not its maths).
RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.skip_nonfinite", "trainer.compile", "trainer.log_with"}
LOCK_FILE = ".lock"
# Files written with atomic_write_text: a kill can leave their `.<name>.*` temporary files behind.
ATOMIC_FILES = ("recipe.yaml", "metrics.jsonl", "train_result.json", "latest", "selected")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # a failed write (disk full) leaves no temporary file behind


def read_json_file(path: Path, what: str, remedy: str, fields: dict[str, type | tuple[type, ...]] | None = None) -> Any:
    """A JSON file cofre wrote earlier (a resume file, a run's summary): its value, or one error line naming the file,
    what it should hold and what to do. `fields`: keys a JSON object must hold, with their types."""
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # not JSON, not text, or a number too long to read
        detail = str(err).splitlines()[0][:100] if not isinstance(err, UnicodeDecodeError) else "not UTF-8 text"
        raise CofreError(f"{path}: not a readable {what} ({detail}); {remedy}") from None
    wrong = [k for k, tp in (fields or {}).items() if not isinstance(value, dict) or not of_type(value.get(k), tp)]
    if fields is not None and (not isinstance(value, dict) or wrong):
        held = f"its {', '.join(wrong)} missing or of the wrong type" if isinstance(value, dict) else "not a JSON object"
        raise CofreError(f"{path}: not a {what} ({held}); {remedy}")
    return value


def read_jsonl_file(path: Path, what: str, remedy: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file cofre wrote (written whole, so a cut line is damage): one error line naming
    the file, the line and what to do."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise CofreError(f"{path}: not a {what} (not UTF-8 text); {remedy}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CofreError(f"{path}: line {number} is not a JSON record (a damaged {what}); {remedy}") from None
        if not isinstance(record, dict):
            raise CofreError(f"{path}: line {number} is not a JSON object (a damaged {what}); {remedy}")
        records.append(record)
    return records


CELL_REMEDY = "remove it to draw and score the cell again"  # a cell record of evaluate, sweep or schedule-search


def of_type(value: Any, tp: type | tuple[type, ...]) -> bool:
    """isinstance, where a bool is not a number (JSON's true is no count)."""
    return isinstance(value, tp) and not (isinstance(value, bool) and bool not in (tp if isinstance(tp, tuple) else (tp,)))


def time_before(progress: dict[str, Any], run: Path, start_step: int) -> float | None:
    """Seconds spent training a run before a call that resumes it from a checkpoint at `start_step` (0 for a fresh
    run): what the checkpoint recorded, else (a checkpoint written before it recorded time) what the train_result.json
    of a call that ended at `start_step` says; None when neither knows."""
    if start_step <= 0:
        return 0.0
    if isinstance(progress.get("train_time_s"), (int, float)):
        return float(progress["train_time_s"])
    path = Path(run) / "train_result.json"
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return None
    value = previous.get("train_time_s", previous.get("elapsed_s")) if previous.get("final_step") == start_step else None
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class TrainClock:
    """A run's training time over every call that trained it (Table 15's header): the time before this call, as its
    checkpoint recorded it, plus this call's. Checkpoints store `total()`, so a killed call's time up to its last
    checkpoint counts, and the steps it redoes do not."""

    before: float | None  # None: an older checkpoint did not record it, so the total is a lower bound
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def total(self, trained: bool = True) -> float:
        """Seconds trained so far; a call that trained no step adds nothing."""
        return (self.before or 0.0) + (self.elapsed() if trained else 0.0)

    @property
    def complete(self) -> bool:
        return self.before is not None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data as {"section.key": value}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def value_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipes' plain values (any recipe kind)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def recipe_differences(old: Recipe, new: Recipe) -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    return value_differences(recipe_to_dict(old), recipe_to_dict(new))


def runs_with_checkpoints(root: Path) -> list[Path]:
    """Every denoiser run directly under `root` that holds a published checkpoint, by name. Runs whose recipe
    names a `kind` (a VQ tokenizer, a classifier, a shortcut) are not denoisers and are left out."""
    runs = sorted(p for p in root.glob("*") if (p / "checkpoints" / "latest").is_file() and not _recipe_kind(p)) \
        if root.is_dir() else []
    if not runs:
        raise CofreError(f"no run under {root}/ holds a checkpoint; train one first or name the runs to use")
    return runs


def _recipe_kind(run: Path) -> str:
    """The `kind:` a run's recipe.yaml names ('' for a denoiser, or an unreadable recipe)."""
    from cofre.kinds import kind_of

    try:
        return kind_of(yaml.safe_load((run / "recipe.yaml").read_text()))
    except (OSError, yaml.YAMLError, ValueError):
        return ""


class RunDir:
    """One run: `recipe.yaml`, `checkpoints/step-*/`, `checkpoints/latest`, `metrics.jsonl`, ..."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def recipe_path(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def exists(self) -> bool:
        return self.recipe_path.is_file()

    def lock(self) -> None:
        """Become the one writer of this run: an exclusive flock on `<run>/.lock`, refused while another process
        holds it. The kernel drops the lock when its process dies, so a crashed run never blocks the next one."""
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CofreError(f"run directory {self.path} is in use by another process (pid {holder}); "
                             "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def recipe(self) -> Recipe:
        return load_recipe(self.recipe_path)

    def check(self, recipe: Recipe) -> bool:
        """Read-only: may `recipe` run here? True when it resumes the run already in this directory."""
        old = recipe_to_dict(self.recipe()) if self.exists() else None
        return self.check_values(old, recipe_to_dict(recipe), RESUMABLE_CHANGES)

    def check_values(self, old: dict[str, Any] | None, new: dict[str, Any], resumable: Collection[str] = ()) -> bool:
        """Read-only, for any recipe kind: may a run of recipe values `new` run here, given `old`, the values of the
        run already here (None: no run is)? True when it resumes that run; only `resumable` keys may differ."""
        if old is not None:
            changed = [k for k in value_differences(old, new) if k not in resumable]
            if changed:
                raise CofreError(
                    f"run directory {self.path} holds a different recipe ({', '.join(changed[:4])} differ); "
                    "choose another --run-dir to start a new run"
                )
            return True
        if self.path.exists() and (not self.path.is_dir() or any(p.name != LOCK_FILE for p in self.path.iterdir())):
            raise CofreError(f"{self.path} exists, is not an empty directory and holds no recipe.yaml; choose another --run-dir")
        return False

    def create(self, recipe: Recipe) -> None:
        """Write the resolved recipe (new run, or a resumed run whose resumable fields changed)."""
        if not self.exists() or recipe_differences(self.recipe(), recipe):
            atomic_write_text(self.recipe_path, dump_recipe(recipe))

    def start(self, recipe: Recipe, step: int | None, new: bool) -> None:
        """The first writes of a run, once its start is known to be valid (under the lock): the recipe, no
        temporary files of a killed run, and metrics that end at the step it starts from (None: a fresh start).
        `new`: the directory held no run when it was checked; another process may have started one since."""
        self.lock()
        if new and self.exists():
            self.unlock()
            raise CofreError(f"another process started a run in {self.path} while this one was starting; rerun to resume it")
        kept = self.read_metrics()  # read (and checked) before anything is written
        self.create(recipe)
        self.clean_temporary_files()
        self.truncate_metrics(step, kept)

    def clean_temporary_files(self) -> None:
        """Remove what a killed writer left: unfinished checkpoints (`.tmp-*`) and atomic writes' temp files."""
        for folder in (self.path, self.checkpoints):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".tmp-step-") and path.is_dir():
                    shutil.rmtree(path)
                elif any(path.name.startswith(f".{name}.") for name in ATOMIC_FILES) and path.is_file():
                    path.unlink()

    def checkpoint_names(self) -> list[str]:
        return sorted(p.name for p in self.checkpoints.glob("step-*") if p.is_dir())

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `checkpoints/latest` names; None before the first; an error when it names none."""
        from cofre.training.checkpoint import read_pointer

        latest = read_pointer(self.checkpoints / "latest")
        if latest is None and self.checkpoint_names():
            raise CofreError(f"{self.checkpoints} holds {', '.join(self.checkpoint_names())} but no 'latest' pointer; "
                             "write the name of the checkpoint to resume from into it (nothing was changed)")
        return latest

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int | None, records: list[dict[str, Any]] | None = None) -> None:
        """Keep the records up to `step` (a run resumed at its checkpoint), or none (None: a fresh start), so that
        records a killed run logged after its last checkpoint are never kept twice."""
        if not self.metrics_path.exists():
            return
        records = self.read_metrics() if records is None else records
        kept = [r for r in records if step is not None and r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics records; a partial last line (a write cut short by a kill) is skipped."""
        if not self.metrics_path.is_file():
            return []
        text = self.metrics_path.read_text(errors="replace")
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # the last line, with no newline after it: cut short by a kill
                    continue
                raise CofreError(f"{self.metrics_path}: line {number} is not a JSON record; fix or remove it") from None
            if not isinstance(record, dict):
                raise CofreError(f"{self.metrics_path}: line {number} is not a JSON object; fix or remove it")
            records.append(record)
        return records


def code_version() -> str:
    """The cofre version and, in a git checkout, the commit (with '+dirty' for uncommitted changes)."""
    import subprocess

    from cofre import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}" + ("-dirty" if dirty else "")
