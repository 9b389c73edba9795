"""Reports of `cofre sweep`: Table 22's standings, rich tables of each grid, and Figs. 13 and 14."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from cofre.errors import CofreError
from cofre.evaluation.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from cofre.evaluation.sweep import SweepCell, SweepSummary


@dataclass
class Standing:
    """One schedule's line of Table 22."""

    schedule: str
    mean_genppl: float  # over every (reuse, budget) setting
    mean_rank: float  # competition ranking within each setting: tied schedules share the best rank
    wins: int  # settings where the schedule has the lowest Gen. PPL; ties count as wins for all tied
    settings: int


def rank_schedules(genppl: dict[Any, dict[str, float]]) -> list[Standing]:
    """Table 22 from `setting -> {schedule: Gen. PPL}`: mean Gen. PPL, average rank, wins; best first.

    A schedule's rank in a setting is 1 + the number of schedules with strictly lower Gen. PPL, so tied
    schedules share the better rank and all count the win (the paper's ranks sum to 173 < 12 x 15 over its
    12 settings, which competition ranking gives and average ranking cannot)."""
    if not genppl:
        raise CofreError("no settings to rank")
    schedules = list(next(iter(genppl.values())))
    for setting, values in genppl.items():
        if set(values) != set(schedules):
            raise CofreError(f"setting {setting} lacks schedule(s) {', '.join(set(schedules) - set(values))}")
    ranks: dict[str, list[int]] = {s: [] for s in schedules}
    for values in genppl.values():
        for schedule, value in values.items():
            ranks[schedule].append(1 + sum(other < value for other in values.values()))
    n = len(genppl)
    standings = [Standing(schedule=s, mean_genppl=sum(v[s] for v in genppl.values()) / n, mean_rank=sum(ranks[s]) / n,
                          wins=sum(r == 1 for r in ranks[s]), settings=n) for s in schedules]
    return sorted(standings, key=lambda s: (s.mean_rank, s.mean_genppl))


def schedule_standings(cells: list[SweepCell], reuse: list[str]) -> list[dict[str, Any]]:
    """Table 22 over every (reuse, budget) setting of a schedules sweep, as JSON-ready rows."""
    genppl: dict[tuple[str, int], dict[str, float]] = {}
    for cell in cells:
        setting = (cell.coords["reuse"], cell.coords["budget"])
        genppl.setdefault(setting, {})[cell.coords["schedule"]] = cell.metrics["genppl"]["value"]
    return [asdict(s) for s in rank_schedules(genppl)]


def _score(cell: SweepCell) -> str:
    return f"{cell.metrics['genppl']['value']:.1f} ({cell.metrics['entropy']['value']:.2f})"


def _range(values: list[float]) -> str:
    return f"{values[0]:g}" if values[0] == values[1] else f"[{values[0]:g}, {values[1]:g}]"


def sweep_tables(summary: SweepSummary) -> list[Table]:
    """The grid as the paper lays it out: Gen. PPL (entropy) per cell, and Table 22's standings."""
    cells, judge = summary.cells, summary.judge
    budgets = sorted({c.budget for c in cells})
    tables = []
    if summary.kind == "allocation":
        iters = sorted({c.coords["iters"] for c in cells})
        for reuse in dict.fromkeys(c.coords["reuse"] for c in cells):
            table = Table(title=f"Gen. PPL (entropy) [budget] by denoising steps x FP iterations per step; "
                                f"reuse {reuse}; judge {judge}")
            table.add_column("steps \\ iters")
            for n in iters:
                table.add_column(str(n), justify="right")
            for steps in sorted({c.coords["steps"] for c in cells}):
                row = {c.coords["iters"]: c for c in cells if c.coords["reuse"] == reuse and c.coords["steps"] == steps}
                table.add_row(str(steps), *(f"{_score(row[n])} [{row[n].budget}]" for n in iters))
            tables.append(table)
    elif summary.kind == "schedules":
        standings = Table(title=f"Overall comparison of iteration schedules over {summary.standings[0]['settings']} "
                                f"reuse x budget settings (Table 22); judge {judge}")
        for column in ("schedule", "mean Gen. PPL", "avg. rank", "wins"):
            standings.add_column(column, justify="left" if column == "schedule" else "right")
        for s in summary.standings:
            standings.add_row(s["schedule"], f"{s['mean_genppl']:.2f}", f"{s['mean_rank']:.2f}",
                              f"{s['wins']} / {s['settings']}")
        detail = Table(title=f"Gen. PPL (entropy) by budget, per reuse and schedule (Fig. 14); judge {judge}")
        detail.add_column("reuse")
        detail.add_column("schedule")
        for budget in budgets:
            detail.add_column(str(budget), justify="right")
        for reuse in dict.fromkeys(c.coords["reuse"] for c in cells):
            for schedule in dict.fromkeys(c.coords["schedule"] for c in cells):
                row = {c.budget: c for c in cells if c.coords["reuse"] == reuse and c.coords["schedule"] == schedule}
                detail.add_row(reuse, schedule, *(_score(row[b]) for b in budgets))
        tables += [standings, detail]
    else:
        table = Table(title=f"3SR coefficients: Gen. PPL (entropy) by budget, fixed schedule (Tables 4-5); "
                            f"visible gamma 1; judge {judge}")
        table.add_column("masked gamma")
        table.add_column("changed gamma")
        for budget in budgets:
            table.add_column(str(budget), justify="right")
        settings = dict.fromkeys((tuple(c.coords["gamma_mask"]), tuple(c.coords["gamma_changed"])) for c in cells)
        for mask, changed in settings:
            row = {c.budget: c for c in cells
                   if tuple(c.coords["gamma_mask"]) == mask and tuple(c.coords["gamma_changed"]) == changed}
            table.add_row(_range(list(mask)), _range(list(changed)), *(_score(row[b]) for b in budgets))
        tables.append(table)
    return tables


