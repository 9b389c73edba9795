"""`cofre train` on a `kind: classifier` recipe: trains, reports test accuracy, is not trained twice."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cofre.evaluation.classifier import ClassifierConfig, ImageClassifier, load_classifier
from test_bad_inputs import run_in_process

RECIPE = """\
kind: classifier
classifier: {{image_size: 28, width: 4, features: 16}}
data: {{corpus: fashion-mnist, image_size: 28, fashion_mnist_dir: {fashion_dir}}}
optim: {{lr: 3.0e-3, warmup_steps: 2}}
trainer: {{max_steps: 60, batch_size: 16, log_every: 20}}
"""


def test_classifier_trains_reports_accuracy_and_is_not_retrained(fashion_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "clf.yaml"
    recipe.write_text(RECIPE.format(fashion_dir=fashion_dir))
    result = run_in_process(["train", str(recipe), "--run-dir", "clf"], tmp_path)
    assert result.code == 0, result.stderr
    assert "test accuracy" in result.stdout
    summary = json.loads((tmp_path / "clf" / "train_result.json").read_text())
    assert summary["test_accuracy"] > 0.5 and summary["test_images"] == 20  # the bars are easy; chance is 0.1
    model, loaded, _ = load_classifier(tmp_path / "clf")
    assert loaded.classifier.features == 16
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    features, logits = model(images)
    assert features.shape == (3, 16) and logits.shape == (3, 10)
    assert torch.equal(model(images.expand(-1, 3, -1, -1))[0], features)  # RGB of a grey image: the same features
    again = run_in_process(["train", str(recipe), "--run-dir", "clf"], tmp_path)
    assert again.code == 0 and json.loads((tmp_path / "clf" / "train_result.json").read_text()) == summary
    changed = run_in_process(["train", str(recipe), "trainer.max_steps=61", "--run-dir", "clf"], tmp_path)
    assert changed.code == 2 and "holds a different recipe (trainer.max_steps differ)" in changed.stderr


def test_classifier_rejects_images_of_another_size() -> None:
    import pytest

    from cofre.errors import CofreError

    with pytest.raises(CofreError, match="takes 28 x 28 images, got 8 x 8"):
        ImageClassifier(ClassifierConfig())(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
