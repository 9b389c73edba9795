"""`cofre sweep`: Table 22's ranking arithmetic, the grids' budgets, and a sweep that resumes without redrawing."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cofre.config import ModelConfig, Recipe
from cofre.errors import CofreError
from cofre.evaluation.sweep import SweepSettings, check_sweep, grid, parse_range, run_sweep
from cofre.evaluation.sweep_report import rank_schedules, sweep_tables
from cofre.models import Denoiser
from cofre.sampling.budget import plan_budget
from cofre.sampling.mdlm import MDLMSampler
from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files


def test_rank_schedules_on_a_hand_made_grid() -> None:
    # three settings; in the second, decreasing and fixed tie for the best value
    grid_values = {
        ("none", 96): {"decreasing": 10.0, "fixed": 12.0, "cosine": 20.0},
        ("none", 192): {"decreasing": 8.0, "fixed": 8.0, "cosine": 9.0},
        ("3sr", 96): {"decreasing": 15.0, "fixed": 11.0, "cosine": 30.0},
    }
    standings = {s.schedule: s for s in rank_schedules(grid_values)}
    # ranks: decreasing 1, 1, 2; fixed 2, 1, 1; cosine 3, 3, 3 (the tie shares rank 1, the next is 3)
    assert standings["decreasing"].mean_rank == pytest.approx(4 / 3) and standings["decreasing"].wins == 2
    assert standings["fixed"].mean_rank == pytest.approx(4 / 3) and standings["fixed"].wins == 2
    assert standings["cosine"].mean_rank == 3 and standings["cosine"].wins == 0
    assert standings["decreasing"].mean_genppl == pytest.approx(11.0)
    assert standings["fixed"].mean_genppl == pytest.approx(31 / 3)
    assert sum(s.wins for s in standings.values()) == 4  # more wins than settings: the tie counts for both
    # best first: equal mean rank, then the lower mean Gen. PPL
    assert [s.schedule for s in rank_schedules(grid_values)] == ["fixed", "decreasing", "cosine"]


def test_rank_schedules_needs_every_schedule_in_every_setting() -> None:
    with pytest.raises(CofreError, match="lacks schedule"):
        rank_schedules({"a": {"fixed": 1.0, "cosine": 2.0}, "b": {"fixed": 1.0}})


def test_allocation_cells_spend_steps_times_the_cost_of_n_iterations() -> None:
    model = ModelConfig(hidden=16, heads=2, cond_dim=8, max_seq_len=16, K_pre=1, K_fp=2, K_post=1)
    settings = SweepSettings(kind="allocation", steps=[3, 5], iters=[1, 4], reuse=["3sr"])
    cells = grid(settings, model, "fp32")
    assert [(c["steps"], c["iters"], s.budget) for c, s in cells] == [(3, 1, 12), (3, 4, 30), (5, 1, 20), (5, 4, 50)]
    for coords, sample_settings in cells:
        plan = plan_budget(model, sample_settings.budget, sample_settings.steps, sample_settings.schedule)
        assert plan.iterations == [coords["iters"]] * coords["steps"]


def test_gamma_cells_and_range_parsing() -> None:
    assert parse_range("0.75:0.9", "--gamma-mask") == (0.75, 0.9) and parse_range("0.2", "--gamma-changed") == (0.2, 0.2)
    for bad in ("0.9:0.1", "1.5", "a:b", "0.1:0.2:0.3"):
        with pytest.raises(CofreError):
            parse_range(bad, "--gamma-mask")
    model = ModelConfig(hidden=16, heads=2, cond_dim=8, max_seq_len=16, K_pre=1, K_fp=1, K_post=1)
    settings = SweepSettings(kind="gamma", gamma_mask=[(0.6, 0.9)], gamma_changed=[(0.0, 0.1), (0.2, 0.2)],
                             budgets=[12, 24], reuse=["3sr"])
    cells = grid(settings, model, "fp32")
    assert len(cells) == 4 and all(s.schedule == "fixed" and s.reuse == "3sr" for _, s in cells)
    assert (cells[1][1].gamma_changed_min, cells[1][1].gamma_changed_max, cells[1][1].budget) == (0.0, 0.1, 24)


@pytest.mark.parametrize("settings, fragment", [
    (SweepSettings(kind="allocation", steps=[2]), "needs both --steps and --iters"),
    (SweepSettings(kind="allocation", steps=[2], iters=[1], budgets=[8]), "--budget does not apply"),
    (SweepSettings(kind="schedules", schedules=["fixed", "zigzag"], budgets=[8]), "unknown schedule zigzag"),
    (SweepSettings(kind="schedules", schedules=["fixed"], budgets=[8]), "at least two schedules"),
    (SweepSettings(kind="gamma", gamma_mask=[(0.1, 0.2)], gamma_changed=[(0.2, 0.2)], budgets=[8], reuse=["full"]),
     "--reuse must be 3sr"),
])
def test_bad_sweeps_are_one_line_errors(settings: SweepSettings, fragment: str) -> None:
    settings.reuse = settings.reuse or ["3sr"]
    with pytest.raises(CofreError, match=fragment):
        check_sweep(settings)


def random_run(root: Path) -> Path:
    """A random FP model (1/1/1 blocks, 16 tokens) published as a run's checkpoint: samples in milliseconds."""
    recipe = Recipe(name="sweep-test")
    recipe.model = ModelConfig(hidden=16, heads=2, cond_dim=8, dropout=0.0, max_seq_len=16, K_pre=1, K_fp=1, K_post=1)
    recipe.data.seq_len = 16
    torch.manual_seed(0)
    model = Denoiser(recipe.model)
    with torch.no_grad():  # away from the zero-initialised output: samples depend on the settings
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    write_checkpoint_files(staging_dir(root / "checkpoints", 1), model, None, recipe, {})
    publish_checkpoint(root / "checkpoints", 1, keep_last=1)
    return root


