"""The small image classifier cofre trains on a dataset (`kind: classifier`): the feature extractor of
classifier-based FID and IS (DESIGN.md §9) where no Inception network fits the images (Fashion-MNIST, offline).

`cofre train recipes/fmnist-classifier.yaml` trains it on the train split (cross-entropy, AdamW) and reports
its accuracy on the val split (Fashion-MNIST's 10,000 test images). Features for FID are the penultimate
layer (`classifier.features` wide); IS uses its class probabilities. Numbers it gives are labelled
`classifier:<run>`, never Inception numbers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from cofre.checks import MAX_COUNT, MAX_RECIPE_SEED, check_name
from cofre.config import (MAX_CLASSES, MAX_IMAGE_SIZE, MAX_WIDTH, DataConfig, OptimConfig, _rule, _within,
                          apply_overrides, config_from_dict, dump_recipe, read_yaml, recipe_to_dict)
from cofre.errors import CofreError
from cofre.runs import RunDir, atomic_write_text, read_json_file
from cofre.training.checkpoint import (MODEL_FILE, kind_config, load_weights_into, publish_checkpoint, staging_dir,
                                       write_checkpoint_files)
from cofre.training.optim import build_optimizer, build_scheduler, optimizer_step

CLASSIFIER_KIND = "classifier"


@dataclass
class ClassifierConfig:
    """Two stages of a 3 x 3 conv and a 2 x 2 max-pool, then a feature layer and the logits."""

    channels: int = 1  # the dataset's channels; RGB input of a grey model is averaged to grey
    image_size: int = 28
    width: int = 32  # channels of the first stage (the second has twice as many)
    features: int = 128  # the penultimate layer: FID's features
    num_classes: int = 10

    def validate(self, where: str = "classifier") -> None:
        _within(where, self, 1, 4, "channels")
        _within(where, self, 1, MAX_WIDTH, "width", "features")
        _within(where, self, 4, MAX_IMAGE_SIZE, "image_size")
        _within(where, self, 2, MAX_CLASSES, "num_classes")


@dataclass
class ClassifierTrainerConfig:
    max_steps: int = 1500
    batch_size: int = 128
    seed: int = 1
    log_every: int = 100

    def validate(self, where: str = "trainer") -> None:
        _within(where, self, 1, MAX_COUNT, "max_steps", "batch_size", "log_every")
        _within(where, self, 0, MAX_RECIPE_SEED, "seed")


@dataclass
class ClassifierRecipe:
    """A classifier recipe, one YAML file with `kind: classifier`."""

    kind: Literal["classifier"] = "classifier"
    name: str = "classifier"
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(corpus="fashion-mnist", image_size=28))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50, schedule="cosine"))
    trainer: ClassifierTrainerConfig = field(default_factory=ClassifierTrainerConfig)

    def validate(self) -> None:
        check_name("name", self.name)
        for name in ("classifier", "data", "optim", "trainer"):
            getattr(self, name).validate(name)
        _rule(self.data.image_size == self.classifier.image_size,
              f"data.image_size ({self.data.image_size}) must equal classifier.image_size ({self.classifier.image_size})")


class ImageClassifier(nn.Module):
    """uint8 images [B, C, S, S] -> (features [B, features], logits [B, classes])."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        self.convs = nn.Sequential(stage(cfg.channels, w), stage(w, 2 * w))
        side = cfg.image_size // 4
        self.feature = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, cfg.features), nn.ReLU())
        self.logits = nn.Linear(cfg.features, cfg.num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1] != self.cfg.channels:
            if self.cfg.channels != 1:
                raise CofreError(f"the classifier takes {self.cfg.channels}-channel images, got {images.shape[1]}")
            images = images.float().mean(dim=1, keepdim=True)  # RGB of a grey image: its channels are equal
        if images.shape[-1] != self.cfg.image_size or images.shape[-2] != self.cfg.image_size:
            raise CofreError(f"the classifier takes {self.cfg.image_size} x {self.cfg.image_size} images, got "
                             f"{images.shape[-2]} x {images.shape[-1]}")
        x = images.float() / 127.5 - 1
        features = self.feature(self.convs(x))
        return features, self.logits(features)


@dataclass
class ClassifierTrainResult:
    run_dir: str
    final_step: int
    elapsed_s: float
    checkpoint: str
    test_accuracy: float
    test_images: int
    test_split: str = "val"


def is_classifier_recipe(path: Path) -> bool:
    """Does the recipe file (after `base:`) say `kind: classifier`?"""
    return path.is_file() and read_yaml(path).get("kind") == CLASSIFIER_KIND


