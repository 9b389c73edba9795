"""Training step time, throughput, MFU and peak memory of two recipes at the same width, measured in one run.

The paper's anchors: FP-MDLM / MDLM = 0.885 training time and 0.831 VRAM (Table 7); FP-MaskGIT / MaskGIT-Large
0.514 time and 0.493 VRAM (Table 15). Text and image recipes alike (each with its own objective). Each (recipe, compile)
configuration is measured in a fresh process so that peak memory is its own. Runs on CPU and, unchanged,
on a GPU (bf16 autocast there by default):

    python benchmarks/train_step.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml --batch 32 --compile both

Model FLOPs per token follow cofre/flops.py (matmuls and attention; the head only at masked positions;
SJFB's no-grad iterations at 1x, everything with gradients at 3x). MFU = model FLOP/s / the device's dense
bf16 peak (known GPUs, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue as queue_module
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
from cofre.flops import peak_flops, train_flops_per_token
from cofre.models import Denoiser
from cofre.precision import PRECISIONS, autocast, resolve_precision
from cofre.tasks import build_task
from cofre.training.loop import sjfb_iterations
from cofre.training.optim import build_optimizer

# FP / plain model: FP-MDLM / MDLM (Table 7), FP-MaskGIT / MaskGIT-Large (Table 15: 9h08m / 17h46m, 35.74 / 72.45 GiB)
PAPER_RATIOS = {"text": {"time": 0.885, "memory": 0.831}, "image": {"time": 0.514, "memory": 0.493}}


@dataclass
class Measurement:
    recipe: str
    params: int
    device: str
    device_name: str
    precision: str
    compiled: bool
    batch: int
    seq_len: int
    steps: int
    step_s_mean: float
    step_s_std: float
    tokens_per_s: float
    model_flops_per_token: float  # mean over the timed steps (SJFB draws and masked fractions vary)
    model_tflops_per_s: float
    mfu: float | None  # None when the device's peak is unknown (CPU, or a GPU not in cofre.flops)
    peak_memory_bytes: int  # GPU: max allocated by torch; CPU: peak RSS above the process's baseline
    memory_kind: str
    step_s: list[float]  # every timed step (intervals of the mean: cofre claims bootstraps over them)


def measure(recipe_path: str, batch: int | None, seq_len: int | None, steps: int, warmup: int, device: str,
            precision: str, compiled: bool, peak_tflops: float | None) -> Measurement:
    """One recipe's training steps on random tokens (and labels, for images): forward (SJFB draws as in training),
    backward, AdamW."""
    recipe = load_recipe(recipe_path)
    batch = batch or recipe.trainer.micro_batch_size
    seq_len = seq_len or (recipe.model.max_seq_len if recipe.model.modality == "image" else recipe.data.seq_len)
    dev = torch.device(device)
    precision = resolve_precision(precision, dev)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    model = Denoiser(recipe.model).to(dev).train()
    if compiled:
        model.compile_blocks()
    optimizer = build_optimizer(model, recipe.optim)
    task = build_task(recipe)
    x = torch.randint(0, recipe.model.mask_id, (batch, seq_len), device=dev)
    gen = torch.Generator(dev).manual_seed(0)
    labels = torch.randint(0, recipe.model.num_classes, (batch,), device=dev, generator=gen) \
        if recipe.model.modality == "image" else None
    times, flops = [], []
    for step in range(warmup + steps):
        n_ng, n_g = sjfb_iterations(recipe, step)
        if step < warmup and recipe.model.is_fixed_point:
            n_ng = max(n_ng, 1)  # warm-up runs both the no-grad and the grad graphs (compiled: both compile here)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        noised = task.noise(x, generator=gen, labels=labels)
        positions = task.loss_positions(noised)
        with autocast(dev, precision):
            out = model(noised.z, noised.signal, n_nograd=n_ng, n_grad=n_g, positions=positions.nonzero(as_tuple=True))
        task.loss(out.logits, noised).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
            flops.append(train_flops_per_token(model, seq_len, n_ng, n_g, float(positions.float().mean())))
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
        name = torch.cuda.get_device_name(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss
        kind, name = "peak RSS above process baseline", "cpu"
    mean = statistics.fmean(times)
    tokens_per_s = batch * seq_len / mean
    achieved = statistics.fmean(flops) * tokens_per_s
    device_peak = peak_flops(name, precision, peak_tflops)
    return Measurement(
        recipe=recipe.name, params=sum(p.numel() for p in model.parameters()), device=str(dev), device_name=name,
        precision=precision, compiled=compiled, batch=batch, seq_len=seq_len, steps=steps, step_s_mean=mean,
        step_s_std=statistics.stdev(times) if len(times) > 1 else 0.0, tokens_per_s=tokens_per_s,
        model_flops_per_token=statistics.fmean(flops), model_tflops_per_s=achieved / 1e12,
        mfu=achieved / device_peak if device_peak else None, peak_memory_bytes=peak, memory_kind=kind, step_s=times,
    )


def _child(queue: mp.Queue, *args: object) -> None:
    queue.put(asdict(measure(*args)))  # type: ignore[arg-type]


def measure_in_fresh_process(*args: object) -> Measurement:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    while True:  # a child that dies (out of memory, a compiler error) must not leave us waiting forever
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if proc.exitcode is not None:
                sys.exit(f"error: measuring {args[0]} failed in its process (exit code {proc.exitcode}); see above")
    proc.join()
    return Measurement(**result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="recipe of the reference model (e.g. recipes/owt-mdlm.yaml)")
    parser.add_argument("candidate", help="recipe compared against it (e.g. recipes/owt-fp-mdlm.yaml)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the recipe's micro_batch_size)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the recipe's data.seq_len)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (SJFB iteration counts vary per step)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--compile", default="off", choices=("off", "on", "both"),
                        help="torch.compile the blocks; 'both' measures eager and compiled and reports the speed-up")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: known GPUs)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/train_step.json"), help="JSON output")
    args = parser.parse_args()
    for path in (args.baseline, args.candidate):
        if not Path(path).is_file():
            sys.exit(f"error: recipe file not found: {path}")

    console = Console()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    results: dict[tuple[str, bool], Measurement] = {}
    for compiled in modes:
        for path in (args.baseline, args.candidate):
            console.print(f"measuring {path} on {args.device}{' (compiled)' if compiled else ''} ...")
            results[path, compiled] = measure_in_fresh_process(path, args.batch, args.seq_len, args.steps, args.warmup,
                                                               args.device, args.precision, compiled, args.peak_tflops)
    first = next(iter(results.values()))
    table = Table(title=f"training step, {first.device_name}, {first.precision}, batch {first.batch} x {first.seq_len} tokens")
    for column in ("recipe", "compiled", "params", "step (s)", "tokens/s", "GFLOP/token", "TFLOP/s", "MFU", "peak memory"):
        table.add_column(column, justify="right")
    for m in results.values():
        table.add_row(m.recipe, "yes" if m.compiled else "no", f"{m.params / 1e6:.1f}M",
                      f"{m.step_s_mean:.3f} ± {m.step_s_std:.3f}", f"{m.tokens_per_s:,.0f}",
                      f"{m.model_flops_per_token / 1e9:.2f}", f"{m.model_tflops_per_s:.1f}",
                      f"{100 * m.mfu:.1f}%" if m.mfu is not None else "n/a", f"{m.peak_memory_bytes / 2**30:.2f} GiB")
    console.print(table)
    ratios: dict[str, float] = {}
    paper = PAPER_RATIOS[load_recipe(args.baseline).model.modality]
    for compiled in modes:
        base, cand = results[args.baseline, compiled], results[args.candidate, compiled]
        key = "compiled" if compiled else "eager"
        ratios[f"time {key}"] = cand.step_s_mean / base.step_s_mean
        ratios[f"memory {key}"] = cand.peak_memory_bytes / base.peak_memory_bytes
        console.print(f"{cand.recipe} / {base.recipe} ({key}): time {ratios[f'time {key}']:.3f} "
                      f"(paper {paper['time']}), memory {ratios[f'memory {key}']:.3f} "
                      f"(paper {paper['memory']}); memory = {base.memory_kind}")
    if len(modes) == 2:
        for path in (args.baseline, args.candidate):
            speedup = results[path, True].tokens_per_s / results[path, False].tokens_per_s
            ratios[f"compile speed-up {results[path, True].recipe}"] = speedup
            console.print(f"compile speed-up {results[path, True].recipe}: {speedup:.2f}x tokens/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measurements": [asdict(m) for m in results.values()], "ratios": ratios,
                                    "paper_ratios": paper, "torch": torch.__version__}, indent=2))
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
