"""Generative perplexity: how well a judge LM predicts generated text, as Eq. 4 or as MDLM's code computes it.

`eq4` (the paper's Eq. 4): exp of the mean over samples of each sample's mean NLL; every token is scored
given [BOS] + its window. `mdlm` (kuleshov-group/mdlm `compute_generative_perplexity`, for comparison with
papers on MDLM's codebase): token-weighted, exp(sum of NLLs / tokens scored) over all samples; each text is
scored in windows of the judge's context with no BOS (a window's first token is context only), and a
token counts unless it is an EOS other than the window's first EOS. MDLM also scores the first right-pad
(an EOS) of a text without EOS in a batch of longer texts; that depends on the batch and is not done here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cofre.errors import CofreError
from cofre.evaluation.judge import Judge, encode, right_pad

GENPPL_MODES = ("eq4", "mdlm")


@dataclass
class GenPPL:
    """Gen. PPL = exp(mean_nll); `per_sample_nll` (nats per judge token) lists the non-empty texts in order;
    `mean_nll` is their mean (eq4) or the token-weighted mean over all samples (mdlm)."""

    value: float
    mean_nll: float
    per_sample_nll: list[float]
    judge: str
    tokens_scored: int
    num_samples: int
    num_empty: int = 0
    mode: str = "eq4"  # eq4: per-sample mean (the paper); mdlm: token-weighted, MDLM's first-EOS rule


def generative_perplexity(texts: list[str], judge: Judge, batch_size: int = 8, mode: str = "eq4") -> GenPPL:
    """Eq. 4 (`mode="eq4"`): exp of the mean over samples of each sample's mean NLL under the judge, in float32;
    `mode="mdlm"`: MDLM's token-weighted version (see the module docstring and `_mdlm_windows`).

    Each text is re-tokenised by the judge and prefixed with the judge's BOS token (EOS if it has none),
    so every token of the text is scored given its prefix. A text longer than the judge's context is
    cut into consecutive, non-overlapping windows of `context - 1` tokens, each again prefixed with BOS:
    tokens are then scored given the prefix within their window only (cheap, and exact below the context).
    """
    if mode not in GENPPL_MODES:
        raise CofreError(f"--genppl-mode must be one of {', '.join(GENPPL_MODES)}, got '{mode}'")
    start = _document_start_id(judge)
    step = judge.context - 1
    if step < 1:
        raise CofreError(f"judge {judge.name!r} has a context of {judge.context} tokens: too short to score text")
    token_ids = encode(judge, texts)
    if mode == "eq4":
        windows = [(n, [start, *ids[i : i + step]], None) for n, ids in enumerate(token_ids) for i in range(0, len(ids), step)]
    else:
        windows = _mdlm_windows(token_ids, judge)
    if not windows:
        raise CofreError(f"no text to score: all {len(texts)} samples are empty")
    nll_sum = [0.0] * len(texts)
    count = [0] * len(texts)
    windows.sort(key=lambda window: len(window[1]), reverse=True)  # batches of similar lengths pad little
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        scored = None if mode == "eq4" else [flags for _, _, flags in batch]
        sums, counts = _window_nll(judge, [ids for _, ids, _ in batch], pad_id=start, scored=scored)
        for (n, _, _), nll, tokens in zip(batch, sums, counts):
            nll_sum[n] += nll
            count[n] += tokens
    per_sample = [nll_sum[n] / count[n] for n in range(len(texts)) if count[n]]
    if not per_sample:
        raise CofreError(f"no token to score in the {len(texts)} samples")
    if mode == "eq4":
        mean_nll = sum(per_sample) / len(per_sample)  # Eq. 4: the mean over samples
    else:
        mean_nll = sum(nll_sum) / sum(count)  # MDLM: the mean over all scored tokens
    return GenPPL(
        value=math.exp(mean_nll),
        mean_nll=mean_nll,
        per_sample_nll=per_sample,
        judge=judge.name,
        tokens_scored=sum(count),
        num_samples=len(per_sample),
        num_empty=len(texts) - len(per_sample),
        mode=mode,
    )


def _mdlm_windows(token_ids: list[list[int]], judge: Judge) -> list[tuple[int, list[int], list[bool]]]:
    """MDLM's windows: consecutive context-sized pieces of each text, no BOS; per target token 1.. a flag,
    true unless the token is an EOS that is not the window's first (`first_eos | token_mask` in MDLM)."""
    eos = judge.tokenizer.eos_token_id
    if eos is None:
        raise CofreError(f"judge {judge.name!r} has no EOS token, which --genppl-mode mdlm needs")
    windows = []
    for n, ids in enumerate(token_ids):
        for i in range(0, len(ids), judge.context):
            window = ids[i : i + judge.context]
            flags, seen = [], 0
            for position, token in enumerate(window):
                seen += token == eos
                if position:
                    flags.append(token != eos or seen == 1)
            windows.append((n, window, flags))
    return windows


@torch.inference_mode()
def _window_nll(judge: Judge, windows: list[list[int]], pad_id: int,
                scored: list[list[bool]] | None = None) -> tuple[list[float], list[int]]:
    """Summed NLL of tokens 1.. of each window given the tokens before them, and how many were scored;
    `scored` (per window, a flag per token 1..) limits which count, else all do."""
    ids, mask = right_pad(windows, pad_id, judge.device)
    logits = judge.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    targets = ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    counted = mask[:, 1:].bool()  # padded positions are neither inputs nor targets
    if scored is not None and targets.shape[1]:
        flags, _ = right_pad([[int(f) for f in row] or [0] for row in scored], 0, judge.device)
        counted &= flags[:, : targets.shape[1]].bool()
    sums = nll.masked_fill(~counted, 0.0).sum(dim=1, dtype=torch.float64)
    return sums.tolist(), counted.sum(dim=1).tolist()


def _document_start_id(judge: Judge) -> int:
    tokenizer = judge.tokenizer
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise CofreError(f"judge {judge.name!r} has neither a BOS nor an EOS token to start a text with")
    return int(token_id)
