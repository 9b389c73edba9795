"""Tokenise a corpus, split it by documents, pack each split into fixed-length blocks, and cache the result.

Every document is followed by EOS and each split is concatenated into one stream. `packing: wrap` is
MDLM's OpenWebText pipeline (`wrap=True`, `_group_texts` in kuleshov-group/mdlm's dataloader.py): the
stream is cut into pieces of `seq_len - 2` tokens and each block is [BOS] + piece + [EOS], where GPT-2's
one special token <|endoftext|> serves as both. `packing: concat` cuts the stream into blocks of
`seq_len` as they come. Either way the last partial block is dropped (MDLM drops a remainder per
`datasets.map` batch of documents; here only the stream's end). The last `val_docs` documents form the
validation split, so no document straddles the two splits. The documents are read once, in order, holding only
the last `val_docs` in memory: a streamed hub corpus (`data.streaming`) is split exactly as a downloaded one, and
training starts once the whole stream is packed (it samples blocks from all of it).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from cofre.data.cache import DamagedCache, load_ids, open_cache, read_meta
from cofre.data.corpora import corpus_identity, iter_documents
from cofre.data.tokenizer import TextTokenizer, text_tokenizer, tokenizer_identity
from cofre.errors import CofreError

if TYPE_CHECKING:
    from cofre.config import DataConfig

FORMAT_VERSION = 1  # bump when packing changes, so old caches are not reused
_BATCH_DOCS = 1024  # documents per encode_ordinary_batch call: enough to keep its threads busy
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedCorpus:
    """Packed token blocks: int32 tensors [n_blocks, seq_len], memory-mapped from the cache (`.long()` per batch)."""

    train: torch.Tensor
    val: torch.Tensor
    source: str  # human-readable identity: corpus, tokenizer, seq_len, documents, tokens, cache folder


def load_corpus(cfg: DataConfig) -> PackedCorpus:
    """The packed corpus `cfg` names, tokenised on the first call and read from the cache afterwards."""
    if cfg.seq_len < 1:
        raise CofreError(f"data.seq_len must be at least 1, got {cfg.seq_len}")
    if cfg.val_docs < 1:
        raise CofreError(f"data.val_docs must be at least 1, got {cfg.val_docs}")
    if cfg.packing == "wrap" and cfg.seq_len < 3:
        raise CofreError(f"data.packing 'wrap' needs data.seq_len >= 3 ([BOS] + tokens + [EOS]), got {cfg.seq_len}")
    root = cache_root(cfg)
    final = root / cache_key(cfg)
    return open_cache(final, lambda: _build(cfg, root, final), lambda folder: _open(folder, cfg))


def _open(final: Path, cfg: DataConfig) -> PackedCorpus:
    """The packed blocks of a cache folder, checked against its meta.json and the tokenizer's ids."""
    meta = read_meta(final, {"train_blocks": int, "val_blocks": int, "seq_len": int, "source": str})
    if meta["seq_len"] != cfg.seq_len:
        raise DamagedCache(f"meta.json says seq_len {meta['seq_len']}, not {cfg.seq_len}")
    vocab = text_tokenizer(cfg).vocab_size
    train, val = (torch.from_numpy(load_ids(final / f"{s}.npy", (meta[f"{s}_blocks"], cfg.seq_len), vocab))
                  for s in ("train", "val"))
    return PackedCorpus(train=train, val=val, source=f"{meta['source']} | cache {final}")


def cache_root(cfg: DataConfig) -> Path:
    """The cache folder: $COFRE_CACHE when set, else cfg.cache_dir."""
    return Path(os.environ.get("COFRE_CACHE") or cfg.cache_dir).expanduser()


def cache_key(cfg: DataConfig) -> str:
    """A folder name that changes whenever anything the packed arrays depend on changes."""
    identity = {
        "format": FORMAT_VERSION,
        "corpus": corpus_identity(cfg),
        "tokenizer": tokenizer_identity(cfg),
        "seq_len": cfg.seq_len,
        "packing": cfg.packing,
        "val_docs": cfg.val_docs,
        "text_field": cfg.text_field,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.corpus).name or "corpus")[:40]
    return f"{slug}-L{cfg.seq_len}-{cfg.packing}-{digest}"


def publish_cache(tmp: Path, final: Path, meta: dict) -> None:
    """Write meta.json into the finished temporary folder and rename it to `final` (atomic on one filesystem)."""
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        # Another process finished the same cache first; theirs is identical, so use it.


