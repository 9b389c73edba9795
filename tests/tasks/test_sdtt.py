"""SDTT targets and divergences on hand-built cases: which step's prediction each position takes, KL direction."""

import math

import pytest
import torch

from cofre.tasks.sdtt import divergence, teacher_targets, teacher_times

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


def sdtt_code_times(t: torch.Tensor, dt: float, k: int) -> list[torch.Tensor]:
    """SDTT's `_teacher_logprobs_on_mask`, written out: space = linspace(1, 0, k), t_end = t - k dt,
    ts = t space + (1 - t) t_end, then max(ts, sampling_eps = 1e-5); each step goes from ts[i] to ts[i] - dt."""
    space = torch.linspace(1, 0, k).double()[:, None]
    t = t[None, :].double()
    ts = t * space + (1 - t) * (t - dt * k)
    return list(torch.maximum(ts, torch.tensor(1e-5, dtype=torch.float64)))


@pytest.mark.parametrize("k", [2, 3])
def test_reference_grid_is_the_sdtt_codes_interpolated_times(k: int) -> None:
    t = torch.tensor([1.0, 0.5, 0.1, 0.01, 1e-3])
    for dt in (1 / 1024, 1 / 16, 1 / 8):
        steps = teacher_times(t, dt, k, "reference")
        for (t_i, s_i), ref in zip(steps, sdtt_code_times(t, dt, k), strict=True):
            assert torch.allclose(t_i, ref, rtol=0, atol=1e-12) and torch.equal(s_i, (ref - dt).clamp_min(0))
    paper = teacher_times(t, 1 / 16, k, "paper")
    assert torch.allclose(paper[1][0], (t.double() - 1 / 16).clamp_min(0)) and torch.equal(paper[0][0], t.double())
    # the review's numbers: t = 0.5, dt = 1/16 starts at 0.6875 (above t), then 0.1875
    assert teacher_times(torch.tensor([0.5]), 1 / 16, 2, "reference")[0][0].item() == pytest.approx(0.6875)


@pytest.mark.parametrize("grid, share", [("paper", 0.625), ("reference", 0.0625 / 0.0775)])
def test_the_grid_sets_the_share_of_targets_from_the_first_step(grid: str, share: float) -> None:
    """The share of masked positions whose target is the teacher's prediction at z_t (revealed by step 0) is dt / t_0:
    62.5% on the paper's grid and 80.6% on the code's at t = 0.1, dt = 1/16 (the review's table)."""
    z = torch.full((4, 2000), MASK)
    t = torch.full((4,), 0.1)
    got = teacher_targets(FakeTeacher(), z, t, dt=1 / 16, k=2, mask_id=MASK, generator=torch.Generator().manual_seed(0),
                          grid=grid)
    assert (got.revealed_at == 0).float().mean().item() == pytest.approx(share, abs=0.02)
    assert not (got.z_end == MASK).any()  # both grids' second step reaches 0 here and reveals the rest


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
