"""Unigram entropy (Eq. 5): the token diversity within each generated sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cofre.errors import CofreError


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Eq. 5: entropy in nats of each sample's token-count distribution, averaged over samples.

    Samples may be lists, numpy arrays or CPU tensors of token ids; empty samples are skipped.
    """
    entropies = []
    for sample in samples:
        ids = np.asarray(sample).reshape(-1)
        if ids.size == 0:
            continue
        _, counts = np.unique(ids, return_counts=True)
        p = counts / ids.size
        entropies.append(float(-(p * np.log(p)).sum()))
    if not entropies:
        raise CofreError("unigram entropy needs at least one non-empty sample")
    return float(np.mean(entropies))
