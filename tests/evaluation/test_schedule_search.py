"""Model scheduling end to end on random runs: segment placements, the search (ranked, resumed), and the commands
`sample --model-schedule`, `evaluate --model-schedule`, `step-importance` and `schedule-search`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cofre.config import DataConfig, ModelConfig, Recipe
from cofre.errors import CofreError
from cofre.evaluation.schedule_search import SearchSettings, check_search, run_search, segment_schedule
from cofre.models import Denoiser
from cofre.sampling.mdlm import MDLMSampler
from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files

ROOT = Path(__file__).parents[2]


def cofre(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def random_run(root: Path, corpus: Path, blocks: tuple[int, int, int], seed: int) -> Path:
    """A random text model (K_pre, K_fp, K_post; 16 tokens) over the test corpus, published as a run's checkpoint."""
    recipe = Recipe(name=root.name, data=DataConfig(corpus=str(corpus), seq_len=16, val_docs=10))
    recipe.model = ModelConfig(hidden=16, heads=2, cond_dim=8, dropout=0.0, max_seq_len=16, K_pre=blocks[0],
                               K_fp=blocks[1], K_post=blocks[2])
    recipe.solver.eval_iters = 3  # an FP step costs K_pre + 3 K_fp + K_post
    torch.manual_seed(seed)
    model = Denoiser(recipe.model)
    with torch.no_grad():  # away from the zero-initialised output: samples depend on the model
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    write_checkpoint_files(staging_dir(root / "checkpoints", 1), model, None, recipe, {})
    publish_checkpoint(root / "checkpoints", 1, keep_last=1)
    return root


@pytest.fixture
def pair(tmp_path: Path, corpus_file: Path) -> tuple[Path, Path]:
    """A heavy FP model (1 + 3 x 1 + 1 = 5 blocks a step) and a light plain 1-block model."""
    return random_run(tmp_path / "heavy", corpus_file, (1, 1, 1), 0), random_run(tmp_path / "light", corpus_file, (1, 0, 0), 1)


def test_segment_placements() -> None:
    assert segment_schedule((), 8, 16) == "H16"
    assert segment_schedule((0, 7), 8, 16) == "L2,H12,L2"  # the sandwich
    assert segment_schedule((3, 4), 8, 16) == "H6,L4,H6"  # light in the middle
    assert segment_schedule((0, 1), 8, 1000) == "L250,H750"


@pytest.mark.parametrize("settings, fragment", [
    (SearchSettings(steps=10, segments=8), "does not divide into 8 equal segments"),
    (SearchSettings(steps=16, segments=8, light_segments=9), "--light-segments must be in 1..8"),
    (SearchSettings(steps=40, segments=40, light_segments=20), "placements, more than 1000"),
    (SearchSettings(steps=16, judge="x", genppl_mode="bogus"), "--genppl-mode must be eq4 or mdlm"),
])
def test_bad_searches_are_one_line_errors(settings: SearchSettings, fragment: str) -> None:
    with pytest.raises(CofreError, match=fragment):
        check_search(settings)


def record_of(cell) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(Path(cell.path).read_text())


