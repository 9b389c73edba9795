"""The SDTT stage's teacher (`cofre distill`): rounds, the teacher's weights, and the loss of one micro-batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cofre.config import DistillConfig, Recipe
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.precision import autocast
from cofre.tasks.mdlm import MDLMBatch, MDLMTask
from cofre.tasks.sdtt import divergence, teacher_targets


class SelfDistillation:
    """A frozen copy of the student that produces SDTT targets. Round r covers steps [r R, (r + 1) R), runs the
    teacher with dt = k^r / start_steps, and starts with the teacher taking the student's raw weights (the
    optimiser, its moments and the schedule go on unchanged)."""

    def __init__(self, recipe: Recipe, student: Denoiser) -> None:
        self.cfg: DistillConfig = recipe.distill
        self.task = MDLMTask(recipe.task, recipe.model.mask_id)
        self.mask_id = recipe.model.mask_id
        device = next(student.parameters()).device  # the teacher follows the prepared student onto its device
        with torch.random.fork_rng(devices=[]):  # building the teacher must not move the restored RNG (exact resume)
            self.teacher = Denoiser(student.cfg, student.eval_iters).to(device)
        if recipe.trainer.compile:
            self.teacher.compile_blocks()
        self.teacher.eval().requires_grad_(False)
        self.round = 0
        self._copy(student)  # round 0: the parent's weights, which the student starts from

    def _copy(self, student: Denoiser) -> None:
        self.teacher.load_state_dict(student.state_dict())  # copies the values; the teacher stays frozen

    def round_of(self, step: int) -> int:
        return step // self.cfg.round_steps

    @property
    def dt(self) -> float:
        return self.cfg.dt(self.round)

    def begin_step(self, step: int, student: Denoiser) -> None:
        """Before optimiser step `step` (0-based): at a round boundary the teacher takes the student's raw weights."""
        current = self.round_of(step)
        if current != self.round:
            self._copy(student)
            self.round = current

    def _teacher_logits(self, z: Tensor, t: Tensor, positions: tuple[Tensor, Tensor]) -> Tensor:
        # fp32 network, float64 draws (inside fill_revealed), as the sampler; an FP teacher solves teacher_iters times
        with autocast(z.device, "fp32"):
            return self.teacher(z, self.task.schedule.sigma(t), n_nograd=self.cfg.teacher_iters, positions=positions).logits

    def __call__(self, student_logits: Tensor, batch: MDLMBatch, generator: torch.Generator) -> Tensor:
        """The divergence between the student's predictions (at `batch.masked`, in order) and the teacher's targets."""
        targets = teacher_targets(self._teacher_logits, batch.z, batch.t, self.dt, self.cfg.k, self.mask_id, generator,
                                  self.cfg.teacher_grid)
        if targets.log_probs.shape[0] == 0:
            return student_logits.sum() * 0
        return divergence(student_logits, targets.log_probs, self.cfg.loss, self.mask_id)

    # -- checkpoints: the teacher of a resumed run is the one it had, not a fresh copy -------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "weights": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}}

    def load_state_dict(self, state: Any, where: str) -> None:
        try:
            weights, round_index = state["weights"], int(state["round"])
            self.teacher.load_state_dict(weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CofreError(f"{where}: not this run's SDTT teacher ({' '.join(str(err).split())[:200]})") from None
        self.round = round_index
