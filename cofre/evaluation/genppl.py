"""Generative perplexity (Eq. 4): how well a judge LM predicts generated text."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cofre.errors import CofreError
from cofre.evaluation.judge import Judge, encode, right_pad


@dataclass
class GenPPL:
    """Gen. PPL = exp(mean_nll); `per_sample_nll` (nats per judge token) lists the non-empty texts in order."""

    value: float
    mean_nll: float
    per_sample_nll: list[float]
    judge: str
    tokens_scored: int
    num_samples: int
    num_empty: int = 0


def generative_perplexity(texts: list[str], judge: Judge, batch_size: int = 8) -> GenPPL:
    """Eq. 4: exp of the mean over samples of each sample's mean NLL under the judge, in float32.

    Each text is re-tokenised by the judge and prefixed with the judge's BOS token (EOS if it has none),
    so every token of the text is scored given its prefix. A text longer than the judge's context is
    cut into consecutive, non-overlapping windows of `context - 1` tokens, each again prefixed with BOS:
    tokens are then scored given the prefix within their window only (cheap, and exact below the context).
    """
    start = _document_start_id(judge)
    step = judge.context - 1
    if step < 1:
        raise CofreError(f"judge {judge.name!r} has a context of {judge.context} tokens: too short to score text")
    token_ids = encode(judge, texts)
    windows = [(n, [start, *ids[i : i + step]]) for n, ids in enumerate(token_ids) for i in range(0, len(ids), step)]
    if not windows:
        raise CofreError(f"no text to score: all {len(texts)} samples are empty")
    nll_sum = [0.0] * len(texts)
    count = [0] * len(texts)
    windows.sort(key=lambda window: len(window[1]), reverse=True)  # batches of similar lengths pad little
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        sums, counts = _window_nll(judge, [ids for _, ids in batch], pad_id=start)
        for (n, _), nll, tokens in zip(batch, sums, counts):
            nll_sum[n] += nll
            count[n] += tokens
    per_sample = [nll_sum[n] / count[n] for n in range(len(texts)) if count[n]]
    mean_nll = sum(per_sample) / len(per_sample)
    return GenPPL(
        value=math.exp(mean_nll),
        mean_nll=mean_nll,
        per_sample_nll=per_sample,
        judge=judge.name,
        tokens_scored=sum(count),
        num_samples=len(per_sample),
        num_empty=len(texts) - len(per_sample),
    )


@torch.inference_mode()
def _window_nll(judge: Judge, windows: list[list[int]], pad_id: int) -> tuple[list[float], list[int]]:
    """Summed NLL of tokens 1.. of each window given the tokens before them, and how many were scored."""
    ids, mask = right_pad(windows, pad_id, judge.device)
    logits = judge.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    targets = ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    scored = mask[:, 1:].bool()  # padded positions are neither inputs nor targets
    sums = nll.masked_fill(~scored, 0.0).sum(dim=1, dtype=torch.float64)
    return sums.tolist(), scored.sum(dim=1).tolist()


def _document_start_id(judge: Judge) -> int:
    tokenizer = judge.tokenizer
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise CofreError(f"judge {judge.name!r} has neither a BOS nor an EOS token to start a text with")
    return int(token_id)
