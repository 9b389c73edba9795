"""`cofre evaluate` on image runs: FID and IS per (run, reuse, budget) cell through torch-fidelity with a named
extractor, per-cell JSON with its provenance, the Table 15-shaped table, the FID-vs-budget PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_runs import make_classifier_run, make_image_run, make_vq_run
from test_bad_inputs import run_in_process


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-eval")
    vq = make_vq_run(root)
    return {"fp": make_image_run(root, vq, (1, 1, 1), "img-fp"), "plain": make_image_run(root, vq, (2, 0, 0), "img-plain"),
            "clf": make_classifier_run(root, image_size=8)}


@pytest.mark.slow
def test_image_evaluate_writes_cells_summary_table_and_plot(runs: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", str(runs["plain"]), str(runs["fp"]), "--budget", "4,8", "--reuse", "none,3sr", "--judge",
            str(runs["clf"]), "--num-samples", "12", "--batch-size", "4", "--latency-repeats", "1", "--latency-warmup",
            "0", "--reference-images", "40", "--cfg", "0.5", "--report-dir", str(tmp_path / "report")]
    result = run_in_process(args, tmp_path)
    assert result.code == 0, result.stderr
    cells = sorted((runs["fp"] / "eval").glob("*.json"))
    assert len(cells) == 2 * 2 and len(list((runs["plain"] / "eval").glob("*.json"))) == 2
    cell = json.loads(cells[0].read_text())
    fid, isc = cell["metrics"]["fid"], cell["metrics"]["isc"]
    assert cell["judge"] == "classifier:clf-test" and fid["extractor"] == "classifier:clf-test"
    assert fid["value"] >= 0 and isc["value"] >= 1 and isc["splits"] == 10
    assert fid["generated_images"] == 12 and fid["reference_images"] == 40 and fid["reference_split"] == "val"
    assert fid["cfg"] == 0.5 and fid["steps"] == cell["steps"] and fid["seed"] == 1 and "native 8 x 8" in fid["resizer"]
    assert len(fid["weights_sha256"]) == 64 and len(cell["checkpoint"]["sha256"]) == 64
    assert cell["blocks_spent"] == [cell["budget"]] * 3 and "not counted twice" in cell["budget_definition"]
    assert cell["metrics"]["latency"]["images_per_s"] > 0 and cell["metrics"]["latency"]["batch_size"] == 4
    assert (Path(cell["samples"]) / "manifest.json").is_file()
    summary = json.loads(next((tmp_path / "report").glob("summary-*.json")).read_text())
    assert summary["modality"] == "image" and summary["judge"] == "classifier:clf-test"
    assert {c["label"] for c in summary["cells"]} == {"img-plain", "img-fp none", "img-fp 3sr"}
    assert next((tmp_path / "report").glob("fid-*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fragment in ("FID ↓ / IS ↑", "classifier:clf-test", "img-fp 3sr", "img/s", "train time"):
        assert fragment in result.stdout
    again = run_in_process(args, tmp_path)  # the samples are read back: identical numbers
    assert again.code == 0 and json.loads(cells[0].read_text())["metrics"]["fid"] == fid


@pytest.mark.parametrize("extra, fragment", [
    (["--metrics", "genppl"], "--metrics genppl: not for image runs; choose from fid, isc, latency"),
    (["--reference-split", "test"], "--reference-split must be one of train, val"),
    (["--judge", "nowhere"], "judge 'nowhere' is neither 'inception' nor a classifier run"),
])
def test_image_evaluate_bad_settings_are_one_line(runs: dict[str, Path], tmp_path: Path, extra: list[str],
                                                  fragment: str) -> None:
    result = run_in_process(["evaluate", str(runs["fp"]), "--budget", "4", "--num-samples", "2", "--metrics", "fid",
                             "--report-dir", str(tmp_path / "r"), *extra], tmp_path)
    assert result.code == 2 and fragment in result.stderr, result.stderr


@pytest.mark.slow
def test_a_stage_costs_its_own_training_time_plus_its_parents(runs: dict[str, Path], tmp_path: Path) -> None:
    from cofre.evaluation.image_eval import training_cost
    from cofre.evaluation.report import training_text

    parent = tmp_path / "fp"  # the fixture's run with a training record of its own
    parent.mkdir()
    (parent / "checkpoints").symlink_to(runs["fp"] / "checkpoints")
    below = {"final_step": 2, "elapsed_s": 30.0, "train_time_s": 30.0, "train_time_complete": True, "peak_memory_gib": 1.0}
    (parent / "train_result.json").write_text(json.dumps(below))
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "train_result.json").write_text(json.dumps({"final_step": 2, "elapsed_s": 74.0, "train_time_s": 74.0,
                                                         "train_time_complete": True, "peak_memory_gib": 99.0}))
    checkpoint = str(parent / "checkpoints" / (parent / "checkpoints" / "latest").read_text().strip())
    cost = training_cost(stage, checkpoint)
    assert cost["train_time_s"] == pytest.approx(below["train_time_s"] + 74.0) and cost["train_time_complete"]
    assert cost["stage_time_s"] == 74.0 and cost["parent"] == parent.name and cost["peak_memory_gib"] == 99.0
    assert f"{parent.name} + 1m 14s stage" in training_text(EvalSummaryStub({"stage": cost}), "stage")
    lost = training_cost(stage, str(tmp_path / "gone" / "checkpoints" / "step-000000002"))  # parent not on disk
    assert lost["train_time_s"] == 74.0 and not lost["train_time_complete"] and lost["parent_time_unknown"]
    assert training_text(EvalSummaryStub({"stage": lost}), "stage").startswith("≥ 1m 14s (gone (time unknown)")


class EvalSummaryStub:
    def __init__(self, training: dict[str, dict]) -> None:
        self.training = training
