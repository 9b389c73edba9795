"""The non-finite guard: a NaN or infinite loss or gradient never reaches the weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import Tensor

from cofre.errors import CofreError


class NonFiniteGuard:
    """Stops the run at a step whose loss or gradient norm is not finite, before the optimiser applies it; with
    `trainer.skip_nonfinite` > 0 such steps are instead skipped (no update) until that many have been skipped."""

    def __init__(self, allowed: int, skipped: int = 0) -> None:
        self.allowed = allowed
        self.skipped = skipped  # over the whole run, resumes included

    def step_is_finite(self, accelerator: Accelerator, step: int, values: dict[str, Tensor],
                       last_checkpoint: Callable[[], str | None]) -> bool:
        """True when every value is finite on every process; False when the step is to be skipped; raises when
        the run must stop. `step` is the 1-based number of the step being taken."""
        bad = torch.stack([(~torch.isfinite(v.detach().float())).any() for v in values.values()]).float()
        bad = accelerator.reduce(bad.to(accelerator.device), reduction="sum")  # every process takes the same branch
        if not bool(bad.any()):
            return True
        names = " and ".join(name for name, flag in zip(values, bad.tolist()) if flag)
        if self.skipped < self.allowed:
            self.skipped += 1
            return False
        folder = last_checkpoint()
        kept = f"the last good checkpoint {folder} is kept" if folder else "no checkpoint was written yet"
        skipped = f" after skipping {self.skipped} such step(s)" if self.allowed else ""
        raise CofreError(f"non-finite {names} at step {step}{skipped}: the run stopped before updating the weights; "
                         f"{kept} (lower optim.lr, or set trainer.skip_nonfinite to skip a few such steps)")
