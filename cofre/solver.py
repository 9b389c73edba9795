"""Fixed-point iteration h^{n+1} = F(h^n) (Eq. 3) as plain functions; warm-start state is passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SolveStats:
    """What one solve did: iterations run and, when tracked, the relative residual of each (App. F.12)."""

    iterations: int
    residuals: list[Tensor] = field(default_factory=list)  # per iteration: [B] tensor of ||F(h)-h|| / ||h||


def relative_residual(h_next: Tensor, h: Tensor) -> Tensor:
    """Per-sample ||F(h) - h||_2 / ||h||_2 over all token and hidden dimensions (App. F.12)."""
    diff = (h_next - h).detach().float().flatten(1).norm(dim=1)
    return diff / h.detach().float().flatten(1).norm(dim=1).clamp_min(1e-12)


def sjfb_solve(
    f: Callable[[Tensor], Tensor], h0: Tensor, n_nograd: int, n_grad: int, track: bool = False
) -> tuple[Tensor, SolveStats]:
    """Stochastic Jacobian-free backprop (§3.2, App. C.1): n_nograd iterations that keep no graph,
    then n_grad iterations with gradients; backward flows only through the last n_grad. The initial state
    is detached, as FPDM's is, so even with n_nograd = 0 no gradient reaches P through h^0 = h_pre (the
    injection h̃ inside f still carries it)."""
    stats = SolveStats(iterations=n_nograd + n_grad)
    h = h0.detach()
    for n in range(n_nograd + n_grad):
        with torch.set_grad_enabled(n >= n_nograd and torch.is_grad_enabled()):
            h_next = f(h)
        if track:
            stats.residuals.append(relative_residual(h_next, h))
        h = h_next
    return h, stats


@torch.no_grad()
def solve(
    f: Callable[[Tensor], Tensor], h0: Tensor, max_iters: int, tol: float | None = None, track: bool = False
) -> tuple[Tensor, SolveStats]:
    """Inference: iterate from the warm start h0 for `max_iters` iterations, or stop early once every
    sample's relative residual is below `tol` (adaptive stopping; the unspent iterations are the caller's)."""
    stats = SolveStats(iterations=0)
    h = h0
    for _ in range(max_iters):
        h_next = f(h)
        stats.iterations += 1
        if track or tol is not None:
            stats.residuals.append(relative_residual(h_next, h))
        h = h_next
        if tol is not None and bool(stats.residuals[-1].max() < tol):
            break
    return h, stats
