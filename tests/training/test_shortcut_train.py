"""`cofre shortcut`: trajectories drawn from the base sampler while S trains, whose training pairs line up with the base
model's post-norm features, training with train and held-out MSE, resume, the collection precision that sampling
follows, and the shortcut sampler and evaluation through the CLI (tiny image runs built in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from image_runs import make_classifier_run, make_image_run, make_vq_run
from test_bad_inputs import run_in_process

from cofre.errors import CofreError
from cofre.sampling.generate import open_checkpoint
from cofre.training.shortcut import TrajectorySource, masked_mse, read_shortcut_recipe, shortcut_recipe

STAGE = """\
kind: shortcut
name: sc-test
shortcut: {width_ratio: 0.5, heads: 2, frequency_dim: 16}
collect: {batch_size: 2, refresh_every: 2, val_trajectories: 2, steps: 5, cfg: 1.0, seed: 3}
optim: {lr: 1.0e-3, warmup_steps: 2}
trainer: {max_steps: 4, batch_size: 4, ema: 0.9, log_every: 2, val_every: 2, val_pairs: 8, ckpt_every: 2}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shortcut-runs")
    vq = make_vq_run(root)
    stage = root / "sc-test.yaml"
    stage.write_text(STAGE)
    return {"root": root, "plain": perturbed(make_image_run(root, vq, (2, 0, 0), "img-plain")), "stage": stage,
            "fp": make_image_run(root, vq, (1, 1, 1), "img-fp")}


def perturbed(run: Path) -> Path:
    """The run with noise on every weight: adaLN-zero blocks at init are the identity, and their features would not
    change at still-masked positions (nothing for S to learn)."""
    from safetensors.torch import load_file, save_file

    weights = run / "checkpoints" / "step-000000001" / "model.safetensors"
    generator = torch.Generator().manual_seed(0)
    state = {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in load_file(weights).items()}
    save_file(state, str(weights))
    return run


def test_training_pairs_line_up_with_the_base_models_post_norm_features(runs: dict[str, Path]) -> None:
    """Each pair's target f_{s+1} is the base model's features at the step after f_s: recomputing the network on the
    inputs z_s and z_{s+1} gives f_s and f_{s+1} as the head's normalised input (its norm_final, before the adaLN
    modulation), and z_{s+1} only unmasks tokens of z_s. Pools are drawn again identically by index."""
    recipe = shortcut_recipe(runs["plain"], runs["stage"], ["collect.cfg=0.0"])
    assert recipe.collect.precision == "fp32"  # auto, resolved on this CPU and recorded
    ckpt = open_checkpoint(runs["plain"], device="cpu")
    model, mask_id = ckpt.model, ckpt.model.cfg.mask_id
    source = TrajectorySource(ckpt, recipe)
    pool = source.pool(0)
    assert pool.tokens.shape[:2] == (2, 5) and pool.features.dtype == torch.float16
    assert {int(s) for s in pool.index[:, 1]} <= set(range(4))  # N = 5 steps: pairs (0, 1) ... (3, 4)
    f_s, z_s, z_next, f_next = pool.batch(list(range(len(pool))))
    assert ((z_s == mask_id) | (z_s == z_next)).all() and ((z_next == mask_id) <= (z_s == mask_id)).all()
    assert ((z_s == mask_id) & (z_next != mask_id)).any(dim=1).all()  # every pair commits a token
    with torch.no_grad():
        for name, z, f in (("f_s", z_s, f_s), ("f_next", z_next, f_next)):
            errors = []
            for cls in range(model.cfg.num_classes):  # the label is not stored: the right one matches exactly
                cond = model.conditioning(torch.full((len(z),), cls), z.shape[1])
                features = model.head_features(model.post_stack(model.pre_stack(z, cond), cond))
                errors.append((features - f).abs().amax(dim=(1, 2)))
            assert (torch.stack(errors).amin(0) < 5e-3).all(), name  # fp16 storage
    assert float(masked_mse(f_next, f_next, z_next, mask_id)) == 0.0
    again, other, held_out = source.pool(0), source.pool(1), source.held_out()
    assert torch.equal(again.tokens, pool.tokens) and torch.equal(again.features, pool.features)
    assert not torch.equal(other.tokens, pool.tokens) and not torch.equal(held_out.tokens, pool.tokens)


