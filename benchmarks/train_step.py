"""Training step time and peak memory of two recipes at the same width, measured in one run.

The paper's anchor (Table 7): FP-MDLM / MDLM = 0.885 training time and 0.831 VRAM. Each recipe is
measured in a fresh process so that peak memory is its own. Runs on CPU and, unchanged, on a GPU:

    python benchmarks/train_step.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml --batch 4 --seq-len 256
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cofre.config import load_recipe
from cofre.models import Denoiser
from cofre.tasks.mdlm import MDLMTask
from cofre.training.loop import sjfb_iterations
from cofre.training.optim import build_optimizer

PAPER_RATIOS = {"time": 0.885, "memory": 0.831}  # FP-MDLM / MDLM, Table 7


@dataclass
class Measurement:
    recipe: str
    params: int
    device: str
    dtype: str
    batch: int
    seq_len: int
    steps: int
    step_s_mean: float
    step_s_std: float
    tokens_per_s: float
    peak_memory_bytes: int  # GPU: max allocated by torch; CPU: peak RSS above the process's baseline
    memory_kind: str


def measure(recipe_path: str, batch: int | None, seq_len: int | None, steps: int, warmup: int, device: str) -> Measurement:
    """One recipe's training steps on random tokens: forward (SJFB draws as in training), backward, AdamW."""
    recipe = load_recipe(recipe_path)
    batch = batch or recipe.trainer.micro_batch_size
    seq_len = seq_len or recipe.data.seq_len
    dev = torch.device(device)
    use_bf16 = dev.type == "cuda"
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    model = Denoiser(recipe.model).to(dev).train()
    optimizer = build_optimizer(model, recipe.optim)
    task = MDLMTask(recipe.task, recipe.model.mask_id)
    x = torch.randint(0, recipe.model.mask_id, (batch, seq_len), device=dev)
    gen = torch.Generator(dev).manual_seed(0)
    times = []
    for step in range(warmup + steps):
        n_ng, n_g = sjfb_iterations(recipe, step)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        noised = task.noise(x, generator=gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(noised.z, noised.sigma, n_nograd=n_ng, n_grad=n_g, positions=noised.masked.nonzero(as_tuple=True))
        task.loss(out.logits, noised).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss
        kind = "peak RSS above process baseline"
    mean = statistics.fmean(times)
    return Measurement(
        recipe=recipe.name, params=sum(p.numel() for p in model.parameters()), device=str(dev),
        dtype="bf16 autocast" if use_bf16 else "fp32", batch=batch, seq_len=seq_len, steps=steps,
        step_s_mean=mean, step_s_std=statistics.stdev(times) if len(times) > 1 else 0.0,
        tokens_per_s=batch * seq_len / mean, peak_memory_bytes=peak, memory_kind=kind,
    )


def _child(queue: mp.Queue, *args: object) -> None:
    queue.put(asdict(measure(*args)))  # type: ignore[arg-type]


def measure_in_fresh_process(*args: object) -> Measurement:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return Measurement(**result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="recipe of the reference model (e.g. recipes/owt-mdlm.yaml)")
    parser.add_argument("candidate", help="recipe compared against it (e.g. recipes/owt-fp-mdlm.yaml)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the recipe's micro_batch_size)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the recipe's data.seq_len)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (SJFB iteration counts vary per step)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/train_step.json"), help="JSON output")
    args = parser.parse_args()
    for path in (args.baseline, args.candidate):
        if not Path(path).is_file():
            sys.exit(f"error: recipe file not found: {path}")

    console = Console()
    results = []
    for path in (args.baseline, args.candidate):
        console.print(f"measuring {path} on {args.device} ...")
        results.append(measure_in_fresh_process(path, args.batch, args.seq_len, args.steps, args.warmup, args.device))
    base, cand = results
    ratios = {"time": cand.step_s_mean / base.step_s_mean, "memory": cand.peak_memory_bytes / base.peak_memory_bytes}

    table = Table(title=f"training step, {base.device}, {base.dtype}, batch {base.batch} x {base.seq_len} tokens")
    for column in ("recipe", "params", "step (s)", "tokens/s", "peak memory"):
        table.add_column(column, justify="right")
    for m in results:
        table.add_row(m.recipe, f"{m.params / 1e6:.1f}M", f"{m.step_s_mean:.3f} ± {m.step_s_std:.3f}",
                      f"{m.tokens_per_s:,.0f}", f"{m.peak_memory_bytes / 2**30:.2f} GiB")
    console.print(table)
    console.print(f"{cand.recipe} / {base.recipe}: time {ratios['time']:.3f} (paper {PAPER_RATIOS['time']}), "
                  f"memory {ratios['memory']:.3f} (paper {PAPER_RATIOS['memory']}); memory = {base.memory_kind}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measurements": [asdict(m) for m in results], "ratios": ratios,
                                    "paper_ratios": PAPER_RATIOS, "torch": torch.__version__}, indent=2))
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
