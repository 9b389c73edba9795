"""The training loop on Accelerate: one process on a laptop CPU, or many under `accelerate launch`."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from contextlib import nullcontext
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from cofre.config import Recipe, recipe_to_dict
from cofre.errors import CofreError
from cofre.evaluation.valppl import VAL_SEED, bound_totals, summarize_totals
from cofre.models import Denoiser
from cofre.runs import RunDir, TrainClock, flatten, time_before
from cofre.summary import check_training_memory
from cofre.tasks import Task, build_task
from cofre.tasks.consistency import consistency_weight, correlated_pair
from cofre.training.batches import BatchLayout, BlockOrder, batch_layout
from cofre.training.data import TrainingData, load_training_data
from cofre.training.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    STATE_DIR,
    load_train_state,
    load_weights_into,
    mark_selected,
    publish_checkpoint,
    read_weights,
    resolve_checkpoint,
    save_train_state,
    staging_dir,
    write_checkpoint_files,
)
from cofre.training.auxiliary import AuxiliaryLoss
from cofre.training.distill import SelfDistillation
from cofre.training.ema import EMA
from cofre.training.guard import NonFiniteGuard
from cofre.training.optim import build_optimizer, build_scheduler

@dataclass
class TrainResult:
    """What a `train` call did; the CLI prints it and writes it as JSON."""

    run_dir: str
    start_step: int
    final_step: int
    elapsed_s: float  # this call's training time
    train_time_s: float  # the run's training time over every call that trained it (Table 15's header)
    train_time_complete: bool = True  # False: resumed from a checkpoint that did not record time (a lower bound)
    validations: list[dict[str, Any]] = field(default_factory=list)  # every validation of the run so far
    checkpoint: str | None = None
    pre_consistency_ppl: float | None = None  # consistency stages: the validation PPL they started from
    selected_step: int | None = None  # consistency stages: the checkpoint the App. F.7 rule selected
    peak_memory_gib: float | None = None  # peak over the calls that trained: CUDA max allocated per GPU, else max RSS
    peak_memory_of: str = ""
    batch_layout: dict[str, int] = field(default_factory=dict)  # this call's processes x accumulation x micro-batch


def peak_memory(device: torch.device) -> tuple[float, str]:
    """GiB at this process's peak (Table 15's VRAM column): CUDA's max allocated on a GPU, max RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, f"torch.cuda.max_memory_allocated ({device})"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS (CPU; ru_maxrss)"


def mixed_precision(precision: str) -> str:
    """Accelerate's mixed_precision for trainer.precision: 'auto' is bf16 autocast when training runs on a GPU
    (not under ACCELERATE_USE_CPU), fp32 ('no') on a CPU."""
    if precision == "auto":
        on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
        return "bf16" if on_gpu else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracker(log_with: str) -> str | None:
    """Accelerate's tracker name for `trainer.log_with`; a missing package is a one-line error."""
    if log_with == "none":
        return None
    package = TRACKER_PACKAGES[log_with]
    if importlib.util.find_spec(package) is None:
        raise CofreError(f"trainer.log_with '{log_with}' needs the '{package}' package: pip install {package}")
    return log_with


def tracker_config(recipe: Recipe) -> dict[str, Any]:
    """The recipe as flat scalar hyper-parameters (what TensorBoard's hparams and W&B's config accept)."""
    flat = flatten(recipe_to_dict(recipe))
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def sjfb_iterations(recipe: Recipe, step: int) -> tuple[int, int]:
    """(N_ng, N_g) for a step (§3.2); drawn from the step so that every process and a resumed run agree."""
    if not recipe.model.is_fixed_point:
        return 0, 0
    s = recipe.solver
    g = torch.Generator().manual_seed(recipe.trainer.seed * 7919 + step)
    n_ng = int(torch.randint(s.nograd_min, s.nograd_max + 1, (1,), generator=g))
    n_g = int(torch.randint(s.grad_min, s.grad_max + 1, (1,), generator=g))
    return n_ng, n_g


