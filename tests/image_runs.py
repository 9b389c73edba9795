"""Tiny image runs the image tests build in seconds: a VQ tokenizer checkpoint (8 x 8 grey images -> a 4 x 4
grid of 16 codes) and image denoiser checkpoints that name it, written with the real checkpoint code."""

from __future__ import annotations

from pathlib import Path

import torch

from cofre.config import Recipe, recipe_from_dict
from cofre.data.image_tokenizers.recipe import vq_recipe_from_dict
from cofre.data.image_tokenizers.vq import VQVAE
from cofre.models import Denoiser
from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files

GRID = (4, 4)
CODES = 16


def make_vq_run(root: Path) -> Path:
    """A cofre VQ run (untrained weights: decoding still gives images of the right shape)."""
    recipe = vq_recipe_from_dict({"name": "vq-test", "kind": "vq", "vq": {"channels": 1, "image_size": 8, "hidden": 8,
                                  "downsample": 1, "res_blocks": 0, "codebook_size": CODES, "code_dim": 4},
                                  "data": {"corpus": "fashion-mnist", "image_size": 8}})
    torch.manual_seed(0)
    model = VQVAE(recipe.vq)
    with torch.no_grad():  # a random codebook, marked as initialised (training would have)
        model.quantizer.codebook.normal_()
        model.quantizer.initialized.fill_(True)
    run = root / "vq-test"
    folder = staging_dir(run / "checkpoints", 1)
    write_checkpoint_files(folder, model, None, recipe, {"progress": {"step": 1}})  # type: ignore[arg-type]
    publish_checkpoint(run / "checkpoints", 1, 1)
    return run


def image_recipe(tokenizer: Path | str, K: tuple[int, int, int] = (1, 1, 1), name: str = "img-test") -> Recipe:
    return recipe_from_dict({
        "name": name,
        "model": {"modality": "image", "vocab_size": CODES + 1, "hidden": 32, "heads": 4, "cond_dim": 16,
                  "dropout": 0.0, "max_seq_len": GRID[0] * GRID[1], "K_pre": K[0], "K_fp": K[1], "K_post": K[2],
                  "num_classes": 10, "registers": 1},
        "task": {"name": "maskgit"},
        "data": {"corpus": "fashion-mnist", "image_size": 8, "tokenizer": str(tokenizer)},
        "solver": {"nograd_min": 0, "nograd_max": 1, "grad_min": 1, "grad_max": 2, "eval_iters": 2},
        "trainer": {"max_steps": 4, "global_batch_size": 8, "micro_batch_size": 4, "ema": 0.9, "log_every": 1,
                    "val_every": 2, "val_batches": 2, "ckpt_every": 2, "keep_last": 2},
    })


def make_image_run(root: Path, tokenizer: Path, K: tuple[int, int, int] = (1, 1, 1), name: str = "img-test") -> Path:
    """An image denoiser run with one checkpoint (random weights)."""
    recipe = image_recipe(tokenizer, K, name)
    torch.manual_seed(1)
    run = root / name
    folder = staging_dir(run / "checkpoints", 1)
    write_checkpoint_files(folder, Denoiser(recipe.model), None, recipe, {"progress": {"step": 1}})
    publish_checkpoint(run / "checkpoints", 1, 1)
    return run


def make_classifier_run(root: Path, image_size: int = 8, name: str = "clf-test") -> Path:
    """A cofre classifier run (random weights) for `image_size` grey images, as `cofre train` writes one."""
    from cofre.evaluation.classifier import ImageClassifier, _from_dict

    recipe = _from_dict({"kind": "classifier", "name": name,
                         "classifier": {"image_size": image_size, "width": 4, "features": 16},
                         "data": {"corpus": "fashion-mnist", "image_size": image_size}})
    torch.manual_seed(2)
    run = root / name
    folder = staging_dir(run / "checkpoints", 1)
    write_checkpoint_files(folder, ImageClassifier(recipe.classifier), None, recipe, {"progress": {"step": 1}})  # type: ignore[arg-type]
    publish_checkpoint(run / "checkpoints", 1, 1)
    return run
