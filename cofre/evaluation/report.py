"""Reports of `cofre evaluate`: a table shaped like the paper's Table 9 (text) or Table 15/16 (images), and the
metric against budget (Fig. 5: Gen. PPL; images: FID)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from cofre.evaluation.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from cofre.evaluation.evaluate import EvalSummary


def _cell_text(metrics: dict) -> str:
    parts = []
    if "fid" in metrics:
        parts.append(f"{metrics['fid']['value']:.2f}")
    if "isc" in metrics:
        isc = metrics["isc"]["value"]
        parts.append(f"/ {isc:.2f}" if isc is not None else "/ n/a")
    if "genppl" in metrics:
        parts.append(f"{metrics['genppl']['value']:.1f}")
    if "entropy" in metrics:
        parts.append(f"({metrics['entropy']['value']:.2f})")
    if "mauve" in metrics:
        parts.append(f"M {metrics['mauve']['value']:.3f}")
    if "latency" in metrics:
        parts.append(f"{metrics['latency']['mean_s']:.2f}s")
        if "images_per_s" in metrics["latency"]:
            parts.append(f"{metrics['latency']['images_per_s']:.0f} img/s")
    return " ".join(parts) or "-"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {s:02d}s"


def training_text(summary: EvalSummary, run: str) -> str:
    """Table 15's header for one run: training time (≥: a lower bound) and peak memory, with the change against the
    first run."""
    cost, first = summary.training.get(run) or {}, next(iter(summary.training.values()), {}) or {}
    if not cost.get("train_time_s"):
        return ""
    parts = [("" if cost.get("train_time_complete", True) else "≥ ") + _duration(cost["train_time_s"])]
    change = [f"{cost['train_time_s'] / first['train_time_s'] - 1:+.1%}"] if first.get("train_time_s") and first is not cost else []
    if cost.get("parent"):
        parent = cost["parent"] + (" (time unknown)" if cost.get("parent_time_unknown") else "")
        change.append(f"{parent} + {_duration(cost['stage_time_s'])} stage")
    if change:
        parts.append(f"({'; '.join(change)})")
    if cost.get("peak_memory_gib"):
        parts.append(f"{cost['peak_memory_gib']:.2f} GiB")
        if first.get("peak_memory_gib") and first is not cost:
            parts.append(f"({cost['peak_memory_gib'] / first['peak_memory_gib'] - 1:+.1%})")
    return " ".join(parts)


def image_title(summary: EvalSummary) -> str:
    """What an image table shows and how: the metrics (and why IS is missing when it is), the extractor and image
    counts, the tokenizer, EMA or raw weights, and the guidance weight (or how each model's was chosen)."""
    scored = [c.metrics for c in summary.cells if "fid" in c.metrics or "isc" in c.metrics]
    if not scored:
        return "Evaluation"
    how = scored[0].get("fid") or scored[0]["isc"]
    isc = [m["isc"] for m in scored if "isc" in m]
    has_isc = any(v["value"] is not None for v in isc)
    head = " / ".join(name for name, shown in (("FID ↓", "fid" in scored[0]), ("IS ↑", has_isc)) if shown)
    if not has_isc:  # say why: not asked, or weights without Inception's classification layer
        head += f", without IS ({isc[0]['unavailable'].split(':')[0]})" if isc else ", without IS (not asked)"
    tokenizers = ", ".join(dict.fromkeys((m.get("fid") or m["isc"])["tokenizer"] for m in scored))
    weights = " and ".join(dict.fromkeys("EMA" if c.checkpoint.get("ema") else "raw" for c in summary.cells))
    if summary.cfg_sweep:
        sweep = summary.cfg_sweep[0]
        candidates = ", ".join(f"{p['cfg']:g}" for p in sweep["points"])
        guidance = f"CFG w per model (column w): lowest FID of w in {{{candidates}}} at budget {sweep['budget']}"
    else:
        guidance = f"CFG w {how['cfg']:g}"
    return (f"{head} by transformer-block budget; extractor {how['extractor']}, {how['generated_images']} generated vs "
            f"{how['reference_images']} {how['reference_split']}-split images; tokenizer {tokenizers}; {weights} "
            f"weights; {guidance}")


def text_title(summary: EvalSummary) -> str:
    """What a text table shows and how it was measured: Gen. PPL with its judge, else MAUVE with its features,
    else validation perplexity."""
    if any("genppl" in c.metrics for c in summary.cells):
        mode = {"eq4": "Eq. 4", "mdlm": "MDLM's token-weighted"}.get(summary.settings.get("genppl_mode", "eq4"), "")
        return f"Gen. PPL [{mode}] (entropy) by transformer-block budget; judge {summary.judge}"
    mauve = next((c.metrics["mauve"] for c in summary.cells if "mauve" in c.metrics), None)
    if mauve is not None:
        return (f"MAUVE ↑ by transformer-block budget (Table 10); features of {mauve['judge']}, {mauve['num_p']} "
                f"generated vs {mauve['num_q']} held-out texts")
    if summary.valppl:
        return "validation perplexity ↓ (the MDLM bound on held-out blocks)"
    return "Evaluation"


MAUVE_MIN_SAMPLES = 100  # below this, MAUVE's quantised histograms of a few texts mean little (its authors use 5000)


def table_legend(summary: EvalSummary) -> list[str]:
    """What a cell of the results table holds, and warnings on what it cannot show."""
    settings = summary.settings
    measured = set(settings.get("metrics") or ("mauve", "latency"))  # None: every metric of the modality
    batch = f"{settings['batch_size']} samples"
    if summary.modality == "image":
        lines = [f"cells: FID / IS ({summary.judge} features; lower FID, higher IS better)"
                 + (f", then latency per batch of {batch} and images/s" if "latency" in measured else "")
                 + "; w: the guidance weight; budget: transformer-block forward passes per image"]
    else:
        parts = [f"Gen. PPL under {summary.judge} (entropy of each sample's tokens, nats)"]
        if "mauve" in measured:
            parts.append("M: MAUVE against held-out texts")
        if "latency" in measured:
            parts.append(f"then seconds per batch of {batch}")
        lines = ["cells: " + ", ".join(parts) + "; budget: transformer-block forward passes per sample; "
                 "lower Gen. PPL is better only at a similar entropy"]
        if summary.valppl:
            lines.append(f"val. PPL: the MDLM bound on {settings['val_batches']} held-out batches (training's "
                         "validation uses trainer.val_batches, so the two can differ)")
        mauve = next((c.metrics["mauve"] for c in summary.cells if "mauve" in c.metrics), None)
        if mauve is not None and min(mauve["num_p"], mauve["num_q"]) < MAUVE_MIN_SAMPLES:
            lines.append(f"warning: MAUVE compares {mauve['num_p']} generated with {mauve['num_q']} held-out texts; "
                         f"below {MAUVE_MIN_SAMPLES} each it means little (raise --num-samples)")
    return lines


def results_table(summary: EvalSummary) -> Table:
    """Rows: run x reuse; columns: budgets; cells: Gen. PPL (entropy) [MAUVE] [latency per batch] for text,
    FID / IS [latency, images/s] for images, with each run's training time and peak memory (Table 15's header)."""
    if summary.modality == "image":
        table = Table(title=image_title(summary))
        budgets = sorted({c.budget for c in summary.cells})
        table.add_column("model / reuse")
        table.add_column("w", justify="right")
        table.add_column("train time, peak memory")
        for budget in budgets:
            table.add_column(str(budget), justify="right")
        for label in dict.fromkeys(c.label for c in summary.cells):
            row = {c.budget: c for c in summary.cells if c.label == label}
            run = next((name for name in summary.training if label == name or label.startswith(name + " ")), "")
            w = ", ".join(dict.fromkeys(f"{c.cfg:g}" for c in row.values() if c.cfg is not None))
            table.add_row(label, w, training_text(summary, run),
                          *[_cell_text(row[b].metrics) if b in row else "" for b in budgets])
        return table
    budgets = sorted({c.budget for c in summary.cells})
    labels = list(dict.fromkeys(c.label for c in summary.cells)) or list(summary.valppl)  # valppl-only runs
    table = Table(title=text_title(summary))
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


def plot_budget_curves(summary: EvalSummary, path: Path, metric: str = "genppl") -> None:
    """`metric` (Gen. PPL, MAUVE or FID) against budget, one line per run x reuse; for Gen. PPL entropy is annotated
    at each point, for FID the IS."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    runs = list(dict.fromkeys(c.run for c in summary.cells))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"none": ("-", "o"), "full": ("--", "s"), "3sr": (":", "^")}  # coinciding lines stay visible
    labels = list(dict.fromkeys(c.label for c in summary.cells))
    scheduled = bool(summary.settings.get("model_schedules"))  # one run, several model schedules: a colour each
    for label in labels:
        cells = sorted((c for c in summary.cells if c.label == label), key=lambda c: c.budget)
        x = [c.budget for c in cells]
        y = [c.metrics[metric]["value"] for c in cells]
        linestyle, marker = styles.get(cells[0].reuse, ("-", "o"))
        color = colors[(labels.index(label) if scheduled else runs.index(cells[0].run)) % len(colors)]
        fill = "none" if cells[0].top_p == 1 else color  # nucleus rows (Table 12): filled markers
        shown = f"{label} (w {cells[0].cfg:g})" if summary.cfg_sweep and cells[0].cfg is not None else label
        (line,) = ax.plot(x, y, linestyle=linestyle, marker=marker, color=color, label=shown, markerfacecolor=fill)
        for c, xi, yi in zip(cells, x, y):
            note = c.metrics.get({"genppl": "entropy", "fid": "isc"}.get(metric, ""), {}).get("value")
            if note is not None:
                ax.annotate(f"{note:.2f}", (xi, yi), textcoords="offset points", xytext=(4, 5), fontsize=7,
                            color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    budgets = sorted({c.budget for c in summary.cells})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("transformer-block forward passes per sample (budget)")
    n = summary.settings["num_samples"]
    if metric == "fid":
        ax.set_ylabel(f"FID ({summary.judge}), lower is better")
        ax.set_yscale("linear")
        ax.set_title(f"FID vs budget (IS annotated)\n{image_title(summary)}", fontsize=7)
    elif metric == "mauve":
        ax.set_ylabel("MAUVE, higher is better")
        ax.set_yscale("linear")
        ax.set_title(text_title(summary), fontsize=8)
    else:
        ax.set_ylabel(f"Gen. PPL ({summary.judge}), lower is better")
        ax.set_title(f"Generative perplexity vs budget (entropy annotated); {n} samples, seed {summary.settings['seed']}",
                     fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
