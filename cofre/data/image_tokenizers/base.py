"""What every image tokenizer offers (STYLE.md: a module with `encode` and `decode`; the generator never reaches inside)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from cofre.errors import CofreError


@runtime_checkable
class ImageTokenizer(Protocol):
    """Images [B, C, S, S] in [0, 1] <-> codes [B, h, w] in [0, codebook_size); both on `device`, no grad."""

    name: str  # e.g. "cofre-vq" or "llamagen-vq-ds16"
    sha256: str  # of the weights file: the codes cache is keyed on it
    codebook_size: int
    grid: tuple[int, int]  # token grid (h, w)
    image_size: int  # S
    channels: int  # C
    device: torch.device

    def encode(self, images: Tensor) -> Tensor:
        """[B, C, S, S] float in [0, 1] -> [B, h, w] int64 codes."""
        ...

    def decode(self, codes: Tensor) -> Tensor:
        """[B, h, w] int64 codes -> [B, C, S, S] float in [0, 1]."""
        ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_images(images: Tensor, channels: int, image_size: int, who: str) -> None:
    """Images a tokenizer can encode: [B, channels, image_size, image_size] floats."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (channels, image_size, image_size) or not images.is_floating_point():
        raise CofreError(f"{who} encodes float images [B, {channels}, {image_size}, {image_size}], "
                         f"got {images.dtype} {tuple(images.shape)}")


def check_codes(codes: Tensor, grid: tuple[int, int], codebook_size: int, who: str) -> None:
    """Codes a tokenizer can decode: [B, h, w] integers in [0, codebook_size)."""
    if codes.dim() != 3 or tuple(codes.shape[1:]) != grid or codes.is_floating_point():
        raise CofreError(f"{who} decodes integer codes [B, {grid[0]}, {grid[1]}], got {codes.dtype} {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise CofreError(f"{who} codes must be in [0, {codebook_size}), got [{int(codes.min())}, {int(codes.max())}] "
                         "(the mask token is not a code)")
