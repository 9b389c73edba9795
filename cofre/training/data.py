"""What the trainer reads: packed text blocks, or image codes flattened to sequences with their class labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cofre.config import Recipe
from cofre.errors import CofreError


@dataclass
class TrainingData:
    """Rows of token ids [N, L] (int32) for training and validation; image rows carry a class label each."""

    train: Tensor
    val: Tensor
    source: str
    train_labels: Tensor | None = None  # [N] int64 (images); None for text
    val_labels: Tensor | None = None

    def rows(self, idx: Tensor, split: str, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """(x [B, L] int64, labels [B] or None) of the rows `idx`, on `device`."""
        data, labels = (self.train, self.train_labels) if split == "train" else (self.val, self.val_labels)
        x = data[idx].long().to(device)
        return x, labels[idx].long().to(device) if labels is not None else None


def load_training_data(recipe: Recipe) -> TrainingData:
    """The recipe's corpus: packed text (data/packing.py) or cached image codes (data/images.py), checked
    against the model (codes below the codebook size = model.vocab_size - 1, grid = model.max_seq_len)."""
    if recipe.model.modality == "text":
        from cofre.data.packing import load_corpus

        corpus = load_corpus(recipe.data)
        if corpus.train.shape[1] > recipe.model.max_seq_len:
            raise CofreError(f"data.seq_len {corpus.train.shape[1]} exceeds model.max_seq_len {recipe.model.max_seq_len}")
        return TrainingData(train=corpus.train, val=corpus.val, source=corpus.source)
    from cofre.data.images import load_image_codes

    codes = load_image_codes(recipe.data)
    m = recipe.model
    h, w = codes.grid
    if codes.codebook_size != m.vocab_size - 1:
        raise CofreError(f"the tokenizer has {codes.codebook_size} codes but model.vocab_size is {m.vocab_size}; "
                         f"set model.vocab_size: {codes.codebook_size + 1} (codes + [mask])")
    if h * w != m.max_seq_len:
        raise CofreError(f"the tokenizer's grid is {h}x{w} = {h * w} tokens but model.max_seq_len is {m.max_seq_len}")
    labels = torch.cat([codes.train_labels, codes.val_labels])
    if labels.numel() and (labels.min() < 0 or labels.max() >= m.num_classes):
        raise CofreError(f"the data has class labels {int(labels.min())}..{int(labels.max())} but model.num_classes "
                         f"is {m.num_classes}")
    return TrainingData(train=codes.train.reshape(codes.train.shape[0], -1), val=codes.val.reshape(codes.val.shape[0], -1),
                        source=codes.source, train_labels=codes.train_labels, val_labels=codes.val_labels)
