"""The MDLM objective on hand-worked cases."""

import math

import pytest
import torch

from cofre.config import TaskConfig
from cofre.tasks.mdlm import LogLinearSchedule, MDLMBatch, MDLMTask, mask_tokens, sample_t, subs_nll


def test_log_linear_schedule() -> None:
    s = LogLinearSchedule(eps=1e-3)
    t = torch.tensor([0.25, 0.5, 1.0])
    assert torch.allclose(s.alpha(t), 1 - 0.999 * t)
    assert torch.allclose(s.sigma(t), -torch.log(1 - 0.999 * t))
    assert torch.allclose(s.weight(t), 1 / t)  # -alpha'/(1 - alpha) = 1/t


def test_antithetic_t_is_stratified() -> None:
    t = sample_t(8, eps=1e-3, antithetic=True, generator=torch.Generator().manual_seed(0))
    u = (t - 1e-3) / (1 - 1e-3)
    bins = torch.floor(u * 8).long().sort().values
    assert bins.tolist() == list(range(8))  # exactly one draw per stratum [k/8, (k+1)/8)


def test_masking_rate_matches_schedule() -> None:
    x = torch.zeros(4, 20000, dtype=torch.long)
    move = torch.tensor([0.0, 0.25, 0.5, 1.0])
    z = mask_tokens(x, move, mask_id=9, u=torch.rand(x.shape, generator=torch.Generator().manual_seed(1)))
    rates = (z == 9).float().mean(1)
    assert rates[0] == 0 and rates[3] == 1
    assert rates[1].item() == pytest.approx(0.25, abs=0.01) and rates[2].item() == pytest.approx(0.5, abs=0.01)


def test_subs_nll_ignores_the_mask_logit() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5, 100.0]])
    expected = -torch.log_softmax(logits[:, :3], -1)[0, 1]
    assert torch.allclose(subs_nll(logits, torch.tensor([1]), mask_id=3), expected[None])


def test_loss_hand_worked() -> None:
    # vocab {0,1,2} + [mask]=3; two sequences of length 2.
    task = MDLMTask(TaskConfig(eps=1e-3), mask_id=3)
    x = torch.tensor([[0, 1], [2, 2]])
    z = torch.tensor([[3, 1], [3, 3]])
    t = torch.tensor([0.5, 0.25])
    batch = MDLMBatch(z=z, x=x, t=t, sigma=task.schedule.sigma(t), masked=z == 3)
    # logits at the masked positions in row-major order: (0,0), (1,0), (1,1)
    logits = torch.tensor([[2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 3.0, 9.0]])
    p00 = math.exp(2) / (math.exp(2) + 2)  # the mask logit is ignored (SUBS)
    p10 = 1 / 3
    p11 = math.exp(3) / (1 + math.e + math.exp(3))
    expected = ((1 / 0.5) * -math.log(p00) + (1 / 0.25) * (-math.log(p10) - math.log(p11))) / 4
    assert task.loss(logits, batch).item() == pytest.approx(expected, rel=1e-6)


def test_noise_uses_schedule_and_marks_masked() -> None:
    task = MDLMTask(TaskConfig(), mask_id=7)
    x = torch.randint(0, 7, (64, 32), generator=torch.Generator().manual_seed(0))
    batch = task.noise(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(batch.masked, batch.z == 7)
    assert torch.equal(batch.z[~batch.masked], x[~batch.masked])  # visible tokens are the clean ones
    assert torch.allclose(batch.sigma, task.schedule.sigma(batch.t))
