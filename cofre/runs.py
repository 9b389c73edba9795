"""The run directory (DESIGN.md §7): recipe, checkpoints, metrics, samples, evaluations, plots."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cofre.config import Recipe, dump_recipe, load_recipe, recipe_to_dict
from cofre.errors import CofreError

# Fields that may change when a run is resumed: extending training, and how it runs or is watched (not its maths).
RESUMABLE_CHANGES = {"trainer.max_steps", "trainer.compile", "trainer.log_with"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data as {"section.key": value}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_differences(old: Recipe, new: Recipe) -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    a, b = flatten(recipe_to_dict(old)), flatten(recipe_to_dict(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def runs_with_checkpoints(root: Path) -> list[Path]:
    """Every run directory directly under `root` that holds a published checkpoint, by name."""
    runs = sorted(p for p in root.glob("*") if (p / "checkpoints" / "latest").is_file()) if root.is_dir() else []
    if not runs:
        raise CofreError(f"no run under {root}/ holds a checkpoint; train one first or name the runs to use")
    return runs


class RunDir:
    """One run: `recipe.yaml`, `checkpoints/step-*/`, `checkpoints/latest`, `metrics.jsonl`, ..."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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

    def recipe(self) -> Recipe:
        return load_recipe(self.recipe_path)

    def check(self, recipe: Recipe) -> bool:
        """Read-only: may `recipe` run here? True when it resumes the run already in this directory."""
        if self.exists():
            changed = [k for k in recipe_differences(self.recipe(), recipe) if k not in RESUMABLE_CHANGES]
            if changed:
                raise CofreError(
                    f"run directory {self.path} holds a different recipe ({', '.join(changed[:4])} differ); "
                    "choose another --run-dir to start a new run"
                )
            return True
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise CofreError(f"{self.path} exists, is not an empty directory and holds no recipe.yaml; choose another --run-dir")
        return False

    def create(self, recipe: Recipe) -> None:
        """Write the resolved recipe (new run, or a resumed run whose max_steps changed)."""
        if not self.exists() or self.recipe().trainer.max_steps != recipe.trainer.max_steps:
            atomic_write_text(self.recipe_path, dump_recipe(recipe))

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "latest"
        if not pointer.is_file():
            return None
        path = self.checkpoints / pointer.read_text().strip()
        return path if path.is_dir() else None

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop records logged after `step` (a run killed after its last checkpoint, now resumed there)."""
        if not self.metrics_path.is_file():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


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
