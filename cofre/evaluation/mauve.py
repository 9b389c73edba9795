"""MAUVE (App. F.1.5): the gap between generated and reference text, on features from the judge LM."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cofre.errors import CofreError
from cofre.evaluation.judge import Judge, encode, right_pad

# mauve-text's defaults, passed explicitly so that `Mauve.settings` records what was run.
_MAUVE_SETTINGS = {
    "pca_max_data": -1,
    "kmeans_explained_var": 0.9,
    "kmeans_num_redo": 5,
    "kmeans_max_iter": 500,
    "divergence_curve_discretization_size": 25,
    "mauve_scaling_factor": 5,
}


@dataclass
class Mauve:
    """MAUVE in [0, 1] (higher: texts closer to references), with the judge and the settings that produced it."""

    value: float
    judge: str
    num_p: int
    num_q: int
    settings: dict[str, Any]


def mauve_score(
    texts: list[str], references: list[str], judge: Judge, max_len: int = 1024, seed: int = 25, batch_size: int = 8
) -> Mauve:
    """MAUVE of `texts` (P) against `references` (Q), on the judge's features of each text (see `features`)."""
    max_len = min(max_len, judge.context)
    p_features = features(texts, judge, max_len, batch_size)
    q_features = features(references, judge, max_len, batch_size)
    result = mauve_from_features(p_features, q_features, judge.name, seed)
    result.settings["max_len"] = max_len
    return result


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, judge_name: str, seed: int = 25) -> Mauve:
    """MAUVE from precomputed features (so reference features can be reused across a sweep), via `mauve-text`.

    The number of k-means buckets is mauve's 'auto' rule, max(2, round(min(n_p, n_q) / 10)): 500 for the
    paper's 5,000 vs 5,000 texts, a handful for small sets, where the score varies noticeably with `seed`.
    """
    import mauve  # imports faiss and scikit-learn: loaded only when MAUVE is asked for

    for name, feats in (("generated", p_features), ("reference", q_features)):
        if len(feats) < 2:
            raise CofreError(f"MAUVE needs at least 2 non-empty {name} texts, got {len(feats)}")
    num_buckets = max(2, round(min(len(p_features), len(q_features)) / 10))
    with _native_stderr_silenced():  # faiss warns on stderr, from C++, whenever buckets hold < 39 points
        out = mauve.compute_mauve(
            p_features=p_features,
            q_features=q_features,
            num_buckets=num_buckets,
            seed=seed,
            verbose=False,
            **_MAUVE_SETTINGS,
        )
    settings = {"features": "last hidden state, last token", "num_buckets": num_buckets, "seed": seed}
    return Mauve(
        value=frontier_area(out.divergence_curve),
        judge=judge_name,
        num_p=len(p_features),
        num_q=len(q_features),
        settings={**settings, **_MAUVE_SETTINGS},
    )


def frontier_area(curve: np.ndarray) -> float:
    """MAUVE from mauve-text's divergence curve, by its formula, with ties ordered along the frontier.

    mauve-text sorts the curve's points with a plain argsort; when points tie (identical histograms,
    as with small sets or tiny buckets) it can join them out of order and score P = Q as 0.5 or 0.75.
    Without ties this equals mauve-text's own value.
    """
    from sklearn.metrics import auc

    x, y = curve.T
    by_x = np.lexsort((-y, x))  # along the frontier, y falls as x rises
    by_y = np.lexsort((-x, y))
    return float(0.5 * (auc(x[by_x], y[by_x]) + auc(y[by_y], x[by_y])))


@torch.inference_mode()
def features(texts: list[str], judge: Judge, max_len: int = 1024, batch_size: int = 8) -> np.ndarray:
    """One row per non-empty text: the judge's final hidden state (after its last norm) at the text's last token.

    As in MAUVE's reference implementation: each text is truncated to its first `max_len` judge tokens
    (and to the judge's context), and no BOS is added. Empty texts are dropped.
    """
    max_len = min(max_len, judge.context)
    token_ids = [ids[:max_len] for ids in encode(judge, texts) if ids]
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))  # similar lengths pad little
    body = judge.model.base_model  # the transformer without its LM head: no vocabulary-sized logits
    rows = torch.zeros((len(token_ids), judge.model.config.hidden_size), dtype=torch.float32)
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        ids, mask = right_pad([token_ids[i] for i in batch], pad_id=0, device=judge.device)
        hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = mask.sum(dim=1) - 1
        rows[batch] = hidden[torch.arange(len(batch), device=hidden.device), last].float().cpu()
    return rows.numpy()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration: native libraries write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
