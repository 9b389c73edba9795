"""`cofre trace-plot`: Fig. 3 and Fig. 16 from the `--trace` files of `cofre sample`.

A trace holds one row per (batch, denoising step): the mean relative residual ||F(h^n) - h^n|| / ||h^n|| of
each fixed-point iteration n (App. F.12; n = 0 is the warm start's) and the mean ||h*_t - h*_prev|| of each
token transition type (Fig. 3). Batches are averaged step by step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cofre.errors import CofreError
from cofre.runs import of_type, read_jsonl_file
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.sampling.reuse import TRANSITION_NAMES


@dataclass
class TraceStats:
    """What one trace file says about the solver: per step, per iteration, per transition type."""

    label: str
    path: str
    steps: list[int]
    shift: dict[str, list[float | None]]  # transition type -> mean ||h*_t - h*_prev|| per step (None: no such token)
    initial_residual: list[float]  # per step: the residual of the warm start (iteration 0)
    final_residual: list[float]  # per step: the residual of the last iteration
    residual_by_iteration: list[float]  # mean over steps after the first (which has nothing to reuse)
    median_initial_after_first: float  # App. F.12's summary: median initial residual, first step excluded
    batches: int


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The rows of a trace file, each checked: a step and batch number, residuals and solution shifts as numbers."""
    if not path.is_file():
        raise CofreError(f"{path} is not a trace file (write one with `cofre sample RUN --trace FILE`)")
    remedy = "draw it again with `cofre sample RUN --trace FILE`"
    rows = read_jsonl_file(path, "trace file", remedy)
    if not rows or "residuals" not in rows[0]:
        raise CofreError(f"{path} holds no trace rows (write one with `cofre sample RUN --trace FILE`)")
    for number, row in enumerate(rows, 1):
        shift = row.get("solution_shift")
        if not (of_type(row.get("step"), int) and of_type(row.get("batch"), int)
                and isinstance(row.get("residuals"), list) and all(of_type(r, (int, float)) for r in row["residuals"])
                and isinstance(shift, dict) and all(of_type(v, (int, float)) for v in shift.values())):
            raise CofreError(f"{path}: row {number} is not a trace row (step, batch, residuals and solution_shift as "
                             f"numbers); {remedy}")
    if not any(r["residuals"] for r in rows):
        raise CofreError(f"{path} has no residuals: it traces a plain model, which has no fixed-point solve")
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def trace_stats(rows: list[dict[str, Any]], label: str, path: str) -> TraceStats:
    """Average the batches of one trace step by step (cached steps, which ran no solve, are left out)."""
    solved = [r for r in rows if r["residuals"]]
    steps = sorted({r["step"] for r in solved})
    by_step = {s: [r for r in solved if r["step"] == s] for s in steps}
    shift = {name: [(_mean(v) if (v := [r["solution_shift"][name] for r in by_step[s] if name in r["solution_shift"]])
                     else None) for s in steps] for name in TRANSITION_NAMES}
    later = [r for r in solved if r["step"] != steps[0]]
    depth = max((len(r["residuals"]) for r in later), default=0)
    by_iteration = [_mean([r["residuals"][n] for r in later if len(r["residuals"]) > n]) for n in range(depth)]
    return TraceStats(
        label=label, path=path, steps=steps, shift=shift,
        initial_residual=[_mean([r["residuals"][0] for r in by_step[s]]) for s in steps],
        final_residual=[_mean([r["residuals"][-1] for r in by_step[s]]) for s in steps],
        residual_by_iteration=by_iteration,
        median_initial_after_first=statistics.median(r["residuals"][0] for r in later) if later else float("nan"),
        batches=len({r["batch"] for r in rows}),
    )


def closer_than(base: TraceStats, other: TraceStats) -> str:
    """How much closer to its fixed point `other`'s solves start than `base`'s (App. F.12's median initial residual,
    first step excluded); a residual of 0 (a warm start already at the fixed point) is said as such, not divided by."""
    a, b = base.median_initial_after_first, other.median_initial_after_first
    how = "(median initial residual, first step excluded)"
    if b == 0 or a == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return f"{other.label} starts at median initial residual {b:.4g}, {base.label} at {a:.4g} {how}"
    return f"{other.label} starts {a / b:.3g}x closer to its fixed point than {base.label} {how}"


def plot_transition_shift(stats: list[TraceStats], path: Path) -> None:
    """Fig. 3: mean ||h*_t - h*_{t+1}|| per token transition type at each denoising step, one panel per trace."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(stats), figsize=(5.4 * len(stats), 4.2), squeeze=False)
    for ax, s in zip(axes[0], stats):
        for name, marker in zip(TRANSITION_NAMES, ("o", "s", "^")):
            points = [(step, v) for step, v in zip(s.steps, s.shift[name]) if v is not None]
            if points:
                ax.plot(*zip(*points), marker=marker, markersize=3, label=name.replace("_", " "))
        ax.set_xlabel("denoising step (0 = all masked)")
        ax.set_ylabel("mean ||h*_t - h*_prev|| per token")
        ax.set_title(f"{s.label}: solution shift by transition type", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_residuals(stats: list[TraceStats], path: Path) -> None:
    """Fig. 16: mean relative residual per iteration (left) and initial / final residual per step (right)."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in stats:
        (line,) = left.plot(range(len(s.residual_by_iteration)), s.residual_by_iteration, marker="o", label=s.label)
        right.plot(s.steps, s.initial_residual, marker="o", markersize=3, color=line.get_color(),
                   label=f"{s.label}: initial (warm start)")
        right.plot(s.steps, s.final_residual, linestyle="--", marker="x", markersize=3, color=line.get_color(),
                   label=f"{s.label}: final")
    left.set_xlabel("fixed-point iteration n (0 = the initial state)")
    left.set_ylabel("mean relative residual ||F(h) - h|| / ||h||")
    left.set_title("residual by iteration (steps after the first)", fontsize=9)
    right.set_xlabel("denoising step")
    right.set_ylabel("relative residual")
    right.set_title("initial and final residual by denoising step", fontsize=9)
    for ax in (left, right):
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # steps and iterations are counts
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, path)
