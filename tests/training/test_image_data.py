"""The trainer's image rows: flattened code grids with their labels, checked against the model before training."""

from __future__ import annotations

import pytest
import torch

from image_runs import image_recipe

from cofre.data.images import ImageCodes
from cofre.errors import CofreError
from cofre.training.data import load_training_data


def codes(codebook: int = 16, grid: tuple[int, int] = (4, 4), top_label: int = 9) -> ImageCodes:
    n = 6
    return ImageCodes(train=torch.randint(0, codebook, (n, *grid), dtype=torch.int32),
                      train_labels=torch.tensor([0, 1, 2, 3, 4, top_label]), val=torch.zeros(2, *grid, dtype=torch.int32),
                      val_labels=torch.tensor([0, 1]), class_names=[str(i) for i in range(10)], codebook_size=codebook,
                      grid=grid, source="test")


def test_rows_are_flattened_grids_with_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    data = codes()
    monkeypatch.setattr("cofre.data.images.load_image_codes", lambda cfg: data)
    rows = load_training_data(image_recipe("unused"))
    x, labels = rows.rows(torch.tensor([5, 0]), "train", torch.device("cpu"))
    assert x.shape == (2, 16) and x.dtype == torch.long and torch.equal(x[0], data.train[5].flatten().long())
    assert labels.tolist() == [9, 0]


@pytest.mark.parametrize("bad, fragment", [
    (dict(codebook=32), "the tokenizer has 32 codes but model.vocab_size is 17"),
    (dict(grid=(8, 8)), "grid is 8x8 = 64 tokens but model.max_seq_len is 16"),
    (dict(top_label=10), "class labels 0..10 but model.num_classes is 10"),
])
def test_data_that_does_not_fit_the_model_is_one_line(monkeypatch: pytest.MonkeyPatch, bad: dict, fragment: str) -> None:
    monkeypatch.setattr("cofre.data.images.load_image_codes", lambda cfg: codes(**bad))
    with pytest.raises(CofreError, match=fragment.replace(".", r"\.")):
        load_training_data(image_recipe("unused"))