def test_masked_mse_counts_only_still_masked_positions() -> None:
    z_next = torch.tensor([[5, 9, 9]])  # mask id 9: positions 1 and 2 are still masked
    predicted, target = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    target[0, 0] = 100.0  # a revealed position: ignored
    target[0, 1] = torch.tensor([1.0, 3.0])
    assert float(masked_mse(predicted, target, z_next, 9)) == pytest.approx((1 + 9) / 4)


@pytest.fixture(scope="module")
def trained(runs: dict[str, Path]) -> Path:
    outcome = run_in_process(["shortcut", str(runs["plain"]), "--recipe", str(runs["stage"])], runs["root"])
    assert outcome.code == 0, outcome.stderr
    return runs["root"] / "runs" / "sc-test"


def test_shortcut_trains_resumes_samples_and_evaluates(runs: dict[str, Path], trained: Path) -> None:
    root, run = runs["root"], trained
    assert (run / "checkpoints" / "step-000000004" / "ema.safetensors").is_file()
    result = json.loads((run / "train_result.json").read_text())
    assert result["base_run"].endswith("img-plain/checkpoints/step-000000001") and result["final_step"] == 4
    assert 0 < result["parameter_fraction"] < 1 and result["val_mse"] > 0 and result["train_mse"] > 0
    assert result["precision"] == "fp32" and "precision: fp32" in (run / "recipe.yaml").read_text()
    # 4 steps, a fresh pool every 2: 2 pools of 2 labels x 2 (guidance) trajectories x 4 pairs; 4 x 4 draws
    assert result["train_trajectories"] == 8 and result["train_pairs"] == 32 and result["pair_draws"] == 0.5
    assert result["val_trajectories"] == 4 and result["val_pairs"] == 8
    assert not (run / "trajectories").exists()  # nothing is stored
    validations = [m for m in _metrics(run) if "val_mse" in m]
    assert [m["step"] for m in validations] == [2, 4] and all(m["train_mse"] > 0 for m in validations)
    assert "kind: shortcut" in (run / "recipe.yaml").read_text()
    again = run_in_process(["shortcut", str(runs["plain"]), "--recipe", str(runs["stage"]), "trainer.max_steps=6"], root)
    assert again.code == 0, again.stderr  # resumes at step 4 and draws pool 2 for steps 4 and 5
    resumed = json.loads((run / "train_result.json").read_text())
    assert resumed["start_step"] == 4 and resumed["train_pairs"] == 48 and "mse train" in again.stdout

    refused = run_in_process(["sample", str(runs["plain"]), "--shortcut", str(run), "--steps", "6", "--full-steps", "2",
                              "--cfg", "1", "--precision", "bf16", "--out", str(root / "bf16")], root)
    assert refused.code == 2 and "collected at fp32" in refused.stderr and len(refused.stderr.splitlines()) == 1

    out = root / "sampled"
    sampled = run_in_process(["sample", str(runs["plain"]), "--shortcut", str(run), "--steps", "6", "--full-steps", "2",
                              "--num-samples", "3", "--batch-size", "3", "--cfg", "1", "--out", str(out)], root)
    assert sampled.code == 0, sampled.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["blocks_spent_per_batch"] == [2 * 2] and manifest["shortcut"]["full_steps"] == [0, 3]
    assert manifest["shortcut"]["shortcut_steps"] == 4 and manifest["settings"]["budget"] == 4
    assert manifest["settings"]["precision"] == "fp32" and manifest["shortcut"]["collect_precision"] == "fp32"

    report = root / "report"
    classifier = make_classifier_run(root, image_size=8)
    evaluated = run_in_process(["evaluate", str(runs["plain"]), "--shortcut", str(run), "--steps", "6", "--full-steps",
                                "2", "--num-samples", "4", "--batch-size", "4", "--latency-warmup", "0",
                                "--latency-repeats", "2", "--judge", str(classifier), "--reference-images", "20",
                                "--report-dir", str(report)], root)
    assert evaluated.code == 0, evaluated.stderr
    summary = json.loads(next(report.glob("shortcut-*.json")).read_text())
    assert [r["full_blocks"] for r in summary["rows"]] == [12, 4, 4] and summary["settings"]["precision"] == "fp32"
    assert summary["rows"][2]["shortcut_blocks"] > 0 and next(report.glob("shortcut-*.png")).is_file()
    fid = summary["rows"][0]["quality"]["fid"]
    assert fid["value"] >= 0 and fid["extractor"] == "classifier:clf-test" and fid["generated_images"] == 4
    assert fid["reference_images"] == 20 and "FID" in summary["quality_how"]


