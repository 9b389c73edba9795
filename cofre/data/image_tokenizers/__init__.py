"""Image tokenizers: images <-> a grid of discrete codes (cofre's own VQ-VAE, or a LlamaGen-layout VQ-GAN)."""

from __future__ import annotations

from pathlib import Path

import torch

from cofre.data.image_tokenizers.base import ImageTokenizer, file_sha256
from cofre.errors import CofreError

LLAMAGEN_PREFIX = "llamagen:"

__all__ = ["ImageTokenizer", "load_tokenizer", "tokenizer_identity", "tokenizer_label"]


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


def load_tokenizer(spec: str, device: torch.device | str = "cpu", *, image_size: int) -> ImageTokenizer:
    """`spec`: a cofre VQ run directory or checkpoint folder, or `llamagen:<path to vq_ds16_c2i.pt>`, for images of
    `image_size` (the recipe's `data.image_size`): a LlamaGen VQ-GAN (convolutional) takes any multiple of its
    down-sampling, a cofre VQ only the size it was trained at."""
    kind, path = _weights_file(spec)
    if kind == "llamagen":
        from cofre.data.image_tokenizers.llamagen import load_llamagen

        return load_llamagen(path, image_size, device)
    from cofre.data.image_tokenizers.vq import load_vq

    tokenizer = load_vq(path.parent, device)
    if tokenizer.image_size != image_size:
        raise CofreError(f"tokenizer '{spec}' takes {tokenizer.image_size} x {tokenizer.image_size} images, "
                         f"data.image_size is {image_size}; set data.image_size={tokenizer.image_size}")
    return tokenizer


def tokenizer_label(tokenizer: ImageTokenizer) -> str:
    """How every image number names its tokenizer, e.g. "llamagen-vq-ds16-16384x8, 16384 codes on a 16 x 16 grid at
    256 px" (the paper's tokenizer is XQGAN-4096: App. D.3)."""
    h, w = tokenizer.grid
    return f"{tokenizer.name}, {tokenizer.codebook_size} codes on a {h} x {w} grid at {tokenizer.image_size} px"
