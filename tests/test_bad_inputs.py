"""A corpus of bad inputs to every subcommand: each is one `error:` line, exit 2, no traceback, nothing changed.

The corpus runs in-process through `cofre.cli.run`, the console script's entry point (a subprocess per case
would cost ~3 s each); a few cases also run as real `python -m cofre` processes to show the two agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cofre import cli
from cofre.config import Recipe, load_recipe
from cofre.training.loop import train

ROOT = Path(__file__).parents[1]


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str


def run_in_process(args: list[str], cwd: Path) -> Outcome:
    """`cofre ARGS` through the console-script entry point, with its output and exit code captured."""
    out, err = io.StringIO(), io.StringIO()
    argv, here = sys.argv, Path.cwd()
    sys.argv = ["cofre", *args]
    os.chdir(cwd)
    code: int | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return Outcome(code, out.getvalue(), err.getvalue())


def run_subprocess(args: list[str], cwd: Path) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "cofre", *args], cwd=cwd, capture_output=True, text=True, env=env)
    return Outcome(result.returncode, result.stdout, result.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (paths relative to it); a symbolic link by its target, which is a file
    under `root` hashed in its own right (the damaged runs link to the intact run's large files)."""
    return {str(p.relative_to(root)): f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_clean_error(outcome: Outcome, fragment: str) -> None:
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
    lines = outcome.stderr.splitlines()
    assert outcome.code == 2, (outcome.code, outcome.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    """A folder with a trained tiny run, damaged copies of it, and bad recipes and paths."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "tiny.yaml").write_text(tiny_recipe_text)
    train(load_recipe(root / "tiny.yaml", ["trainer.max_steps=3"]), root / "run")
    step = "checkpoints/step-000000003"

    def damaged(name: str) -> Path:
        """A copy of the run whose files link to the run's; the file to damage is then replaced by a real one."""
        shutil.copytree(root / "run", root / name, copy_function=os.symlink)
        for path in (root / name).rglob("*"):
            if path.is_symlink() and path.stat().st_size < 100_000:  # small files: real copies
                path.unlink()
                shutil.copyfile(root / "run" / path.relative_to(root / name), path)
        return root / name / step

    def replace(path: Path, data: bytes) -> None:
        path.unlink()
        path.write_bytes(data)

    (damaged("corrupt-config") / "config.json").write_text("{not json")
    weights = damaged("truncated-weights") / "model.safetensors"
    replace(weights, weights.read_bytes()[:100])
    weights = damaged("nan-weights") / "ema.safetensors"
    state = load_file(str(weights))
    state[next(iter(state))].view(-1)[0] = float("nan")
    weights.unlink()
    save_file(state, str(weights))
    weights = damaged("wrong-shape") / "ema.safetensors"
    weights.unlink()
    save_file({"embed.weight": torch.zeros(2, 2)}, str(weights))
    progress = damaged("pickled-progress") / "train_state" / "progress.pt"
    progress.unlink()
    torch.save({"step": 3, "payload": Outcome(0, "", "")}, progress)  # a class instance: refused by weights_only
    replace(damaged("garbage-progress") / "train_state" / "progress.pt", b"garbage")
    damaged("broken-latest")
    (root / "broken-latest" / "checkpoints" / "latest").write_text("step-000000999\n")
    damaged("no-latest")
    (root / "no-latest" / "checkpoints" / "latest").unlink()
    damaged("bad-metrics")
    (root / "bad-metrics" / "metrics.jsonl").write_text('{"step": 1}\n{broken\n{"step": 2}\n')

    other_kinds(root)
    damaged_resume_files(root)

    (root / "list.yaml").write_text("- model\n- trainer\n")
    (root / "string.yaml").write_text("just a string\n")
    (root / "syntax.yaml").write_text("model: {hidden: 64\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00model")
    (root / "afile.txt").write_text("precious")
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("keep me")
    (root / "samples-dir").mkdir()
    (root / "existing.jsonl").write_text("{}\n")
    return root


def other_kinds(root: Path) -> None:
    """Runs of every other kind beside the denoiser (untrained weights, written by the real checkpoint code): a VQ
    tokenizer, an image denoiser that names it, a classifier, a shortcut of the image run, a light text denoiser."""
    from image_runs import make_classifier_run, make_image_run, make_vq_run

    from cofre.models import Denoiser
    from cofre.runs import atomic_write_text
    from cofre.sampling.generate import checkpoint_identity
    from cofre.sampling.shortcut import Shortcut
    from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files
    from cofre.training.shortcut import _dump, shortcut_values

    image = make_image_run(root, make_vq_run(root), (2, 0, 0), "img")
    make_classifier_run(root, name="clf")
    (root / "sc.yaml").write_text("kind: shortcut\nshortcut: {width_ratio: 0.5, heads: 2, frequency_dim: 16}\n"
                                  "collect: {batch_size: 2, refresh_every: 2, val_trajectories: 2, steps: 4}\n")
    folder = image / "checkpoints" / "step-000000001"
    recipe = shortcut_values(load_recipe_of(folder).model, str(folder), checkpoint_identity(folder, True)["sha256"],
                             root / "sc.yaml", ["name=sc-img"])
    write_checkpoint_files(staging_dir(root / "sc-img" / "checkpoints", 1), Shortcut(recipe.shortcut), None, recipe,  # type: ignore[arg-type]
                           {"progress": {"step": 1}})
    publish_checkpoint(root / "sc-img" / "checkpoints", 1, 1)
    atomic_write_text(root / "sc-img" / "recipe.yaml", _dump(recipe))
    light = load_recipe(root / "tiny.yaml", ["name=light", "model.K_fp=0", "model.K_post=0"])
    write_checkpoint_files(staging_dir(root / "light" / "checkpoints", 1), Denoiser(light.model), None, light,
                           {"progress": {"step": 1}})
    publish_checkpoint(root / "light" / "checkpoints", 1, 1)


def load_recipe_of(folder: Path) -> Recipe:
    from cofre.training.checkpoint import checkpoint_recipe

    return checkpoint_recipe(folder)


def damaged_resume_files(root: Path) -> None:
    """A trace of the tiny run and damaged copies, and damaged files that commands resume from or read back."""
    assert run_in_process(["sample", "run", "--budget", "12", "--trace", "trace.jsonl", "--out", "drawn.jsonl"],
                          root).code == 0
    text = (root / "trace.jsonl").read_text()
    (root / "cut-trace.jsonl").write_text(text[: len(text) // 2])
    (root / "binary-trace.jsonl").write_bytes(bytes(range(256)))
    (root / "string-trace.jsonl").write_text(text.replace('"residuals": [', '"residuals": ["x", ', 1))
    (root / "garbage.pth").write_bytes(b"garbage")
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage-result").mkdir()
    shutil.copytree(root / "run", root / "garbage-result" / "stage", copy_function=os.symlink)
    (root / "garbage-result" / "stage" / "train_result.json").unlink(missing_ok=True)
    (root / "garbage-result" / "stage" / "train_result.json").write_text('{"validations": [{"step": "x"}')
    (root / "importance").mkdir()
    (root / "importance" / "step-importance.json").write_text('{"settings": {}, "points": 3')


TRAIN = ["train", "tiny.yaml", "--run-dir", "new-run"]
SAMPLE = ["sample", "run", "--budget", "8"]
EVAL = ["evaluate", "run", "--metrics", "valppl", "--report-dir", "reports"]

CASES: list[tuple[list[str], str]] = [
    # recipes: files, types, ranges and rules between fields
    (["train", "nope.yaml"], "recipe file not found"),
    (["train", "list.yaml"], "must be a mapping of sections"),
    (["train", "string.yaml"], "must be a mapping of sections"),
    (["train", "syntax.yaml"], "YAML syntax error"),
    (["train", "binary.yaml"], "not a UTF-8 text file"),
    ([*TRAIN, "trainer.micro_batch_size=0"], "trainer.micro_batch_size must be in 1..10000000, got 0"),
    ([*TRAIN, "trainer.val_every=0"], "trainer.val_every must be in 1..10000000"),
    ([*TRAIN, "trainer.global_batch_size=0"], "trainer.global_batch_size must be in 1..10000000"),
    ([*TRAIN, "trainer.global_batch_size=5", "--dry-run", "--num-processes", "2"],
     "trainer.global_batch_size 5 cannot be split evenly over 2 processes"),
    ([*TRAIN, "trainer.max_steps=-5"], "trainer.max_steps must be in 1..10000000, got -5"),
    ([*TRAIN, "trainer.ema=1.0"], "trainer.ema must be in [0, 1)"),
    ([*TRAIN, "trainer.precision=fp16"], "is not one of"),
    ([*TRAIN, "trainer.max_steps=true"], "expected int"),
    ([*TRAIN, "trainer.skip_nonfinite=-1"], "trainer.skip_nonfinite must be in 0..10000000"),
    ([*TRAIN, "model.heads=0"], "model.heads must be in 1..1024"),
    ([*TRAIN, "model.heads=3"], "model.heads must divide model.hidden"),
    ([*TRAIN, "model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    ([*TRAIN, "model.K_pre=0", "model.K_fp=0", "model.K_post=0"], "K_pre + K_fp + K_post must be >= 1"),
    ([*TRAIN, "optim.lr=-1"], "optim.lr must be in (0, 1]"),
    ([*TRAIN, "optim.lr=.nan"], "expected a finite number"),
    ([*TRAIN, "optim.betas=[0.9]"], "expected a list of 2 values"),
    ([*TRAIN, "optim.betas=[0.9, 1.5]"], "optim.betas must be in [0, 1)"),
    ([*TRAIN, "data.seq_len=64"], "data.seq_len (64) must be <= model.max_seq_len (32)"),
    ([*TRAIN, "data.corpus=/no/such/corpus.jsonl"], "/no/such/corpus.jsonl"),
    ([*TRAIN, "solver.grad_min=5"], "solver.grad_min must be <= solver.grad_max"),
    ([*TRAIN, "task.eps=0"], "task.eps must be in (0, 1)"),
    ([*TRAIN, "consistency.gap_min=0.5", "consistency.gap_max=0.1"], "consistency.gap_min must be <= consistency.gap_max"),
    ([*TRAIN, "consistency.temperature=0"], "consistency.temperature must be > 0"),
    ([*TRAIN, "consistency.loss=logit_kl", "consistency.teacher=checkpoint"], "teacher_checkpoint is empty"),
    ([*TRAIN, "name=../escape"], "name '../escape': it is not a plain file name"),
    ([*TRAIN, "trainer.max_steps"], "is not of the form key.sub=value"),
    ([*TRAIN, "trainer.maxsteps=3"], "did you mean 'max_steps'"),
    # sizes: every count, size and seed bounded before it is used, whatever its size (issue 24, kind 2)
    ([*TRAIN, "trainer.seed=" + "9" * 4400], "override 'trainer.seed': its value is a number too long to read"),
    ([*TRAIN, "trainer.seed=99999999999999999999"], "trainer.seed: 99999999999999999999 is beyond the 64-bit"),
    ([*TRAIN, "model.hidden=1000000000000"], "model.hidden must be in 1..65536, got 1000000000000"),
    ([*TRAIN, "model.hidden=65536", "model.heads=1024", "model.K_pre=1024"], "model: training 52,923,"),
    ([*TRAIN, "trainer.micro_batch_size=10000000", "trainer.global_batch_size=10000000"],
     "trainer.micro_batch_size: training with micro-batches of 10000000 sequences"),
    (["distill", "run", "distill.round_steps=1", "trainer.max_steps=2000"], "2000 rounds"),
    (["distill", "run", "distill.k=" + "9" * 401], "distill.k: a number of 401 digits is beyond"),
    ([*SAMPLE[:2], "--budget", "12", "--num-samples", "10000000", "--batch-size", "10000000"],
     "--batch-size: a batch of 10000000 samples"),
    (["sample", "run", "--light", "run", "--model-schedule", "L1000000000000,H1"], "covers more than 1000000 steps"),
    (["sample", "run", "--light", "run", "--model-schedule", "L500000,H1"], "the blocks it spends per sample must be"),
    (["sample", "run", "--shortcut", "run", "--steps", "10000000000", "--full-steps", "9999999999"],
     "--steps must be in 1..1000000"),
    (["evaluate", "run", "--shortcut", "run", "--steps", "10000000000", "--full-steps", "9999999999"],
     "--steps must be in 1..1000000"),
    (["sweep", "run", "--steps", "10000000", "--iters", "10000000"], "--steps values must be in 1..1000000"),
    (["sweep", "run", "--steps", "100000", "--iters", "1000"], "--steps 100000 x --iters 1000: the blocks per sample"),
    (["lagged-kl", "run", "run", "--steps", "1000000000000000000"], "--steps and --lags values must be in 1..1000000"),
    # work before validation: every run, judge and extractor resolved before anything is drawn (issue 24, kind 1)
    (["evaluate", "run", "--shortcut", "sc-img", "--steps", "4", "--full-steps", "2", "--judge", "smollm2-135m"],
     "sc-img was trained on the base weights of"),
    (["sweep", "run", "--steps", "2", "--iters", "1", "--judge", "no-such-judge"], "unknown judge 'no-such-judge'"),
    (["evaluate", "img", "--judge", "run", "--metrics", "fid", "--budget", "2"], "run is a denoiser"),
    (["evaluate", "img", "--inception-weights", "garbage.pth", "--metrics", "fid", "--budget", "2"],
     "garbage.pth: not a readable weights file"),
    (["evaluate", "img", "--inception-weights", "empty.pth", "--metrics", "fid", "--budget", "2"],
     "empty.pth: not a readable weights file"),
    # file names from user input stay in the folder named (kind 3)
    (["trace-plot", "trace.jsonl", "--labels", "../../escaped", "--out-dir", "notes"], "'../../escaped': it is not a plain"),
    (["trace-plot", "trace.jsonl", "--labels", "a/b", "--report-dir", "notes"], "'a/b': it is not a plain file name"),
    (["trace-plot", "trace.jsonl", "--labels", "x\x07y"], "it holds a control character"),
    # damaged resume files named (kind 4; damaged caches heal: tests/data/test_cache.py)
    (["trace-plot", "cut-trace.jsonl"], "is not a JSON record (a damaged trace file)"),
    (["trace-plot", "binary-trace.jsonl"], "binary-trace.jsonl: not a trace file (not UTF-8 text)"),
    (["trace-plot", "string-trace.jsonl"], "string-trace.jsonl: row 1 is not a trace row"),
    (["stage-plot", "garbage-result/stage", "--judge", "smollm2-135m"], "train_result.json: not a readable training"),
    (["step-importance", "run", "light", "--report-dir", "importance", "--saving", "0.1", "--steps", "10"],
     "step-importance.json: not a readable step-importance file"),
    # a run or recipe of the wrong kind named as such (kind 5)
    (["sample", "vq-test", "--budget", "4"], "is a VQ image tokenizer run, not a denoiser"),
    (["sample", "clf", "--budget", "4"], "is an image classifier run, not a denoiser"),
    (["sample", "sc-img", "--budget", "4"], "is a MIGM-Shortcut run, not a denoiser"),
    (["sample", "img", "--shortcut", "run", "--steps", "4", "--full-steps", "2"], "run is a denoiser"),
    (["train", "tiny.yaml", "--run-dir", "sc-img"], "sc-img/recipe.yaml is a MIGM-Shortcut recipe"),
    (["distill", "run", "--recipe", str(ROOT / "recipes" / "tiny-vq.yaml")], "tiny-vq.yaml is a VQ image tokenizer recipe"),
    (["distill", "img"], "SDTT distils text (MDLM) denoisers"),
    (["shortcut", "run", "--recipe", "tiny.yaml"], "tiny.yaml is a denoiser"),
    (["inspect", str(ROOT / "recipes" / "claims-small.yaml")], "is a claims file: nothing to inspect"),
    # silently accepted before (kind 6)
    (["evaluate", "run", "--checkpoints", ""], "--checkpoints names nothing"),
    (["evaluate", "run", "--judge", " "], "--judge is empty"),
    (["evaluate", "run", "--lm-eval", ""], "--lm-eval names nothing"),
    (["evaluate", "run", "--budget", ","], "--budget names nothing"),
    (["evaluate", "run", "--metrics", "valppl", "--lm-eval-limit", "3"], "apply to --lm-eval tasks"),
    (["shortcut", "run", "--recipe", "sc.yaml", "collect.cfg=2"], "guidance is for image bases"),
    # run directories
    (["train", "tiny.yaml", "--run-dir", "run", "model.hidden=64", "model.heads=4"], "holds a different recipe"),
    (["train", "tiny.yaml", "--run-dir", "notes"], "holds no recipe.yaml"),
    (["train", "tiny.yaml", "--run-dir", "afile.txt"], "is not an empty directory"),
    (["train", "tiny.yaml", "--run-dir", "broken-latest"], "names 'step-000000999', which is not a checkpoint folder"),
    (["train", "tiny.yaml", "--run-dir", "no-latest"], "but no 'latest' pointer"),
    (["train", "tiny.yaml", "--run-dir", "garbage-progress"], "progress.pt: not a readable train-state file"),
    (["train", "tiny.yaml", "--run-dir", "pickled-progress"], "progress.pt: refused"),
    (["train", "tiny.yaml", "--run-dir", "truncated-weights"], "model.safetensors: not a readable safetensors file"),
    (["train", "tiny.yaml", "--run-dir", "bad-metrics"], "metrics.jsonl: line 2 is not a JSON record"),
    # the command line itself
    (["train"], "Missing argument"),
    (["train", "tiny.yaml", "--bogus"], "No such option: --bogus"),
    (["bogus"], "No such command 'bogus'"),
    (["--bogus"], "No such option: --bogus"),
    # inspect
    (["inspect", "nope.yaml"], "recipe file not found"),
    (["inspect", "tiny.yaml", "--iters", "-1"], "--iters must be in 0..10000"),
    (["inspect", "tiny.yaml", "--iters", "x"], "Invalid value for '--iters'"),
    (["inspect", "list.yaml"], "must be a mapping of sections"),
    (["inspect", "corrupt-config/checkpoints/step-000000003"], "config.json: not valid JSON"),
    # sample
    (["sample", "run"], "--budget is required"),
    (["sample", "run", "--budget", "abc"], "'--budget' / '-b'"),
    (["sample", "run", "--budget", "0"], "--budget must be in 1..1000000, got 0"),
    (["sample", "run", "--budget", "10000000000000000000000000"], "--budget must be in 1..1000000"),
    ([*SAMPLE, "--num-samples", "1e11"], "'--num-samples'"),
    ([*SAMPLE, "--num-samples", "0"], "--num-samples must be in 1.."),
    ([*SAMPLE, "--batch-size", "0"], "--batch-size must be in 1.."),
    ([*SAMPLE, "--gamma-changed-max", "1.5"], "--gamma-changed-max must be in 0.0..1.0, got 1.5"),
    ([*SAMPLE, "--gamma-mask-min", "0.95", "--gamma-mask-max", "0.5"], "--gamma-mask-min must be <= --gamma-mask-max"),
    ([*SAMPLE, "--top-p", "0"], "--top-p must be in (0, 1]"),
    ([*SAMPLE, "--tol", "-1"], "--tol must be a positive number"),
    ([*SAMPLE, "--seed", "-3"], "--seed must be in 0.."),
    ([*SAMPLE, "--device", "bogus"], "--device 'bogus' is not a device"),
    ([*SAMPLE, "--device", "cuda:99"], "--device cuda:99"),
    ([*SAMPLE, "--schedule", "bogus"], "--schedule must be one of"),
    ([*SAMPLE, "--reuse", "bogus"], "--reuse must be one of"),
    ([*SAMPLE, "--out", "samples-dir"], "--out samples-dir is a directory"),
    ([*SAMPLE, "--out", "afile.txt/x.jsonl"], "is a file, not a directory"),
    ([*SAMPLE, "--out", "existing.jsonl"], "exists; pass --overwrite"),
    ([*SAMPLE, "--length", "0"], "--length must be >= 1"),
    ([*SAMPLE, "--length", "999"], "--length must be in 1..32"),
    (["sample", "run", "--budget", "8", "--steps", "10"], "cannot be spent exactly in 10 steps"),
    (["sample", "nowhere", "--budget", "8"], "nowhere: no such run or checkpoint folder"),
    (["sample", "corrupt-config", "--budget", "8"], "config.json: not valid JSON"),
    (["sample", "truncated-weights", "--budget", "8", "--no-ema"], "model.safetensors: not a readable safetensors file"),
    (["sample", "wrong-shape", "--budget", "8"], "the weights do not fit the model its config describes"),
    (["sample", "nan-weights", "--budget", "8"], "holds NaN or infinite values"),
    (["sample", "broken-latest", "--budget", "8"], "which is not a checkpoint folder"),
    (["sample", "pickled-progress", "--budget", "8"], "progress.pt: refused"),
    # evaluate
    ([*EVAL, "--latency-repeats", "0"], "--latency-repeats must be in 1.."),
    ([*EVAL, "--val-batches", "0"], "--val-batches must be in 1.."),
    (["evaluate", "run", "--report-dir", "afile.txt"], "--report-dir afile.txt is a file"),
    ([*EVAL[:2], "--metrics", "bogus"], "unknown metric(s) bogus"),
    ([*EVAL[:2], "--metrics", ""], "--metrics names nothing"),
    ([*EVAL, "--budget", "1,x"], "--budget takes comma-separated integers"),
    ([*EVAL[:2], "--budget", "0"], "--budget values must be in 1.."),
    ([*EVAL, "--reuse", "bogus"], "unknown reuse policy bogus"),
    ([*EVAL, "--device", "bogus"], "is not a device"),
    ([*EVAL, "--lm-eval-draws", "0"], "--lm-eval-draws must be in 1..10000000"),
    (["evaluate", "run", "corrupt-config", "--metrics", "valppl", "--report-dir", "reports"], "config.json: not valid JSON"),
    (["evaluate", "nowhere", "--metrics", "valppl"], "no such run or checkpoint folder"),
    # convert
    (["convert", "run", "--map", "1,1,1", "--out", "converted"], "already a fixed-point model"),
    (["convert", "run", "--map", "bogus", "--run-dir", "converted"], "layer map 'bogus'"),
    (["convert", "run", "--map", "1,1,1", "--run-dir", "afile.txt"], "is not an empty directory"),
    (["convert", "run", "--map", "1,1,1", "--run-dir", "converted", "--heads", "0"], "--heads must be in 1..1024, got 0"),
    (["convert", "run", "--map", "1,1,1", "--run-dir", "converted", "--injection", "bogus"], "--injection must be"),
    (["convert", "nowhere", "--map", "1,2,3", "--run-dir", "converted"], "nowhere"),
    (["convert", "run", "--run-dir", "converted"], "Missing option '--map'"),
    # cka
    (["cka", "run", "--timesteps", "0"], "--timesteps must be in (0, 1]"),
    (["cka", "run", "--timesteps", "a,b"], "--timesteps takes comma-separated numbers"),
    (["cka", "run", "--batches", "0"], "--batches must be in 1..10000"),
    (["cka", "run", "--max-tokens", "1"], "--max-tokens must be in 2..10000000"),
    (["cka", "run", "--report-dir", "afile.txt"], "--report-dir afile.txt is a file"),
    (["cka", "run", "--out", "afile.txt"], "--report-dir afile.txt is a file"),  # the old name, hidden
    (["cka", "run", "--out", "a", "--report-dir", "b"], "--out is the old name of --report-dir; give --report-dir only"),
    (["cka", "nowhere"], "no such run or checkpoint folder"),
    (["cka", "corrupt-config"], "config.json: not valid JSON"),
    # consistency and adapt
    (["consistency", "nowhere"], "no such run or checkpoint folder"),
    (["consistency", "run", "--recipe", "list.yaml"], "must be a mapping of sections"),
    (["consistency", "run", "--recipe", "nope.yaml"], "recipe file not found"),
    (["consistency", "run", "consistency.gap_min=0.5", "consistency.gap_max=0.1"], "gap_min must be <="),
    (["consistency", "run", "consistency.weight=-1"], "consistency.weight must be >= 0"),
    (["consistency", "broken-latest"], "which is not a checkpoint folder"),
    (["consistency", "run", "--run-dir", "notes"], "holds no recipe.yaml"),
    (["adapt", "run"], "Missing option '--teacher'"),
    (["adapt", "run", "--teacher", "nowhere"], "no such run or checkpoint folder"),
    (["adapt", "run", "--teacher", "run", "consistency.temperature=0"], "consistency.temperature must be > 0"),
    (["adapt", "run", "--teacher", "corrupt-config"], "config.json: not valid JSON"),
    # distill (SDTT)
    (["distill", "nowhere"], "no such run or checkpoint folder"),
    (["distill", "broken-latest"], "which is not a checkpoint folder"),
    (["distill", "run", "--recipe", "nope.yaml"], "recipe file not found"),
    (["distill", "run", "--run-dir", "notes"], "holds no recipe.yaml"),
    (["distill", "run", "distill.loss=none"], "cofre distill needs a distill.loss"),
    (["distill", "run", "distill.loss=kl"], "distill.loss: 'kl' is not one of"),
    (["distill", "run", "distill.k=1"], "distill.k must be in 2..1024, got 1"),
    (["distill", "run", "distill.round_steps=0"], "distill.round_steps must be in 1..10000000, got 0"),
    (["distill", "run", "distill.start_steps=4", "distill.round_steps=1", "trainer.max_steps=5"],
     "leave the student under one step"),
    (["distill", "run", "consistency.loss=hidden_mse"], "consistency.loss must be 'none'"),
    (["adapt", "corrupt-config", "--teacher", "run"], "config.json: not valid JSON"),
    # sweep, trace-plot, lagged-kl
    (["sweep", "run"], "give exactly one sweep"),
    (["sweep", "run", "--steps", "2", "--schedules", "all"], "give exactly one sweep"),
    (["sweep", "run", "--steps", "2"], "needs both --steps and --iters"),
    (["sweep", "run", "--schedules", "fixed,zigzag", "--budget", "8"], "unknown schedule zigzag"),
    (["sweep", "run", "--gamma-mask", "0.9:0.1", "--gamma-changed", "0.2", "--budget", "8"], "min > max"),
    (["sweep", "nowhere", "--steps", "2", "--iters", "1"], "no such run or checkpoint folder"),
    (["trace-plot", "existing.jsonl"], "holds no trace rows"),
    (["trace-plot", "nope.jsonl"], "is not a trace file"),
    (["lagged-kl", "run", "run", "--lags", "0"], "--steps and --lags values must be in 1.."),
    (["lagged-kl", "nowhere", "run"], "no such run or checkpoint folder"),
]


def test_corpus_covers_every_subcommand() -> None:
    assert len(CASES) >= 60
    commands = {args[0] for args, _ in CASES}
    assert {"train", "consistency", "adapt", "inspect", "sample", "evaluate", "convert", "cka", "sweep", "trace-plot",
            "lagged-kl"} <= commands


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_clean_line_and_changes_nothing(workspace: Path, args: list[str], fragment: str) -> None:
    before = snapshot(workspace)
    assert_clean_error(run_in_process(args, workspace), fragment)
    assert snapshot(workspace) == before  # every file byte-identical, and none added or removed


@pytest.mark.parametrize("index", [0, 13, 44, 55, 76])
def test_subprocess_matches_in_process(workspace: Path, index: int) -> None:
    """The in-process harness gives what a real `python -m cofre` process prints."""
    args, fragment = CASES[index]
    before = snapshot(workspace)
    real, here = run_subprocess(args, workspace), run_in_process(args, workspace)
    assert_clean_error(real, fragment)
    assert (real.code, real.stderr) == (here.code, here.stderr)
    assert snapshot(workspace) == before


@pytest.mark.parametrize("err, fragment", [
    (OSError(28, "No space left on device", "x"), "No space left on device: x; free some space and rerun"),
    (PermissionError(13, "Permission denied", "x"), "Permission denied: x; check the permissions of the path"),
])
def test_os_errors_are_one_line(workspace: Path, monkeypatch: pytest.MonkeyPatch, err: OSError, fragment: str) -> None:
    """A full disk or a denied permission anywhere a command writes is one line too (here: taking the run's lock)."""
    from cofre.runs import RunDir

    def fail(self: RunDir) -> None:
        raise err

    monkeypatch.setattr(RunDir, "lock", fail)
    before = snapshot(workspace)
    assert_clean_error(run_in_process(["train", "tiny.yaml", "--run-dir", "run"], workspace), fragment)
    assert snapshot(workspace) == before

