"""Lagged logit KL (App. F.6) on stand-in models whose predictions are known in closed form."""

import math

import pytest
import torch
from torch import Tensor

from cofre.errors import CofreError
from cofre.evaluation.lagged_kl import compare, nested_states

MASK = 2  # vocabulary {0, 1} + [mask]
A = 3.0


def time_dependent(z: Tensor, t: float) -> Tensor:
    """p(0) = sigmoid(A t) at every position, whatever the context."""
    logits = torch.tensor([A * t, 0.0], dtype=torch.float64)
    return logits.log_softmax(-1).expand(*z.shape, 2)


def constant(z: Tensor, t: float) -> Tensor:
    return torch.zeros(*z.shape, 2, dtype=torch.float64).log_softmax(-1)


def garbage_where_visible(z: Tensor, t: float) -> Tensor:
    """Like `time_dependent` at masked positions; a far-off distribution at visible ones (which must not count)."""
    far = torch.tensor([-20.0, 0.0], dtype=torch.float64).log_softmax(-1).expand(*z.shape, 2)
    return torch.where((z == MASK)[..., None], time_dependent(z, t), far)


def bernoulli_kl(q: float, p: float) -> float:
    return q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def expected(steps: int, lag: int) -> float:
    t = [1 - s / steps for s in range(steps)]
    return sum(bernoulli_kl(sigmoid(A * t[s + lag]), sigmoid(A * t[s])) for s in range(steps - lag)) / (steps - lag)


def test_nested_states_reveal_monotonically() -> None:
    x = torch.randint(0, 2, (3, 200))
    states = nested_states(x, 5, torch.Generator().manual_seed(0), MASK)
    assert bool((states[0] == MASK).all())  # t_0 = 1: everything masked
    for earlier, later in zip(states, states[1:]):
        assert bool(((later == MASK) <= (earlier == MASK)).all())  # a revealed token stays revealed
        assert bool((later[later != MASK] == x[later != MASK]).all())
    assert abs(float((states[2] == MASK).float().mean()) - 0.6) < 0.06  # t_2 = 0.6


def test_lagged_kl_matches_the_closed_form_and_the_reduction() -> None:
    batches = [torch.randint(0, 2, (2, 64)) for _ in range(2)]
    results = compare(time_dependent, constant, batches, [4, 8], [1, 3], MASK, seed=0)
    assert [(r.steps, r.lag) for r in results] == [(4, 1), (4, 3), (8, 1), (8, 3)]
    for r in results:
        assert r.kl_a == pytest.approx(expected(r.steps, r.lag), rel=1e-9)
        assert r.kl_b == 0 and r.reduction == pytest.approx(1.0)
        assert r.pairs == 2 * (r.steps - r.lag)  # every pair has masked positions at 64 tokens
    assert results[0].kl_a < results[1].kl_a  # a longer lag spans a larger change of t
    # only positions still masked at the cleaner step count: visible ones are ignored
    same = compare(garbage_where_visible, time_dependent, batches, [4], [1], MASK, seed=0)[0]
    assert same.kl_a == pytest.approx(same.kl_b) and same.reduction == pytest.approx(0.0, abs=1e-12)
    # B worse than A gives a negative reduction: 1 - KL_B / KL_A with KL_A from half the change of t
    half = compare(lambda z, t: time_dependent(z, t / 2), time_dependent, batches, [4], [1], MASK, seed=0)[0]
    assert half.reduction == pytest.approx(1 - half.kl_b / half.kl_a) and half.reduction < 0
    # a baseline whose predictions do not move (KL at float noise) has no defined reduction
    flat = compare(constant, time_dependent, batches, [4], [1], MASK, seed=0)[0]
    assert flat.kl_a == 0 and flat.kl_b > 0 and math.isnan(flat.reduction)


def test_a_lag_needs_more_steps() -> None:
    with pytest.raises(CofreError, match="lag 4 needs more than 4 steps"):
        compare(constant, constant, [torch.zeros(1, 4, dtype=torch.long)], [4], [4], MASK, seed=0)
