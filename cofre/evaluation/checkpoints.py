"""Which checkpoints `cofre evaluate --checkpoints` scores (App. F.13, Table 24), and how their rows are named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cofre.errors import CofreError
from cofre.training.checkpoint import CONFIG_FILE, run_root, step_name

_STEP = re.compile(r"(?:step-?)?(\d+)")


def checkpoint_step(name: str) -> int:
    """'step-000000080', 'step-80' or '80' -> 80."""
    match = _STEP.fullmatch(name.strip())
    if match is None:
        raise CofreError(f"--checkpoints takes step numbers or step-* folder names (e.g. 80 or step-000000080), "
                         f"got '{name}'")
    return int(match.group(1))


def expand_checkpoints(runs: list[Path], names: list[str]) -> list[Path]:
    """Each run directory becomes its checkpoints named in `names`, in that order; a checkpoint folder given
    directly stays as it is. Without names, the runs are returned unchanged (each resolves to its selected
    or latest checkpoint)."""
    if not names:
        return runs
    steps = [checkpoint_step(name) for name in names]
    expanded: list[Path] = []
    for run in runs:
        if (run / CONFIG_FILE).is_file():  # a checkpoint folder: evaluated as given
            expanded.append(run)
            continue
        folders = run / "checkpoints"
        for step in steps:
            folder = folders / step_name(step)
            if not (folder / CONFIG_FILE).is_file():
                kept = sorted(p.name for p in folders.glob("step-*") if p.is_dir()) if folders.is_dir() else []
                raise CofreError(f"{run} has no checkpoint at step {step}; it keeps {', '.join(kept) or 'none'} "
                                 "(trainer.keep_last prunes older ones)")
            expanded.append(folder)
    return expanded


def run_name(given: Path, folder: Path, identity: dict[str, Any]) -> str:
    """A row's name: the run directory's name, with '@<step>' when a checkpoint folder was named rather than a run."""
    name = run_root(folder).name
    if (given / CONFIG_FILE).is_file() and folder.parent.name == "checkpoints":
        step = identity.get("step")
        return f"{name}@{step if step is not None else folder.name}"
    return name
