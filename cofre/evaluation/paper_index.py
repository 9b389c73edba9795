"""An index of the paper analyses' reports: `python -m cofre.evaluation.paper_index runs/reports/paper-tiny`.

Each `make` paper target writes one folder (fig13, table22, ...) of JSON, PNGs and the tables it printed
(tables.txt). The index links every table and PNG found there with one line on what it shows, folder by
folder in the paper's order, and says which folders are missing.
"""

from __future__ import annotations

import fnmatch
import sys
import time
from pathlib import Path

from cofre.errors import CofreError
from cofre.runs import atomic_write_text, code_version

# folder -> (the paper's table or figure, what the folder's analysis shows)
SECTIONS: dict[str, tuple[str, str]] = {
    "fig13": ("Fig. 13, App. F.9", "Gen. PPL and entropy of CoFRe (3SR) over denoising steps x fixed-point iterations"),
    "table22": ("Table 22, Fig. 14, App. F.10", "the five iteration schedules under no/full/3SR reuse across budgets: "
                                               "mean Gen. PPL, average rank, wins (ties win for all tied)"),
    "tables4-5": ("Tables 4-5, App. C.2", "3SR's coefficients: gamma_mask ranges x gamma_changed across budgets, "
                                         "fixed schedule"),
    "table12": ("Table 12, App. F.1.7", "MDLM and CoFRe with and without nucleus sampling (top-p 1 and 0.9 rows)"),
    "fig3-16": ("Figs. 3 and 16, App. F.12", "the fixed-point solver along the trajectory, no reuse vs full reuse"),
    "fig11": ("Fig. 11, App. F.6", "lagged logit KL between a step s and cleaner steps s + l, FP-MDLM vs CoFRe"),
    "fig12": ("Fig. 12, App. F.7", "the consistency stage checkpoint by checkpoint: Gen. PPL (entropy) and val PPL "
                                   "against the +15% threshold that selects the checkpoint"),
    "table24": ("Table 24, App. F.13", "Gen. PPL (entropy) at two training stages of MDLM and FP-MDLM, and CoFRe (3SR)"),
    "table10": ("Table 10, App. F.1.5", "MAUVE of MDLM and CoFRe (3SR) against held-out text, by budget"),
    "table11": ("Table 11, App. F.1.6", "downstream multiple-choice accuracy of MDLM and CoFRe (lm-eval)"),
}

# file name pattern -> what the file shows (the first matching pattern wins)
FILES: list[tuple[str, str]] = [
    ("tables.txt", "the tables the commands printed"),
    ("sweep-allocation-*.png", "heatmaps: Gen. PPL (left) and entropy (right) per steps x FP iterations"),
    ("sweep-schedules-*.png", "Gen. PPL against budget per schedule, one panel per reuse policy (Fig. 14)"),
    ("sweep-gamma-*.png", "Gen. PPL against budget per 3SR coefficient setting"),
    ("genppl-*.png", "Gen. PPL against budget, one line per row of the table, entropy annotated"),
    ("*-fig3-shift.png", "Fig. 3: mean solution shift ||h*_t - h*_t+1|| per token transition type, per step"),
    ("*-fig16-residuals.png", "Fig. 16: relative residual per FP iteration and per denoising step, per trace"),
    ("mauve-*.png", "MAUVE against budget, one line per row of the table"),
    ("lm-eval.png", "accuracy per downstream task, one bar per model, with its standard error"),
    ("lagged-kl.png", "lagged logit KL per lag and number of steps, both models, and the relative reduction"),
    ("stage-*.png", "Gen. PPL (entropy) per stage checkpoint and budget; val PPL with the threshold line"),
    ("sweep-*.json", "every cell's settings, scores and provenance, and the standings"),
    ("summary-*.json", "every cell's settings, scores, samples file and checkpoint (path, step, sha256)"),
    ("stage-*.json", "per checkpoint: Gen. PPL, entropy, val PPL, the threshold and its first crossing"),
    ("lagged-kl.json", "the KL values, pair counts and reductions"),
    ("*-trace-stats.json", "the residual and shift statistics behind the two figures"),
    ("lm-eval-*.json", "one model's task metrics and how they were estimated"),
]
LISTED = ("*.txt", "*.png", "*.json")  # traces and samples (JSONL) are inputs, not results


def describe(name: str) -> str:
    return next((text for pattern, text in FILES if fnmatch.fnmatch(name, pattern)), "written by the same target")


def build_index(root: Path) -> str:
    """The index as markdown: a section per paper result found under `root`, its files linked and described."""
    if not root.is_dir():
        raise CofreError(f"{root} is not a folder of paper reports (run a paper target first)")
    lines = [f"# The paper's analyses: {root}", "",
             f"Built {time.strftime('%Y-%m-%d %H:%M:%S')} from the reports in this folder (code {code_version()}).",
             "Each section is one `make` target's folder; tables.txt holds the tables as they were printed.", ""]
    missing = []
    for folder, (paper, shows) in SECTIONS.items():
        files = sorted(p for p in (root / folder).glob("*") if any(fnmatch.fnmatch(p.name, g) for g in LISTED))
        if not files:
            missing.append(folder)
            continue
        lines += [f"## {paper}: {folder}", "", shows + ".", ""]
        lines += [f"- [{p.name}]({folder}/{p.name}): {describe(p.name)}" for p in files]
        lines.append("")
    if missing:
        lines += ["## Not found", "", "No reports yet in: " + ", ".join(missing) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m cofre.evaluation.paper_index REPORTS_DIR")
    root = Path(argv[0])
    try:
        index = build_index(root)
    except CofreError as err:
        sys.exit(f"error: {err}")
    atomic_write_text(root / "index.md", index)
    print(f"wrote {root / 'index.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
