"""Three-state reuse: gamma per token for each transition type, and the three policies."""

import pytest
import torch

from cofre.sampling.reuse import (
    NEWLY_REVEALED,
    STILL_MASKED,
    UNCHANGED_VISIBLE,
    ReuseConfig,
    three_state_gamma,
    transition_types,
    warm_start,
)

M = 9  # [mask]


def test_transition_types() -> None:
    z_prev = torch.tensor([[1, M, M, 4]])
    z = torch.tensor([[1, M, 3, 4]])
    assert transition_types(z, z_prev, M).tolist() == [[UNCHANGED_VISIBLE, STILL_MASKED, NEWLY_REVEALED, UNCHANGED_VISIBLE]]


@pytest.mark.parametrize("visible, expected_mask_gamma", [(0, 0.75), (2, 0.75 + 0.15 * 0.5), (3, 0.75 + 0.15 * 0.75)])
def test_gamma_per_type_with_visible_fraction(visible: int, expected_mask_gamma: float) -> None:
    # four tokens; `visible` of them are visible now. Position 0 stays masked whenever visible < 4.
    z = torch.tensor([[M] * (4 - visible) + [1] * visible])
    z_prev = torch.tensor([[M] * (4 - visible) + [M] + [1] * (visible - 1)]) if visible else z.clone()
    gamma = three_state_gamma(z, z_prev, M, ReuseConfig())
    assert gamma[0, 0].item() == pytest.approx(expected_mask_gamma)  # still masked: 0.75 + (0.90-0.75) v_t
    if visible:
        assert gamma[0, 4 - visible].item() == pytest.approx(0.2)  # newly revealed
    if visible > 1:
        assert gamma[0, -1].item() == 1.0  # unchanged visible


def test_gamma_is_per_sample() -> None:
    z = torch.tensor([[M, M, M, M], [M, 1, 1, 1]])
    gamma = three_state_gamma(z, z.clone(), M, ReuseConfig(gamma_mask_min=0.5, gamma_mask_max=1.0))
    assert gamma[0, 0].item() == pytest.approx(0.5) and gamma[1, 0].item() == pytest.approx(0.5 + 0.5 * 0.75)


def test_policies() -> None:
    h_pre, h_prev = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    z_prev = torch.tensor([[1, M, M]])
    z = torch.tensor([[1, M, 5]])
    assert torch.equal(warm_start(h_pre, h_prev, z, z_prev, M, ReuseConfig("none")), h_pre)
    assert torch.equal(warm_start(h_pre, h_prev, z, z_prev, M, ReuseConfig("full")), h_prev)
    mixed = warm_start(h_pre, h_prev, z, z_prev, M, ReuseConfig("3sr"))
    v = 2 / 3
    assert mixed[0, :, 0].tolist() == pytest.approx([1.0, 0.75 + 0.15 * v, 0.2])
    assert torch.equal(warm_start(h_pre, None, z, None, M, ReuseConfig("3sr")), h_pre)  # first step


def test_gamma_changed_range_is_interpolated_with_the_visible_fraction() -> None:
    """Tables 4-5: gamma_changed from min (nothing visible) to max (all visible), like gamma_mask."""
    z_prev = torch.tensor([[M, M, M, M], [M, M, M, M]])
    z = torch.tensor([[5, M, M, M], [5, 6, 7, M]])  # v_t = 1/4 and 3/4; position 0 newly revealed in both
    cfg = ReuseConfig(gamma_changed_min=0.0, gamma_changed_max=0.4)
    gamma = three_state_gamma(z, z_prev, M, cfg)
    assert gamma[:, 0].tolist() == pytest.approx([0.4 * 0.25, 0.4 * 0.75])
    assert gamma[:, 3].tolist() == pytest.approx([0.75 + 0.15 * 0.25, 0.75 + 0.15 * 0.75])  # still masked: unchanged rule
    default = three_state_gamma(z, z_prev, M, ReuseConfig())
    assert default[:, 0].tolist() == pytest.approx([0.2, 0.2])  # the default 0.2 / 0.2 is the paper's constant
