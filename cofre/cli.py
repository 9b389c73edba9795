"""The `cofre` command line: parses arguments, loads recipes, calls the library, prints a summary."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cofre.config import Recipe, load_recipe
from cofre.errors import CofreError
from cofre.runs import RunDir, atomic_write_text

app = typer.Typer(
    help="cofre: train, post-train, sample and evaluate fixed-point masked generative models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
DEBUG = {"on": False}


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    DEBUG["on"] = debug


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
) -> None:
    """Train (or resume) a model from a recipe; runs unchanged under `accelerate launch`."""
    from cofre.training.loop import train as run_training

    resolved = load_recipe(recipe, overrides or [])
    directory = run_dir or Path("runs") / resolved.name
    result = run_training(resolved, directory)
    if not _is_main_process():
        return
    atomic_write_text(directory / "train_result.json", json.dumps(dataclasses.asdict(result), indent=2))
    table = Table(title=f"cofre train: {resolved.name}", show_header=True)
    for column in ("step", "val NLL", "val PPL", "weights"):
        table.add_column(column, justify="right")
    for record in result.validations:
        table.add_row(str(record["step"]), f"{record['val_nll']:.4f}", f"{record['val_ppl']:.2f}", record["weights"])
    console.print(table)
    verb = "resumed at step %d, trained" % result.start_step if result.start_step else "trained"
    console.print(f"{verb} to step {result.final_step} in {result.elapsed_s:.0f}s; checkpoint {result.checkpoint}")
    console.print(f"summary written to {directory / 'train_result.json'}")


@app.command()
def inspect(
    target: Annotated[Path, typer.Argument(help="Recipe YAML, run directory or checkpoint folder.")],
    iters: Annotated[int, typer.Option("--iters", "-n", help="Fixed-point iterations N for the per-step block cost.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Model summary: parameters by part, K_pre/K_fp/K_post, and the blocks one denoising step costs."""
    from cofre.summary import summarize

    if iters < 0:
        raise CofreError(f"--iters must be >= 0, got {iters}")
    recipe = recipe_or_run(target, [])
    summary = summarize(recipe.model, iters)
    if as_json:
        print(json.dumps({"recipe": recipe.name, **dataclasses.asdict(summary)}, indent=2))
        return
    table = Table(title=f"{recipe.name}: {summary.total_params / 1e6:.1f}M parameters")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, count in summary.params_by_part.items():
        table.add_row(part, f"{count:,}")
    console.print(table)
    console.print(
        f"K_pre={summary.K_pre} K_fp={summary.K_fp} K_post={summary.K_post}: {summary.distinct_blocks} distinct blocks; "
        f"one denoising step at N={summary.n_iters} costs {summary.blocks_per_step} block evaluations"
    )


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory (its latest checkpoint) or checkpoint folder.")],
    budget: Annotated[int, typer.Option("--budget", "-b", help="Total transformer-block forward passes per sample.")],
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
    gamma_changed: Annotated[float, typer.Option(help="3SR: gamma of newly revealed tokens.")] = 0.2,
    num_samples: Annotated[int, typer.Option(help="Samples to draw.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same samples.")] = 1,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1 disables it.")] = 1.0,
    length: Annotated[int | None, typer.Option(help="Tokens per sample; default the training sequence length.")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights when the checkpoint has them.")] = True,
    noise_removal: Annotated[bool, typer.Option(help="Take the most likely token at the last step.")] = False,
    cache: Annotated[
        bool, typer.Option(help="Skip the network on steps that reveal nothing (MDLM's cache; spends less than the budget).")
    ] = False,
    tol: Annotated[
        float | None, typer.Option(help="Adaptive stopping: end a step's solve once every relative residual < tol; "
                                        "unspent iterations carry over to later steps.")
    ] = None,
    trace: Annotated[Path | None, typer.Option(help="Write per-step solver diagnostics (residuals, shifts) as JSONL.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... or auto.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Output JSONL; default <run>/samples/<settings tag>.jsonl.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Generate samples under a transformer-block budget (Alg. 1) and write them with their settings."""
    from cofre.sampling.budget import SCHEDULES
    from cofre.sampling.generate import SampleSettings, sample_checkpoint
    from cofre.sampling.reuse import REUSE_POLICIES
    from cofre.training.checkpoint import resolve_checkpoint

    if schedule not in SCHEDULES:
        raise CofreError(f"--schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    if reuse not in REUSE_POLICIES:
        raise CofreError(f"--reuse must be one of {', '.join(REUSE_POLICIES)}, got '{reuse}'")
    settings = SampleSettings(
        budget=budget, steps=steps, schedule=schedule, reuse=reuse, gamma_mask_min=gamma_mask_min,
        gamma_mask_max=gamma_mask_max, gamma_changed=gamma_changed, num_samples=num_samples, batch_size=batch_size,
        seed=seed, top_p=top_p, length=length, ema=ema, noise_removal=noise_removal, cache=cache, tol=tol, device=device,
    )
    folder = resolve_checkpoint(checkpoint)
    run_root = folder.parent.parent if folder.parent.name == "checkpoints" else folder
    tag = f"b{budget}-{reuse}-{schedule}-s{steps or 'auto'}-seed{seed}" + (f"-tol{tol:g}" if tol else "")
    result = sample_checkpoint(folder, settings, out or run_root / "samples" / f"{tag}.jsonl", overwrite, trace)
    table = Table(title=f"cofre sample: {result.num_samples} samples from {folder}")
    table.add_column("setting")
    table.add_column("value")
    rows = [
        ("budget asked", str(result.budget)),
        ("blocks spent", ", ".join(str(b) for b in sorted(set(result.blocks_spent)))),
        ("steps", str(result.steps)),
        ("iterations per step", " ".join(map(str, result.iterations)) or "(plain model)"),
        ("blocks per step (mean)", " ".join(f"{b:g}" for b in result.blocks_per_step)),
        ("reuse / schedule", f"{reuse} / {schedule}"),
        ("cached steps", str(result.cached_steps) if cache else "off"),
        ("time", f"{result.wall_time_s:.1f}s, {result.tokens_per_s:,.0f} tokens/s"),
        ("output", result.out),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(f"[dim]first sample:[/] {escape(result.texts[0][:300])}")


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def run() -> Any:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        return app()
    except CofreError as err:
        if DEBUG["on"]:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)
