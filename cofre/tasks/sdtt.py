"""Self-distillation through time (SDTT, Deschenaux & Gulcehre, ICLR 2025): the MDLM + SDTT baseline of Tables 2, 13.

From z_t the frozen teacher runs k ancestral steps t -> t - dt -> ... -> t - k dt with the sampler's own
transition (cofre.sampling.mdlm.reveal / fill_revealed). At each position masked in z_t the target is the
teacher's prediction at the step that revealed it; positions still masked after k steps take the last step's.
The student, in one pass at t, matches these targets under a divergence (reverse KL by default, as SDTT).
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


@torch.no_grad()
def teacher_targets(teacher: TeacherFn, z_t: Tensor, t: Tensor, dt: float, k: int, mask_id: int,
                    generator: torch.Generator) -> TeacherTargets:
    """k ancestral teacher steps of size dt from z_t along t, t - dt, ..., clamped at 0 (a step that reaches 0
    reveals every token left); each target is the prediction of the step that revealed the position."""
    masked_t = z_t == mask_id
    count = int(masked_t.sum())
    log_probs = torch.zeros(count, mask_id, dtype=torch.float32, device=z_t.device)
    revealed_at = torch.full((count,), k, dtype=torch.long, device=z_t.device)
    z = z_t
    t = t.double()
    for i in range(k):
        masked = z == mask_id
        if not masked.any():
            break
        t_i, s_i = (t - i * dt).clamp_min(0), (t - (i + 1) * dt).clamp_min(0)
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
