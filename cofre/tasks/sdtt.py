"""Self-distillation through time (SDTT, Deschenaux & Gulcehre, ICLR 2025): the MDLM + SDTT baseline of Tables 2, 13.

From z_t the frozen teacher runs k ancestral steps of size dt with the sampler's own transition
(cofre.sampling.mdlm.reveal / fill_revealed), at the times of `distill.teacher_grid`: `paper`, the chain
t -> t - dt -> ... -> t - k dt of the SDTT paper; or `reference`, the times SDTT's code uses (and its released
students were trained with), t_i = t (1 - i / (k - 1)) + (1 - t)(t - k dt) clamped at 1e-5, each step going from t_i
to t_i - dt. At each position masked in z_t the target is the teacher's prediction at the step that revealed it;
positions still masked after k steps take the last step's. The student, in one pass at t, matches these targets
under a divergence (reverse KL by default, as SDTT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cofre.sampling.mdlm import fill_revealed, reveal

# (z [B, L], t [B], positions) -> teacher logits at `positions` (the still-masked tokens of z), [N, V]
TeacherFn = Callable[[Tensor, Tensor, tuple[Tensor, Tensor]], Tensor]


@dataclass
class TeacherTargets:
    """What the teacher's k steps give, at the positions masked in z_t (in `masked.nonzero()` order)."""

    log_probs: Tensor  # [N, V - 1] float32: the teacher's SUBS log-probabilities ([mask] dropped)
    revealed_at: Tensor  # [N] long: the step 0..k-1 that revealed each position, k if still masked
    z_end: Tensor  # [B, L] the teacher's state after k steps


REFERENCE_MIN_T = 1e-5  # SDTT's sampling_eps: its code clamps the teacher's times here


def teacher_times(t: Tensor, dt: float, k: int, grid: str) -> list[tuple[Tensor, Tensor]]:
    """(t_i, s_i) [B] in float64 of the teacher's k steps from t. paper: t_i = t - i dt, s_i = t - (i + 1) dt, clamped
    at 0. reference: SDTT's code, t_i = t space_i + (1 - t)(t - k dt) with space = linspace(1, 0, k) (so t_0 can
    exceed t), clamped at 1e-5, and s_i = t_i - dt (a step into s <= 0 reveals every token left, as there)."""
    t = t.double()
    if grid == "paper":
        return [((t - i * dt).clamp_min(0), (t - (i + 1) * dt).clamp_min(0)) for i in range(k)]
    if grid == "reference":
        space = torch.linspace(1, 0, k, dtype=torch.float64).tolist()
        times = [(t * a + (1 - t) * (t - k * dt)).clamp_min(REFERENCE_MIN_T) for a in space]
        return [(t_i, (t_i - dt).clamp_min(0)) for t_i in times]
    raise ValueError(f"unknown teacher grid {grid!r}")


@torch.no_grad()
def teacher_targets(teacher: TeacherFn, z_t: Tensor, t: Tensor, dt: float, k: int, mask_id: int,
                    generator: torch.Generator, grid: str = "paper") -> TeacherTargets:
    """k ancestral teacher steps of size dt from z_t at the times of `grid` (`teacher_times`; a step that reaches 0
    reveals every token left); each target is the prediction of the step that revealed the position."""
    masked_t = z_t == mask_id
    count = int(masked_t.sum())
    log_probs = torch.zeros(count, mask_id, dtype=torch.float32, device=z_t.device)
    revealed_at = torch.full((count,), k, dtype=torch.long, device=z_t.device)
    z = z_t
    for i, (t_i, s_i) in enumerate(teacher_times(t, dt, k, grid)):
        masked = z == mask_id
        if not masked.any():
            break
        # a row at t_i = 0 has nothing masked (the step into 0 revealed it all); its chance is never used
        revealed = reveal(z, t_i.clamp_min(torch.finfo(torch.float64).tiny), s_i, mask_id, generator)
        last = i == k - 1
        wanted = masked if last else revealed  # the last step's prediction also fills what stays masked
        if not wanted.any():
            continue  # nothing revealed and more steps to come: no network call (the sampler's cache)
        logits = teacher(z, t_i.float(), wanted.nonzero(as_tuple=True))
        log_probs[wanted[masked_t]] = logits.float()[:, :mask_id].log_softmax(dim=-1)
        revealed_at[revealed[masked_t]] = i
        z = fill_revealed(z, revealed, logits[revealed[masked]] if last else logits, mask_id, 1.0, False, generator)
    return TeacherTargets(log_probs=log_probs, revealed_at=revealed_at, z_end=z)


def divergence(student_logits: Tensor, teacher_log_probs: Tensor, loss: str, mask_id: int) -> Tensor:
    """The mean over positions of d(p_student, p_teacher), in float32, over the vocabulary without [mask]:
    reverse_kl KL(p_s || p_t) (SDTT's choice), forward_kl KL(p_t || p_s), logprob_mse the mean squared error of
    the log-probabilities, tv the total variation 1/2 sum |p_s - p_t|."""
    log_p_s = student_logits[:, :mask_id].float().log_softmax(dim=-1)
    log_p_t = teacher_log_probs.detach().float()
    if loss == "reverse_kl":
        return (log_p_s.exp() * (log_p_s - log_p_t)).sum(dim=-1).mean()
    if loss == "forward_kl":
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()
    if loss == "logprob_mse":
        return (log_p_s - log_p_t).square().mean()
    if loss == "tv":
        return 0.5 * (log_p_s.exp() - log_p_t.exp()).abs().sum(dim=-1).mean()
    raise ValueError(f"unknown distill loss {loss!r}")
