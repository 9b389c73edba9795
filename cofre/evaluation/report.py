"""Reports of `cofre evaluate`: a table shaped like the paper's Table 9, and Gen. PPL against budget (Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from cofre.evaluation.evaluate import EvalSummary


def _cell_text(metrics: dict) -> str:
    parts = []
    if "genppl" in metrics:
        parts.append(f"{metrics['genppl']['value']:.1f}")
    if "entropy" in metrics:
        parts.append(f"({metrics['entropy']['value']:.2f})")
    if "mauve" in metrics:
        parts.append(f"M {metrics['mauve']['value']:.3f}")
    if "latency" in metrics:
        parts.append(f"{metrics['latency']['mean_s']:.2f}s")
    return " ".join(parts) or "-"


def results_table(summary: EvalSummary) -> Table:
    """Rows: run x reuse; columns: budgets; cells: Gen. PPL (entropy) [MAUVE] [latency per batch]."""
    budgets = sorted({c.budget for c in summary.cells})
    labels = list(dict.fromkeys(c.label for c in summary.cells)) or list(summary.valppl)  # valppl-only runs
    judged = any("genppl" in c.metrics for c in summary.cells)
    mode = {"eq4": "Eq. 4", "mdlm": "MDLM's token-weighted"}.get(summary.settings.get("genppl_mode", "eq4"), "")
    title = f"Gen. PPL [{mode}] (entropy) by transformer-block budget; judge {summary.judge}" if judged else "Evaluation"
    table = Table(title=title)
    table.add_column("model / reuse")
    for budget in budgets:
        table.add_column(str(budget), justify="right")
    if summary.valppl:
        table.add_column("val. PPL", justify="right")
    for label in labels:
        row = {c.budget: c for c in summary.cells if c.label == label}
        cells = [_cell_text(row[b].metrics) if b in row else "" for b in budgets]
        if summary.valppl:
            run_name = next(name for name in summary.valppl if label == name or label.startswith(name + " "))
            cells.append(f"{summary.valppl[run_name]['val_ppl']:.1f}")
        table.add_row(label, *cells)
    return table


def plot_genppl(summary: EvalSummary, path: Path) -> None:
    """Gen. PPL against budget, one line per run x reuse, entropy annotated at each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    runs = list(dict.fromkeys(c.run for c in summary.cells))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"none": ("-", "o"), "full": ("--", "s"), "3sr": (":", "^")}  # coinciding lines stay visible
    labels = list(dict.fromkeys(c.label for c in summary.cells))
    scheduled = bool(summary.settings.get("model_schedules"))  # one run, several model schedules: a colour each
    for label in labels:
        cells = sorted((c for c in summary.cells if c.label == label), key=lambda c: c.budget)
        x = [c.budget for c in cells]
        y = [c.metrics["genppl"]["value"] for c in cells]
        linestyle, marker = styles.get(cells[0].reuse, ("-", "o"))
        color = colors[(labels.index(label) if scheduled else runs.index(cells[0].run)) % len(colors)]
        (line,) = ax.plot(x, y, linestyle=linestyle, marker=marker, color=color, label=label, markerfacecolor="none")
        for c, xi, yi in zip(cells, x, y):
            if "entropy" in c.metrics:
                ax.annotate(f"{c.metrics['entropy']['value']:.2f}", (xi, yi), textcoords="offset points",
                            xytext=(4, 5), fontsize=7, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    budgets = sorted({c.budget for c in summary.cells})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("transformer-block forward passes per sample (budget)")
    ax.set_ylabel(f"Gen. PPL ({summary.judge}), lower is better")
    n = summary.settings["num_samples"]
    ax.set_title(f"Generative perplexity vs budget (entropy annotated); {n} samples, seed {summary.settings['seed']}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
