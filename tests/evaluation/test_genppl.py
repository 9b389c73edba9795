"""Gen. PPL (Eq. 4) against transformers' own loss, windowing past the context, and a real judge on English."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cofre.data.tokenizer import gpt2_tokenizer
from cofre.errors import CofreError
from cofre.evaluation.genppl import generative_perplexity
from cofre.evaluation.judge import Judge, load_judge

TEXTS = [
    "The river runs past the old mill.",
    "A fixed point of the solver is reached after a few steps, and the hidden state stops changing.",
    "Hi",
    "Masked diffusion models unmask tokens in parallel; each step fills in some of the blanks. " * 8,  # > context
    "Numbers like 3.14159 and 2.71828 appear in many formulas.",
]


def reference_nll(directory: Path, text: str, context: int) -> tuple[float, int]:
    """Mean NLL of the text's tokens from transformers' `labels=` loss on [BOS] + each window of context-1 tokens."""
    tokenizer, model = _reference_model(directory)
    ids = tokenizer(text)["input_ids"]
    total = 0.0
    for start in range(0, len(ids), context - 1):
        chunk = ids[start : start + context - 1]
        window = torch.tensor([[tokenizer.bos_token_id, *chunk]])
        with torch.no_grad():
            total += model(window, labels=window).loss.item() * len(chunk)  # loss: mean over the chunk's tokens
    return total / len(ids), len(ids)


@functools.cache
def _reference_model(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    return AutoTokenizer.from_pretrained(directory), GPT2LMHeadModel.from_pretrained(directory).eval()


def test_matches_transformers_loss(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    assert judge.tokenizer(TEXTS[3])["input_ids"] == gpt2_tokenizer().encode(TEXTS[3])  # the real GPT-2 BPE
    references = [reference_nll(tiny_gpt2_dir, text, judge.context) for text in TEXTS]
    assert max(n for _, n in references) > 2 * judge.context  # the long text needs three windows
    expected = math.exp(sum(nll for nll, _ in references) / len(references))

    result = generative_perplexity(TEXTS, judge, batch_size=2)  # batches mix lengths: padding matters

    assert result.value == pytest.approx(expected, rel=1e-4)
    assert result.per_sample_nll == pytest.approx([nll for nll, _ in references], rel=1e-4)
    assert result.tokens_scored == sum(n for _, n in references)
    assert (result.num_samples, result.num_empty, result.judge) == (len(TEXTS), 0, judge.name)
    assert result.mean_nll == pytest.approx(math.log(result.value))


def test_batch_size_does_not_change_scores(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    one = generative_perplexity(TEXTS, judge, batch_size=1)
    many = generative_perplexity(TEXTS, judge, batch_size=16)
    assert many.per_sample_nll == pytest.approx(one.per_sample_nll, rel=1e-5)


def test_empty_texts_are_skipped_and_counted(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    result = generative_perplexity(["", TEXTS[0], ""], judge)
    alone = generative_perplexity([TEXTS[0]], judge)
    assert (result.num_samples, result.num_empty) == (1, 2)
    assert result.value == pytest.approx(alone.value)
    with pytest.raises(CofreError, match="empty"):
        generative_perplexity(["", ""], judge)


@pytest.mark.slow
def test_real_judge_prefers_english(smollm2: Judge, wiki_passages: list[str], shuffled_passages: list[str]) -> None:
    english = generative_perplexity(wiki_passages[:4], smollm2)
    shuffled = generative_perplexity(shuffled_passages[:4], smollm2)
    assert english.judge == "smollm2-135m"
    assert english.value < 100 < shuffled.value  # measured: about 27 vs 980
    assert shuffled.value > 5 * english.value


def test_mdlm_mode_is_token_weighted_with_mdlms_first_eos_rule(tiny_gpt2_dir: Path) -> None:
    """--genppl-mode mdlm: exp(sum NLL / tokens) over all samples, windows of the context without BOS, and
    every EOS but the window's first left out (MDLM's compute_generative_perplexity)."""
    eot = "<|endoftext|>"
    texts = [f"{eot}The river runs{eot} past the mill.{eot}", "Hi there, river.", f"A {eot}b", TEXTS[3]]
    judge = load_judge(str(tiny_gpt2_dir))
    tokenizer, model = _reference_model(tiny_gpt2_dir)
    eos = tokenizer.eos_token_id
    total, tokens, per_sample = 0.0, 0, []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        sample_nll, sample_tokens = 0.0, 0
        for start in range(0, len(ids), judge.context):
            window = torch.tensor([ids[start : start + judge.context]])
            with torch.no_grad():
                nll = torch.nn.functional.cross_entropy(model(window).logits[0, :-1], window[0, 1:], reduction="none")
            first_eos = (window[0] == eos).cumsum(0) == 1
            keep = ((window[0] != eos) | first_eos)[1:]
            sample_nll += nll[keep].sum().item()
            sample_tokens += int(keep.sum())
        total, tokens = total + sample_nll, tokens + sample_tokens
        per_sample.append(sample_nll / sample_tokens)
    assert tokenizer(texts[0])["input_ids"].count(eos) == 3  # the EOS text is the judge's EOS token

    result = generative_perplexity(texts, judge, batch_size=3, mode="mdlm")

    assert result.mode == "mdlm" and result.tokens_scored == tokens
    assert result.value == pytest.approx(math.exp(total / tokens), rel=1e-4)
    assert result.per_sample_nll == pytest.approx(per_sample, rel=1e-4)
    eq4 = generative_perplexity(texts, judge, batch_size=3)
    assert eq4.mode == "eq4" and eq4.value != pytest.approx(result.value, rel=1e-3)  # the two differ
    with pytest.raises(CofreError, match="genppl-mode"):
        generative_perplexity(texts, judge, mode="token")
