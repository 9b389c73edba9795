"""Stochastic JFB: gradients flow only through the gradient iterations; no-grad iterations keep no graph."""

import pytest
import torch

from cofre.solver import relative_residual, sjfb_solve


@pytest.mark.parametrize("n_nograd, n_grad", [(0, 1), (2, 1), (2, 2), (3, 3)])
def test_sjfb_gradient_is_the_truncated_one(n_nograd: int, n_grad: int) -> None:
    # f(h) = w h from h0 = 1: after n_nograd steps h = w^n_nograd (a constant c for backprop),
    # then n_grad more steps give w^n_grad * c, whose truncated derivative is n_grad w^(n_grad-1) c.
    w = torch.tensor(1.3, requires_grad=True)
    h, stats = sjfb_solve(lambda h: w * h, torch.tensor(1.0), n_nograd, n_grad)
    h.backward()
    c = 1.3**n_nograd
    assert stats.iterations == n_nograd + n_grad
    assert h.item() == pytest.approx(1.3 ** (n_nograd + n_grad))
    assert w.grad.item() == pytest.approx(n_grad * 1.3 ** (n_grad - 1) * c)


def test_nograd_iterations_keep_no_graph() -> None:
    w = torch.tensor(0.5, requires_grad=True)
    seen = []

    def f(h: torch.Tensor) -> torch.Tensor:
        out = w * h
        seen.append(out.requires_grad)
        return out

    h0 = torch.ones(3, requires_grad=True)
    h, _ = sjfb_solve(f, h0, n_nograd=4, n_grad=2)
    assert seen == [False] * 4 + [True] * 2
    h.sum().backward()
    assert h0.grad is None  # the no-grad iterations cut the path back to the initial state


def test_no_gradient_iterations_only_under_inference() -> None:
    w = torch.tensor(0.5, requires_grad=True)
    with torch.no_grad():
        h, _ = sjfb_solve(lambda h: w * h, torch.ones(2), n_nograd=0, n_grad=3)
    assert not h.requires_grad


def test_residuals_tracked_per_iteration() -> None:
    h, stats = sjfb_solve(lambda h: 0.5 * h + 1.0, torch.zeros(2, 4) + 4.0, 0, 3, track=True)
    # fixed point is 2; from 4: 3, 2.5, 2.25 -> residuals |3-4|/4, |2.5-3|/3, |2.25-2.5|/2.5
    expected = [1 / 4, 0.5 / 3, 0.25 / 2.5]
    assert [r[0].item() for r in stats.residuals] == pytest.approx(expected)
    assert relative_residual(torch.ones(2, 3), torch.ones(2, 3)).tolist() == [0.0, 0.0]


def test_initial_state_is_detached_even_without_nograd_iterations() -> None:
    # FPDM detaches h^0: with N_ng = 0 the gradient reaches w through f's iterations but never h0 itself.
    w = torch.tensor(0.5, requires_grad=True)
    h0 = torch.ones(3, requires_grad=True)
    h, _ = sjfb_solve(lambda h: w * h + 1.0, h0, n_nograd=0, n_grad=2)
    h.sum().backward()
    assert h0.grad is None
    assert w.grad is not None and w.grad.item() != 0.0
