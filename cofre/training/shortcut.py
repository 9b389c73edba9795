"""`cofre shortcut RUN --recipe STAGE.yaml`: train the shortcut S of MIGM-Shortcut (cofre.sampling.shortcut) on the base
run's own sampling trajectories, drawn while it trains, in a new run directory that records its base run.

Trajectories: the base model's sampler with every step full (N = collect.steps, guidance collect.cfg for images, at
collect.precision) keeps each step's input tokens z_s and features f_s (the head's normalised input). Training pairs
are teacher-forced, one step: (f_s, tokens committed between z_s and z_{s+1}, r_{s+1}) -> f_{s+1}. Nothing is stored
on disk (one text trajectory's features are ~100 MB at 1024 tokens): every `collect.refresh_every` training steps a
fresh sampler batch of `collect.batch_size` trajectories, the pool, replaces the last on the training device, and
each training batch draws its pairs from it. A run thus learns from ceil(max_steps / refresh_every) pools, the
related paper's ~1.4M pairs in the full-scale recipes. Pool p is drawn with seed (collect.seed, p), so a resumed
run draws again the pool it stopped in. Held-out pairs come from `collect.val_trajectories` trajectories of seeds
of their own. Loss: MSE on the positions still masked in z_{s+1} (only those feed the head at step s+1); AdamW,
EMA of S's weights. A pair whose step commits nothing is left out (the sampler reuses the features there), as is
one after which nothing is masked. Train MSE (pairs the training batches drew) and held-out MSE are both reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from torch import Tensor

from cofre.checks import MAX_BUDGET, MAX_COUNT, MAX_RECIPE_SEED, check_memory, check_name
from cofre.config import (ModelConfig, OptimConfig, _in_range, _rule, _within, apply_overrides, config_from_dict, read_yaml,
                          recipe_to_dict)
from cofre.errors import CofreError
from cofre.kinds import require_kind
from cofre.models import Denoiser
from cofre.precision import PRECISIONS, resolve_device, resolve_precision
from cofre.runs import RunDir, TrainClock, atomic_write_text, time_before
from cofre.sampling.budget import BudgetPlan
from cofre.sampling.shortcut import (FEATURES, Shortcut, ShortcutConfig, ShortcutSteps, TrajectoryRecorder, full_steps,
                                     parameter_fraction, predict_features, shortcut_plan)
from cofre.training.checkpoint import (EMA_FILE, MODEL_FILE, STATE_DIR, kind_config, load_train_state,
                                       load_weights_into, publish_checkpoint, resolve_checkpoint, run_root, staging_dir,
                                       write_checkpoint_files)
from cofre.training.ema import EMA
from cofre.training.optim import build_optimizer, build_scheduler, optimizer_step

SHORTCUT_KIND = "shortcut"
RESUMABLE = {"trainer.max_steps"}


@dataclass
class CollectConfig:
    """Which trajectories of the base run's own sampler S learns from; they are drawn while S trains."""

    batch_size: int = 32  # trajectories per sampler batch: one pool (with guidance each also gives an unconditional one)
    refresh_every: int = 50  # training steps on one pool before a fresh one replaces it
    val_trajectories: int = 32  # held out for validation, drawn once per call with seeds of their own
    steps: int = 16  # N: every one a full step; use the N you will sample with
    cfg: float = 0.0  # images: guidance weight w of the sampler (0: no unconditional pass)
    precision: str = "auto"  # the base sampler's: auto is bf16 on CUDA, fp32 on CPU, resolved at the start and recorded
    seed: int = 1

    def validate(self, where: str = "collect") -> None:
        _within(where, self, 1, MAX_COUNT, "batch_size", "refresh_every", "val_trajectories")
        _within(where, self, 2, MAX_BUDGET, "steps")  # a pair needs two steps
        _within(where, self, 0, MAX_RECIPE_SEED, "seed")
        _in_range(where, self, "cfg", 0.0, 100.0)
        _rule(self.precision in PRECISIONS, f"{where}.precision must be one of {', '.join(PRECISIONS)}, "
                                            f"got '{self.precision}'")


