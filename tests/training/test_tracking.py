"""Experiment trackers through Accelerate: a missing package is one line; a tracker sees what metrics.jsonl holds."""

import json
from pathlib import Path

import pytest
from accelerate.tracking import GeneralTracker

import cofre.training.loop as loop
from cofre.config import load_recipe
from cofre.errors import CofreError


class RecordingTracker(GeneralTracker):
    name = "recording"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self) -> None:
        super().__init__()
        self.config: dict = {}
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    @property
    def tracker(self) -> "RecordingTracker":
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs: object) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def test_missing_tracker_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CofreError, match="needs the 'wandb' package: pip install wandb"):
        loop.tracker("wandb")
    assert loop.tracker("none") is None


def test_tracker_gets_every_logged_record(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = RecordingTracker()
    monkeypatch.setattr(loop, "tracker", lambda log_with: [recorder])
    run = tmp_path / "run"
    loop.train(load_recipe(tiny_recipe, ["trainer.log_with=tensorboard"]), run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in recorder.logged] == [r["step"] for r in records]
    for (_, values), record in zip(recorder.logged, records):
        assert values == {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
    assert recorder.config["trainer.log_with"] == "tensorboard" and recorder.config["optim.betas"] == "[0.9, 0.999]"
    assert recorder.finished
