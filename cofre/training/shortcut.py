"""`cofre shortcut RUN --recipe STAGE.yaml`: collect the base run's own sampling trajectories, then train the shortcut
S of MIGM-Shortcut on them (cofre.sampling.shortcut), in a new run directory that records its base run.

Trajectories: the base model's sampler with every step full (N = collect.steps, guidance collect.cfg for images) keeps
each step's input tokens z_s and final pre-head features f_s; each sampler batch is one shard on disk
(`trajectories/shard-*.safetensors`, features in fp16), written atomically, so an interrupted collection resumes.
Training pairs are teacher-forced, one step: (f_s, tokens committed between z_s and z_{s+1}, r_{s+1}) -> f_{s+1}, read
from the shards pair by pair (streamed: only the pairs of a batch are in memory). Loss: MSE on the positions still
masked in z_{s+1} (only those feed the head at step s+1); AdamW, EMA of S's weights. A pair whose step commits
nothing is left out (the sampler reuses the features there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from cofre.config import ModelConfig, OptimConfig, _at_least, _rule, apply_overrides, config_from_dict, read_yaml, recipe_to_dict
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.runs import RunDir, TrainClock, atomic_write_text, time_before
from cofre.sampling.budget import BudgetPlan
from cofre.sampling.shortcut import (Shortcut, ShortcutConfig, ShortcutSteps, TrajectoryRecorder, full_steps,
                                     parameter_fraction, predict_features, shortcut_plan)
from cofre.training.checkpoint import (EMA_FILE, MODEL_FILE, kind_config, load_train_state, load_weights_into,
                                       publish_checkpoint, resolve_checkpoint, run_root, staging_dir,
                                       write_checkpoint_files)
from cofre.training.ema import EMA
from cofre.training.optim import build_optimizer, build_scheduler, optimizer_step

SHORTCUT_KIND = "shortcut"
RESUMABLE = {"trainer.max_steps"}
TRAJECTORIES = "trajectories"


@dataclass
class CollectConfig:
    """Which trajectories of the base run's own sampler S learns from."""

    trajectories: int = 256  # sampled sequences (with guidance each also gives an unconditional trajectory)
    val_trajectories: int = 32  # of those, held out for validation (the last shards)
    steps: int = 16  # N: every one a full step; use the N you will sample with
    batch_size: int = 32  # trajectories per sampler batch = per shard
    cfg: float = 0.0  # images: guidance weight w of the sampler (0: no unconditional pass)
    seed: int = 1

    def validate(self, where: str = "collect") -> None:
        _at_least(where, self, 1, "trajectories", "steps", "batch_size")
        _at_least(where, self, 0, "val_trajectories", "cfg", "seed")
        _rule(self.steps >= 2, f"{where}.steps must be >= 2 (a pair needs two steps), got {self.steps}")
        _rule(0 < self.val_trajectories < self.trajectories,
              f"{where}.val_trajectories must be between 1 and trajectories - 1, got {self.val_trajectories}")


@dataclass
class ShortcutTrainerConfig:
    max_steps: int = 1000
    batch_size: int = 32  # training pairs per step
    ema: float = 0.999
    seed: int = 1
    log_every: int = 50
    val_every: int = 250
    val_pairs: int = 256  # held-out pairs scored at each validation
    ckpt_every: int = 500
    keep_last: int = 2

    def validate(self, where: str = "trainer") -> None:
        _at_least(where, self, 1, "max_steps", "batch_size", "log_every", "val_every", "val_pairs", "ckpt_every")
        _at_least(where, self, 0, "seed", "keep_last")
        _rule(0 <= self.ema < 1, f"{where}.ema must be in [0, 1), got {self.ema}")


@dataclass
class ShortcutRecipe:
    """A shortcut stage: `kind: shortcut`, laid over by `cofre shortcut RUN` with the base run's checkpoint."""

    kind: Literal["shortcut"] = "shortcut"
    name: str = "shortcut"
    base_run: str = ""  # the base checkpoint folder (set by `cofre shortcut` from RUN)
    base_sha256: str = ""  # of the base weights the trajectories came from (EMA when present)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)  # hidden and modality: from the base run
    collect: CollectConfig = field(default_factory=CollectConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.01, warmup_steps=50))
    trainer: ShortcutTrainerConfig = field(default_factory=ShortcutTrainerConfig)

    def validate(self) -> None:
        _rule(self.name.strip() not in ("", ".", "..") and "/" not in self.name,
              f"name must be a non-empty file name (no '/'), got {self.name!r}")
        for name in ("shortcut", "collect", "optim", "trainer"):
            getattr(self, name).validate(name)


