"""Image tokenizers: images <-> a grid of discrete codes (cofre's own VQ-VAE, or a LlamaGen-layout VQ-GAN)."""

from __future__ import annotations

from pathlib import Path

import torch

from cofre.data.image_tokenizers.base import ImageTokenizer, file_sha256
from cofre.errors import CofreError

LLAMAGEN_PREFIX = "llamagen:"

__all__ = ["ImageTokenizer", "load_tokenizer", "tokenizer_identity"]


def _weights_file(spec: str) -> tuple[str, Path]:
    """("cofre-vq" | "llamagen", the weights file) for a tokenizer spec; one-line errors for anything else."""
    if spec.startswith(LLAMAGEN_PREFIX):
        path = Path(spec[len(LLAMAGEN_PREFIX):]).expanduser()
        if not path.is_file():
            raise CofreError(f"image tokenizer '{spec}': no such LlamaGen VQ checkpoint file")
        return "llamagen", path
    if not spec.strip():
        raise CofreError("no image tokenizer given: set data.tokenizer to a cofre VQ run (e.g. runs/tiny-vq) "
                         "or llamagen:<path to vq_ds16_c2i.pt>")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise CofreError(f"image tokenizer '{spec}' is neither a cofre VQ run or checkpoint folder nor "
                         "llamagen:<path to vq_ds16_c2i.pt>")
    from cofre.data.image_tokenizers.recipe import read_vq_checkpoint
    from cofre.training.checkpoint import MODEL_FILE

    folder, _ = read_vq_checkpoint(path)
    return "cofre-vq", folder / MODEL_FILE


def tokenizer_identity(spec: str) -> dict[str, str]:
    """What codes depend on, without building the model: the tokenizer kind and the sha256 of its weights."""
    kind, path = _weights_file(spec)
    if not path.is_file():
        raise CofreError(f"{path}: missing; the tokenizer checkpoint is incomplete")
    return {"kind": kind, "sha256": file_sha256(path)}


def load_tokenizer(spec: str, device: torch.device | str = "cpu") -> ImageTokenizer:
    """`spec`: a cofre VQ run directory or checkpoint folder, or `llamagen:<path to vq_ds16_c2i.pt>`."""
    kind, path = _weights_file(spec)
    if kind == "llamagen":
        from cofre.data.image_tokenizers.llamagen import load_llamagen

        return load_llamagen(path, device)
    from cofre.data.image_tokenizers.vq import load_vq

    return load_vq(path.parent, device)
