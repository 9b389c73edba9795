"""SDTT targets and divergences on hand-built cases: which step's prediction each position takes, KL direction."""

import math

import pytest
import torch

from cofre.tasks.sdtt import divergence, teacher_targets

MASK = 7  # vocabulary {0..6} + [mask] = 7
STEP_TOKEN = (2, 3)  # the fake teacher's step i predicts token STEP_TOKEN[i] almost surely


def fake_step_log_probs(step: int, positions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """What the fake teacher predicts at step i: a point mass on STEP_TOKEN[i], with a position-dependent
    second token so that a target put at the wrong position shows."""
    logits = torch.full((positions[0].numel(), MASK + 1), -1e4)
    logits[:, STEP_TOKEN[step]] = 0.0
    logits[:, 5] = -50.0 - positions[1].float() - 100 * positions[0].float()
    return logits


class FakeTeacher:
    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, z: torch.Tensor, t: torch.Tensor, positions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        assert bool((z[positions] == MASK).all())  # the teacher is asked only about masked positions
        self.calls.append((z.clone(), t.clone()))
        return fake_step_log_probs(len(self.calls) - 1, positions)


def test_teacher_target_k2_takes_the_revealing_step() -> None:
    # row 0: t = dt, so step 0 (t -> 0) reveals every token; row 1: dt ~ 0 against t = 1 reveals nothing, so every
    # position keeps the last step's prediction; row 2: both steps reveal some, some stay masked.
    length = 48
    z = torch.full((3, length), MASK)
    z[:, ::4] = 1  # visible tokens: not targets
    t = torch.tensor([0.2, 1.0, 0.6])
    teacher = FakeTeacher()
    got = teacher_targets(teacher, z, t, dt=0.2, k=2, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    alone = FakeTeacher()  # predicts STEP_TOKEN[n] at its n-th call
    row1 = teacher_targets(alone, z[1:2], t[1:2], dt=1e-12, k=2, mask_id=MASK, generator=torch.Generator().manual_seed(0))

    masked = z == MASK
    positions = masked.nonzero(as_tuple=True)
    assert got.log_probs.shape == (int(masked.sum()), MASK)
    # step 0 runs at t, step 1 at t - dt, on the state step 0 left (clamped at 0 for row 0, which has nothing left)
    assert torch.allclose(teacher.calls[0][1], t) and torch.allclose(teacher.calls[1][1], torch.tensor([0.0, 0.8, 0.4]))
    assert torch.equal(teacher.calls[1][0], torch.where(teacher.calls[1][0] == MASK, MASK, got.z_end))

    step0 = fake_step_log_probs(0, positions)[:, :MASK].log_softmax(-1)
    step1 = fake_step_log_probs(1, positions)[:, :MASK].log_softmax(-1)
    final = got.z_end[positions]
    for i, (row, value, at) in enumerate(zip(positions[0].tolist(), final.tolist(), got.revealed_at.tolist())):
        expected_at = {STEP_TOKEN[0]: 0, STEP_TOKEN[1]: 1, MASK: 2}[value]  # the drawn token names the step
        assert at == expected_at
        assert torch.equal(got.log_probs[i], step0[i] if at == 0 else step1[i]), (i, at)
        if row == 0:
            assert at == 0
    row2 = got.revealed_at[positions[0] == 2]
    assert {0, 1, 2} <= set(row2.tolist()), "row 2 must show all three cases"
    assert (row1.revealed_at == 2).all() and (row1.z_end == z[1:2]).all()
    # step 0 revealed nothing, so only the last step ran the network, and its prediction fills every target
    assert len(alone.calls) == 1 and torch.allclose(alone.calls[0][1], torch.tensor([1.0 - 1e-12]))
    assert torch.equal(row1.log_probs, fake_step_log_probs(0, (z[1:2] == MASK).nonzero(as_tuple=True))[:, :MASK].log_softmax(-1))


def test_the_teacher_runs_the_samplers_transition() -> None:
    """Same generator, same state: the teacher's first step draws exactly the sampler's reveal and tokens."""
    from cofre.sampling.mdlm import fill_revealed, reveal

    z = torch.full((2, 16), MASK)
    t = torch.tensor([0.5, 0.5])
    got = teacher_targets(FakeTeacher(), z, t, dt=0.1, k=1, mask_id=MASK, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    revealed = reveal(z, 0.5, 0.4, MASK, g)
    logits = fake_step_log_probs(0, z.nonzero(as_tuple=True))  # every position is masked
    expected = fill_revealed(z, revealed, logits[revealed[z == MASK]], MASK, 1.0, False, g)
    assert torch.equal(got.z_end, expected)


def test_divergence_direction_on_a_hand_worked_pair() -> None:
    # vocabulary {0, 1} + [mask] = 2; p_student = [1/2, 1/2], p_teacher = [0.9, 0.1]
    student_logits = torch.tensor([[0.0, 0.0, 5.0]])
    teacher = torch.tensor([[math.log(0.9), math.log(0.1)]])
    reverse = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL(p_s || p_t) = 0.5108
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(p_t || p_s) = 0.3681
    assert divergence(student_logits, teacher, "reverse_kl", 2).item() == pytest.approx(reverse, rel=1e-6)
    assert divergence(student_logits, teacher, "forward_kl", 2).item() == pytest.approx(forward, rel=1e-6)
    assert divergence(student_logits, teacher, "tv", 2).item() == pytest.approx(0.4, rel=1e-6)
    mse = ((math.log(0.5) - math.log(0.9)) ** 2 + (math.log(0.5) - math.log(0.1)) ** 2) / 2
    assert divergence(student_logits, teacher, "logprob_mse", 2).item() == pytest.approx(mse, rel=1e-6)
    assert reverse != pytest.approx(forward, rel=0.1)


def test_divergences_vanish_on_the_teachers_own_distribution() -> None:
    logits = torch.randn(5, 9)
    teacher = logits[:, :8].log_softmax(-1)
    for loss in ("reverse_kl", "forward_kl", "logprob_mse", "tv"):
        assert divergence(logits, teacher, loss, 8).item() == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_the_targets() -> None:
    student = torch.randn(4, 9, requires_grad=True)
    teacher = torch.randn(4, 8, requires_grad=True)
    divergence(student, teacher, "reverse_kl", 8).backward()
    assert student.grad is not None and teacher.grad is None