def shortcut_recipe(base: Path, stage: Path | None, overrides: list[str]) -> ShortcutRecipe:
    """The stage recipe (partial YAML) and overrides, with the base run's checkpoint, width and modality set."""
    from cofre.sampling.generate import checkpoint_identity
    from cofre.training.checkpoint import checkpoint_recipe

    folder = resolve_checkpoint(base)
    model = checkpoint_recipe(folder).model
    return shortcut_values(model, str(folder), checkpoint_identity(folder, ema=True)["sha256"], stage, overrides)


def shortcut_values(model: ModelConfig, base_run: str, base_sha256: str, stage: Path | None,
                    overrides: list[str]) -> ShortcutRecipe:
    """The stage recipe and overrides over a base model: its checkpoint, weights' sha256, width and modality set."""
    values = read_yaml(stage) if stage is not None else {}
    if values.get("kind", SHORTCUT_KIND) != SHORTCUT_KIND:
        raise CofreError(f"{stage}: not a shortcut recipe (kind: {values.get('kind')})")
    values = apply_overrides(values, overrides)
    values["name"] = values.get("name") or (stage.stem if stage is not None else f"{run_root(Path(base_run)).name}-shortcut")
    values["base_run"] = base_run
    values["base_sha256"] = base_sha256
    values["shortcut"] = {**values.get("shortcut", {}), "hidden": model.hidden, "modality": model.modality}
    try:
        recipe = config_from_dict(ShortcutRecipe, values)
        recipe.validate()
    except CofreError as err:
        raise CofreError(f"{stage or 'shortcut recipe'}: {err}") from None
    return recipe


# -- trajectories ------------------------------------------------------------------------------------------------
def _collect_settings(recipe: ShortcutRecipe, budget: int) -> Any:
    """The sample settings of the base run's sampler with every one of the N steps full (`budget` blocks)."""
    from cofre.sampling.generate import SampleSettings
    from cofre.sampling.generate_images import ImageSampleSettings

    c = recipe.collect
    if recipe.shortcut.modality == "image":
        return ImageSampleSettings(budget=budget, steps=c.steps, num_samples=c.batch_size, batch_size=c.batch_size,
                                   seed=c.seed, cfg=c.cfg, precision="fp32")
    return SampleSettings(budget=budget, steps=c.steps, num_samples=c.batch_size, batch_size=c.batch_size, seed=c.seed,
                          precision="fp32")


def collect_trajectories(recipe: ShortcutRecipe, folder: Path, console: Console) -> list[Path]:
    """Shards of (tokens [b, N, L], features [b, N, L, D] fp16) from the base sampler; shards already written are
    kept (an interrupted collection resumes; each shard's seed is (seed, shard index))."""
    from cofre.sampling.generate import open_checkpoint

    c = recipe.collect
    ckpt = open_checkpoint(recipe.base_run, ema=True, device="auto")
    if ckpt.identity["sha256"] != recipe.base_sha256:
        raise CofreError(f"the weights of {recipe.base_run} changed since this shortcut run started; start a new run")
    budget = shortcut_plan(ckpt.recipe.model, c.steps, c.steps, None, "decreasing").budget  # all N steps full
    recorder = TrajectoryRecorder()
    sampler, labels_of, length = _base_sampler(ckpt, recipe, budget, recorder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "meta.json", json.dumps({"collect": dataclasses.asdict(c), "base_run": recipe.base_run,
                                                        "base_sha256": recipe.base_sha256, "length": length}, indent=1))
    shards = []
    sizes = [min(c.batch_size, c.trajectories - i) for i in range(0, c.trajectories, c.batch_size)]
    started = time.perf_counter()
    for index, size in enumerate(sizes):
        path = folder / f"shard-{index:05d}.safetensors"
        shards.append(path)
        if path.is_file():
            continue
        generator = torch.Generator(ckpt.device).manual_seed(c.seed * 1_000_003 + index)
        if labels_of is not None:
            sampler.sample(labels_of(size, generator), generator)
        else:
            sampler.sample(size, generator)
        tokens, features = torch.stack(recorder.tokens, 1), torch.stack(recorder.features, 1)  # [rows, N, L(, D)]
        tmp = folder / f".{path.name}.tmp"
        save_file({"tokens": tokens.to(torch.int32).contiguous(), "features": features.contiguous()}, str(tmp))
        tmp.replace(path)
        console.print(f"trajectories: shard {index + 1}/{len(sizes)} ({size} samples, {tokens.shape[0]} trajectories, "
                      f"{time.perf_counter() - started:.0f}s)")
    return shards


