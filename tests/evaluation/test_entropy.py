"""Unigram entropy (Eq. 5) on hand-worked samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cofre.errors import CofreError
from cofre.evaluation.entropy import unigram_entropy


def test_hand_computed_value() -> None:
    # [1, 1, 2, 3]: probabilities 1/2, 1/4, 1/4.
    assert unigram_entropy([[1, 1, 2, 3]]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_averages_per_sample_entropies() -> None:
    # Per sample, not pooled: pooling [5, 5] and [6, 6] would give ln 2, each sample alone gives 0.
    assert unigram_entropy([[5, 5], [6, 6]]) == 0.0
    assert unigram_entropy([[0, 1, 2, 3], [7, 7]]) == pytest.approx(math.log(4) / 2)


def test_accepts_arrays_and_tensors_and_skips_empty_samples() -> None:
    expected = math.log(3)
    assert unigram_entropy([np.array([4, 8, 9]), torch.tensor([1, 2, 3]), []]) == pytest.approx(expected)


def test_no_tokens_is_an_error() -> None:
    with pytest.raises(CofreError):
        unigram_entropy([[], []])
