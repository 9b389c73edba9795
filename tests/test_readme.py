"""The README's first commands work as written: each line of its command block runs in a workspace shaped like
a checkout after `make tiny` (with small runs), except `cofre train`, which needs a GPU and the network and is
run as the `cofre inspect` dry check the block also holds. `evaluate` runs as written plus options that shrink its
sample counts and timed repeats to test size (every metric and budget is still computed)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def readme_commands() -> list[str]:
    """The `cofre ...` lines of the README's first command block after `make tiny` / `make test`."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    block = next(b for b in blocks if "cofre " in b)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("cofre ")]


def cofre(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path, tiny_recipe_text: str) -> None:
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["inspect", "train", "evaluate", "convert"]
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text)
    # a plain 4-block MDLM named as `make tiny` names it (a few steps of the test-sized model)
    trained = cofre(tmp_path, ["train", str(recipe), "name=tiny-mdlm", "model.K_pre=4", "model.K_fp=0", "model.K_post=0",
                               "trainer.max_steps=3", "--run-dir", "runs/tiny-mdlm"])
    assert trained.returncode == 0, trained.stderr
    inspected = set()
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "train":  # GPU and network: its recipe is dry-checked by the block's `inspect` line
            assert args[1] in inspected, f"README trains {args[1]} without inspecting it first"
            continue
        if args[0] == "evaluate":
            args += ["--num-samples", "4", "--batch-size", "4", "--latency-warmup", "0", "--latency-repeats", "2",
                     "--val-batches", "2"]
        result = cofre(tmp_path, args)
        assert result.returncode == 0, f"{command}: {result.stderr[-1500:]}"
        if args[0] == "inspect":
            inspected.add(args[1])
    assert (tmp_path / "runs" / "tiny-mdlm-fp" / "conversion.json").is_file()
    assert list((tmp_path / "runs" / "tiny-mdlm" / "eval").glob("*.json"))