def _base_sampler(ckpt: Any, recipe: ShortcutRecipe, budget: int, recorder: TrajectoryRecorder) -> tuple[Any, Any, int]:
    """The base run's sampler at the collection settings, how it draws its labels (images) and the sequence length."""
    settings = _collect_settings(recipe, budget)
    if recipe.shortcut.modality == "image":
        from cofre.data.image_tokenizers import load_tokenizer
        from cofre.sampling.generate_images import build_image_sampler

        data = ckpt.recipe.data
        grid = load_tokenizer(data.tokenizer, ckpt.device, image_size=data.image_size).grid
        sampler = build_image_sampler(ckpt, settings, grid)
        sampler.hook = recorder
        classes = ckpt.recipe.model.num_classes

        def labels_of(size: int, generator: torch.Generator) -> Tensor:
            return torch.randint(0, classes, (size,), generator=generator, device=ckpt.device)

        return sampler, labels_of, grid[0] * grid[1]
    from cofre.sampling.generate import build_sampler

    sampler = build_sampler(ckpt, settings)
    sampler.hook = recorder
    return sampler, None, sampler.cfg.length


class TrajectoryPairs:
    """Training pairs (trajectory row, step s) of a set of shards: tokens in memory, features read pair by pair."""

    def __init__(self, shards: list[Path], mask_id: int) -> None:
        self.files = [safe_open(str(p), framework="pt") for p in shards]
        self.tokens = [f.get_tensor("tokens").long() for f in self.files]
        index = []
        for k, tokens in enumerate(self.tokens):
            masked = tokens == mask_id  # [rows, N, L]
            committed = (masked[:, :-1] & ~masked[:, 1:]).any(-1)  # step s commits something
            still = masked[:, 1:].any(-1)  # something is left for the head at s + 1
            for row, step in (committed & still).nonzero().tolist():
                index.append((k, row, step))
        if not index:
            raise CofreError("the trajectories hold no step that commits a token; collect more (collect.trajectories)")
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, picks: list[int], device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """f_s, z_s, z_{s+1}, f_{s+1} of the chosen pairs (features as float32)."""
        f_s, f_next, z_s, z_next = [], [], [], []
        for i in picks:
            k, row, step = self.index[i]
            pair = self.files[k].get_slice("features")[row, step:step + 2]  # f_{s+1} is the step after f_s
            f_s.append(pair[0])
            f_next.append(pair[1])
            z_s.append(self.tokens[k][row, step])
            z_next.append(self.tokens[k][row, step + 1])
        return tuple(torch.stack(x).to(device) for x in (f_s, z_s, z_next, f_next))  # type: ignore[return-value]


def masked_mse(predicted: Tensor, target: Tensor, z_next: Tensor, mask_id: int) -> Tensor:
    """Mean squared error over the feature entries of the positions still masked in z_{s+1}."""
    masked = (z_next == mask_id).unsqueeze(-1).float()
    return ((predicted.float() - target.float()).pow(2) * masked).sum() / (masked.sum() * predicted.shape[-1]).clamp_min(1)


# -- the run -----------------------------------------------------------------------------------------------------
@dataclass
class ShortcutTrainResult:
    run_dir: str
    base_run: str
    start_step: int
    final_step: int
    elapsed_s: float  # this call's training time
    train_time_s: float  # the run's training time over every call that trained it (runs.TrainClock)
    train_time_complete: bool  # False: a lower bound (resumed from a checkpoint that did not record time)
    checkpoint: str
    train_pairs: int
    val_pairs: int
    parameters: int
    parameter_fraction: float  # of the base model's
    val_mse: float  # S's prediction (EMA weights) on held-out pairs, masked positions
    val_mse_reuse: float  # feature reuse (f̂ = f_s) on the same pairs: what S has to beat
    how: str = ("MSE over the feature entries of positions still masked at s + 1, held-out trajectories; "
                "reuse = the previous step's features unchanged")