@dataclass
class ShortcutTrainerConfig:
    max_steps: int = 1000
    batch_size: int = 32  # training pairs per step
    ema: float = 0.999
    seed: int = 1
    log_every: int = 50
    val_every: int = 250
    val_pairs: int = 256  # pairs scored at each validation: held-out ones, and as many the training batches drew
    ckpt_every: int = 500
    keep_last: int = 2

    def validate(self, where: str = "trainer") -> None:
        _within(where, self, 1, MAX_COUNT, "max_steps", "batch_size", "log_every", "val_every", "val_pairs", "ckpt_every")
        _within(where, self, 0, MAX_COUNT, "keep_last")
        _within(where, self, 0, MAX_RECIPE_SEED, "seed")
        _rule(0 <= self.ema < 1, f"{where}.ema must be in [0, 1), got {self.ema}")


@dataclass
class ShortcutRecipe:
    """A shortcut stage: `kind: shortcut`, laid over by `cofre shortcut RUN` with the base run's checkpoint."""

    kind: Literal["shortcut"] = "shortcut"
    name: str = "shortcut"
    base_run: str = ""  # the base checkpoint folder (set by `cofre shortcut` from RUN)
    base_sha256: str = ""  # of the base weights the trajectories come from (EMA when present)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)  # hidden and modality: from the base run
    collect: CollectConfig = field(default_factory=CollectConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.01, warmup_steps=50))
    trainer: ShortcutTrainerConfig = field(default_factory=ShortcutTrainerConfig)

    def validate(self) -> None:
        check_name("name", self.name)
        for name in ("shortcut", "collect", "optim", "trainer"):
            getattr(self, name).validate(name)
        _rule(self.shortcut.modality == "image" or self.collect.cfg == 0,
              f"collect.cfg {self.collect.cfg:g}: guidance is for image bases; this base is a text model (use 0)")


def shortcut_recipe(base: Path, stage: Path | None, overrides: list[str]) -> ShortcutRecipe:
    """The stage recipe (partial YAML) and overrides, with the base run's checkpoint, width and modality set, and
    collect.precision made concrete for this machine's device."""
    from cofre.sampling.generate import checkpoint_identity
    from cofre.training.checkpoint import checkpoint_recipe

    folder = resolve_checkpoint(base)
    model = checkpoint_recipe(folder).model
    return shortcut_values(model, str(folder), checkpoint_identity(folder, ema=True)["sha256"], stage, overrides)


def shortcut_values(model: ModelConfig, base_run: str, base_sha256: str, stage: Path | None,
                    overrides: list[str]) -> ShortcutRecipe:
    """The stage recipe and overrides over a base model: its checkpoint, weights' sha256, width and modality set."""
    values = read_yaml(stage) if stage is not None else {"kind": SHORTCUT_KIND}
    require_kind(values, SHORTCUT_KIND, stage, "recipe")
    values = apply_overrides(values, overrides)
    values["name"] = values.get("name") or (stage.stem if stage is not None else f"{run_root(Path(base_run)).name}-shortcut")
    values["base_run"] = base_run
    values["base_sha256"] = base_sha256
    part = values.get("shortcut", {})  # not a mapping: refused below, naming the field
    values["shortcut"] = {**part, "hidden": model.hidden, "modality": model.modality} if isinstance(part, dict) else part
    try:
        recipe = config_from_dict(ShortcutRecipe, values)
        recipe.validate()
    except CofreError as err:
        raise CofreError(f"{stage or 'shortcut recipe'}: {err}") from None
    recipe.collect.precision = resolve_precision(recipe.collect.precision, resolve_device("auto"))
    return recipe


# -- trajectories ------------------------------------------------------------------------------------------------
def _collect_settings(recipe: ShortcutRecipe, budget: int) -> Any:
    """The sample settings of the base run's sampler with every one of the N steps full (`budget` blocks)."""
    from cofre.sampling.generate import SampleSettings
    from cofre.sampling.generate_images import ImageSampleSettings

    c = recipe.collect
    if recipe.shortcut.modality == "image":
        return ImageSampleSettings(budget=budget, steps=c.steps, num_samples=c.batch_size, batch_size=c.batch_size,
                                   seed=c.seed, cfg=c.cfg, precision=c.precision)
    return SampleSettings(budget=budget, steps=c.steps, num_samples=c.batch_size, batch_size=c.batch_size, seed=c.seed,
                          precision=c.precision)


def _grid(ckpt: Any) -> tuple[int, int]:
    """The token grid of an image base (its tokenizer's), or (1, the sequence length) of a text base."""
    data = ckpt.recipe.data
    if ckpt.recipe.model.modality == "text":
        return 1, data.seq_len
    from cofre.data.image_tokenizers import load_tokenizer

    return load_tokenizer(data.tokenizer, ckpt.device, image_size=data.image_size).grid


