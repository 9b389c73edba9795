"""MAUVE: features as MAUVE's reference implementation takes them, and a real judge telling English from word salad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cofre.errors import CofreError
from cofre.evaluation.judge import Judge, load_judge
from cofre.evaluation.mauve import features, frontier_area, mauve_from_features, mauve_score

TEXTS = [
    "The river runs past the old mill.",
    "A fixed point of the solver is reached after a few steps.",
    "Hi",
    "Numbers like 3.14159 and 2.71828 appear in many formulas, and in many more places besides.",
    "",
]


def test_features_are_the_last_hidden_state_at_the_last_token(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    batched = features(TEXTS, judge, max_len=12, batch_size=3)  # padded, reordered batches
    assert batched.shape == (4, 32)  # the empty text is dropped
    for row, text in zip(batched, TEXTS[:4]):
        ids = torch.tensor([judge.tokenizer(text)["input_ids"][:12]])
        with torch.no_grad():
            hidden = judge.model(ids, output_hidden_states=True).hidden_states[-1]  # after the final layer norm
        np.testing.assert_allclose(row, hidden[0, -1].numpy(), rtol=1e-4, atol=1e-5)


def test_score_wires_features_into_mauve(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    result = mauve_score(TEXTS * 5, TEXTS[::-1] * 5, judge, max_len=2000, seed=3)
    expected = mauve_from_features(features(TEXTS * 5, judge), features(TEXTS[::-1] * 5, judge), judge.name, seed=3)
    assert result.value == pytest.approx(expected.value)
    assert result.value == pytest.approx(1.0)  # the same multiset of texts
    assert (result.num_p, result.num_q) == (20, 20)
    assert result.settings["max_len"] == 64  # capped at the judge's context
    assert result.settings["num_buckets"] == 2 and result.settings["seed"] == 3


def test_frontier_area_matches_mauve_text_and_fixes_its_ties() -> None:
    import mauve

    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(40, 8)), rng.normal(0.5, 1.0, size=(40, 8))
    out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=4, verbose=False)
    assert frontier_area(out.divergence_curve) == pytest.approx(out.mauve, abs=1e-12)
    # P = Q exactly: every mixture point is (1, 1) between the extremes (1, 0) and (0, 1). mauve-text's
    # argsort may join (0, 1) to (1, 0) first and report 0.75; the frontier encloses the whole unit square.
    identical = np.array([[1.0, 0.0], *[[1.0, 1.0]] * 25, [0.0, 1.0]])
    assert frontier_area(identical) == 1.0


def test_too_few_texts_is_an_error(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    with pytest.raises(CofreError, match="at least 2"):
        mauve_score(["", "one text"], TEXTS, judge)


SEEDS = range(5)  # k-means seeds: with 60 vs 60 texts (6 buckets) single scores vary, so tests take several


@pytest.fixture(scope="module")
def reference_features(smollm2: Judge, wiki_passages: list[str]) -> np.ndarray:
    return features(wiki_passages, smollm2)


@pytest.mark.slow
def test_real_english_scores_high(smollm2: Judge, reference_features: np.ndarray) -> None:
    itself = [mauve_from_features(reference_features, reference_features, smollm2.name, seed).value for seed in SEEDS]
    held_out = [
        mauve_from_features(reference_features[:30], reference_features[30:], smollm2.name, seed).value
        for seed in SEEDS
    ]
    print(f"MAUVE(references, references): {np.round(itself, 3)}; first vs second half: {np.round(held_out, 3)}")
    assert min(itself) > 0.9
    assert np.mean(held_out) > 0.8  # other passages of the same corpus: measured 0.91-1.0


@pytest.mark.slow
def test_shuffled_words_score_far_lower(
    smollm2: Judge, reference_features: np.ndarray, shuffled_passages: list[str]
) -> None:
    shuffled = features(shuffled_passages, smollm2)
    result = mauve_from_features(shuffled, reference_features, smollm2.name)
    assert (result.num_p, result.num_q, result.settings["num_buckets"]) == (60, 60, 6)
    scores = [mauve_from_features(shuffled, reference_features, smollm2.name, seed).value for seed in SEEDS]
    print(f"MAUVE(shuffled references, references): {np.round(scores, 3)}")
    assert max(scores) < 0.2  # measured about 0.01 for every seed
