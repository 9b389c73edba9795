"""The paper-tiny index: every table and PNG of the report folders linked, with one line on what it shows."""

from pathlib import Path

import pytest

from cofre.errors import CofreError
from cofre.evaluation.paper_index import build_index, main


def test_index_links_every_table_and_png(tmp_path: Path) -> None:
    for name in ("fig13/tables.txt", "fig13/sweep-allocation-1a2b.png", "fig13/sweep-allocation-1a2b.json",
                 "fig3-16/none+full-fig3-shift.png", "fig3-16/none+full-fig16-residuals.png", "fig3-16/none.trace.jsonl",
                 "fig12/stage-tiny-cofre-stage.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    main([str(tmp_path)])
    index = (tmp_path / "index.md").read_text()
    assert "## Fig. 13, App. F.9: fig13" in index
    assert "- [sweep-allocation-1a2b.png](fig13/sweep-allocation-1a2b.png): heatmaps: Gen. PPL" in index
    assert "- [tables.txt](fig13/tables.txt): the tables the commands printed" in index
    assert "(fig3-16/none+full-fig16-residuals.png): Fig. 16: relative residual" in index
    assert "(fig12/stage-tiny-cofre-stage.png): Gen. PPL (entropy) per stage checkpoint" in index
    assert "none.trace.jsonl" not in index  # inputs are not results
    assert index.index("fig13") < index.index("fig3-16") < index.index("fig12")  # the paper's order of sections
    assert "No reports yet in: table22, tables4-5, table12, fig11, table24, table10, table11." in index


def test_index_of_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CofreError, match="is not a folder of paper reports"):
        build_index(tmp_path / "nothing")