def _base_sampler(ckpt: Any, recipe: ShortcutRecipe, budget: int, recorder: TrajectoryRecorder,
                  grid: tuple[int, int]) -> tuple[Any, Any]:
    """The base run's sampler at the collection settings, and how it draws its labels (images)."""
    settings = _collect_settings(recipe, budget)
    if recipe.shortcut.modality == "image":
        from cofre.sampling.generate_images import build_image_sampler

        sampler = build_image_sampler(ckpt, settings, grid)
        sampler.hook = recorder
        classes = ckpt.recipe.model.num_classes

        def labels_of(size: int, generator: torch.Generator) -> Tensor:
            return torch.randint(0, classes, (size,), generator=generator, device=ckpt.device)

        return sampler, labels_of
    from cofre.sampling.generate import build_sampler

    sampler = build_sampler(ckpt, settings)
    sampler.hook = recorder
    return sampler, None


class TrajectoryPool:
    """The training pairs (trajectory row, step s) of a set of trajectories held on the device: tokens [rows, N, L]
    and features [rows, N, L, D] (fp16)."""

    def __init__(self, tokens: Tensor, features: Tensor, mask_id: int) -> None:
        masked = tokens == mask_id
        committed = (masked[:, :-1] & ~masked[:, 1:]).any(-1)  # step s commits something
        still = masked[:, 1:].any(-1)  # something is left for the head at s + 1
        self.index = (committed & still).nonzero()  # [pairs, 2]: (row, s)
        if len(self.index) == 0:
            raise CofreError("the base sampler's trajectories hold no step that commits a token; raise collect.steps "
                             "or collect.batch_size")
        self.tokens, self.features = tokens, features

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, picks: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """f_s, z_s, z_{s+1}, f_{s+1} of the chosen pairs (features as float32)."""
        rows, s = self.index[picks].unbind(1)
        return (self.features[rows, s].float(), self.tokens[rows, s], self.tokens[rows, s + 1],
                self.features[rows, s + 1].float())


