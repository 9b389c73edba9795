"""Cross-step consistency (§3.2) and teacher-student adaptation (§3.4) on correlated masks (App. C.3.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cofre.config import ConsistencyConfig
from cofre.tasks.maskgit import MaskGITBatch, MaskGITTask
from cofre.tasks.mdlm import MDLMBatch, MDLMTask, mask_tokens


@dataclass
class CorrelatedPair:
    """A noisier student state and a strictly cleaner teacher state of the same clean sequence (or image)."""

    student: MDLMBatch | MaskGITBatch
    cleaner: MDLMBatch | MaskGITBatch


def correlated_pair(task: MDLMTask | MaskGITTask, x: Tensor, cfg: ConsistencyConfig,
                    generator: torch.Generator | None = None, labels: Tensor | None = None) -> CorrelatedPair:
    """Nested masks from one uniform draw per token (App. C.3.3): t_c = t_s - gap, gap ~ U[gap_min, gap_max],
    z_s masks u < m(t_s) and z_c masks u < m(t_c) <= m(t_s) (m: the task's masked fraction; MaskGIT's t is the
    arccos ratio itself), so the cleaner mask is a subset of the student's. Where both would coincide, the
    student-masked token with the largest u is revealed in the cleaner state, so the cleaner branch is strictly
    less noisy. Image labels are dropped once, for both states."""
    condition = task.condition(labels, generator)
    t_s = task.sample_times(x.shape[0], generator, x.device)
    gap = cfg.gap_min + (cfg.gap_max - cfg.gap_min) * torch.rand(x.shape[0], generator=generator, device=x.device)
    t_c = (t_s - gap).clamp_min(task.min_time)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    z_s = mask_tokens(x, task.mask_fraction(t_s), task.mask_id, u)
    z_c = mask_tokens(x, task.mask_fraction(t_c), task.mask_id, u)
    masked_s, masked_c = z_s == task.mask_id, z_c == task.mask_id
    same = (masked_s == masked_c).all(dim=1) & masked_s.any(dim=1)
    if same.any():
        last = torch.where(masked_s, u, torch.full_like(u, -1.0)).argmax(dim=1)  # the student's last-masked token
        rows = same.nonzero(as_tuple=True)[0]
        z_c[rows, last[rows]] = x[rows, last[rows]]
    return CorrelatedPair(task.batch(x, z_s, t_s, condition), task.batch(x, z_c, t_c, condition))


def hidden_mse(h_student: Tensor, h_teacher: Tensor, masked: Tensor) -> Tensor:
    """L_CONS = ||h_s - sg(h_c)||^2 on student-masked positions (§3.2): the mean over those positions of the
    squared error averaged over hidden units."""
    return F.mse_loss(h_student[masked].float(), h_teacher[masked].detach().float())


def hidden_cosine(h_student: Tensor, h_teacher: Tensor, masked: Tensor) -> Tensor:
    """1 - cos(h_s, sg(h_c)) on student-masked positions (App. F.8)."""
    return 1 - F.cosine_similarity(h_student[masked].float(), h_teacher[masked].detach().float(), dim=-1).mean()


def teacher_probs(teacher_logits: Tensor, targets: Tensor, teacher_visible: Tensor, mask_id: int, tau: float) -> Tensor:
    """The teacher's SUBS distribution at temperature tau at the student-masked positions: a one-hot copy where
    the cleaner input shows the token, softmax(logits / tau) over the vocabulary without [mask] elsewhere."""
    probs = (teacher_logits[:, :mask_id].float() / tau).softmax(dim=-1)
    one_hot = F.one_hot(targets, mask_id).float()
    return torch.where(teacher_visible[:, None], one_hot, probs)


def logit_kl(student_logits: Tensor, p_teacher: Tensor, mask_id: int, tau: float) -> Tensor:
    """tau^2 / |M_s| * sum_i KL(p_c^tau(i) || p_s^tau(i)) over student-masked positions (§3.4)."""
    log_p_student = (student_logits[:, :mask_id].float() / tau).log_softmax(dim=-1)
    kl = (p_teacher * (p_teacher.clamp_min(1e-30).log() - log_p_student)).sum(dim=-1)
    return tau**2 * kl.mean()


def consistency_weight(cfg: ConsistencyConfig, step: int) -> float:
    """lambda, warmed up linearly from 0 over `warmup_steps` (App. F.6, D.1.2)."""
    if cfg.warmup_steps <= 0:
        return cfg.weight
    return cfg.weight * min(1.0, step / cfg.warmup_steps)
