"""`cofre lagged-kl`: lagged logit KL between a student denoising step s and a cleaner step s + l (App. F.6, Fig. 11).

Both models see the same states: held-out sequences masked on the sampler's grid t_s = 1 - s/S with nested
masks (one uniform draw per token, masked while u < t_s; App. C.3.3), so z_{s+l} is z_s with more tokens
revealed. At every position still masked at the cleaner step s + l, KL(p_{s+l} || p_s) measures how far the
student step's prediction is from the cleaner one's; it is averaged over those positions, then over the
pairs (s, s + l) and the batches. The relative reduction of model B against model A is 1 - KL_B / KL_A; it is
undefined (NaN) where KL_A is below MIN_BASELINE_KL, a baseline whose predictions do not move as tokens are revealed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cofre.errors import CofreError
from cofre.evaluation.plotting import pyplot, save_figure

# Below this (nats), model A's predictions barely depend on the revealed tokens (an undertrained model that predicts
# token frequencies): a ratio against it measures float noise, not consistency.
MIN_BASELINE_KL = 1e-6
LogProbs = Callable[[Tensor, float], Tensor]  # (z [B, L], t) -> log p over the vocabulary without [mask], [B, L, V]


@dataclass
class LaggedKL:
    """Mean lagged KL of models A and B for one number of steps and one lag, and B's relative reduction."""

    steps: int
    lag: int
    kl_a: float
    kl_b: float
    reduction: float  # 1 - kl_b / kl_a; NaN where kl_a < MIN_BASELINE_KL
    pairs: int  # (batch, s) pairs averaged
    batches_a: list[float] = field(default_factory=list)  # per held-out batch (the same states for A and B): intervals
    batches_b: list[float] = field(default_factory=list)


def nested_states(x: Tensor, steps: int, generator: torch.Generator, mask_id: int) -> list[Tensor]:
    """z_s for s = 0 .. steps - 1 at t_s = 1 - s / steps: one uniform per token, masked while u < t_s."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return [torch.where(u < 1 - s / steps, torch.full_like(x, mask_id), x) for s in range(steps)]


def mean_lagged_kl(log_probs: LogProbs, states: list[Tensor], lag: int, mask_id: int) -> tuple[float, int]:
    """Mean over pairs (s, s + lag) of the mean over positions masked at s + lag of KL(p_{s+lag} || p_s)."""
    steps = len(states)
    cache: dict[int, Tensor] = {}

    def at(s: int) -> Tensor:
        if s not in cache:
            cache[s] = log_probs(states[s], 1 - s / steps).double()
        return cache[s]

    values = []
    for s in range(steps - lag):
        masked = states[s + lag] == mask_id  # nested: masked at s too
        cache.pop(s - 1, None)  # only a window of lag + 1 steps is ever needed
        if not masked.any():
            continue
        cleaner, student = at(s + lag)[masked], at(s)[masked]
        kl = (cleaner.exp() * (cleaner - student)).sum(-1)  # KL(p_{s+l} || p_s) per position (F.6)
        values.append(kl.mean())
    if not values:
        return float("nan"), 0
    return float(torch.stack(values).mean()), len(values)


def compare(model_a: LogProbs, model_b: LogProbs, batches: list[Tensor], steps: list[int], lags: list[int],
            mask_id: int, seed: int) -> list[LaggedKL]:
    """Lagged KL of both models on identical nested states, for every (steps, lag) with lag < steps."""
    results = []
    for n_steps in steps:
        for lag in lags:
            if lag >= n_steps:
                raise CofreError(f"lag {lag} needs more than {n_steps} steps")
            totals = {"a": [], "b": []}
            pairs = 0
            for i, x in enumerate(batches):
                generator = torch.Generator(x.device).manual_seed(seed + i)
                states = nested_states(x, n_steps, generator, mask_id)
                for key, model in (("a", model_a), ("b", model_b)):
                    value, count = mean_lagged_kl(model, states, lag, mask_id)
                    if count:
                        totals[key].append(value)
                pairs += count
            kl_a, kl_b = (sum(v) / len(v) if v else float("nan") for v in (totals["a"], totals["b"]))
            results.append(LaggedKL(n_steps, lag, kl_a, kl_b, relative_reduction(kl_a, kl_b), pairs,
                                    totals["a"], totals["b"]))
    return results


def relative_reduction(kl_a: float, kl_b: float) -> float:
    """1 - KL_B / KL_A (Fig. 11, right), NaN where the baseline's KL is too small to divide by."""
    return 1 - kl_b / kl_a if kl_a >= MIN_BASELINE_KL else float("nan")


def denoiser_log_probs(model: torch.nn.Module, iters: int, eps: float, mask_id: int, precision: str = "fp32") -> LogProbs:
    """A checkpoint's predictions: `iters` fixed-point iterations from h_pre at `precision` (fp32, or bf16
    autocast), SUBS over the real vocabulary in float64."""
    from cofre.precision import autocast
    from cofre.tasks.mdlm import LogLinearSchedule

    schedule = LogLinearSchedule(eps)

    @torch.no_grad()
    def log_probs(z: Tensor, t: float) -> Tensor:
        sigma = schedule.sigma(torch.full((z.shape[0],), t, device=z.device))
        with autocast(z.device, precision):
            logits = model(z, sigma, n_nograd=iters).logits
        return logits.double()[..., :mask_id].log_softmax(-1)

    return log_probs


def plot_lagged_kl(results: list[LaggedKL], label_a: str, label_b: str, path: Path) -> None:
    """Left: lagged KL of both models by lag, one line pair per number of steps; right: B's relative reduction."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n_steps in dict.fromkeys(r.steps for r in results):
        rows = [r for r in results if r.steps == n_steps]
        lags = [r.lag for r in rows]
        (line,) = left.plot(lags, [r.kl_a for r in rows], marker="o", label=f"{label_a}, {n_steps} steps")
        left.plot(lags, [r.kl_b for r in rows], marker="s", linestyle="--", color=line.get_color(),
                  label=f"{label_b}, {n_steps} steps")
        right.plot(lags, [100 * r.reduction for r in rows], marker="o", color=line.get_color(), label=f"{n_steps} steps")
    left.set_ylabel("mean KL(p_{s+l} || p_s) at masked positions")
    left.set_title("lagged logit KL", fontsize=9)
    if all(v > 0 for r in results for v in (r.kl_a, r.kl_b)):
        left.set_yscale("log")  # the two models' KLs may be orders of magnitude apart
    right.set_ylabel("relative reduction, %")
    defined = not all(math.isnan(r.reduction) for r in results)
    if defined:
        right.axhline(0, color="0.5", linewidth=0.8)
        if any(math.isnan(r.reduction) for r in results):
            right.text(0.02, 0.02, f"points missing: KL({label_a}) < {MIN_BASELINE_KL:g} nats there",
                       transform=right.transAxes, fontsize=7)
    else:
        right.set_xlim(left.get_xlim())
        right.set_xticks(sorted({r.lag for r in results}))
        right.set_yticks([])
        right.text(0.5, 0.5, f"undefined: KL({label_a}) < {MIN_BASELINE_KL:g} nats everywhere\n(its predictions do not "
                   "move as tokens are revealed)", transform=right.transAxes, ha="center", va="center", fontsize=9)
    right.set_title(f"1 - KL({label_b}) / KL({label_a})", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right) if defined else (left,):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xlabel("lag l (steps between student s and cleaner s + l)")
    save_figure(fig, path)
