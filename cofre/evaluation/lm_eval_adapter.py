"""lm-eval adapter (App. D.2.2): each answer is scored by the MDLM variational bound, Monte Carlo over t.

For a (context, continuation) pair the context stays visible and only continuation tokens are noised:
log p(cont | ctx) >= -E_t[ w(t) * sum over masked continuation tokens i of -log p_theta(x_i | z_t) ],
w(t) = 1/t (Eq. 1 with the log-linear schedule). The choice with the highest bound is selected.
"""

from __future__ import annotations

import hashlib
import itertools
from array import array
from dataclasses import dataclass, fields
from pathlib import Path

import lm_eval
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from rich.table import Table
from torch import Tensor

from cofre.config import Recipe
from cofre.data.tokenizer import EOS_ID, GPT2_VOCAB, gpt2_tokenizer
from cofre.errors import CofreError
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.models import Denoiser
from cofre.precision import autocast, resolve_precision
from cofre.tasks.mdlm import LogLinearSchedule, sample_t, subs_nll
from cofre.training.checkpoint import load_model, resolve_checkpoint

LOCAL_TASKS = Path(__file__).parent / "lm_eval_tasks"  # offline task folder, always on lm-eval's include path
MAX_LOGITS = 4096  # scored positions per forward pass: bounds the [positions, vocab] logits (~0.8 GB in fp32)


@dataclass
class _Item:
    """One sequence to score: tokens[:n_visible] stay visible, the rest are noised and scored."""

    tokens: list[int]
    n_visible: int
    key: int  # seeds this item's t and mask draws
    greedy: bool  # also check the continuation is the left-to-right argmax