def test_interrupted_sweep_draws_only_the_missing_cells(tmp_path: Path, tiny_gpt2_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = random_run(tmp_path / "run")
    settings = SweepSettings(kind="allocation", steps=[1, 2], iters=[1, 2], reuse=["3sr"], judge=str(tiny_gpt2_dir),
                             num_samples=2, batch_size=2, device="cpu")
    draws: list[int] = []  # one batch per cell: each sampler call is one cell drawn
    original = MDLMSampler.sample

    def counting(self: MDLMSampler, batch_size: int, generator: torch.Generator, start=None):  # type: ignore[no-untyped-def]
        draws.append(self.plan.budget)
        if interrupt_at and len(draws) == interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C while the third cell is being drawn
        return original(self, batch_size, generator, start)

    monkeypatch.setattr(MDLMSampler, "sample", counting)
    console = Console(record=True, width=200)
    interrupt_at = 3
    with pytest.raises(KeyboardInterrupt):
        run_sweep(run, settings, tmp_path / "report", console)
    assert draws == [3, 4, 6] and "interrupted after 2 of 4 cells" in console.export_text()
    assert len(list((run / "samples").glob("*.jsonl"))) == 2 and len(list((run / "eval").glob("*.json"))) == 2

    draws.clear()
    interrupt_at = 0
    summary = run_sweep(run, settings, tmp_path / "report", console)
    assert draws == [6, 8]  # only the cells the interrupted sweep had not finished
    assert [c.drawn for c in summary.cells] == [False, False, True, True]
    first = {c.path: c.metrics for c in summary.cells}

    draws.clear()
    again = run_sweep(run, settings, tmp_path / "report", console)
    assert draws == [] and not any(c.drawn or c.scored for c in again.cells)
    assert {c.path: c.metrics for c in again.cells} == first  # read back, identical
    record = json.loads(Path(again.cells[0].path).read_text())
    assert record["judge"] == str(tiny_gpt2_dir) and record["coords"] == {"reuse": "3sr", "steps": 1, "iters": 1}
    assert Path(again.plot_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(again.summary_path).read_text())["kind"] == "allocation"
    text = Console(record=True, width=200)
    for table in sweep_tables(again):
        text.print(table)
    rendered = text.export_text()
    assert "steps \\ iters" in rendered and "[8]" in rendered

    # a different judge is a different score: the samples are read back, the cells scored again
    draws.clear()
    rejudged = run_sweep(run, SweepSettings(**{**settings.__dict__, "genppl_mode": "mdlm"}), tmp_path / "report", console)
    assert draws == [] and all(c.scored and not c.drawn for c in rejudged.cells)