def plot_sweep(summary: SweepSummary, path: Path) -> None:
    """Fig. 13 (heatmaps), Fig. 14 (Gen. PPL vs budget per schedule) or the 3SR grid, as one PNG."""
    plt = pyplot()

    n, seed = summary.settings["num_samples"], summary.settings["seed"]
    if summary.kind == "allocation":
        fig = _allocation_figure(plt, summary.cells)
    elif summary.kind == "schedules":
        fig = _budget_lines(plt, summary.cells, panel="reuse", line="schedule")
    else:
        fig = _budget_lines(plt, summary.cells, panel=None, line="gamma")
    fig.suptitle(f"{Path(summary.run).name}: {summary.kind} sweep; Gen. PPL by {summary.judge}, {n} samples per cell, "
                 f"seed {seed}", fontsize=10)
    save_figure(fig, path)


def _allocation_figure(plt: Any, cells: list[SweepCell]) -> Any:
    """Per reuse policy, two heatmaps over steps (rows) x iterations (columns): Gen. PPL and entropy."""
    import numpy as np

    policies = list(dict.fromkeys(c.coords["reuse"] for c in cells))
    steps = sorted({c.coords["steps"] for c in cells})
    iters = sorted({c.coords["iters"] for c in cells})
    fig, axes = plt.subplots(len(policies), 2, figsize=(11, 0.6 * len(steps) * len(policies) + 2.2), squeeze=False)
    for row, reuse in enumerate(policies):
        for col, (metric, name, cmap) in enumerate((("genppl", "Gen. PPL (lower is better)", "viridis_r"),
                                                    ("entropy", "entropy, nats", "magma"))):
            grid = np.full((len(steps), len(iters)), np.nan)
            for c in cells:
                if c.coords["reuse"] == reuse:
                    grid[steps.index(c.coords["steps"]), iters.index(c.coords["iters"])] = c.metrics[metric]["value"]
            ax = axes[row][col]
            image = ax.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
            fig.colorbar(image, ax=ax)
            for i in range(len(steps)):
                for j in range(len(iters)):
                    if not np.isnan(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.1f}" if metric == "genppl" else f"{grid[i, j]:.2f}",
                                ha="center", va="center", fontsize=8, color="white",  # readable on any colour
                                bbox={"boxstyle": "round", "fc": "0.3", "alpha": 0.6, "lw": 0})
            ax.set_xticks(range(len(iters)), [str(n) for n in iters])
            ax.set_yticks(range(len(steps)), [str(s) for s in steps])
            ax.set_xlabel("fixed-point iterations per step")
            ax.set_ylabel("denoising steps")
            ax.set_title(f"{name}; reuse {reuse}", fontsize=9)
    return fig


def _budget_lines(plt: Any, cells: list[SweepCell], panel: str | None, line: str) -> Any:
    """Gen. PPL against budget, one line per schedule (or 3SR setting), entropy annotated; one panel per reuse."""
    panels = list(dict.fromkeys(c.coords[panel] for c in cells)) if panel else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8.5, 5.2 * len(panels)), 4.4), squeeze=False)

    def line_of(c: SweepCell) -> str:
        if line == "gamma":
            return f"mask {_range(c.coords['gamma_mask'])}, changed {_range(c.coords['gamma_changed'])}"
        return c.coords[line]

    budgets = sorted({c.budget for c in cells})
    for ax, name in zip(axes[0], panels):
        mine = [c for c in cells if panel is None or c.coords[panel] == name]
        for k, label in enumerate(dict.fromkeys(line_of(c) for c in mine)):
            series = sorted((c for c in mine if line_of(c) == label), key=lambda c: c.budget)
            x = [c.budget for c in series]
            y = [c.metrics["genppl"]["value"] for c in series]
            (drawn,) = ax.plot(x, y, marker="os^Dv"[k % 5], linestyle=("-", "--", ":", "-.")[k % 4],
                               markerfacecolor="none", markersize=5 + 2 * (k % 3), label=label)  # ties stay visible
            for c, xi, yi in zip(series, x, y):
                ax.annotate(f"({c.metrics['entropy']['value']:.2f})", (xi, yi), textcoords="offset points",
                            xytext=(4, 4), fontsize=6, color=drawn.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("transformer-block forward passes per sample (budget)")
        ax.set_ylabel("Gen. PPL (entropy), lower is better")
        ax.set_title(f"reuse {name}" if name else "3SR coefficients (fixed schedule)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return fig
