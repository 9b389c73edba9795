"""Conditional text generation: a prompt or an infill template stays fixed while the sampler fills the [mask]
positions; temperature scales every draw."""

import pytest
import torch

from cofre.config import ModelConfig
from cofre.data.tokenizer import BOS_ID, GPT2_VOCAB, TextTokenizer, gpt2_tokenizer
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.sampling.budget import plan_budget
from cofre.sampling.conditioning import condition_length, start_tokens
from cofre.sampling.mdlm import MDLMSampler, SamplerConfig, draw_tokens

MASK = GPT2_VOCAB
TOKENIZER = TextTokenizer("gpt2", GPT2_VOCAB, BOS_ID, gpt2_tokenizer())


def test_a_prefix_is_bos_then_its_tokens_then_masks() -> None:
    start = start_tokens(TOKENIZER, MASK, 12, "Hello world", None, bos=True)
    ids = TOKENIZER.encode_batch(["Hello world"])[0]
    assert start.tolist() == [BOS_ID, *ids] + [MASK] * (11 - len(ids))
    assert start_tokens(TOKENIZER, MASK, 12, "Hello world", None, bos=False).tolist()[: len(ids)] == ids


def test_an_infill_template_keeps_its_text_and_masks_each_gap() -> None:
    template = "The cat [mask] on the [MASK][mask]."
    start = start_tokens(TOKENIZER, MASK, condition_length(TOKENIZER, template, False), None, template, bos=False)
    expected = [*TOKENIZER.encode_batch(["The cat"])[0], MASK, *TOKENIZER.encode_batch([" on the"])[0], MASK, MASK,
                *TOKENIZER.encode_batch(["."])[0]]  # the space before a gap is the generated token's
    assert start.tolist() == expected
    longer = start_tokens(TOKENIZER, MASK, len(expected) + 3, None, template, bos=False)
    assert longer.tolist() == expected + [MASK] * 3  # a longer --length: generated after the template


@pytest.mark.parametrize("prefix, infill, length, fragment", [
    ("a", "b [mask]", 8, "give one"),
    (None, "no gap here", 8, "at least one [mask] gap"),
    ("  ", None, 8, "--prefix is empty"),
    ("one two three four five six seven eight", None, 4, "must leave positions to generate"),
])
def test_bad_conditions_are_one_error(prefix: str | None, infill: str | None, length: int, fragment: str) -> None:
    with pytest.raises(CofreError, match=fragment.replace("[", r"\[")):
        start_tokens(TOKENIZER, MASK, length, prefix, infill, bos=False)


def sampler(temperature: float = 1.0) -> MDLMSampler:
    cfg = ModelConfig(vocab_size=GPT2_VOCAB + 1, hidden=16, heads=2, cond_dim=8, dropout=0.0, max_seq_len=16, K_pre=1,
                      K_fp=1, K_post=1)
    torch.manual_seed(0)
    model = Denoiser(cfg)
    return MDLMSampler(model, plan_budget(cfg, 24, None, "decreasing"), SamplerConfig(length=16, temperature=temperature))


def test_the_sampler_keeps_the_given_tokens_and_fills_every_mask() -> None:
    start = start_tokens(TOKENIZER, MASK, 16, None, "A [mask] B [mask][mask] C", bos=True)
    fixed = start != MASK
    batch = sampler().sample(3, torch.Generator().manual_seed(1), start)
    assert (batch.tokens[:, fixed] == start[fixed]).all()
    assert not (batch.tokens == MASK).any()
    unconditional = sampler().sample(3, torch.Generator().manual_seed(1))
    assert not (unconditional.tokens[:, fixed] == start[fixed]).all()


def test_temperature_scales_the_draws() -> None:
    logits = torch.randn(200, 11)
    generator = torch.Generator().manual_seed(0)
    cold = draw_tokens(logits, 10, 1.0, False, generator, temperature=1e-4)
    assert torch.equal(cold, logits[:, :10].argmax(dim=-1))  # near zero: the most likely token
    same = draw_tokens(logits, 10, 1.0, False, torch.Generator().manual_seed(3), temperature=1.0)
    assert torch.equal(same, draw_tokens(logits, 10, 1.0, False, torch.Generator().manual_seed(3)))  # 1: unchanged
