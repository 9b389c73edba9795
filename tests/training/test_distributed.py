"""Two-process data-parallel training on CPU (gloo): ranks end with identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cofre.config import load_recipe
from cofre.models import Denoiser

HERE = Path(__file__).parent


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tmp_path: Path, tiny_recipe: Path) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"]
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([*launch, str(HERE / "ddp_worker.py"), str(tiny_recipe), str(tmp_path / "run"), str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(str(out / "rank0-of-2.safetensors")), load_file(str(out / "rank1-of-2.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))  # logged once, by the main process
    torch.manual_seed(3)  # the recipe's seed: the weights every rank started from
    initial = Denoiser(load_recipe(tiny_recipe).model).state_dict()
    assert not torch.equal(initial["pre.0.attn_qkv.weight"], rank0["pre.0.attn_qkv.weight"])  # training happened