class TrajectorySource:
    """The base run's sampler with every step full, drawing pools of its own trajectories on its device."""

    def __init__(self, ckpt: Any, recipe: ShortcutRecipe) -> None:
        c = recipe.collect
        self.collect, self.device, self.mask_id = c, ckpt.device, ckpt.model.cfg.mask_id
        budget = shortcut_plan(ckpt.recipe.model, c.steps, c.steps, None, "decreasing").budget  # all N steps full
        self.recorder = TrajectoryRecorder()
        grid = _grid(ckpt)
        self.length = grid[0] * grid[1]
        rows = (c.batch_size + c.val_trajectories) * (2 if c.cfg > 0 else 1)  # a pool and the held-out set at once
        check_memory("collect.batch_size and collect.val_trajectories",  # before the sampler checks its batches
                     rows * c.steps * self.length * (2 * ckpt.model.cfg.hidden + 8),
                     f"{rows} trajectories of {c.steps} steps x {self.length} positions (fp16 features, tokens)",
                     ckpt.device)
        self.sampler, self.labels_of = _base_sampler(ckpt, recipe, budget, self.recorder, grid)

    def _draw(self, size: int, seed: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator(self.device).manual_seed(seed)
        if self.labels_of is not None:
            self.sampler.sample(self.labels_of(size, generator), generator)
        else:
            self.sampler.sample(size, generator)
        tokens, features = torch.stack(self.recorder.tokens, 1), torch.stack(self.recorder.features, 1)  # [rows, N, L(, D)]
        self.recorder.start()  # the per-step copies go: a pool is held once
        return tokens, features

    def pool(self, index: int) -> TrajectoryPool:
        """Training pool `index`: one sampler batch of collect.batch_size trajectories, seed (collect.seed, index)."""
        return TrajectoryPool(*self._draw(self.collect.batch_size, _seed(self.collect.seed, index, held_out=False)),
                              self.mask_id)

    def held_out(self) -> TrajectoryPool:
        """collect.val_trajectories trajectories, in sampler batches of collect.batch_size, with seeds of their own."""
        c = self.collect
        drawn = [self._draw(min(c.batch_size, c.val_trajectories - i), _seed(c.seed, i, held_out=True))
                 for i in range(0, c.val_trajectories, c.batch_size)]
        return TrajectoryPool(torch.cat([t for t, _ in drawn]), torch.cat([f for _, f in drawn]), self.mask_id)


def _seed(seed: int, index: int, held_out: bool) -> int:
    """Distinct generator seeds for every training pool and held-out batch of a collection seed."""
    return seed * 2**40 + 2 * index + held_out


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
    precision: str  # the base sampler's while collecting (collect.precision); sampling with S follows it
    train_trajectories: int  # drawn over the whole run: pools x collect.batch_size (x 2 with guidance)
    train_pairs: int  # the training pairs those trajectories hold
    pair_draws: float  # training batches' draws per pair (above 1: pairs are seen again)
    val_trajectories: int
    val_pairs: int  # held-out pairs scored
    parameters: int
    parameter_fraction: float  # of the base model's
    train_mse: float  # S's prediction (EMA weights) on pairs the training batches drew from the last pool
    train_mse_reuse: float  # feature reuse (f̂ = f_s) on the same pairs
    val_mse: float  # S's prediction (EMA weights) on held-out pairs
    val_mse_reuse: float  # feature reuse on the same pairs: what S has to beat
    how: str = ("MSE over the feature entries (the head's normalised input) of positions still masked at s + 1; "
                "train: pairs of the last pool that training drew, held-out: trajectories of their own seeds; "
                "reuse = the previous step's features unchanged")


def _check_run(run: RunDir, recipe: ShortcutRecipe) -> bool:
    """May `recipe` run in `run`? True when it resumes the shortcut run already there."""
    old = read_yaml(run.recipe_path) if run.exists() else None
    if old is not None:
        require_kind(old, SHORTCUT_KIND, f"run directory {run.path}", "run")
    return run.check_values(old, recipe_to_dict(recipe), RESUMABLE)


def train_shortcut(recipe: ShortcutRecipe, run_dir: Path, console: Console | None = None) -> ShortcutTrainResult:
    """Train S to `trainer.max_steps` (or resume) on trajectories the base sampler draws meanwhile. Every file the
    run needs (the base weights, the checkpoint it resumes from, its metrics) is read and checked before the run
    directory is written; a new run's directory is created only then."""
    console = console or Console()
    run = RunDir(run_dir)
    new = not _check_run(run, recipe)
    if not new:
        run.lock()  # a second writer of an existing run is refused before it reads anything
    try:
        start = _Start.read(run, recipe)
        kept = run.read_metrics()
        run.lock()
        if new and run.exists():
            raise CofreError(f"another process started a run in {run.path} while this one was starting; rerun to resume it")
        atomic_write_text(run.recipe_path, _dump(recipe))
        run.clean_temporary_files()
        return _fit(run, recipe, start, kept, console)
    finally:
        run.unlock()


def _dump(recipe: ShortcutRecipe) -> str:
    import yaml

    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)  # type: ignore[arg-type]


def _picks(size: int, step: int, t: ShortcutTrainerConfig) -> list[int]:
    """The pairs (indices into the step's pool) of training step `step`: a function of the step, so a resume
    draws the same batches."""
    return torch.randint(size, (t.batch_size,), generator=torch.Generator().manual_seed(t.seed * 1_000_003 + step)).tolist()


