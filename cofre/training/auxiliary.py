"""The auxiliary cross-step loss of post-training stages: its teacher, and its value on one micro-batch."""

from __future__ import annotations

import torch
from torch import Tensor

from cofre.config import ConsistencyConfig, Recipe
from cofre.errors import CofreError
from cofre.models import Denoiser, DenoiserOutput
from cofre.tasks.consistency import CorrelatedPair, hidden_cosine, hidden_mse, logit_kl, teacher_probs
from cofre.training.checkpoint import load_model
from cofre.training.ema import EMA

class AuxiliaryLoss:
    """L_aux between the student (the model in training) and a teacher on a strictly cleaner input:
    the model itself under stop-gradient, its EMA, or a frozen checkpoint (the source MDLM of §3.4)."""

    def __init__(self, recipe: Recipe, model: Denoiser, ema: EMA | None) -> None:
        self.cfg: ConsistencyConfig = recipe.consistency
        self.mask_id = recipe.model.mask_id
        self.frozen: Denoiser | None = None
        device = next(model.parameters()).device  # the teacher follows the prepared student onto its device
        with torch.random.fork_rng(devices=[]):  # building a teacher must not move the restored RNG (exact resume)
            self._build_teacher(recipe, model, ema, device)

    def _build_teacher(self, recipe: Recipe, model: Denoiser, ema: EMA | None, device: torch.device) -> None:
        if self.cfg.teacher == "checkpoint":
            if not self.cfg.teacher_checkpoint:
                raise CofreError("consistency.teacher is 'checkpoint' but consistency.teacher_checkpoint is empty")
            self.frozen, teacher_recipe = load_model(self.cfg.teacher_checkpoint, ema=True)
            if teacher_recipe.model.vocab_size != recipe.model.vocab_size:
                raise CofreError("the teacher checkpoint has another vocabulary than the student")
        elif self.cfg.teacher == "ema":
            if ema is None:
                raise CofreError("consistency.teacher 'ema' needs trainer.ema > 0")
            self.frozen = Denoiser(model.cfg, model.eval_iters).to(device)  # a plain copy (not of a compiled model) with the EMA weights
            self.frozen.load_state_dict(ema.state_dict(model))
        if self.frozen is not None:
            self.frozen.to(device).eval().requires_grad_(False)
        if self.cfg.loss.startswith("hidden") and self.frozen is not None and self.frozen.cfg.hidden != recipe.model.hidden:
            raise CofreError(f"consistency.loss {self.cfg.loss} compares hidden states, but the teacher is "
                             f"{self.frozen.cfg.hidden} wide and the student {recipe.model.hidden}; use logit_kl")

    def refresh(self, ema: EMA | None) -> None:
        """After an optimiser step: an EMA teacher takes the new EMA weights."""
        if self.cfg.teacher == "ema" and ema is not None and self.frozen is not None:
            with torch.no_grad():
                for name, param in self.frozen.named_parameters():
                    param.copy_(ema.shadow[name])

    @torch.no_grad()
    def _teacher(self, model: Denoiser, pair: CorrelatedPair, positions: tuple[Tensor, Tensor], n_iters: int) -> DenoiserOutput:
        teacher = self.frozen if self.frozen is not None else model
        was_training = teacher.training
        teacher.eval()
        wanted = positions if self.cfg.loss == "logit_kl" else tuple(p[:0] for p in positions)
        # a fixed-point teacher solves as long as the student did; a plain one ignores the count
        out = teacher(pair.cleaner.z, pair.cleaner.signal, n_nograd=n_iters, positions=wanted)
        teacher.train(was_training)
        return out

    def __call__(self, model: Denoiser, student: DenoiserOutput, pair: CorrelatedPair,
                 positions: tuple[Tensor, Tensor], n_iters: int) -> Tensor:
        """The unweighted auxiliary loss of one micro-batch (the caller applies lambda)."""
        masked = pair.student.masked
        if not masked.any():
            return student.hidden.sum() * 0
        teacher = self._teacher(model, pair, positions, n_iters)
        if self.cfg.loss == "hidden_mse":
            return hidden_mse(student.hidden, teacher.hidden, masked)
        if self.cfg.loss == "hidden_cosine":
            return hidden_cosine(student.hidden, teacher.hidden, masked)
        visible_in_teacher = ~pair.cleaner.masked[positions]
        p_teacher = teacher_probs(teacher.logits, pair.student.x[positions], visible_in_teacher, self.mask_id,
                                  self.cfg.temperature)
        return logit_kl(student.logits, p_teacher, self.mask_id, self.cfg.temperature)