def _check_run(run: RunDir, recipe: ShortcutRecipe) -> bool:
    """May `recipe` run in `run`? True when it resumes the shortcut run already there."""
    old = read_yaml(run.recipe_path) if run.exists() else None
    if old is not None and old.get("kind") != SHORTCUT_KIND:
        raise CofreError(f"run directory {run.path} holds a run that is not a shortcut; choose another --run-dir")
    return run.check_values(old, recipe_to_dict(recipe), RESUMABLE)


def train_shortcut(recipe: ShortcutRecipe, run_dir: Path, console: Console | None = None) -> ShortcutTrainResult:
    """Collect trajectories (or reuse those already collected) and train S to `trainer.max_steps` (or resume)."""
    console = console or Console()
    run = RunDir(run_dir)
    new = not _check_run(run, recipe)
    run.lock()
    try:
        if new and run.exists():
            raise CofreError(f"another process started a run in {run.path} while this one was starting; rerun to resume it")
        kept = run.read_metrics()
        atomic_write_text(run.recipe_path, _dump(recipe))
        run.clean_temporary_files()
        shards = collect_trajectories(recipe, run.path / TRAJECTORIES, console)
        return _fit(run, recipe, shards, kept, console)
    finally:
        run.unlock()


def _dump(recipe: ShortcutRecipe) -> str:
    import yaml

    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)  # type: ignore[arg-type]


def _fit(run: RunDir, recipe: ShortcutRecipe, shards: list[Path], kept: list[dict[str, Any]],
         console: Console) -> ShortcutTrainResult:
    from cofre.training.checkpoint import load_model

    t = recipe.trainer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, _ = load_model(recipe.base_run, ema=True)
    base = base.to(device).eval().requires_grad_(False)
    mask_id = base.cfg.mask_id
    per_shard = math.ceil(recipe.collect.val_trajectories / recipe.collect.batch_size)
    train, val = TrajectoryPairs(shards[:-per_shard], mask_id), TrajectoryPairs(shards[-per_shard:], mask_id)
    torch.manual_seed(t.seed)
    model = Shortcut(recipe.shortcut).to(device)
    optimizer = build_optimizer(model, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim, t.max_steps)
    ema = EMA(model, t.ema)
    step, latest = 0, run.latest_checkpoint()
    resumed: dict[str, Any] = {}  # the checkpoint's progress record
    if latest is not None:
        load_weights_into(model, latest / MODEL_FILE)
        optimizer.load_state_dict(load_train_state(latest, "optimizer"))
        scheduler.load_state_dict(load_train_state(latest, "scheduler"))
        ema_state = load_train_state(latest, "ema")
        ema.load(ema_state["shadow"])
        ema.num_updates = int(ema_state["num_updates"])
        resumed = load_train_state(latest, "progress")
        step = int(resumed["step"])
    run.truncate_metrics(step if latest is not None else None, kept)
    val_picks = torch.randperm(len(val), generator=torch.Generator().manual_seed(t.seed))[:t.val_pairs].tolist()
    start, checkpoint = step, latest
    clock = TrainClock(time_before(resumed, run.path, start))

    def validate() -> tuple[float, float]:
        averaged = Shortcut(recipe.shortcut).to(device)
        averaged.load_state_dict(ema.state_dict(model))
        averaged.eval()
        total, reuse = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(val_picks), t.batch_size):
                f_s, z_s, z_next, f_next = val.batch(val_picks[i:i + t.batch_size], device)
                n = len(val_picks[i:i + t.batch_size])
                total += n * float(masked_mse(predict_features(averaged, base, f_s.float(), z_s, z_next), f_next, z_next, mask_id))
                reuse += n * float(masked_mse(f_s, f_next, z_next, mask_id))
        return total / len(val_picks), reuse / len(val_picks)

    def save(step: int) -> Path:
        folder = staging_dir(run.checkpoints, step)
        state = {"progress": {"step": step, "train_time_s": clock.total()}, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(),
                 "ema": {"shadow": ema.shadow, "num_updates": ema.num_updates}}
        write_checkpoint_files(folder, model, ema.state_dict(model), recipe, state)  # type: ignore[arg-type]
        return publish_checkpoint(run.checkpoints, step, t.keep_last)

    model.train()
    while step < t.max_steps:
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + step)  # the batch is a function of the step
        picks = torch.randint(len(train), (t.batch_size,), generator=generator).tolist()
        f_s, z_s, z_next, f_next = train.batch(picks, device)
        loss = masked_mse(predict_features(model, base, f_s.float(), z_s, z_next), f_next, z_next, mask_id)
        optimizer_step(loss, model, optimizer, scheduler, recipe.optim.grad_clip)
        ema.update(model)
        step += 1
        loss = loss.detach()
        if not math.isfinite(float(loss)):
            raise CofreError(f"the shortcut's loss became {float(loss)} at step {step}; lower optim.lr")
        if step % t.log_every == 0 or step == t.max_steps:
            reuse = float(masked_mse(f_s, f_next, z_next, mask_id))
            run.append_metrics({"step": step, "loss": float(loss), "reuse_mse": reuse, "lr": scheduler.get_last_lr()[0],
                                "elapsed_s": clock.elapsed()})
            console.print(f"step {step}: mse {float(loss):.4g} (reuse {reuse:.4g})")
        if step % t.val_every == 0 or step == t.max_steps:
            mse, reuse = validate()
            run.append_metrics({"step": step, "val_mse": mse, "val_mse_reuse": reuse})
            console.print(f"step {step}: val mse {mse:.4g} (reuse {reuse:.4g})")
        if step % t.ckpt_every == 0 or step == t.max_steps:
            checkpoint = save(step)
    elapsed = clock.elapsed()
    mse, reuse = validate()
    params = sum(p.numel() for p in model.parameters())
    result = ShortcutTrainResult(
        run_dir=str(run.path), base_run=recipe.base_run, start_step=start, final_step=step, elapsed_s=elapsed,
        train_time_s=clock.total(trained=step > start), train_time_complete=clock.complete, checkpoint=str(checkpoint),
        train_pairs=len(train), val_pairs=len(val_picks), parameters=params,
        parameter_fraction=parameter_fraction(model, base), val_mse=mse, val_mse_reuse=reuse)
    atomic_write_text(run.path / "train_result.json", json.dumps(dataclasses.asdict(result), indent=2))
    return result


