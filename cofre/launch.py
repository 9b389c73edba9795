"""Dry runs (`--dry-run`) of the commands that start a run: the resolved recipe, its parent, the batch layout over N
processes, the parameter count and the data source it would read. Nothing is trained, read from the data or written.

A parent run that does not exist yet is resolved from the runs a dry run was told are planned (`planned`: run
directory -> the recipe that will train it); the CLI plans every recipe in `recipes/` under `runs/<name>`, so a stage
can be checked before its parent is trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cofre.config import DataConfig, Recipe, load_recipe, read_yaml, recipe_from_dict
from cofre.errors import CofreError
from cofre.training.batches import BatchLayout, batch_layout

# Runs that earlier dry runs of this process planned (run directory -> recipe): a later dry run may build on them,
# as a Makefile target's stage builds on the run its previous line trains.
PLANNED_HERE: dict[Path, Recipe] = {}

# Recipes that name a `kind` train in one process (their trainers are not data-parallel).
SINGLE_PROCESS_KINDS = {"vq": "trains an image tokenizer", "classifier": "trains a classifier",
                        "shortcut": "trains a shortcut step", "convert": "converts a checkpoint"}


@dataclass
class LaunchPlan:
    """What a command would start: printed by `--dry-run`, checked by `make check-launches`."""

    command: str
    name: str
    kind: str  # e.g. "text FP-MDLM 1/1/1", "image MaskGIT 24", "VQ tokenizer"
    run_dir: str
    status: str  # "new run", "resumes at step N", ...
    parameters: int
    data: str
    layout: BatchLayout | None  # None: a single-process trainer
    parent: str = ""  # the run or checkpoint it starts from, and where that was resolved from
    notes: list[str] = field(default_factory=list)
    recipe: Recipe | None = field(default=None, repr=False)  # a denoiser run's resolved recipe (for planning stages)

    def lines(self) -> list[str]:
        rows = [f"dry run: cofre {self.command} -> {self.run_dir} ({self.status}); nothing written",
                f"  recipe   {self.name}: {self.kind}, {self.parameters:,} parameters"]
        if self.parent:
            rows.append(f"  parent   {self.parent}")
        rows.append(f"  batch    {self.layout.describe() if self.layout else 'one process (this trainer is not data-parallel)'}")
        rows.append(f"  data     {self.data}")
        rows.extend(f"  note     {note}" for note in self.notes)
        return rows


# -- what the plan names -------------------------------------------------------------------------------------
def model_kind(recipe: Recipe) -> str:
    m = recipe.model
    family = "MDLM" if m.modality == "text" else "MaskGIT"
    if m.is_fixed_point:
        return f"{m.modality} FP-{family} {m.K_pre}/{m.K_fp}/{m.K_post}, hidden {m.hidden}"
    return f"{m.modality} {family}, {m.K_pre} blocks, hidden {m.hidden}"


def describe_data(data: DataConfig, modality: str) -> tuple[str, list[str]]:
    """The data source a recipe names, and notes on what is not on this machine (read nothing)."""
    notes = []
    if modality == "image":
        if data.corpus == "fashion-mnist":
            source = f"fashion-mnist (IDX files in {data.fashion_mnist_dir})"
            if not Path(data.fashion_mnist_dir).is_dir():
                notes.append(f"{data.fashion_mnist_dir} is not on this machine (data.fashion_mnist_dir)")
        else:
            source = f"image folder {data.corpus} (train/<class>/, val/<class>/) at {data.image_size} px"
            if not Path(data.corpus).expanduser().is_dir():
                notes.append(f"{data.corpus} is not on this machine (data.corpus)")
        tokenizer = data.tokenizer or "(none named: data.tokenizer)"
        return f"{source}, tokenizer {tokenizer}", notes
    if data.corpus == "wiki-sample":
        source = "wiki-sample (the Wikipedia sample gensim ships)"
    elif data.corpus == "openwebtext":
        source = "openwebtext (Hugging Face hub; the network once, then the cache)"
    else:
        source = f"local text {data.corpus}"
        if not Path(data.corpus).expanduser().exists():
            notes.append(f"{data.corpus} is not on this machine (data.corpus)")
    return f"{source}, blocks of {data.seq_len} ({data.packing}), last {data.val_docs:,} documents held out", notes


def run_status(run_dir: Path, recipe: Recipe) -> str:
    """Read-only: a new run, or the run in `run_dir` this recipe resumes (a different recipe there is an error)."""
    from cofre.runs import RunDir

    run = RunDir(run_dir)
    if not run.check(recipe):
        return "new run"
    latest = run.latest_checkpoint()
    if latest is None:
        return "resumes a run with no checkpoint yet (starts at step 0)"
    step = int(latest.name.removeprefix("step-"))
    if step >= recipe.trainer.max_steps:
        return f"already trained to step {step} of {recipe.trainer.max_steps} (nothing to do)"
    return f"resumes at step {step} of {recipe.trainer.max_steps}"


def denoiser_plan(command: str, recipe: Recipe, run_dir: Path, processes: int, parent: str = "") -> LaunchPlan:
    from cofre.summary import summarize

    data, notes = describe_data(recipe.data, recipe.model.modality)
    return LaunchPlan(command=command, name=recipe.name, kind=model_kind(recipe), run_dir=str(run_dir),
                      status=run_status(run_dir, recipe), parameters=summarize(recipe.model, 0).total_params, data=data,
                      layout=batch_layout(recipe.trainer.global_batch_size, recipe.trainer.micro_batch_size, processes),
                      parent=parent, notes=notes, recipe=recipe)


def check_one_process(kind: str, processes: int) -> None:
    """Trainers that are not data-parallel refuse a multi-process launch rather than train N copies."""
    if processes != 1:
        what = "cofre convert" if kind == "convert" else f"a kind: {kind} recipe"
        raise CofreError(f"{what} {SINGLE_PROCESS_KINDS[kind]} in one process; run it without accelerate launch "
                         f"(asked for {processes} processes)")


# -- recipes -----------------------------------------------------------------------------------------------------
def recipe_kind(path: Path) -> str:
    """'' for a denoiser recipe, else its `kind` (vq, classifier, shortcut)."""
    return str(read_yaml(path).get("kind") or "")


def stage_command(path: Path) -> str:
    """The command that runs a partial (stage) recipe: one without a model section."""
    values = read_yaml(path)
    if isinstance(values.get("distill"), dict) and values["distill"].get("loss", "reverse_kl") != "none":
        return "distill"
    consistency = values.get("consistency") if isinstance(values.get("consistency"), dict) else {}
    return "adapt" if consistency.get("loss") == "logit_kl" else "consistency"


def is_stage_recipe(values: dict[str, Any]) -> bool:
    """A stage recipe (consistency, adaptation, SDTT) holds only what it changes in its parent: no model section."""
    return not values.get("kind") and "model" not in values and ("consistency" in values or "distill" in values)


def check_full_recipe(path: Path) -> None:
    """`cofre train` needs a whole recipe, not a stage laid over a parent run."""
    if is_stage_recipe(read_yaml(path)):
        command = stage_command(path)
        raise CofreError(f"{path} holds no model section: it is a stage recipe laid over a trained run; run it with "
                         f"`cofre {command} RUN --recipe {path}`")


def train_plan(path: Path, overrides: list[str], run_dir: Path | None, processes: int) -> LaunchPlan:
    """`cofre train RECIPE --dry-run`: denoiser, VQ tokenizer or classifier recipes."""
    kind = recipe_kind(path)
    if kind == "vq":
        return _vq_plan(path, overrides, run_dir, processes)
    if kind == "classifier":
        return _classifier_plan(path, overrides, run_dir, processes)
    if kind:
        raise CofreError(f"{path} is a kind: {kind} recipe; `cofre train` takes denoiser, vq and classifier recipes "
                         f"(a shortcut recipe runs with `cofre shortcut RUN --recipe {path}`)")
    check_full_recipe(path)
    recipe = load_recipe(path, overrides)
    return denoiser_plan("train", recipe, run_dir or Path("runs") / recipe.name, processes)


def _vq_plan(path: Path, overrides: list[str], run_dir: Path | None, processes: int) -> LaunchPlan:
    import torch

    from cofre.data.image_tokenizers.recipe import load_vq_recipe
    from cofre.data.image_tokenizers.vq import VQVAE

    check_one_process("vq", processes)
    recipe = load_vq_recipe(path, overrides)
    with torch.device("meta"):
        model = VQVAE(recipe.vq)
    parameters = sum(p.numel() for p in model.parameters()) + model.quantizer.codebook.numel()
    data, notes = describe_data(recipe.data, "image")
    side = recipe.vq.image_size // 2 ** recipe.vq.downsample
    return LaunchPlan(command="train", name=recipe.name, kind=f"VQ tokenizer ({recipe.vq.encoder}), {side} x {side} grid "
                      f"of {recipe.vq.codebook_size} codes", run_dir=str(run_dir or Path("runs") / recipe.name),
                      status=_kind_status(run_dir or Path("runs") / recipe.name), parameters=parameters,
                      data=data.split(", tokenizer")[0], layout=None, notes=notes)


def _classifier_plan(path: Path, overrides: list[str], run_dir: Path | None, processes: int) -> LaunchPlan:
    import torch

    from cofre.evaluation.classifier import ImageClassifier, load_classifier_recipe

    check_one_process("classifier", processes)
    recipe = load_classifier_recipe(path, overrides)
    with torch.device("meta"):
        model = ImageClassifier(recipe.classifier)
    data, notes = describe_data(recipe.data, "image")
    return LaunchPlan(command="train", name=recipe.name, kind=f"image classifier, {recipe.classifier.num_classes} classes",
                      run_dir=str(run_dir or Path("runs") / recipe.name),
                      status=_kind_status(run_dir or Path("runs") / recipe.name),
                      parameters=sum(p.numel() for p in model.parameters()), data=data.split(", tokenizer")[0],
                      layout=None, notes=notes)


def _kind_status(run_dir: Path) -> str:
    return "resumes or reuses the run there" if (run_dir / "recipe.yaml").is_file() else "new run"


# -- parents that may not be trained yet --------------------------------------------------------------------------
def remember_plan(plan: LaunchPlan) -> None:
    """Remember what a dry run would make, for the dry runs after it in this process."""
    if plan.recipe is not None:
        PLANNED_HERE[Path(plan.run_dir)] = plan.recipe


def planned_recipes(folder: Path = Path("recipes")) -> dict[Path, Recipe]:
    """runs/<name> -> recipe, for every whole denoiser recipe in `folder` (what `cofre train` would make of each), and
    the runs earlier dry runs of this process planned."""
    planned: dict[Path, Recipe] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            values = read_yaml(path)
            if values.get("kind") or is_stage_recipe(values):
                continue
            recipe = load_recipe(path)
        except CofreError:
            continue  # a broken recipe is reported when it is itself checked
        planned[Path("runs") / recipe.name] = recipe
    return {**planned, **PLANNED_HERE}


def parent_recipe(parent: Path, planned: Mapping[Path, Recipe]) -> tuple[Recipe, str, str]:
    """(the parent's recipe, the init_from value a run would record, how it was resolved)."""
    if parent.exists():
        from cofre.training.checkpoint import checkpoint_recipe, resolve_checkpoint

        folder = resolve_checkpoint(parent)
        return checkpoint_recipe(folder), str(folder), f"{folder} (trained)"
    key = Path(str(parent).rstrip("/"))
    if key in planned:
        recipe = planned[key]
        return recipe, str(key), f"{key}: not trained yet; planned as recipe '{recipe.name}' (its latest checkpoint)"
    raise CofreError(f"{parent}: no such run or checkpoint folder, and no recipe plans it (train the parent first)")


def stage_plan(command: str, parent: Path, stage: Path | None, overrides: list[str], defaults: dict[str, Any],
               required: dict[str, Any], suffix: str, run_dir: Path | None, processes: int,
               planned: Mapping[Path, Recipe]) -> LaunchPlan:
    """`cofre consistency|adapt|distill RUN --dry-run`: the stage's recipe laid over its (possibly planned) parent."""
    from cofre.training.stages import stage_values

    parent_values, init_from, resolved = parent_recipe(parent, planned)
    recipe = stage_values(parent_values, init_from, stage, overrides, defaults, required, suffix)
    if command == "distill" and not recipe.distill.enabled:
        raise CofreError("cofre distill needs a distill.loss (reverse_kl, forward_kl, logprob_mse or tv), got 'none'")
    return denoiser_plan(command, recipe, run_dir or Path("runs") / recipe.name, processes, parent=resolved)


def convert_plan(source: Path, layer_map: str, out: Path, processes: int,
                 planned: Mapping[Path, Recipe]) -> LaunchPlan:
    """`cofre convert --dry-run`: the converted FP-MDLM's recipe from its source (a cofre run, trained or planned, or
    a checkpoint file, which is read)."""
    import dataclasses

    from cofre.convert import load_source, parse_layer_map, source_recipe, target_config

    check_one_process("convert", processes)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CofreError(f"{out} exists and is not an empty directory; choose another output directory")
    if source.is_dir() or Path(str(source).rstrip("/")) in planned:
        base, _, resolved = parent_recipe(source, planned)
    else:
        loaded = load_source(source)
        base, resolved = source_recipe(loaded, out.name), f"{source} ({loaded.format})"
    recipe = dataclasses.replace(base, name=out.name, init_from="",
                                 model=target_config(base.model, parse_layer_map(layer_map, base.model.K_pre)))
    recipe.validate()
    plan = denoiser_plan("convert", recipe, out, 1, parent=resolved)
    plan.status, plan.layout = "new run: one converted checkpoint at step 0", None
    return plan


def shortcut_plan(base: Path, stage: Path | None, overrides: list[str], run_dir: Path | None, processes: int,
                  planned: Mapping[Path, Recipe]) -> LaunchPlan:
    """`cofre shortcut RUN --dry-run`: the shortcut recipe over its base run (trained or planned)."""
    import torch

    from cofre.sampling.shortcut import Shortcut
    from cofre.training.shortcut import shortcut_values

    check_one_process("shortcut", processes)
    base_recipe, init_from, resolved = parent_recipe(base, planned)
    recipe = shortcut_values(base_recipe.model, init_from, "(computed when it runs)", stage, overrides)
    with torch.device("meta"):
        model = Shortcut(recipe.shortcut)
    directory = run_dir or Path("runs") / recipe.name
    c = recipe.collect
    return LaunchPlan(command="shortcut", name=recipe.name,
                      kind=f"MIGM-Shortcut step on the {model_kind(base_recipe)}", run_dir=str(directory),
                      status=_kind_status(directory), parameters=sum(p.numel() for p in model.parameters()),
                      data=f"the base run's own {c.steps}-step trajectories, pools of {c.batch_size} drawn every "
                           f"{c.refresh_every} steps (+{c.val_trajectories} held out), at {c.precision}",
                      layout=None, parent=resolved)