@dataclass
class _Rows:
    """Model inputs for some items, one row per draw (and per greedy check): all the same length."""

    x: Tensor  # [R, L] clean tokens
    z: Tensor  # [R, L] noised tokens
    sigma: Tensor  # [R]
    query: Tensor  # [R, L] bool: where logits are read
    weight: Tensor  # [R] w(t) / mc_draws for bound rows, 0 for greedy rows
    owner: Tensor  # [R] index of the item a row belongs to
    is_greedy: Tensor  # [R] bool

    def __len__(self) -> int:
        return self.x.shape[0]

    def _parts(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def split(self, n: int) -> tuple[_Rows, _Rows]:
        """The first n rows and the rest."""
        return _Rows(*(p[:n] for p in self._parts())), _Rows(*(p[n:] for p in self._parts()))

    def cat(self, other: _Rows) -> _Rows:
        return _Rows(*(torch.cat(pair) for pair in zip(self._parts(), other._parts())))


def _seed(*values: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(array("q", values).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class CofreLM(LM):
    """An lm-eval `LM` over a cofre text denoiser (GPT-2 BPE), scoring by the MDLM bound.

    `batch_size` counts sequences per forward pass: one request contributes `mc_draws` rows (plus one row per
    continuation token for the greedy check). `n_iters` (fixed-point models) defaults to solver.eval_iters.
    """

    def __init__(self, model: Denoiser, recipe: Recipe, mc_draws: int = 32, batch_size: int = 64, seed: int = 1,
                 device: str | torch.device = "cpu", n_iters: int | None = None, greedy: bool = True,
                 precision: str = "fp32") -> None:
        super().__init__()
        if recipe.model.vocab_size != GPT2_VOCAB + 1:
            raise CofreError(f"lm-eval needs a GPT-2 BPE text model (vocab {GPT2_VOCAB + 1}); "
                             f"this one has vocab {recipe.model.vocab_size}")
        if mc_draws < 1 or batch_size < 1:
            raise CofreError(f"lm-eval needs mc_draws >= 1 and batch_size >= 1, got {mc_draws} and {batch_size}")
        self._device = torch.device(device)
        self.precision = resolve_precision(precision, self._device)  # the network's; the bound is summed in fp64
        self.model = model.to(self._device).eval()
        self.recipe = recipe
        self.mask_id = recipe.model.mask_id
        self.max_len = recipe.model.max_seq_len
        self.schedule = LogLinearSchedule(recipe.task.eps)
        self.mc_draws = mc_draws
        self.batch_size = batch_size
        self.seed = seed
        self.n_iters = (recipe.solver.eval_iters if n_iters is None else n_iters) if recipe.model.is_fixed_point else 0
        self.greedy = greedy
        self.tokenizer = gpt2_tokenizer()

    @property
    def device(self) -> torch.device:
        return self._device

    # -- lm-eval's three request types -------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(bound on log p(continuation | context), is_greedy) per request; see `_pair_item`."""
        items = [self._pair_item(*req.args) for req in requests]
        bounds, greedy = self._score(items)
        results = [(-b, g and self.greedy) for b, g in zip(bounds, greedy)]
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Bound on log p(text), every token maskable, over disjoint windows of max_seq_len tokens.

        The first window starts with a visible EOS (MDLM separates documents with it); later windows are
        scored without the text before them.
        """
        items: list[_Item] = []
        owners: list[int] = []
        for r, req in enumerate(requests):
            tokens = [EOS_ID, *self.tokenizer.encode_ordinary(req.args[0])]
            for start in range(0, len(tokens), self.max_len):
                window = tokens[start : start + self.max_len]
                items.append(_Item(window, 1 if start == 0 else 0, _seed(self.seed, *window), greedy=False))
                owners.append(r)
        bounds, _ = self._score(items)
        totals = [0.0] * len(requests)
        for r, b in zip(owners, bounds):
            totals[r] -= b
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("CofreLM scores likelihoods only (loglikelihood, multiple choice, perplexity); "
                                  "free generation goes through `cofre sample`")

    # -- requests to token sequences -------------------------------------------------------------------
    def _pair_item(self, context: str, continuation: str) -> _Item:
        """Context + continuation tokens, left-truncated to max_seq_len keeping the whole continuation.

        As lm-eval's own adapters do, trailing whitespace of the context moves onto the continuation
        (" Paris" is one GPT-2 token); an empty context becomes a visible EOS.
        """
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if context:
            ctx = self.tokenizer.encode_ordinary(context)
            cont = self.tokenizer.encode_ordinary(context + continuation)[len(ctx) :]
        else:
            ctx, cont = [EOS_ID], self.tokenizer.encode_ordinary(continuation)
        if len(cont) > self.max_len:
            raise CofreError(f"an lm-eval continuation of {len(cont)} tokens exceeds the model's "
                             f"max_seq_len {self.max_len}")
        tokens = (ctx + cont)[-self.max_len :]
        n_visible = len(tokens) - len(cont)
        # seeded by the context alone: the choices of one question share their t draws (common random numbers)
        return _Item(tokens, n_visible, _seed(self.seed, *tokens[:n_visible]), greedy=self.greedy)

    def _rows(self, item: _Item, owner: int) -> _Rows:
        """`mc_draws` noised copies (antithetic t, each scored token masked w.p. 1 - alpha_t), then greedy rows.

        Greedy row j masks scored tokens j.. and reads position j: teacher-forced left-to-right decoding,
        as lm-eval's is_greedy for autoregressive models. Its t is the masked fraction of the row.
        """
        length, start = len(item.tokens), item.n_visible
        n_scored, draws = length - start, self.mc_draws
        gen = torch.Generator().manual_seed(item.key)
        t = sample_t(draws, self.schedule.eps, antithetic=True, generator=gen)
        # drawn position-major, so sequences of different lengths share the draws of their common positions
        u = torch.rand(n_scored, draws, generator=gen).T
        masked = torch.zeros(draws, length, dtype=torch.bool)
        masked[:, start:] = u < (1 - self.schedule.alpha(t))[:, None]
        query, weights, ts = [masked], [self.schedule.weight(t) / draws], [t]
        n_greedy = n_scored if item.greedy else 0
        if n_greedy:
            j = torch.arange(n_greedy)
            pos = torch.arange(length)
            query.append(pos[None, :] == start + j[:, None])
            masked = torch.cat([masked, pos[None, :] >= start + j[:, None]])
            weights.append(torch.zeros(n_greedy))
            ts.append(((n_scored - j) / length).clamp(self.schedule.eps, 1.0))
        x = torch.tensor(item.tokens).expand(draws + n_greedy, length)
        is_greedy = torch.arange(draws + n_greedy) >= draws
        return _Rows(x=x, z=torch.where(masked, self.mask_id, x), sigma=self.schedule.sigma(torch.cat(ts)),
                     query=torch.cat(query), weight=torch.cat(weights),
                     owner=torch.full((draws + n_greedy,), owner), is_greedy=is_greedy)

    # -- the bound --------------------------------------------------------------------------------------
    def _score(self, items: list[_Item]) -> tuple[list[float], list[bool]]:
        """Per item: the MC estimate of the NELBO of its scored tokens, and whether all greedy checks hold."""
        bound = torch.zeros(len(items), dtype=torch.float64)
        misses = torch.zeros(len(items), dtype=torch.long)
        order = sorted(range(len(items)), key=lambda i: len(items[i].tokens))
        for _, group in itertools.groupby(order, key=lambda i: len(items[i].tokens)):  # no padding: equal lengths
            pending: _Rows | None = None
            for i in group:
                rows = self._rows(items[i], i)
                pending = rows if pending is None else pending.cat(rows)
                while len(pending) >= self.batch_size:
                    batch, pending = pending.split(self.batch_size)
                    self._forward_in_parts(batch, bound, misses)
            if pending is not None and len(pending):
                self._forward_in_parts(pending, bound, misses)
        return bound.tolist(), (misses == 0).tolist()

    def _forward_in_parts(self, rows: _Rows, bound: Tensor, misses: Tensor) -> None:
        """Forward passes over at most `batch_size` rows and MAX_LOGITS scored positions each (logit memory)."""
        while len(rows):
            n = max(1, int((rows.query.sum(1).cumsum(0) <= MAX_LOGITS).sum()))
            part, rows = rows.split(n)
            self._forward(part, bound, misses)

    @torch.no_grad()
    def _forward(self, rows: _Rows, bound: Tensor, misses: Tensor) -> None:
        """One forward pass: add w(t) * -log p at masked positions to `bound`, count greedy misses."""
        batch_idx, seq_idx = rows.query.nonzero(as_tuple=True)
        if len(batch_idx) == 0:
            return
        dev = self._device
        with autocast(dev, self.precision):
            logits = self.model(rows.z.to(dev), rows.sigma.to(dev), n_nograd=self.n_iters,
                                positions=(batch_idx.to(dev), seq_idx.to(dev))).logits
        targets = rows.x[batch_idx, seq_idx].to(dev)
        owner = rows.owner[batch_idx]
        bound.index_add_(0, owner, rows.weight[batch_idx].double() * subs_nll(logits, targets, self.mask_id).cpu())
        greedy = rows.is_greedy[batch_idx]
        if greedy.any():  # SUBS: [mask] is never predicted
            on_dev = greedy.to(dev)
            wrong = logits[on_dev, : self.mask_id].argmax(-1) != targets[on_dev]
            misses.index_add_(0, owner[greedy], wrong.long().cpu())


@dataclass
class LMEvalResult:
    """lm-eval metrics of one checkpoint and how they were estimated."""

    tasks: dict[str, dict[str, float]]  # task -> metric -> value ("acc", "acc_stderr", "acc_norm", ...)
    mc_draws: int
    seed: int
    limit: int | None
    checkpoint: str
    precision: str = "fp32"  # of the network's forward passes


def _task_manager(tasks: list[str], include_path: Path | None) -> TaskManager:
    """Index only the local folders when they hold every task (fast, offline); else add lm-eval's own."""
    def missing_from(manager: TaskManager) -> list[str]:
        return [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]  # a YAML path is a task

    paths = [str(LOCAL_TASKS)] + ([str(include_path)] if include_path is not None else [])
    local = TaskManager(include_path=paths, include_defaults=False)
    if not missing_from(local):
        return local
    everything = TaskManager(include_path=paths)
    if missing := missing_from(everything):
        raise CofreError(f"unknown lm-eval task(s): {', '.join(missing)}; list them with `lm-eval ls tasks` "
                         f"(offline: {', '.join(local.all_tasks)})")
    return everything


def _metrics(task_results: dict[str, object]) -> dict[str, float]:
    """lm-eval's "acc,none" keys as "acc" (other filters keep their suffix); numbers only."""
    metrics = {}
    for key, value in task_results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name, _, filt = key.partition(",")
        metrics[name if filt in ("", "none") else key] = float(value)
    return metrics


def check_lm_eval(runs: list[Path], tasks: list[str], include_path: Path | None) -> None:
    """Before anything is sampled or scored: every task exists, and every run is a GPT-2 BPE text model."""
    from cofre.training.checkpoint import checkpoint_recipe

    if include_path is not None and not include_path.is_dir():
        raise CofreError(f"--lm-eval-include {include_path} is not a folder")
    for run in runs:
        vocab = checkpoint_recipe(run).model.vocab_size
        if vocab != GPT2_VOCAB + 1:
            raise CofreError(f"--lm-eval needs GPT-2 BPE text models (vocab {GPT2_VOCAB + 1}); {run} has vocab {vocab}")
    _task_manager(tasks, include_path)


def run_lm_eval(checkpoint: str | Path, tasks: list[str], include_path: Path | None = None, mc_draws: int = 32,
                batch_size: int = 64, limit: int | None = None, seed: int = 1, device: str = "cpu",
                ema: bool = True, precision: str = "auto") -> LMEvalResult:
    """Evaluate a checkpoint (or run) on lm-eval tasks; `cofre_local_mc` is always available offline.

    Built-in tasks (arc_easy, piqa, ...) load their data from the Hugging Face hub.
    """
    if not tasks:
        raise CofreError("no lm-eval task given (the offline example is cofre_local_mc)")
    manager = _task_manager(tasks, include_path)
    folder = resolve_checkpoint(checkpoint)
    model, recipe = load_model(folder, ema=ema)
    lm = CofreLM(model, recipe, mc_draws=mc_draws, batch_size=batch_size, seed=seed, device=device, precision=precision)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    results = {name: _metrics(values) for name, values in out["results"].items()}
    return LMEvalResult(tasks=results, mc_draws=mc_draws, seed=seed, limit=limit, checkpoint=str(folder),
                        precision=lm.precision)


def lm_eval_table(results: dict[str, LMEvalResult]) -> Table:
    """Table 11's layout: one row per run, one column per task, accuracy in percent (± its standard error)."""
    tasks = list(dict.fromkeys(task for result in results.values() for task in result.tasks))
    first = next(iter(results.values()))
    table = Table(title=f"downstream accuracy, % (Table 11 layout); each choice scored by the variational bound, "
                        f"{first.mc_draws} draws of t")
    table.add_column("model")
    for task in tasks:
        table.add_column(task, justify="right")
    for name, result in results.items():
        row = []
        for task in tasks:
            values = result.tasks.get(task, {})
            acc, err = values.get("acc"), values.get("acc_stderr")
            text = f"{100 * acc:.2f}" if isinstance(acc, float) else "-"
            row.append(text + (f" ± {100 * err:.2f}" if isinstance(err, float) else ""))
        table.add_row(name, *row)
    return table


def plot_lm_eval(results: dict[str, LMEvalResult], path: Path) -> None:
    """Table 11 as bars: accuracy per task, one bar per model, with its standard error."""
    plt = pyplot()

    tasks = list(dict.fromkeys(task for result in results.values() for task in result.tasks))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(tasks) * len(results) ** 0.5 + 2), 4.2))
    for i, (name, result) in enumerate(results.items()):
        values = [result.tasks.get(task, {}) for task in tasks]
        acc = [100 * v["acc"] if isinstance(v.get("acc"), float) else float("nan") for v in values]
        err = [100 * v["acc_stderr"] if isinstance(v.get("acc_stderr"), float) else 0.0 for v in values]
        ax.bar([t + (i - (len(results) - 1) / 2) * width for t in range(len(tasks))], acc, width, yerr=err, capsize=3,
               label=name)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("accuracy, % (± standard error)")
    first = next(iter(results.values()))
    ax.set_title(f"downstream accuracy (Table 11)\neach choice scored by the variational bound, {first.mc_draws} "
                 "draws of t", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
