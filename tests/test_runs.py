"""The run directory's bookkeeping: the writer lock, metrics cut back on start, temporary files."""

import json
import os
from pathlib import Path

import pytest

from cofre.errors import CofreError
from cofre.runs import RunDir, TrainClock, atomic_write_text, time_before


def test_the_lock_refuses_a_second_writer_and_is_released(tmp_path: Path) -> None:
    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    first.lock()
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(CofreError, match=rf"in use by another process \(pid {os.getpid()}\)"):
        second.lock()
    first.unlock()
    second.lock()  # free again once its holder let go (or died: the kernel drops a dead process's flock)
    second.unlock()


def test_metrics_tolerate_a_partial_last_line_and_refuse_a_damaged_middle_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics_path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.metrics_path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(CofreError, match="metrics.jsonl: line 2 is not a JSON record"):
        run.read_metrics()


@pytest.mark.parametrize("step, kept", [(2, [0, 1, 2]), (None, [])])
def test_truncate_keeps_records_up_to_the_resumed_step(tmp_path: Path, step: int | None, kept: list[int]) -> None:
    run = RunDir(tmp_path)
    run.metrics_path.write_text("".join(f'{{"step": {s}}}\n' for s in (0, 1, 2, 3, 4)) + '{"step": 5')
    run.truncate_metrics(step)
    assert [r["step"] for r in run.read_metrics()] == kept
    assert run.metrics_path.read_text().endswith("\n") or not kept


def test_clean_removes_only_what_a_killed_writer_leaves(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    (run.checkpoints / ".tmp-step-000000004").mkdir(parents=True)
    (run.checkpoints / "step-000000002").mkdir()
    stale = [tmp_path / ".metrics.jsonl.abc", run.checkpoints / ".latest.x7", tmp_path / ".recipe.yaml.z"]
    keep = [tmp_path / "notes.txt", tmp_path / ".hidden-by-user", run.checkpoints / "latest"]
    for path in stale + keep:
        path.write_text("x")
    run.clean_temporary_files()
    assert not any(p.exists() for p in stale) and not (run.checkpoints / ".tmp-step-000000004").exists()
    assert all(p.exists() for p in keep) and (run.checkpoints / "step-000000002").is_dir()


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "x.json", None)  # type: ignore[arg-type]  # fails mid-write
    assert list(tmp_path.iterdir()) == []


def test_training_time_before_a_call_comes_from_the_checkpoint_else_a_matching_record(tmp_path: Path) -> None:
    assert time_before({"step": 4, "train_time_s": 10.0}, tmp_path, 4) == 10.0
    assert time_before({"step": 0}, tmp_path, 0) == 0.0  # a fresh run
    assert time_before({"step": 4}, tmp_path, 4) is None  # an older checkpoint and no record: unknown
    (tmp_path / "train_result.json").write_text(json.dumps({"final_step": 4, "elapsed_s": 3.0}))
    assert time_before({"step": 4}, tmp_path, 4) == 3.0  # the record of the call that ended there
    assert time_before({"step": 2}, tmp_path, 2) is None  # a record of another history
    clock = TrainClock(None)
    assert not clock.complete and clock.total(trained=False) == 0.0 and clock.total() == pytest.approx(clock.elapsed(), abs=0.1)
    assert TrainClock(5.0).total(trained=False) == 5.0