@dataclass
class _Start:
    """Everything a call trains with, read and checked before the run directory is written: the base sampler, S, its
    optimiser, schedule and EMA, restored from the latest checkpoint when the run resumes."""

    base: Any  # the base run's LoadedCheckpoint
    source: TrajectorySource
    model: Shortcut
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA
    latest: Path | None
    step: int
    resumed: dict[str, Any]  # the checkpoint's progress record

    @classmethod
    def read(cls, run: RunDir, recipe: ShortcutRecipe) -> _Start:
        from cofre.sampling.generate import open_checkpoint

        t = recipe.trainer
        ckpt = open_checkpoint(recipe.base_run, ema=True, device="auto")
        if ckpt.identity["sha256"] != recipe.base_sha256:
            raise CofreError(f"the weights of {recipe.base_run} changed since this shortcut run started; start a new run")
        ckpt.model.requires_grad_(False)
        source = TrajectorySource(ckpt, recipe)
        torch.manual_seed(t.seed)
        model = Shortcut(recipe.shortcut).to(ckpt.device)
        optimizer = build_optimizer(model, recipe.optim)
        scheduler = build_scheduler(optimizer, recipe.optim, t.max_steps)
        ema = EMA(model, t.ema)
        start = cls(ckpt, source, model, optimizer, scheduler, ema, run.latest_checkpoint(), 0, {})
        if start.latest is not None:
            start.restore(start.latest)
        return start

    def restore(self, latest: Path) -> None:
        """S's weights and the train state of the checkpoint the run resumes from; one that does not fit is named."""
        load_weights_into(self.model, latest / MODEL_FILE)
        states = {name: load_train_state(latest, name) for name in ("optimizer", "scheduler", "ema", "progress")}
        try:
            self.optimizer.load_state_dict(states["optimizer"])
            self.scheduler.load_state_dict(states["scheduler"])
            self.ema.load(states["ema"]["shadow"])
            self.ema.num_updates = int(states["ema"]["num_updates"])
            self.resumed, self.step = states["progress"], int(states["progress"]["step"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CofreError(f"{latest / STATE_DIR}: the train state does not fit this shortcut run "
                             f"({' '.join(str(err).split())[:150]}); point checkpoints/latest at an earlier "
                             "checkpoint or start a new run") from None


def _fit(run: RunDir, recipe: ShortcutRecipe, ready: _Start, kept: list[dict[str, Any]],
         console: Console) -> ShortcutTrainResult:
    t, c = recipe.trainer, recipe.collect
    ckpt, source, model, optimizer, scheduler, ema = (ready.base, ready.source, ready.model, ready.optimizer,
                                                      ready.scheduler, ready.ema)
    base, device, mask_id = ckpt.model, ckpt.device, ckpt.model.cfg.mask_id
    step, latest, resumed = ready.step, ready.latest, ready.resumed
    run.truncate_metrics(step if latest is not None else None, kept)
    val = source.held_out()
    val_picks = torch.randperm(len(val), generator=torch.Generator().manual_seed(t.seed))[:t.val_pairs].tolist()
    start, checkpoint = step, latest
    clock = TrainClock(time_before(resumed, run.path, start))
    pool: TrajectoryPool | None = None
    pool_index, drawn = -1, set()  # the pool in use and the pairs of it that training batches drew
    pairs, trajectories = int(resumed.get("train_pairs", 0)), int(resumed.get("train_trajectories", 0))
    counted = (step - 1) // c.refresh_every  # the pools up to this one are in `pairs` already

    def use_pool(index: int, upto: int) -> None:
        """Pool `index` drawn, with the pairs training drew from it before step `upto` (a resume redraws both)."""
        nonlocal pool, pool_index, drawn, pairs, trajectories, counted
        pool = None  # the last pool goes before the next is drawn
        pool, pool_index = source.pool(index), index
        drawn = {i for earlier in range(index * c.refresh_every, upto) for i in _picks(len(pool), earlier, t)}
        if index > counted:
            pairs, trajectories, counted = pairs + len(pool), trajectories + pool.tokens.shape[0], index
        console.print(f"pool {index} of the base sampler's trajectories: {pool.tokens.shape[0]} trajectories, "
                      f"{len(pool)} pairs")

    def score(scored: TrajectoryPool, picks: list[int]) -> tuple[float, float]:
        """The EMA weights' masked MSE on `picks` of `scored`, and feature reuse's on the same pairs."""
        averaged = Shortcut(recipe.shortcut).to(device)
        averaged.load_state_dict(ema.state_dict(model))
        averaged.eval()
        total, reuse = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(picks), t.batch_size):
                f_s, z_s, z_next, f_next = scored.batch(picks[i:i + t.batch_size])
                n = len(picks[i:i + t.batch_size])
                total += n * float(masked_mse(predict_features(averaged, base, f_s, z_s, z_next), f_next, z_next, mask_id))
                reuse += n * float(masked_mse(f_s, f_next, z_next, mask_id))
        return total / len(picks), reuse / len(picks)

    def validate() -> dict[str, float]:
        train_picks = sorted(drawn)
        chosen = torch.randperm(len(train_picks), generator=torch.Generator().manual_seed(t.seed))[:t.val_pairs]
        assert pool is not None
        train_mse, train_reuse = score(pool, [train_picks[i] for i in chosen.tolist()])
        val_mse, val_reuse = score(val, val_picks)
        return {"train_mse": train_mse, "train_mse_reuse": train_reuse, "val_mse": val_mse, "val_mse_reuse": val_reuse}

    def save(step: int) -> Path:
        folder = staging_dir(run.checkpoints, step)
        state = {"progress": {"step": step, "train_time_s": clock.total(), "train_pairs": pairs,
                              "train_trajectories": trajectories},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "ema": {"shadow": ema.shadow, "num_updates": ema.num_updates}}
        write_checkpoint_files(folder, model, ema.state_dict(model), recipe, state)  # type: ignore[arg-type]
        return publish_checkpoint(run.checkpoints, step, t.keep_last)

    model.train()
    scores: dict[str, float] | None = None
    while step < t.max_steps:
        if step // c.refresh_every != pool_index:  # every refresh_every steps a fresh pool
            use_pool(step // c.refresh_every, step)
        assert pool is not None
        picks = _picks(len(pool), step, t)
        drawn.update(picks)
        f_s, z_s, z_next, f_next = pool.batch(picks)
        loss = masked_mse(predict_features(model, base, f_s, z_s, z_next), f_next, z_next, mask_id)
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
            scores = validate()
            run.append_metrics({"step": step, **scores})
            console.print(f"step {step}: mse train {scores['train_mse']:.4g} / held-out {scores['val_mse']:.4g} "
                          f"(reuse {scores['train_mse_reuse']:.4g} / {scores['val_mse_reuse']:.4g})")
        if step % t.ckpt_every == 0 or step == t.max_steps:
            checkpoint = save(step)
    elapsed = clock.elapsed()
    if scores is None:  # resumed at max_steps: the last pool's drawn pairs, for the train MSE
        use_pool((step - 1) // c.refresh_every, step)
        scores = validate()
    params = sum(p.numel() for p in model.parameters())
    result = ShortcutTrainResult(
        run_dir=str(run.path), base_run=recipe.base_run, start_step=start, final_step=step, elapsed_s=elapsed,
        train_time_s=clock.total(trained=step > start), train_time_complete=clock.complete, checkpoint=str(checkpoint),
        precision=c.precision, train_trajectories=trajectories, train_pairs=pairs,
        pair_draws=step * t.batch_size / pairs, val_trajectories=val.tokens.shape[0], val_pairs=len(val_picks),
        parameters=params, parameter_fraction=parameter_fraction(model, base), **scores)
    atomic_write_text(run.path / "train_result.json", json.dumps(dataclasses.asdict(result), indent=2))
    return result


# -- loading a trained shortcut ----------------------------------------------------------------------------------
def read_shortcut_recipe(path: Path) -> tuple[Path, ShortcutRecipe]:
    """The checkpoint folder of a shortcut run (or checkpoint) and the recipe it was trained with."""
    folder, values = kind_config(path, SHORTCUT_KIND)
    if (values.get("shortcut") or {}).get("features", "pre_norm") != FEATURES:  # no field: an older cofre's S
        raise CofreError(f"{path} regressed the features before the head's norm (an older cofre); S now predicts the "
                         f"head's normalised input: train it again with `cofre shortcut`")
    return folder, config_from_dict(ShortcutRecipe, values)


def sampling_precision(requested: str, device: torch.device, shortcut: str | None) -> str:
    """The network's precision for sampling: `requested` resolved for `device`, or with a shortcut the precision its
    trajectories were collected at (S learned features computed at it): 'auto' follows it, another is refused."""
    resolved = resolve_precision(requested, device)
    if shortcut is None:
        return resolved
    collected = read_shortcut_recipe(Path(shortcut))[1].collect.precision
    if requested != "auto" and resolved != collected:
        raise CofreError(f"--precision {requested}: the shortcut {shortcut} learned from trajectories collected at "
                         f"{collected}; sample with --precision {collected} or auto")
    return collected


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
    which shortcut weights it runs: path, sha256, the N and the precision its trajectories were collected at)."""
    shortcut, recipe, folder = load_shortcut(path, ckpt.model, ckpt.identity["sha256"])
    plan = shortcut_plan(ckpt.recipe.model, steps, full, budget, schedule)
    identity = {**shortcut_identity(folder), "trained_steps": recipe.collect.steps, "full_steps": full_steps(steps, full),
                "collect_precision": recipe.collect.precision}
    return plan, ShortcutSteps(shortcut, ckpt.model, steps, full, identity)


def shortcut_identity(folder: Path) -> dict[str, Any]:
    weights = folder / (EMA_FILE if (folder / EMA_FILE).is_file() else MODEL_FILE)
    return {"path": str(folder), "weights": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
