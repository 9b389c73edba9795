"""Correlated masks, the consistency losses and the adaptation KL, on hand-checkable cases."""

import math

import pytest
import torch

from cofre.config import ConsistencyConfig, ModelConfig, Recipe, TaskConfig
from cofre.models import Denoiser
from cofre.tasks.consistency import (
    consistency_weight,
    correlated_pair,
    hidden_cosine,
    hidden_mse,
    logit_kl,
    teacher_probs,
)
from cofre.tasks.mdlm import MDLMTask
from cofre.training.auxiliary import AuxiliaryLoss

M = 49


def pair(seed: int = 0, batch: int = 64, length: int = 32):
    task = MDLMTask(TaskConfig(), mask_id=M)
    x = torch.randint(0, M, (batch, length), generator=torch.Generator().manual_seed(seed))
    return task, x, correlated_pair(task, x, ConsistencyConfig(), torch.Generator().manual_seed(seed + 1))


def test_masks_are_nested_and_strictly_cleaner() -> None:
    _, x, p = pair()
    s, c = p.student.masked, p.cleaner.masked
    assert not (c & ~s).any()  # cleaner mask is a subset of the student's
    has_masks = s.any(dim=1)
    assert ((s.sum(1) > c.sum(1)) | ~has_masks).all()  # strictly cleaner wherever the student has masks
    assert torch.equal(p.student.z[~s], x[~s]) and torch.equal(p.cleaner.z[~c], x[~c])
    gap = p.student.t - p.cleaner.t
    assert ((gap >= 0.05 - 1e-6) | (p.cleaner.t <= 1e-3 + 1e-6)).all() and (gap <= 0.30 + 1e-6).all()


def test_masks_come_from_one_draw() -> None:
    # the same generator state gives the same u: a cleaner t only removes masks, never moves them
    _, _, a = pair(seed=3)
    _, _, b = pair(seed=3)
    assert torch.equal(a.student.z, b.student.z) and torch.equal(a.cleaner.z, b.cleaner.z)
    # with identical t the masks coincide before the strictness fix: at most one position per row differs
    task = MDLMTask(TaskConfig(antithetic=False), mask_id=M)
    x = torch.randint(0, M, (256, 16), generator=torch.Generator().manual_seed(0))
    p = correlated_pair(task, x, ConsistencyConfig(gap_min=0.0, gap_max=0.0), torch.Generator().manual_seed(1))
    diff = (p.student.masked != p.cleaner.masked).sum(1)
    assert diff.max() == 1 and torch.equal(diff == 1, p.student.masked.any(1))


def test_hidden_losses() -> None:
    h = torch.randn(2, 3, 4)
    masked = torch.tensor([[True, False, True], [False, False, True]])
    assert hidden_mse(h, h.clone(), masked) == 0
    assert hidden_cosine(h, 2 * h, masked).abs() < 1e-6
    other = h.clone()
    other[0, 1] += 10  # an unmasked position does not count
    assert hidden_mse(h, other, masked) == 0
    other[0, 0] += 2
    assert hidden_mse(h, other, masked).item() == pytest.approx(4 * 4 / (3 * 4))  # 4 units off by 2, 3 positions x 4


def test_no_gradient_reaches_the_teacher() -> None:
    h_s = torch.randn(1, 2, 3, requires_grad=True)
    h_c = torch.randn(1, 2, 3, requires_grad=True)
    hidden_mse(h_s, h_c, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert h_s.grad is not None and h_c.grad is None


def test_kl_direction_and_temperature() -> None:
    # vocabulary {0, 1} + [mask]=2; teacher logits [0, ln 3] -> at tau=1 p_c = [1/4, 3/4]; student uniform
    tau = 1.5
    teacher_logits = torch.tensor([[0.0, math.log(3), 7.0]])
    student_logits = torch.tensor([[0.0, 0.0, 9.0]])
    p_c = teacher_probs(teacher_logits, torch.tensor([1]), torch.tensor([False]), mask_id=2, tau=tau)
    q = torch.tensor([1.0, 3 ** (1 / tau)])
    q = q / q.sum()
    assert torch.allclose(p_c[0], q)
    expected = tau**2 * float((q * (q.log() - math.log(0.5))).sum())  # KL(p_teacher || p_student)
    assert logit_kl(student_logits, p_c, mask_id=2, tau=tau).item() == pytest.approx(expected, rel=1e-6)
    reverse = tau**2 * float((0.5 * (math.log(0.5) - q.log())).sum())
    assert expected != pytest.approx(reverse)  # the direction matters


def test_teacher_that_sees_the_token_is_one_hot() -> None:
    p = teacher_probs(torch.zeros(1, 3), torch.tensor([1]), torch.tensor([True]), mask_id=2, tau=1.5)
    assert p.tolist() == [[0.0, 1.0]]


def test_lambda_warmup() -> None:
    cfg = ConsistencyConfig(weight=0.1, warmup_steps=100)
    assert [consistency_weight(cfg, s) for s in (0, 50, 100, 500)] == pytest.approx([0.0, 0.05, 0.1, 0.1])


def test_self_teacher_loss_is_zero_for_identical_inputs() -> None:
    recipe = Recipe()
    recipe.model = ModelConfig(vocab_size=50, hidden=16, heads=2, cond_dim=8, dropout=0.0, K_pre=1, K_fp=1, K_post=1)
    recipe.consistency = ConsistencyConfig(loss="hidden_mse")
    torch.manual_seed(0)
    model = Denoiser(recipe.model)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    _, _, p = pair(batch=4, length=8)
    p.cleaner = p.student  # identical inputs
    aux = AuxiliaryLoss(recipe, model, None)
    positions = p.student.masked.nonzero(as_tuple=True)
    out = model(p.student.z, p.student.sigma, n_nograd=0, n_grad=3, positions=positions)
    loss = aux(model, out, p, positions, 3)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    loss.backward()  # the graph is the student's only
    assert all(prm.grad is None or prm.grad.abs().sum() == 0 for prm in model.parameters())
