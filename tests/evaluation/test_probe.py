"""`cofre probe`: context use, the fixed point's residual and the unigram baseline, on hand-checked models and a run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cofre.config import ModelConfig, TaskConfig
from cofre.evaluation.probe import Check, ProbeResult, context_kl, learning_checks, unigram_perplexity
from cofre.tasks.mdlm import MDLMTask

ROOT = Path(__file__).resolve().parents[2]


def test_unigram_perplexity_by_hand() -> None:
    train = torch.tensor([[0, 0, 1]])  # counts 2, 1, 0 over 3 ids; add-one: 3, 2, 1 of 6
    val = torch.tensor([[0, 2]])
    expected = math.exp(-(math.log(3 / 6) + math.log(1 / 6)) / 2)
    assert unigram_perplexity(train, val, vocab=3) == pytest.approx(expected)


class Frequencies(torch.nn.Module):
    """Predicts the same distribution everywhere (what an undertrained MDLM learns); `copy` reads the left neighbour."""

    def __init__(self, copy: bool) -> None:
        super().__init__()
        self.cfg = ModelConfig(vocab_size=5, hidden=8, heads=2, max_seq_len=8, K_pre=1)
        self.copy = copy

    def forward(self, z, signal, n_nograd=0, positions=None, **_):
        logits = torch.zeros(*z.shape, 5)
        logits[..., 0] = 1.0
        if self.copy:
            left = torch.roll(z, 1, dims=1)
            logits = logits + 5 * torch.nn.functional.one_hot(left, 5).float()
        logits[..., 4] = -1e9  # [mask]
        rows = logits[positions] if positions is not None else logits
        return type("Out", (), {"logits": rows})()


@pytest.mark.parametrize("copy, positive", [(False, False), (True, True)])
def test_context_use_is_zero_for_a_frequency_model_and_positive_for_one_reading_its_context(copy, positive) -> None:
    task = MDLMTask(TaskConfig(), mask_id=4)
    x = torch.randint(0, 4, (4, 8), generator=torch.Generator().manual_seed(0))
    total, count = context_kl(Frequencies(copy), task, x, None, 0.5, torch.Generator().manual_seed(1), 0, "fp32")
    assert count > 0
    assert (total / count > 0.5) if positive else total / count == pytest.approx(0.0, abs=1e-12)


def result(kl: float, ppl: float, residuals: list[float]) -> ProbeResult:
    return ProbeResult(run="r", checkpoint={}, modality="text", blocks=8, context_kl={"0.25": kl, "0.5": kl, "0.75": kl},
                       val_nll=math.log(ppl), val_ppl=ppl, unigram_ppl=100.0, residuals=residuals, eval_iters=len(residuals))


def test_learning_checks_hold_each_threshold() -> None:
    good = learning_checks(result(0.8, 40.0, [0.5, 0.1, 0.02]))
    assert [c.passed for c in good] == [True, True, True]
    bad = learning_checks(result(1e-5, 90.0, [1.3, 1.31]))
    assert [c.passed for c in bad] == [False, False, False]
    assert [c.name for c in learning_checks(result(0.8, 40.0, []))] == [c.name for c in good[:2]]  # plain: no residual
    assert isinstance(bad[0], Check) and bad[0].threshold == ">= 0.5"


@pytest.mark.slow
def test_probe_command_on_a_trained_fixed_point_run(tmp_path: Path, tiny_recipe: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COFRE_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "cofre", "train", str(tiny_recipe), "--run-dir", str(run)],
                           capture_output=True, text=True, env=env)
    assert train.returncode == 0, train.stderr
    out = subprocess.run([sys.executable, "-m", "cofre", "probe", str(run), "--batches", "2", "--batch-size", "2"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "context use at t = 0.5" in out.stdout and "median relative residual after 3 iterations" in out.stdout
    (path,) = (run / "eval").glob("probe-6-ema.json")
    record = json.loads(path.read_text())
    assert set(record["context_kl"]) == {"0.25", "0.5", "0.75"} and len(record["residuals"]) == 3
    assert record["unigram_ppl"] > 1 and record["checkpoint"]["step"] == 6
