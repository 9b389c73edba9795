"""The training loop on Accelerate: one process on a laptop CPU, or many under `accelerate launch`."""

from __future__ import annotations

import math
import shutil
from contextlib import nullcontext
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch import Tensor

from cofre.config import Recipe
from cofre.data.packing import PackedCorpus, load_corpus
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.runs import RunDir
from cofre.tasks.mdlm import MDLMTask
from cofre.training.batches import BlockOrder
from cofre.training.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    STATE_DIR,
    load_train_state,
    publish_checkpoint,
    staging_dir,
    write_checkpoint_files,
)
from cofre.training.ema import EMA
from cofre.training.optim import build_optimizer, build_scheduler

VAL_SEED = 20_240_531  # validation redraws the same t and masks every time, so values are comparable


@dataclass
class TrainResult:
    """What a `train` call did; the CLI prints it and writes it as JSON."""

    run_dir: str
    start_step: int
    final_step: int
    elapsed_s: float
    validations: list[dict[str, Any]] = field(default_factory=list)  # every validation of the run so far
    checkpoint: str | None = None


def resolve_precision(precision: str) -> str:
    """Accelerate's mixed_precision: bf16 autocast on GPU for 'auto', fp32 ('no') on CPU."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


def sjfb_iterations(recipe: Recipe, step: int) -> tuple[int, int]:
    """(N_ng, N_g) for a step (§3.2); drawn from the step so that every process and a resumed run agree."""
    if not recipe.model.is_fixed_point:
        return 0, 0
    s = recipe.solver
    g = torch.Generator().manual_seed(recipe.trainer.seed * 7919 + step)
    n_ng = int(torch.randint(s.nograd_min, s.nograd_max + 1, (1,), generator=g))
    n_g = int(torch.randint(s.grad_min, s.grad_max + 1, (1,), generator=g))
    return n_ng, n_g


def accumulation_steps(recipe: Recipe, world: int) -> int:
    t = recipe.trainer
    if t.global_batch_size % (world * t.micro_batch_size):
        raise CofreError(
            f"trainer.global_batch_size {t.global_batch_size} is not a multiple of "
            f"micro_batch_size {t.micro_batch_size} x {world} processes"
        )
    return t.global_batch_size // (world * t.micro_batch_size)


@torch.no_grad()
def validate(model: Denoiser, task: MDLMTask, val: Tensor, recipe: Recipe, accelerator: Accelerator) -> dict[str, float]:
    """Validation NLL per token (the variational bound, fixed t draws) and its perplexity."""
    model.eval()
    micro, n_iters = recipe.trainer.micro_batch_size, recipe.solver.eval_iters
    gen = torch.Generator(accelerator.device).manual_seed(VAL_SEED + accelerator.process_index)
    totals = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # nll sum, tokens, residual sum
    for k in range(accelerator.process_index, recipe.trainer.val_batches, accelerator.num_processes):
        idx = torch.arange(k * micro, (k + 1) * micro) % val.shape[0]
        x = val[idx].long().to(accelerator.device)
        batch = task.noise(x, generator=gen)
        with accelerator.autocast():
            out = model(batch.z, batch.sigma, n_nograd=n_iters, positions=batch.masked.nonzero(as_tuple=True),
                        track_residuals=model.cfg.is_fixed_point)
        totals[0] += task.loss(out.logits, batch).double() * x.numel()
        totals[1] += x.numel()
        if out.stats is not None:
            totals[2] += out.stats.residuals[-1].sum().double() / micro * x.numel()
    totals = accelerator.reduce(totals, reduction="sum")
    model.train()
    nll = float(totals[0] / totals[1])
    record = {"val_nll": nll, "val_ppl": math.exp(nll)}
    if model.cfg.is_fixed_point:
        record["val_residual"] = float(totals[2] / totals[1])  # relative residual of the last iteration
    return record


class Trainer:
    """Owns the state of one training run: model, optimiser, EMA, RNGs and the data position."""

    def __init__(self, recipe: Recipe, run_dir: str | Path) -> None:
        self.recipe = recipe
        self.run = RunDir(run_dir)
        self.accelerator = Accelerator(mixed_precision=resolve_precision(recipe.trainer.precision))
        acc = self.accelerator
        self.accum = accumulation_steps(recipe, acc.num_processes)
        resuming = self.run.check(recipe)
        if acc.is_main_process:
            self.run.create(recipe)
            for stale in self.run.checkpoints.glob(".tmp-*"):
                shutil.rmtree(stale)  # a checkpoint that a killed run never finished
        acc.wait_for_everyone()
        with acc.main_process_first():
            self.corpus: PackedCorpus = load_corpus(recipe.data)
        if self.corpus.train.shape[1] > recipe.model.max_seq_len:
            raise CofreError(f"data.seq_len {self.corpus.train.shape[1]} exceeds model.max_seq_len {recipe.model.max_seq_len}")
        torch.manual_seed(recipe.trainer.seed)  # identical initial weights on every process
        model = Denoiser(recipe.model)
        self.ema = EMA(model, recipe.trainer.ema) if recipe.trainer.ema > 0 else None
        optimizer = build_optimizer(model, recipe.optim)
        self.scheduler = build_scheduler(optimizer, recipe.optim, recipe.trainer.max_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.task = MDLMTask(recipe.task, recipe.model.mask_id)
        self.order = BlockOrder(self.corpus.train.shape[0], recipe.trainer.global_batch_size, recipe.trainer.seed)
        torch.manual_seed(recipe.trainer.seed + 1000 * acc.process_index)  # dropout differs per process
        self.noise_gen = torch.Generator(acc.device).manual_seed(recipe.trainer.seed * 31 + acc.process_index)
        self.step = 0
        latest = self.run.latest_checkpoint() if resuming else None
        if latest is not None:
            self._resume(latest)

    @property
    def unwrapped(self) -> Denoiser:
        return self.accelerator.unwrap_model(self.model)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Tensor]:
        state = {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def _resume(self, folder: Path) -> None:
        self.unwrapped.load_state_dict(load_file(str(folder / MODEL_FILE)))
        if self.ema is not None:
            self.ema.load(load_file(str(folder / EMA_FILE)))
        self.optimizer.load_state_dict(load_train_state(folder, "optimizer"))
        self.scheduler.load_state_dict(load_train_state(folder, "scheduler"))
        self.step = int(load_train_state(folder, "progress")["step"])
        rng_file = folder / STATE_DIR / f"rng-rank{self.accelerator.process_index}.pt"
        if rng_file.is_file():  # absent when resuming with more processes than wrote the checkpoint
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["torch"])
            self.noise_gen.set_state(rng["noise"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        if self.accelerator.is_main_process:
            self.run.truncate_metrics(self.step)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        staging = staging_dir(self.run.checkpoints, self.step)
        if acc.is_main_process:
            (staging / STATE_DIR).mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        torch.save(self._rng_state(), staging / STATE_DIR / f"rng-rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            ema = self.ema.state_dict(self.unwrapped) if self.ema is not None else None
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "progress": {"step": self.step, "world_size": acc.num_processes},
            }
            write_checkpoint_files(staging, self.unwrapped, ema, self.recipe, state)
            publish_checkpoint(self.run.checkpoints, self.step, self.recipe.trainer.keep_last)
        acc.wait_for_everyone()
        return self.run.checkpoints / f"step-{self.step:09d}"

    # -- one optimiser step ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        acc, t = self.accelerator, self.recipe.trainer
        n_ng, n_g = sjfb_iterations(self.recipe, self.step)
        micro_batches = self.order.micro_batches(self.step, acc.process_index, acc.num_processes, t.micro_batch_size)
        total = torch.zeros((), device=acc.device)
        for i, idx in enumerate(micro_batches):
            x = self.corpus.train[idx].long().to(acc.device)
            batch = self.task.noise(x, generator=self.noise_gen)
            # gradients are all-reduced once, on the last micro-batch
            sync = acc.no_sync(self.model) if i < len(micro_batches) - 1 else nullcontext()
            with sync, acc.autocast():
                out = self.model(batch.z, batch.sigma, n_nograd=n_ng, n_grad=n_g,
                                 positions=batch.masked.nonzero(as_tuple=True))
                loss = self.task.loss(out.logits, batch) / self.accum
                acc.backward(loss)
            total += loss.detach()
        clip = self.recipe.optim.grad_clip
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped)
        self.step += 1
        return {"loss": total, "grad_norm": grad_norm, "n_nograd": n_ng, "n_grad": n_g}

    def validate(self) -> dict[str, float]:
        """Validation with the EMA weights when EMA is on (as MDLM does)."""
        model = self.unwrapped
        if self.ema is None:
            return {**validate(model, self.task, self.corpus.val, self.recipe, self.accelerator), "weights": "raw"}
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.ema.state_dict(model))
        try:
            record = validate(model, self.task, self.corpus.val, self.recipe, self.accelerator)
        finally:
            model.load_state_dict(raw)
        return {**record, "weights": "ema"}

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        acc, t = self.accelerator, self.recipe.trainer
        start, started = self.step, time.perf_counter()
        tokens_per_step = t.global_batch_size * self.corpus.train.shape[1]
        result = TrainResult(run_dir=str(self.run.path), start_step=start, final_step=start, elapsed_s=0.0)
        progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            disable=not acc.is_main_process,
        )
        with progress:
            bar = progress.add_task("train", total=t.max_steps, completed=self.step, status="")
            window_start, window_steps = time.perf_counter(), 0
            while self.step < t.max_steps:
                stats = self.train_step()
                window_steps += 1
                progress.update(bar, advance=1)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    loss = float(acc.reduce(stats["loss"], reduction="mean"))
                    rate = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                    record = {
                        "step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": float(stats["grad_norm"]), "tokens": self.step * tokens_per_step,
                        "tokens_per_s": rate, "n_nograd": stats["n_nograd"], "n_grad": stats["n_grad"],
                    }
                    progress.update(bar, status=f"loss {loss:.3f}  {rate:,.0f} tok/s")
                    self._log(record)
                    window_start, window_steps = time.perf_counter(), 0
                if self.step % t.val_every == 0 or self.step == t.max_steps:
                    record = {"step": self.step, **self.validate()}
                    progress.update(bar, status=f"val ppl {record['val_ppl']:.2f}")
                    self._log(record)
                if self.step % t.ckpt_every == 0 or self.step == t.max_steps:
                    self.save_checkpoint()
        result.final_step = self.step
        result.elapsed_s = time.perf_counter() - started
        result.validations = [r for r in self.run.read_metrics() if "val_ppl" in r]
        latest = self.run.latest_checkpoint()
        result.checkpoint = str(latest) if latest else None
        return result

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.run.append_metrics(record)


def train(recipe: Recipe, run_dir: str | Path) -> TrainResult:
    """Train (or resume) the run in `run_dir` to `recipe.trainer.max_steps`."""
    return Trainer(recipe, run_dir).fit()
