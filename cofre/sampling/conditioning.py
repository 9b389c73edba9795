"""Conditional text generation: the tokens a sample starts from. MDLM's sampler only ever reveals [mask] positions,
so tokens given at the start stay fixed and condition every step: a prompt (`prefix`, the rest generated after it)
or a template whose `[mask]` gaps are filled (`infill`, MDLM's native strength: fixed tokens anywhere)."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from cofre.data.tokenizer import TextTokenizer
from cofre.errors import CofreError

GAP = re.compile(r"\[mask\]", re.IGNORECASE)  # one generated token in an infill template


def check_condition(prefix: str | None, infill: str | None) -> None:
    """The two forms exclude each other; a template has at least one gap; neither is empty."""
    if prefix is not None and infill is not None:
        raise CofreError("--prefix and --infill: give one (a prefix is an infill template ending in gaps)")
    if prefix is not None and not prefix.strip():
        raise CofreError("--prefix is empty; leave it out to sample unconditionally")
    if infill is not None and not GAP.search(infill):
        raise CofreError("--infill needs at least one [mask] gap (each [mask] is one generated token)")


def condition_length(tokenizer: TextTokenizer, infill: str | None, bos: bool) -> int | None:
    """An infill template's own length in tokens (the default sample length for it); None otherwise."""
    return None if infill is None else len(_template(tokenizer, infill, -1, bos))


def start_tokens(tokenizer: TextTokenizer, mask_id: int, length: int, prefix: str | None, infill: str | None,
                 bos: bool) -> Tensor | None:
    """[length] ids: the prompt then [mask] to the end, or the template's tokens and gaps then [mask] to the end;
    with `bos` (runs trained on wrapped blocks, which all start with [BOS]) the sequence starts with [BOS]. None for
    unconditional sampling."""
    check_condition(prefix, infill)
    if prefix is None and infill is None:
        return None
    ids = ([tokenizer.bos_id] if bos else []) + tokenizer.encode_batch([prefix])[0] if prefix is not None \
        else _template(tokenizer, infill or "", mask_id, bos)
    what = "--prefix" if prefix is not None else "--infill"
    if len(ids) > length or (prefix is not None and len(ids) == length):
        raise CofreError(f"{what} is {len(ids)} tokens; samples are {length} tokens (--length), which must leave "
                         "positions to generate")
    return torch.tensor(ids + [mask_id] * (length - len(ids)), dtype=torch.long)


def _template(tokenizer: TextTokenizer, template: str, mask_id: int, bos: bool) -> list[int]:
    """BPEs attach a space to the word after it, so a space just before a gap is left to the generated token."""
    ids = [tokenizer.bos_id] if bos else []
    pieces = GAP.split(template)
    for i, piece in enumerate(pieces):
        if i:
            ids.append(mask_id)
        if i < len(pieces) - 1 and piece.endswith(" "):
            piece = piece[:-1]
        if piece:
            ids += tokenizer.encode_batch([piece])[0]
    return ids
