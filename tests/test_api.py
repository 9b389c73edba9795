"""The Python API (`cofre.load`, generate, logits, save_pretrained) and Hub-style exports (`cofre export`): the
README's block runs as written; an export has the Hub's layout, no host paths, and loads to identical logits."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from test_bad_inputs import run_in_process

import cofre
from cofre.config import load_recipe
from cofre.errors import CofreError
from cofre.training.loop import train

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    """runs/tiny-fp-mdlm: the tiny FP-MDLM (GPT-2 tokenizer), and runs/tiny-bpe: one with a corpus BPE."""
    root = tmp_path_factory.mktemp("api")
    (root / "tiny.yaml").write_text(tiny_recipe_text)
    train(load_recipe(root / "tiny.yaml", ["name=tiny-fp-mdlm"]), root / "runs" / "tiny-fp-mdlm")
    train(load_recipe(root / "tiny.yaml", ["name=tiny-bpe", "data.text_tokenizer=bpe-300", "model.vocab_size=301",
                                           "trainer.max_steps=3"]), root / "runs" / "tiny-bpe")
    return root


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_readmes_python_block_runs(workspace: Path) -> None:
    here = Path.cwd()
    os.chdir(workspace)
    try:
        scope: dict[str, object] = {}
        exec(compile(readme_python_block(), "README.md (Python API)", "exec"), scope)  # noqa: S102
    finally:
        os.chdir(here)
    texts, prompted, filled = scope["texts"], scope["prompted"], scope["filled"]
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)  # type: ignore[arg-type]
    assert all(t.startswith("<|endoftext|>The river") for t in prompted)  # type: ignore[union-attr]
    assert filled[0].startswith("<|endoftext|>The ") and filled[0].endswith(".")  # type: ignore[index]
    assert scope["logits"].shape == (1, 32, 50258)  # type: ignore[union-attr]


@pytest.mark.slow
def test_export_has_the_hub_layout_no_host_paths_and_the_same_logits(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    outcome = run_in_process(["export", str(workspace / "runs" / "tiny-fp-mdlm"), str(out)], workspace)
    assert outcome.code == 0, outcome.stderr
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "vocab.json", "merges.txt",
                                               "tokenizer_config.json", "README.md", "export.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "cofre" and config["architecture"] == "fp-mdlm"
    assert set(config) == {"model_type", "format", "architecture", "model", "eval_iters", "task", "text"}
    assert config["text"]["mask_id"] == 50257 and config["text"]["tokenizer"] == "gpt2"
    assert str(workspace) not in (out / "config.json").read_text() + (out / "export.json").read_text()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: cofre") and "| training steps | 6 |" in card and "PPL" in card
    run, exported = cofre.load(workspace / "runs" / "tiny-fp-mdlm"), cofre.load(out)
    z = torch.randint(0, 50257, (2, 32))
    assert torch.equal(run.logits(z, t=0.3), exported.logits(z, t=0.3))
    assert exported.recipe.solver.eval_iters == run.recipe.solver.eval_iters == 3
    sampled = run_in_process(["sample", str(out), "--budget", "12", "--num-samples", "2", "--out",
                              str(tmp_path / "s.jsonl")], workspace)
    assert sampled.code == 0, sampled.stderr
    again = run_in_process(["export", str(workspace / "runs" / "tiny-fp-mdlm"), str(out)], workspace)
    assert again.code == 2 and "pass --overwrite" in again.stderr  # nothing replaced silently


@pytest.mark.slow
def test_a_corpus_bpe_travels_with_the_export(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = cofre.load(workspace / "runs" / "tiny-bpe").save_pretrained(tmp_path / "bpe")
    assert (out / "tokenizer.json").is_file() and not (out / "vocab.json").exists()
    monkeypatch.setenv("COFRE_CACHE", str(tmp_path / "empty-cache"))  # no cached tokenizer, no corpus needed
    from cofre.data.tokenizer import _load_bpe

    _load_bpe.cache_clear()
    texts = cofre.load(out).generate(2, budget=9, prefix="the")
    assert all(isinstance(t, str) and t.startswith("<|endoftext|>the") for t in texts)
    assert not (tmp_path / "empty-cache").exists()


def test_a_hub_id_offline_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CofreError, match="nobody/nothing"):
        cofre.load("nobody/nothing")


def test_import_cofre_is_light() -> None:
    """The API's names load on first use: `import cofre` alone does not import torch's users."""
    import subprocess
    import sys

    code = "import sys, cofre; print('cofre.api' in sys.modules, callable(cofre.load), cofre.Recipe.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True", "Recipe"], out.stderr


def test_an_image_run_exports_with_its_vq_tokenizer_and_generates(tmp_path: Path) -> None:
    """An image export carries the VQ tokenizer run (image_tokenizer/) and the class names; it loads with the same
    logits and draws images without the original run or the corpus."""
    import shutil

    import numpy as np
    from image_runs import make_image_run, make_vq_run

    run = make_image_run(tmp_path, make_vq_run(tmp_path), (1, 1, 1), "img")
    out = cofre.load(run).save_pretrained(tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "fp-maskgit" and len(config["image"]["class_names"]) == 10
    assert (out / "image_tokenizer" / "model.safetensors").is_file()
    labels = torch.zeros(2, dtype=torch.long)
    z = torch.randint(0, 8, (2, cofre.load(run).recipe.model.max_seq_len))
    expected = cofre.load(run).logits(z, labels)
    shutil.rmtree(tmp_path / "img")
    shutil.rmtree(tmp_path / "vq-test")
    exported = cofre.load(out)
    assert torch.equal(exported.logits(z, labels), expected)
    images = exported.generate(2, budget=4, classes=[0, "Trouser"])
    assert len(images) == 2 and images[0].dtype == np.uint8 and images[0].shape[-1] == 1