def _build(cfg: DataConfig, root: Path, final: Path) -> None:
    """Pack into a temporary folder beside `final`, then rename it into place: a killed run leaves no half cache."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        _log.info("tokenising corpus %r into %s", cfg.corpus, final)
        meta = _pack(cfg, tmp)
        meta["source"] = (
            f"{cfg.corpus} | {cfg.text_tokenizer} BPE | seq_len {cfg.seq_len}, {cfg.packing} packing | "
            f"{meta['train_docs']} train + {meta['val_docs']} val docs | "
            f"{meta['train_tokens']} train + {meta['val_tokens']} val tokens | "
            f"{meta['train_blocks']} + {meta['val_blocks']} blocks"
        )
        publish_cache(tmp, final, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pack(cfg: DataConfig, out: Path) -> dict[str, object]:
    """Write train.npy and val.npy into `out`, streaming so that memory holds only the validation documents."""
    held: collections.deque[np.ndarray] = collections.deque()  # the latest val_docs documents seen
    n_docs = 0
    wrap = cfg.packing == "wrap"
    tokenizer = text_tokenizer(cfg)
    with _BlockWriter(out / "train.npy", cfg.seq_len, wrap, tokenizer.eos_id) as train:
        for doc in _tokenised(iter_documents(cfg), tokenizer):
            n_docs += 1
            held.append(doc)
            if len(held) > cfg.val_docs:
                train.add(held.popleft())
        if n_docs <= cfg.val_docs:
            raise CofreError(
                f"corpus '{cfg.corpus}' has {n_docs} documents, but data.val_docs={cfg.val_docs} are held out "
                f"for validation; set data.val_docs below {n_docs}"
            )
        with _BlockWriter(out / "val.npy", cfg.seq_len, wrap, tokenizer.eos_id) as val:
            for doc in held:
                val.add(doc)
    for name, split in (("train", train), ("val", val)):
        if split.blocks == 0:
            raise CofreError(
                f"the {name} split of corpus '{cfg.corpus}' has {split.tokens} tokens, "
                f"fewer than one block of data.seq_len={cfg.seq_len}" + (" ([BOS] + seq_len-2 tokens + [EOS])" if wrap else "")
            )
    return {
        "format": FORMAT_VERSION,
        "corpus": corpus_identity(cfg),
        "seq_len": cfg.seq_len,
        "packing": cfg.packing,
        "train_docs": n_docs - len(held),
        "val_docs": len(held),
        "train_tokens": train.tokens,
        "val_tokens": val.tokens,
        "train_blocks": train.blocks,
        "val_blocks": val.blocks,
    }


def _tokenised(docs: Iterable[str], tokenizer: TextTokenizer) -> Iterator[np.ndarray]:
    """Each document's ids followed by EOS, as int32, encoded in batches."""
    it = iter(docs)
    while batch := list(islice(it, _BATCH_DOCS)):
        for ids in tokenizer.encode_batch(batch):
            yield np.array([*ids, tokenizer.eos_id], dtype=np.int32)


class _BlockWriter:
    """Streams tokens into an .npy file of int32 [n, seq_len] blocks, dropping a final partial block.

    With `wrap`, each block holds seq_len - 2 stream tokens between [BOS] and [EOS] (MDLM's wrap; one id serves both)."""

    def __init__(self, path: Path, seq_len: int, wrap: bool, eos_id: int) -> None:
        self.seq_len, self.tokens, self.blocks = seq_len, 0, 0
        self.eos_id = eos_id
        self.wrap = wrap
        self.piece = seq_len - 2 if wrap else seq_len  # stream tokens per block
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._file: BinaryIO = path.open("wb")
        self._write_header()  # placeholder shape; rewritten on close
        self._data_start = self._file.tell()

    def _write_header(self) -> None:
        header = {"descr": "<i4", "fortran_order": False, "shape": (self.blocks, self.seq_len)}
        np.lib.format.write_array_header_1_0(self._file, header)

    def add(self, tokens: np.ndarray) -> None:
        """Append tokens; every complete block is written out at once."""
        self.tokens += len(tokens)
        self._pending.append(tokens)
        self._n_pending += len(tokens)
        if self._n_pending >= self.piece:
            flat = np.concatenate(self._pending)
            n_full = len(flat) // self.piece * self.piece
            blocks = flat[:n_full].reshape(-1, self.piece)
            if self.wrap:  # [BOS] + piece + [EOS]
                ends = np.ones((len(blocks), 1), dtype=blocks.dtype)
                blocks = np.concatenate([ends * self.eos_id, blocks, ends * self.eos_id], axis=1)
            blocks.astype("<i4", copy=False).tofile(self._file)
            self.blocks += len(blocks)
            self._pending, self._n_pending = [flat[n_full:]], len(flat) - n_full

    def __enter__(self) -> _BlockWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # numpy pads the header so the shape can grow in place; the check guards that assumption.
        self._file.seek(0)
        self._write_header()
        if self._file.tell() != self._data_start:
            raise RuntimeError("npy header changed size while packing")
        self._file.close()
