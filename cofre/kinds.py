"""What a recipe file, run directory or checkpoint folder holds: a denoiser, or a file of another kind (`kind:` in its
YAML or config.json): a VQ image tokenizer, an image classifier, a MIGM-Shortcut step, a claims file. Named in one
place, so that a path of the wrong kind is refused in one line saying what it is and what the command needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cofre.errors import CofreError

DENOISER = ""  # a denoiser's recipe names no kind
KINDS = {
    DENOISER: "a denoiser (MDLM, MaskGIT or an FP variant)",
    "vq": "a VQ image tokenizer",
    "classifier": "an image classifier",
    "shortcut": "a MIGM-Shortcut",
    "claims": "a claims",
}
# How a run or file of each kind is made, for the message that asks for one.
MADE_BY = {
    DENOISER: "`cofre train RECIPE` trains one; stage recipes go to cofre consistency, adapt or distill",
    "vq": "`cofre train` trains one from a `kind: vq` recipe such as recipes/tiny-vq.yaml",
    "classifier": "`cofre train recipes/fmnist-classifier.yaml` trains one",
    "shortcut": "`cofre shortcut BASE_RUN --recipe RECIPE` trains one from a `kind: shortcut` recipe",
    "claims": "recipes/claims-small.yaml is one; `cofre claims FILE` checks it",
}


def kind_of(values: Any) -> str:
    """The `kind:` of plain recipe or config values ('' for a denoiser, or for values that are not a mapping)."""
    return str(values.get("kind") or "") if isinstance(values, dict) else DENOISER


def describe(kind: str) -> str:
    return KINDS.get(kind, f"of an unknown kind '{kind}' (cofre knows {', '.join(k for k in KINDS if k)})")


def require_kind(values: Any, needed: str, where: str | Path, what: str) -> None:
    """Refuse `values` read from `where` (a `what`: recipe, run, checkpoint) unless they are of kind `needed`."""
    kind = kind_of(values)
    if kind != needed:
        raise CofreError(f"{where} is {describe(kind)} {what}, not {describe(needed)} {what}, which this command needs: "
                         f"{MADE_BY[needed]}")


def target_kind(path: Path) -> str:
    """The kind of a recipe file, a run directory (its recipe.yaml) or a checkpoint folder (its config.json)."""
    from cofre.config import read_yaml
    from cofre.training.checkpoint import read_config, resolve_checkpoint

    if path.is_file() or not path.exists():
        return kind_of(read_yaml(path))  # a missing path: "recipe file not found"
    if (path / "recipe.yaml").is_file():
        return kind_of(read_yaml(path / "recipe.yaml"))
    return kind_of(read_config(resolve_checkpoint(path)))
