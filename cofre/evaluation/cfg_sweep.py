"""Choosing each image model's guidance weight w before its table is evaluated (`cofre evaluate --cfg 0,0.5,1,1.5
--cfg-select BUDGET`).

The paper uses classifier-free guidance without giving w; FID depends strongly on it (Halton-MaskGIT reports w 0.5
for its Large model at 32 steps). So, per model: sample every candidate w at one budget (with the first --reuse
policy), score each by FID with the table's judge, keep the w of lowest FID (ties: the smaller w), then evaluate
every cell of that model at it. The sweep's samples are the table's own when the budget is one of its budgets, so
the chosen cell is drawn once. The choice is made on the same reference set the table reports against, as
MaskGIT papers tune w on their reported FID.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cofre.evaluation.plotting import pyplot, save_figure
from cofre.runs import atomic_write_text

if TYPE_CHECKING:
    from cofre.evaluation.image_eval import ImageCells
    from cofre.sampling.generate import LoadedCheckpoint


@dataclass
class CfgChoice:
    """One model's sweep: FID at each candidate w, and the w its table uses."""

    run: str  # the row name
    budget: int
    reuse: str
    judge: str
    chosen: float
    points: list[dict[str, Any]] = field(default_factory=list)  # [{"cfg", "fid", "samples"}] in the order swept


def choose_cfg(cells: ImageCells, ckpt: LoadedCheckpoint, name: str, candidates: list[float], budget: int, reuse: str,
               precision: str) -> CfgChoice:
    """Draw (or read back) `name`'s samples at `budget` for each w in `candidates`; the chosen w has the lowest FID."""
    points = []
    for w in candidates:
        cell = cells.score(ckpt, reuse, budget, precision, w, metrics=["fid"])
        points.append({"cfg": w, "fid": cell.metrics["fid"]["value"], "samples": cell.out})
    best = min(points, key=lambda p: (p["fid"], p["cfg"]))
    return CfgChoice(run=name, budget=budget, reuse=reuse, judge=cells.judge_name, chosen=best["cfg"], points=points)


def selection_record(choice: CfgChoice) -> dict[str, Any]:
    """What each of the model's cells records about how its w was chosen."""
    return {"chosen_by": "lowest FID", "budget": choice.budget, "reuse": choice.reuse, "judge": choice.judge,
            "fid_by_cfg": {f"{p['cfg']:g}": p["fid"] for p in choice.points}}


def write_cfg_sweep(choices: list[CfgChoice], json_path: Path, plot_path: Path) -> None:
    """The sweep as JSON (one entry per model) and as FID against w, one line per model, its chosen w ringed."""
    atomic_write_text(json_path, json.dumps({"models": [asdict(c) for c in choices]}, indent=2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for choice in choices:
        x = [p["cfg"] for p in choice.points]
        (line,) = ax.plot(x, [p["fid"] for p in choice.points], marker="o", label=f"{choice.run} (w {choice.chosen:g})")
        best = next(p for p in choice.points if p["cfg"] == choice.chosen)
        ax.plot([best["cfg"]], [best["fid"]], marker="o", markersize=13, markerfacecolor="none", color=line.get_color())
    first = choices[0]
    reuse = ", ".join(dict.fromkeys(c.reuse for c in choices))
    ax.set_xlabel("classifier-free guidance weight w in (1 + w) cond - w uncond")
    ax.set_ylabel(f"FID ({first.judge}), lower is better")
    ax.set_title(f"guidance sweep at budget {first.budget} (reuse {reuse}); ringed: the w each model's table uses",
                 fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, plot_path)