def test_search_ranks_every_placement_and_resumes(pair: tuple[Path, Path], tmp_path: Path, tiny_gpt2_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    heavy, light = pair
    settings = SearchSettings(steps=4, segments=4, light_segments=2, judge=str(tiny_gpt2_dir), num_samples=2,
                              batch_size=2, device="cpu")
    draws: list[list[str]] = []
    original = MDLMSampler.sample

    def counting(self: MDLMSampler, batch_size: int, generator: torch.Generator, start=None):  # type: ignore[no-untyped-def]
        draws.append(self.plan.models)
        return original(self, batch_size, generator, start)

    monkeypatch.setattr(MDLMSampler, "sample", counting)
    console = Console(record=True, width=200)
    summary = run_search(heavy, light, settings, tmp_path / "report", console)
    assert len(draws) == 1 + 4 + 6  # heavy alone, each segment light alone, every placement of 2 of 4
    assert summary.baseline.schedule == "H4" and [c.schedule for c in summary.singles] == ["L1,H3", "H1,L1,H2",
                                                                                          "H2,L1,H1", "H3,L1"]
    assert len(summary.ranking) == 6 and [c.genppl for c in summary.ranking] == sorted(c.genppl for c in summary.ranking)
    for c in summary.ranking + summary.singles:
        assert c.increase == pytest.approx(c.genppl - summary.baseline.genppl)
    # two of four steps light: 2 x 1 + 2 x 5 = 12 blocks against 20, a 40% saving
    assert all(c.budget == 12 and c.saving == pytest.approx(0.4) for c in summary.ranking)
    # FLOPs from both models' shapes, the FP heavy model's mix included: not the block count's 40%
    assert len({c.flop_saving for c in summary.ranking}) == 1 and 0 < summary.ranking[0].flop_saving != pytest.approx(0.4)
    assert record_of(summary.ranking[0])["model_schedule"]["flop_saving"] == pytest.approx(summary.ranking[0].flop_saving)
    assert Path(summary.plot_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(Path(summary.ranking[0].path).read_text())
    assert record["model_schedule"]["light"]["path"] == str(light / "checkpoints" / "step-000000001")
    assert record["checkpoint"]["light"]["sha256"] and record["judge"] == str(tiny_gpt2_dir)

    draws.clear()  # a second search reads every cell back
    again = run_search(heavy, light, settings, tmp_path / "report", console)
    assert draws == [] and not any(c.drawn or c.scored for c in again.ranking)
    assert [c.genppl for c in again.ranking] == [c.genppl for c in summary.ranking]


@pytest.mark.slow
def test_schedule_commands(pair: tuple[Path, Path], tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    heavy, light = pair
    common = ["--num-samples", "2", "--batch-size", "2", "--device", "cpu"]
    # an all-heavy schedule draws exactly the heavy model's samples (5 blocks a step: budget 20 over 4 steps)
    scheduled = cofre("sample", str(heavy), "--light", str(light), "--model-schedule", "H4", "--schedule", "fixed",
                      *common, "--out", str(tmp_path / "h4.jsonl"))
    assert scheduled.returncode == 0, scheduled.stderr[-2000:]
    alone = cofre("sample", str(heavy), "--budget", "20", "--steps", "4", "--schedule", "fixed", *common,
                  "--out", str(tmp_path / "alone.jsonl"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    rows = [[json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()] for name in ("h4", "alone")]
    assert [r["ids"] for r in rows[0]] == [r["ids"] for r in rows[1]]
    # a sandwich: blocks per step of the model that ran it, the saving, stated in the JSON and the summary
    sandwich = cofre("sample", str(heavy), "--light", str(light), "--model-schedule", "L0.25,H0.5,L0.25", "--steps", "4",
                     "--budget", "12", *common, "--out", str(tmp_path / "sandwich.jsonl"))
    assert sandwich.returncode == 0, sandwich.stderr[-2000:]
    row = json.loads((tmp_path / "sandwich.jsonl").read_text().splitlines()[0])
    # the heavy model's 2 x 3 iterations split by the default --schedule decreasing: 4 then 2 (blocks 6 and 4)
    assert row["blocks_per_step"] == [1, 6, 4, 1] and row["plan"]["iterations"] == [0, 4, 2, 0] and row["blocks_spent"] == 12 and row["plan"]["models"] == list("LHHL")
    cost = row["model_schedule"]
    assert (cost["schedule"], cost["heavy_alone_blocks"], cost["switch_warm_start"]) == ("L1,H2,L1", 20, "h_pre")
    assert "saving vs heavy alone" in sandwich.stdout and "40.0% of 20 blocks" in sandwich.stdout
    assert "FLOPs per token" in sandwich.stdout and 0 < cost["flop_saving"] < 1 and cost["seq_len"] == 16
    for args, fragment in ((["--model-schedule", "L1,H2,L1", "--budget", "20"], "spends 12 blocks"),
                           (["--model-schedule", "Q4"], "unknown model 'Q'"),
                           (["--model-schedule", "L1,H2", "--steps", "4"], "covers 3 steps, not the 4")):
        bad = cofre("sample", str(heavy), "--light", str(light), *args, "--out", str(tmp_path / "bad.jsonl"))
        assert bad.returncode == 2 and fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # evaluate: each schedule beside the heavy and the light model alone over the same steps
    report = tmp_path / "report"
    evaluated = cofre("evaluate", str(heavy), "--light", str(light), "--model-schedule", "L1,H2,L1",
                      "--model-schedule", "H1,L2,H1", "--reuse", "3sr", "--metrics", "genppl,entropy", "--judge", str(tiny_gpt2_dir),
                      *common, "--report-dir", str(report))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    summary = json.loads(next(report.glob("summary-*.json")).read_text())
    assert [(c["label"], c["budget"]) for c in summary["cells"]] == [
        ("heavy 3sr H4 (heavy alone)", 20), ("heavy 3sr L4 (light alone: light)", 4), ("heavy 3sr L1,H2,L1", 12),
        ("heavy 3sr H1,L2,H1", 12)]
    both = cofre("evaluate", str(heavy), "--light", str(light), "--model-schedule", "H4", "--budget", "20")
    assert both.returncode == 2 and "--budget does not apply with --model-schedule" in both.stderr
    # step importance: the table, the suggestion, JSON and PNG
    out = tmp_path / "importance"
    importance = cofre("step-importance", str(heavy), str(light), "--points", "3", "--batches", "1", "--batch-size", "2",
                       "--steps", "8", "--saving", "0.4", "--device", "cpu", "--report-dir", str(out))
    assert importance.returncode == 0, importance.stderr[-2000:]
    result = json.loads((out / "step-importance.json").read_text())
    assert [round(p["t"], 4) for p in result["points"]] == [0.8333, 0.5, 0.1667]
    assert all(p["kl"] > 0 and p["masked"] > 0 for p in result["points"])
    assert result["suggestion"]["light_steps"] == 4 and "--model-schedule" in importance.stdout
    assert (out / "step-importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
