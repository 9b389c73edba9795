"""The non-finite guard: finite steps pass, a bounded number of bad ones is skipped, then the run stops."""

from types import SimpleNamespace

import pytest
import torch

from cofre.errors import CofreError
from cofre.training.guard import NonFiniteGuard

SINGLE = SimpleNamespace(device=torch.device("cpu"), reduce=lambda tensor, reduction: tensor)  # one process


def values(loss: float, grad: float) -> dict[str, torch.Tensor]:
    return {"loss": torch.tensor(loss), "gradient": torch.tensor(grad)}


def test_finite_steps_pass() -> None:
    assert NonFiniteGuard(0).step_is_finite(SINGLE, 1, values(2.5, 0.3), lambda: None)


def test_first_bad_step_stops_the_run_naming_step_values_and_checkpoint() -> None:
    with pytest.raises(CofreError, match=r"non-finite gradient at step 7: .*last good checkpoint runs/x/step-5 is kept"):
        NonFiniteGuard(0).step_is_finite(SINGLE, 7, values(2.5, float("inf")), lambda: "runs/x/step-5")
    with pytest.raises(CofreError, match=r"non-finite loss and gradient at step 1: .*no checkpoint was written yet"):
        NonFiniteGuard(0).step_is_finite(SINGLE, 1, values(float("nan"), float("nan")), lambda: None)


def test_skips_up_to_the_allowance_then_stops() -> None:
    guard = NonFiniteGuard(2)
    assert not guard.step_is_finite(SINGLE, 3, values(float("nan"), 1.0), lambda: None)
    assert guard.step_is_finite(SINGLE, 4, values(1.0, 1.0), lambda: None)
    assert not guard.step_is_finite(SINGLE, 5, values(float("-inf"), 1.0), lambda: None)
    assert guard.skipped == 2
    with pytest.raises(CofreError, match=r"non-finite loss at step 6 after skipping 2 such step\(s\)"):
        guard.step_is_finite(SINGLE, 6, values(float("nan"), 1.0), lambda: None)