@pytest.mark.parametrize("args, message", [
    (["--full-steps", "2"], "--full-steps needs --shortcut"),
    (["--shortcut", "x", "--steps", "4"], "--shortcut needs --steps N"),
    ([], "--budget is required"),
    (["--shortcut", "x", "--steps", "4", "--full-steps", "5"], "--full-steps must be between 1 and --steps"),
])
def test_bad_shortcut_options_are_one_line(runs: dict[str, Path], args: list[str], message: str) -> None:
    outcome = run_in_process(["sample", str(runs["plain"]), *args], runs["root"])
    assert outcome.code == 2 and message in outcome.stderr and len(outcome.stderr.splitlines()) == 1


def test_a_shortcut_runs_only_with_the_base_it_learned_from(runs: dict[str, Path], trained: Path) -> None:
    from cofre.training.shortcut import load_shortcut

    other = open_checkpoint(runs["fp"], device="cpu")
    with pytest.raises(CofreError, match="was trained on the base weights"):
        load_shortcut(trained, other.model, other.identity["sha256"])
    with pytest.raises(CofreError, match="not a MIGM-Shortcut run"):
        load_shortcut(runs["plain"], other.model, other.identity["sha256"])


def test_a_shortcut_of_pre_norm_features_is_refused(trained: Path, tmp_path: Path) -> None:
    """A shortcut checkpoint written before S predicted the head's normalised input (no shortcut.features in its
    config) is refused in one line instead of being run on the wrong features."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained / "checkpoints" / "step-000000004", old)
    config = json.loads((old / "config.json").read_text())
    del config["shortcut"]["features"]
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(CofreError, match="regressed the features before the head's norm") as err:
        read_shortcut_recipe(old)
    assert "\n" not in str(err.value)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def test_text_shortcut_trains_and_samples(tmp_path: Path) -> None:
    """A text base run: trajectories of the ancestral sampler, S with rotary keys, `cofre sample --shortcut` writing
    the cost beside every sample."""
    from cofre.config import recipe_from_dict
    from cofre.models import Denoiser
    from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files

    recipe = recipe_from_dict({"name": "txt", "model": {"vocab_size": 50258, "hidden": 32, "heads": 4, "cond_dim": 16,
                                                        "dropout": 0.0, "max_seq_len": 16, "K_pre": 2},
                               "data": {"corpus": "wiki-sample", "seq_len": 16}})
    torch.manual_seed(0)
    model = Denoiser(recipe.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    base = tmp_path / "txt"
    write_checkpoint_files(staging_dir(base / "checkpoints", 1), model, None, recipe, {"progress": {"step": 1}})
    publish_checkpoint(base / "checkpoints", 1, 1)
    stage = tmp_path / "sc-txt.yaml"
    stage.write_text(STAGE.replace("sc-test", "sc-txt").replace("cfg: 1.0, ", "").replace("steps: 5", "steps: 8"))
    trained = run_in_process(["shortcut", str(base), "--recipe", str(stage)], tmp_path)
    assert trained.code == 0, trained.stderr
    out = tmp_path / "samples.jsonl"
    sampled = run_in_process(["sample", str(base), "--shortcut", "runs/sc-txt", "--steps", "8", "--full-steps", "3",
                              "--num-samples", "2", "--batch-size", "2", "--out", str(out)], tmp_path)
    assert sampled.code == 0, sampled.stderr
    record = json.loads(out.read_text().splitlines()[0])
    assert record["blocks_per_step"] == [2, 0, 0, 2, 0, 2, 0, 0] and record["blocks_spent"] == 6
    assert record["shortcut"]["trained_steps"] == 8 and 0 < record["shortcut"]["shortcut_blocks"] < 5
    assert "% saved" in sampled.stdout
