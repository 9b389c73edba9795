"""`cofre trace-plot`: Fig. 3 / Fig. 16 statistics from hand-made traces, and the command end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cofre.errors import CofreError
from cofre.evaluation.trace_plot import read_trace, trace_stats

ROOT = Path(__file__).parents[2]


def row(batch: int, step: int, residuals: list[float], shift: dict[str, float]) -> dict:
    return {"batch": batch, "step": step, "t": 1 - step / 3, "allocated_iters": len(residuals),
            "iterations": len(residuals), "blocks": 2 + len(residuals), "revealed": 1, "cached": False,
            "residuals": residuals, "solution_shift": shift}


def write_trace(path: Path, scale: float) -> Path:
    """Two batches x three steps; residuals and shifts chosen so that every average is easy to check."""
    rows = [
        row(0, 0, [80.0, 1.0, 0.1], {}),
        row(1, 0, [60.0, 3.0, 0.3], {}),
        row(0, 1, [2.0 * scale, 0.2 * scale], {"unchanged_visible": 0.1, "still_masked": 1.0, "newly_revealed": 5.0}),
        row(1, 1, [4.0 * scale, 0.4 * scale], {"unchanged_visible": 0.3, "still_masked": 3.0}),
        row(0, 2, [6.0 * scale], {"unchanged_visible": 0.2, "newly_revealed": 7.0}),
        row(1, 2, [8.0 * scale], {"unchanged_visible": 0.2, "newly_revealed": 9.0}),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trace_stats_average_batches_step_by_step(tmp_path: Path) -> None:
    stats = trace_stats(read_trace(write_trace(tmp_path / "t.jsonl", 1.0)), "none", "t.jsonl")
    assert stats.steps == [0, 1, 2] and stats.batches == 2
    assert stats.initial_residual == [70.0, 3.0, 7.0] and stats.final_residual == pytest.approx([0.2, 0.3, 7.0])
    # per iteration over steps after the first: n=0 from four rows, n=1 from the two rows that ran it
    assert stats.residual_by_iteration == pytest.approx([(2 + 4 + 6 + 8) / 4, (0.2 + 0.4) / 2])
    assert stats.median_initial_after_first == pytest.approx(5.0)  # median of 2, 4, 6, 8
    assert stats.shift["unchanged_visible"] == [None, pytest.approx(0.2), pytest.approx(0.2)]
    assert stats.shift["still_masked"] == [None, 2.0, None]  # no still-masked token at the last step
    assert stats.shift["newly_revealed"] == [None, 5.0, 8.0]  # averaged over the batches that have the type


def test_unreadable_traces_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CofreError, match="is not a trace file"):
        read_trace(tmp_path / "missing.jsonl")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(row(0, 0, [], {})) + "\n")
    with pytest.raises(CofreError, match="plain model"):
        read_trace(plain)


@pytest.mark.slow
def test_trace_plot_writes_both_figures_and_compares_warm_starts(tmp_path: Path) -> None:
    none, full = write_trace(tmp_path / "none.jsonl", 1.0), write_trace(tmp_path / "full.jsonl", 0.01)
    result = subprocess.run([sys.executable, "-m", "cofre", "trace-plot", str(none), str(full), "--report-dir",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("none+full-fig3-shift.png", "none+full-fig16-residuals.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "full starts 100x closer to its fixed point than none" in result.stdout
    saved = json.loads((tmp_path / "out" / "none+full-trace-stats.json").read_text())
    assert [s["label"] for s in saved] == ["none", "full"]