def _from_dict(values: Any) -> ClassifierRecipe:
    if not isinstance(values, dict):
        raise CofreError(f"a recipe must be a mapping of sections, got {type(values).__name__}")
    recipe = config_from_dict(ClassifierRecipe, values)
    recipe.validate()
    return recipe


def load_classifier_recipe(path: str | Path, overrides: list[str] | None = None) -> ClassifierRecipe:
    path = Path(path)
    values = apply_overrides(read_yaml(path), overrides or [])
    values.setdefault("name", path.stem)
    try:
        return _from_dict(values)
    except CofreError as err:
        raise CofreError(f"{path}: {err}") from None


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[ImageClassifier, ClassifierRecipe, Path]:
    """The trained classifier a run directory or checkpoint folder holds (eval mode), its recipe and its folder."""
    folder, values = kind_config(path, CLASSIFIER_KIND)
    recipe = _from_dict(values)
    model = ImageClassifier(recipe.classifier)
    load_weights_into(model, folder / MODEL_FILE)
    return model.to(device).eval().requires_grad_(False), recipe, folder


@torch.no_grad()
def accuracy(model: ImageClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + batch_size])[1].argmax(-1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_classifier(recipe: ClassifierRecipe, run_dir: str | Path) -> ClassifierTrainResult:
    """Train the classifier into `run_dir`; a finished run of the same recipe is reported, not trained again."""
    from cofre.data.images import load_images

    run = RunDir(run_dir)
    result_path = run.path / "train_result.json"
    old = recipe_to_dict(load_classifier_recipe(run.recipe_path)) if run.exists() else None
    # the same recipe: finished runs are reported, an unfinished one trains again from the start
    if run.check_values(old, recipe_to_dict(recipe)) and result_path.is_file():
        fields = {f.name: (int, float, str) for f in dataclasses.fields(ClassifierTrainResult)}
        values = read_json_file(result_path, "training summary", "remove it to train the classifier again", fields)
        return ClassifierTrainResult(**{k: values[k] for k in fields})
    train_images, train_labels, names = load_images(recipe.data, "train")
    test_images, test_labels, _ = load_images(recipe.data, "val")
    cfg, t = recipe.classifier, recipe.trainer
    if train_images.shape[1] != cfg.channels or len(names) != cfg.num_classes:
        raise CofreError(f"classifier.channels / num_classes are {cfg.channels} / {cfg.num_classes}, but corpus "
                         f"'{recipe.data.corpus}' has {train_images.shape[1]}-channel images of {len(names)} classes")
    torch.manual_seed(t.seed)
    model = ImageClassifier(cfg)
    optimizer = build_optimizer(model, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim, t.max_steps)
    run.lock()
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.recipe_path, dump_recipe(recipe))  # type: ignore[arg-type]  # any recipe dataclass dumps
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(t.seed)
        model.train()
        for step in range(1, t.max_steps + 1):
            index = torch.randint(len(train_images), (t.batch_size,), generator=generator)
            loss = F.cross_entropy(model(train_images[index])[1], train_labels[index])
            optimizer_step(loss, model, optimizer, scheduler, recipe.optim.grad_clip)
            if step % t.log_every == 0 or step == t.max_steps:
                run.append_metrics({"step": step, "loss": float(loss.detach()), "elapsed_s": time.perf_counter() - started})
        elapsed = time.perf_counter() - started
        folder = staging_dir(run.checkpoints, t.max_steps)
        write_checkpoint_files(folder, model, None, recipe, {"progress": {"step": t.max_steps}})  # type: ignore[arg-type]
        checkpoint = publish_checkpoint(run.checkpoints, t.max_steps, 1)
        result = ClassifierTrainResult(run_dir=str(run.path), final_step=t.max_steps, elapsed_s=elapsed,
                                       checkpoint=str(checkpoint), test_accuracy=accuracy(model, test_images, test_labels),
                                       test_images=len(test_images))
        atomic_write_text(result_path, json.dumps(dataclasses.asdict(result), indent=2))
        return result
    finally:
        run.unlock()


def report_classifier(result: ClassifierTrainResult, console: Console) -> None:
    console.print(f"classifier trained to step {result.final_step} in {result.elapsed_s:.0f}s; checkpoint "
                  f"{result.checkpoint}")
    console.print(f"test accuracy {result.test_accuracy:.2%} on the {result.test_images} {result.test_split}-split images; "
                  f"summary: {Path(result.run_dir) / 'train_result.json'}")