def recipe_layout(recipe: Recipe, processes: int) -> BatchLayout:
    """The recipe's batch over `processes`: its global batch, micro-batches of at most its micro_batch_size."""
    return batch_layout(recipe.trainer.global_batch_size, recipe.trainer.micro_batch_size, processes)


def validate(model: Denoiser, task: Task, data: TrainingData, recipe: Recipe, accelerator: Accelerator) -> dict[str, float]:
    """Validation NLL per token (the variational bound, or MaskGIT's masked-token CE; fixed draws) and its
    perplexity, over all processes."""
    model.eval()
    t = recipe.trainer
    generator = torch.Generator(accelerator.device).manual_seed(VAL_SEED + accelerator.process_index)
    mine = range(accelerator.process_index, t.val_batches, accelerator.num_processes)
    totals = bound_totals(model, task, data.val, mine, t.micro_batch_size, recipe.solver.eval_iters, generator,
                          accelerator.autocast, labels=data.val_labels)
    model.train()
    return summarize_totals(accelerator.reduce(totals, reduction="sum"), model.cfg.is_fixed_point)


class Trainer:
    """Owns the state of one training run: model, optimiser, EMA, RNGs and the data position."""

    def __init__(self, recipe: Recipe, run_dir: str | Path) -> None:
        self.recipe = recipe
        self.run = RunDir(run_dir)
        self.accelerator = Accelerator(mixed_precision=mixed_precision(recipe.trainer.precision),
                                       log_with=tracker(recipe.trainer.log_with), project_dir=str(self.run.path))
        acc = self.accelerator
        check_training_memory(recipe, acc.device)  # before the corpus is read or anything is built
        self.layout = recipe_layout(recipe, acc.num_processes)
        self.accum = self.layout.accumulation
        resuming = self.run.check(recipe)
        if resuming and acc.is_main_process:
            self.run.lock()  # a second writer of an existing run is refused before it reads anything
        try:
            self._setup(recipe, resuming)
        except BaseException:
            self.run.unlock()
            raise

    def _setup(self, recipe: Recipe, resuming: bool) -> None:
        """Everything is read and checked first; the run directory is written only once the start is valid."""
        acc = self.accelerator
        with acc.main_process_first():
            self.corpus: TrainingData = load_training_data(recipe)
        torch.manual_seed(recipe.trainer.seed)  # identical initial weights on every process
        model = Denoiser(recipe.model, recipe.solver.eval_iters)
        if recipe.trainer.compile:
            model.compile_blocks()
        optimizer = build_optimizer(model, recipe.optim)
        self.scheduler = build_scheduler(optimizer, recipe.optim, recipe.trainer.max_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # built from the prepared model, so the shadow lives on its device (a CPU shadow breaks CUDA training)
        self.ema = EMA(self.unwrapped, recipe.trainer.ema) if recipe.trainer.ema > 0 else None
        self.task = build_task(recipe)
        self.order = BlockOrder(self.corpus.train.shape[0], recipe.trainer.global_batch_size, recipe.trainer.seed)
        torch.manual_seed(recipe.trainer.seed + 1000 * acc.process_index)  # dropout differs per process
        self.noise_gen = torch.Generator(acc.device).manual_seed(recipe.trainer.seed * 31 + acc.process_index)
        self.step = 0
        self.pre_ppl: float | None = None  # validation PPL before a consistency stage (App. F.7)
        self.selected_step: int | None = None
        self.clock = TrainClock(0.0)  # a resume sets the time trained before; fit() starts it
        # the run's cost as its latest checkpoint records it (Table 15's header): training time, peak memory
        self.cost: dict[str, Any] = {"train_time_s": 0.0}
        self.guard = NonFiniteGuard(recipe.trainer.skip_nonfinite)
        latest = self.run.latest_checkpoint() if resuming else None
        if latest is not None:
            self._resume(latest)
        elif recipe.init_from:
            self._initialize_from(recipe.init_from)
        self.aux = AuxiliaryLoss(recipe, self.unwrapped, self.ema) if recipe.consistency.enabled else None
        self.distill = SelfDistillation(recipe, self.unwrapped) if recipe.distill.enabled else None
        if self.distill is not None and latest is not None:  # the teacher of the round the run stopped in
            self.distill.load_state_dict(load_train_state(latest, "teacher"), str(latest / STATE_DIR / "teacher.pt"))
        acc.wait_for_everyone()  # every process has read the directory before the main one writes to it
        if acc.is_main_process:
            self.run.start(recipe, self.step if latest is not None else None, new=not resuming)
            if recipe.trainer.log_with != "none":  # trackers write into the run only once the start is valid
                acc.init_trackers(recipe.name, config=tracker_config(recipe))
        acc.wait_for_everyone()

    @property
    def unwrapped(self) -> Denoiser:
        return self.accelerator.unwrap_model(self.model)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Tensor]:
        state = {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def _initialize_from(self, parent: str) -> None:
        """A post-training stage starts from its parent's weights, EMA (and its warm-up count) and, with
        consistency.continue_optimizer, its AdamW moments; the step, schedule and hyperparameters are the stage's.
        A distill stage starts from the parent's weights that distill.init_weights names, and restarts the EMA there."""
        folder = resolve_checkpoint(parent)
        distill = self.recipe.distill
        weights = folder / (EMA_FILE if distill.enabled and distill.init_weights == "ema" and (folder / EMA_FILE).is_file()
                            else MODEL_FILE)
        try:
            load_weights_into(self.unwrapped, weights)
        except CofreError as err:
            raise CofreError(f"init_from: {err}") from None
        progress = load_train_state(folder, "progress") if (folder / STATE_DIR / "progress.pt").is_file() else {}
        if self.ema is not None and distill.enabled:  # SDTT restarts the EMA, warm-up included, at the weights it distils
            self.ema.load({k: p.detach() for k, p in self.unwrapped.named_parameters()})
        elif self.ema is not None:
            ema_file = folder / EMA_FILE
            self._load_ema(ema_file if ema_file.is_file() else folder / MODEL_FILE)
            self.ema.num_updates = int(progress.get("ema_updates", progress.get("step", 0)))  # the warm-up goes on
        if self.recipe.consistency.continue_optimizer:  # L_CONS joins the parent's run (App. F.6): same AdamW moments
            if not (folder / STATE_DIR / "optimizer.pt").is_file():
                raise CofreError(f"init_from {folder} has no optimiser state to continue (a converted model?); "
                                 "set consistency.continue_optimizer=false to start AdamW from zero")
            own = self.optimizer.state_dict()  # this stage's hyperparameters (lr, betas, ...) are kept
            try:
                self.optimizer.load_state_dict({"state": load_train_state(folder, "optimizer")["state"],
                                                "param_groups": own["param_groups"]})
            except (KeyError, ValueError, TypeError, RuntimeError) as err:
                raise CofreError(f"{folder / STATE_DIR / 'optimizer.pt'}: does not fit this stage ({err})") from None

    def _load_ema(self, path: Path) -> None:
        assert self.ema is not None
        state = read_weights(path)
        missing = sorted(set(self.ema.shadow) - set(state))
        wrong = [k for k in self.ema.shadow if k in state and state[k].shape != self.ema.shadow[k].shape]
        if missing or wrong:
            raise CofreError(f"{path}: the weights do not fit the model its config describes "
                             f"({len(missing)} missing, {len(wrong)} of another shape, e.g. {(missing + wrong)[0]})")
        self.ema.load(state)

    def _resume(self, folder: Path) -> None:
        """Read a checkpoint back; every file is checked (checkpoint.py), and a problem is one line naming it."""
        load_weights_into(self.unwrapped, folder / MODEL_FILE)
        if self.ema is not None:
            self._load_ema(folder / EMA_FILE)
        progress = load_train_state(folder, "progress")
        for name, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler)):
            try:
                target.load_state_dict(load_train_state(folder, name))
            except (KeyError, ValueError, TypeError, RuntimeError) as err:
                raise CofreError(f"{folder / STATE_DIR / f'{name}.pt'}: does not fit this run ({err})") from None
        if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
            raise CofreError(f"{folder / STATE_DIR / 'progress.pt'}: holds no step number")
        self.step = progress["step"]
        if self.ema is not None:
            self.ema.num_updates = int(progress.get("ema_updates", self.step))
        self.pre_ppl = progress.get("pre_ppl")
        self.selected_step = progress.get("selected_step")
        self.guard.skipped = int(progress.get("skipped_steps", 0))
        self.clock = TrainClock(time_before(progress, self.run.path, self.step))
        self.cost["train_time_s"] = self.clock.total(trained=False)
        if isinstance(progress.get("peak_memory_gib"), float):
            self.cost.update(peak_memory_gib=progress["peak_memory_gib"], peak_memory_of=progress.get("peak_memory_of", ""))
        rng_file = folder / STATE_DIR / f"rng-rank{self.accelerator.process_index}.pt"
        if rng_file.is_file():  # absent when resuming with more processes than wrote the checkpoint
            rng = load_train_state(folder, rng_file.stem)
            try:
                torch.set_rng_state(rng["torch"])
                self.noise_gen.set_state(rng["noise"])
                if "cuda" in rng and torch.cuda.is_available():
                    torch.cuda.set_rng_state(rng["cuda"])
            except (KeyError, TypeError, RuntimeError) as err:
                raise CofreError(f"{rng_file}: not a random-number state ({err})") from None

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        staging = staging_dir(self.run.checkpoints, self.step)
        if acc.is_main_process:
            (staging / STATE_DIR).mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        save_train_state(staging, f"rng-rank{acc.process_index}", self._rng_state())
        acc.wait_for_everyone()
        if acc.is_main_process:
            ema = self.ema.state_dict(self.unwrapped) if self.ema is not None else None
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "progress": {"step": self.step, "world_size": acc.num_processes, "pre_ppl": self.pre_ppl,
                             "selected_step": self.selected_step, "skipped_steps": self.guard.skipped,
                             "ema_updates": self.ema.num_updates if self.ema is not None else 0,
                             **self._update_cost()},
                **({"teacher": self.distill.state_dict()} if self.distill is not None else {}),
            }
            write_checkpoint_files(staging, self.unwrapped, ema, self.recipe, state)
            publish_checkpoint(self.run.checkpoints, self.step, self.recipe.trainer.keep_last)
        acc.wait_for_everyone()
        return self.run.checkpoints / f"step-{self.step:09d}"

    # -- one optimiser step ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        acc = self.accelerator
        n_ng, n_g = sjfb_iterations(self.recipe, self.step)
        micro_batches = self.order.micro_batches(self.step, acc.process_index, self.layout)
        total = torch.zeros((), device=acc.device)
        aux_total = torch.zeros((), device=acc.device)
        lam = consistency_weight(self.recipe.consistency, self.step)
        if self.distill is not None:
            self.distill.begin_step(self.step, self.unwrapped)
        for i, idx in enumerate(micro_batches):
            x, labels = self.corpus.rows(idx, "train", acc.device)
            pair = correlated_pair(self.task, x, self.recipe.consistency, self.noise_gen, labels) if self.aux else None
            batch = pair.student if pair is not None else self.task.noise(x, generator=self.noise_gen, labels=labels)
            positions = self.task.loss_positions(batch).nonzero(as_tuple=True)
            # gradients are all-reduced once, on the last micro-batch
            sync = acc.no_sync(self.model) if i < len(micro_batches) - 1 else nullcontext()
            with sync, acc.autocast():
                out = self.model(batch.z, batch.signal, n_nograd=n_ng, n_grad=n_g, positions=positions)
                # SDTT replaces the MDLM loss by the divergence to the teacher's k-step targets
                base = (self.distill(out.logits, batch, self.noise_gen) if self.distill is not None
                        else self.task.loss(out.logits, batch))
                loss = base
                if self.aux is not None and pair is not None:  # L = L_MDLM + lambda L_aux (§3.2, §3.4)
                    aux = self.aux(self.unwrapped, out, pair, positions, n_ng + n_g)
                    aux_total += aux.detach() / self.accum
                    loss = base + lam * aux
                acc.backward(loss / self.accum)
            total += base.detach() / self.accum
        clip = self.recipe.optim.grad_clip
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        checked = {"loss": total, "gradient": grad_norm, **({"auxiliary loss": aux_total} if self.aux is not None else {})}
        if not self.guard.step_is_finite(acc, self.step + 1, checked, self._last_checkpoint):
            self.optimizer.zero_grad(set_to_none=True)  # skipped: no update; the schedule still advances
            self.scheduler.step()
            self.step += 1
            return {"skipped": True, "loss": total, "grad_norm": grad_norm, "n_nograd": n_ng, "n_grad": n_g}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped)
        if self.aux is not None:
            self.aux.refresh(self.ema)
        self.step += 1
        stats = {"loss": total, "grad_norm": grad_norm, "n_nograd": n_ng, "n_grad": n_g,
                 **({"round": self.distill.round, "dt": self.distill.dt} if self.distill is not None else {})}
        return {**stats, "aux_loss": aux_total, "lambda": lam} if self.aux is not None else stats

    def validate(self) -> dict[str, float]:
        """Validation with the EMA weights when EMA is on (as MDLM does)."""
        model = self.unwrapped
        if self.ema is None:
            return {**validate(model, self.task, self.corpus, self.recipe, self.accelerator), "weights": "raw"}
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.ema.state_dict(model))
        try:
            record = validate(model, self.task, self.corpus, self.recipe, self.accelerator)
        finally:
            model.load_state_dict(raw)
        return {**record, "weights": "ema"}

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        acc, t = self.accelerator, self.recipe.trainer
        start, self.clock = self.step, TrainClock(self.clock.before)  # timed from here
        tokens_per_step = t.global_batch_size * self.corpus.train.shape[1]
        result = TrainResult(run_dir=str(self.run.path), start_step=start, final_step=start, elapsed_s=0.0,
                             train_time_s=self.clock.total(trained=False), train_time_complete=self.clock.complete,
                             batch_layout=dataclasses.asdict(self.layout))
        console = Console()
        live = console.is_terminal  # a terminal gets the bar; a log file (nohup, Slurm) a plain line per interval
        progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not (acc.is_main_process and live),
        )

        def status(text: str) -> None:
            progress.update(bar, status=text)
            if acc.is_main_process and not live:
                done, elapsed = self.step - start, self.clock.elapsed()
                eta = elapsed / done * (t.max_steps - self.step) if done else 0.0
                print(f"train {self.recipe.name} step {self.step}/{t.max_steps} {text} elapsed {elapsed:.0f}s "
                      f"ETA {eta:.0f}s", flush=True)

        if acc.is_main_process:
            console.print(f"{self.recipe.name}: {self.layout.describe()}")
        with progress:
            bar = progress.add_task("train", total=t.max_steps, completed=self.step, status="")
            if self.aux is not None and self.pre_ppl is None:  # the reference of the App. F.7 selection rule
                record = {"step": self.step, **self.validate(), "pre_consistency": True}
                self.pre_ppl = record["val_ppl"]
                self._log(record)
            window_start, window_steps = time.perf_counter(), 0
            while self.step < t.max_steps and not self._stage_over():
                stats = self.train_step()
                window_steps += 1
                progress.update(bar, advance=1)
                if stats.get("skipped"):
                    self._log({"step": self.step, "skipped": "non-finite loss or gradient", "loss": float(stats["loss"]),
                               "grad_norm": float(stats["grad_norm"]), "skipped_steps": self.guard.skipped})
                elif self.step % t.log_every == 0 or self.step == t.max_steps:
                    loss = float(acc.reduce(stats["loss"], reduction="mean"))
                    rate = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                    record = {
                        "step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": float(stats["grad_norm"]), "tokens": self.step * tokens_per_step,
                        "tokens_per_s": rate, "n_nograd": stats["n_nograd"], "n_grad": stats["n_grad"],
                    }
                    record.update({k: stats[k] for k in ("round", "dt") if k in stats})
                    if "aux_loss" in stats:
                        record["aux_loss"] = float(acc.reduce(stats["aux_loss"], reduction="mean"))
                        record["lambda"] = stats["lambda"]
                    status(f"loss {loss:.3f}  {rate:,.0f} tok/s")
                    self._log(record)
                    window_start, window_steps = time.perf_counter(), 0
                selected_now = False
                if self.step % t.val_every == 0 or self.step == t.max_steps:
                    record = {"step": self.step, **self.validate()}
                    selected_now = self._select(record["val_ppl"])
                    record.update({"selected": True} if selected_now else {})
                    status(f"val ppl {record['val_ppl']:.2f}" + (f", residual {record['val_residual']:.3g}"
                                                                 if "val_residual" in record else ""))
                    self._log(record)
                if self.step % t.ckpt_every == 0 or self.step == t.max_steps or selected_now:
                    folder = self.save_checkpoint()
                    if selected_now and acc.is_main_process:
                        mark_selected(self.run.checkpoints, folder)
        acc.end_training()  # flushes and closes the experiment trackers
        result.final_step = self.step
        result.elapsed_s = self.clock.elapsed()
        result.train_time_s = self.cost["train_time_s"]  # as the latest checkpoint records it: what a resume sees
        result.validations = [r for r in self.run.read_metrics() if "val_ppl" in r]
        latest = self.run.latest_checkpoint()
        result.checkpoint = str(latest) if latest else None
        result.pre_consistency_ppl = self.pre_ppl
        result.selected_step = self.selected_step
        result.peak_memory_gib, result.peak_memory_of = (self.cost["peak_memory_gib"], self.cost["peak_memory_of"]) \
            if "peak_memory_gib" in self.cost else peak_memory(acc.device)
        return result

    def _update_cost(self) -> dict[str, Any]:
        """The cost a checkpoint records: training time so far, and the peak memory over the calls that trained the
        run (this process's now, or an earlier call's if higher)."""
        now = peak_memory(self.accelerator.device)
        if now[0] < self.cost.get("peak_memory_gib", 0.0):
            now = self.cost["peak_memory_gib"], self.cost["peak_memory_of"]
        self.cost = {"train_time_s": self.clock.total(), "peak_memory_gib": now[0], "peak_memory_of": now[1]}
        return self.cost

    def _last_checkpoint(self) -> str | None:
        pointer = self.run.checkpoints / "latest"
        return str(self.run.checkpoints / pointer.read_text().strip()) if pointer.is_file() else None

    def _select(self, val_ppl: float) -> bool:
        """App. F.7: the first checkpoint whose validation PPL exceeds the pre-consistency value by 15%."""
        rule = self.recipe.consistency.select_ppl_increase
        if self.aux is None or self.pre_ppl is None or self.selected_step is not None or rule <= 0:
            return False
        if val_ppl > self.pre_ppl * (1 + rule):
            self.selected_step = self.step
            return True
        return False

    def _stage_over(self) -> bool:
        return self.selected_step is not None and self.recipe.consistency.stop_at_selection

    def _log(self, record: dict[str, Any]) -> None:
        """metrics.jsonl is the source of truth; trackers (TensorBoard, W&B) get the numeric fields."""
        if self.accelerator.is_main_process:
            self.run.append_metrics(record)
            if self.recipe.trainer.log_with != "none":
                numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
                self.accelerator.log(numbers, step=record["step"])


def train(recipe: Recipe, run_dir: str | Path) -> TrainResult:
    """Train (or resume) the run in `run_dir` to `recipe.trainer.max_steps`."""
    trainer = Trainer(recipe, run_dir)
    try:
        return trainer.fit()
    finally:
        trainer.run.unlock()