# -- loading a trained shortcut ----------------------------------------------------------------------------------
def read_shortcut_recipe(path: Path) -> tuple[Path, ShortcutRecipe]:
    """The checkpoint folder of a shortcut run (or checkpoint) and the recipe it was trained with."""
    folder, values = kind_config(path, SHORTCUT_KIND, "a shortcut run", "; train one with `cofre shortcut RUN`")
    return folder, config_from_dict(ShortcutRecipe, values)


def load_shortcut(path: Path, base: Denoiser, base_sha256: str) -> tuple[Shortcut, ShortcutRecipe, Path]:
    """S (EMA weights) of a shortcut run or checkpoint, checked against the base weights it will run with."""
    folder, recipe = read_shortcut_recipe(path)
    if recipe.base_sha256 != base_sha256:
        raise CofreError(f"{path} was trained on the base weights of {recipe.base_run} (sha256 {recipe.base_sha256[:12]}), "
                         f"not on these (sha256 {base_sha256[:12]}); sample that base run with its EMA weights")
    if recipe.shortcut.hidden != base.cfg.hidden or recipe.shortcut.modality != base.cfg.modality:
        raise CofreError(f"{path} is a shortcut for a {recipe.shortcut.modality} model of width {recipe.shortcut.hidden}")
    shortcut = Shortcut(recipe.shortcut)
    load_weights_into(shortcut, folder / (EMA_FILE if (folder / EMA_FILE).is_file() else MODEL_FILE))
    return shortcut.to(next(base.parameters()).device).eval(), recipe, folder


def shortcut_steps(ckpt: Any, path: Path, steps: int, full: int, budget: int | None,
                   schedule: str) -> tuple[BudgetPlan, ShortcutSteps]:
    """The N-step plan whose B full steps spend `budget`, and the samplers' hook running S on the other steps (with
    which shortcut weights it runs: path, sha256, the N it was trained on)."""
    shortcut, recipe, folder = load_shortcut(path, ckpt.model, ckpt.identity["sha256"])
    plan = shortcut_plan(ckpt.recipe.model, steps, full, budget, schedule)
    identity = {**shortcut_identity(folder), "trained_steps": recipe.collect.steps, "full_steps": full_steps(steps, full)}
    return plan, ShortcutSteps(shortcut, ckpt.model, steps, full, identity)


def shortcut_identity(folder: Path) -> dict[str, Any]:
    weights = folder / (EMA_FILE if (folder / EMA_FILE).is_file() else MODEL_FILE)
    return {"path": str(folder), "weights": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
