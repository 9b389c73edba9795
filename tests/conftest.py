"""Shared fixtures: a small local corpus and a CPU-sized recipe, so tests never touch the network."""

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

WORDS = (
    "the a model token mask noise step solver fixed point block layer train sample text data loss "
    "value state hidden time budget river mountain city music paper result small large early late"
).split()


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n_docs):
            words = [rng.choice(WORDS) for _ in range(rng.randint(40, 120))]
            f.write(json.dumps({"text": " ".join(words).capitalize() + "."}) + "\n")
    return path


TINY_RECIPE = """\
name: tiny-test
model: {{hidden: 32, heads: 4, cond_dim: 16, dropout: 0.0, max_seq_len: 32, K_pre: 1, K_fp: 1, K_post: 1}}
solver: {{nograd_min: 0, nograd_max: 2, grad_min: 1, grad_max: 2, eval_iters: 3}}
data: {{corpus: {corpus}, seq_len: 32, val_docs: 10}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
trainer: {{max_steps: 6, global_batch_size: 4, micro_batch_size: 2, ema: 0.9, log_every: 1, val_every: 3,
           val_batches: 2, ckpt_every: 3, keep_last: 2, seed: 3}}
"""


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the commands they start) tokenise into a private cache, shared within the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COFRE_CACHE", str(tmp_path_factory.getbasetemp() / "cofre-cache"))
        yield


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


@pytest.fixture(scope="session")
def tiny_recipe_text(corpus_file: Path) -> str:
    """A CPU-sized FP-MDLM recipe over the test corpus (trains 6 steps in seconds)."""
    return TINY_RECIPE.format(corpus=corpus_file)


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_recipe_text: str) -> Path:
    path = tmp_path / "tiny-test.yaml"
    path.write_text(tiny_recipe_text)
    return path
