"""Sampling time per transformer-block forward: FP-MDLM with 3SR against the plain MDLM sampler.

The paper's implementation is 1.12-1.45x slower than MDLM at equal block budget (Table 23), from solver
overhead. This measures ours at the same width, batch and length, in one process, alternating the
samplers. Two FP settings are timed:

- equal steps: the FP model takes as many steps as MDLM and spends its depth per step in iterations
  (N = depth - K_pre - K_post), so the per-step work outside the blocks (head, float64 categorical) is the
  same: the ratio isolates the solver and 3SR overhead;
- default rule: the FP model's default steps for the budget (about 4 iterations per step), which takes more
  steps and so pays the per-step head and sampling cost more often.

Each sampler runs at every precision asked (fp32, bf16 autocast), so bf16's speed-up is a ratio of one run;
--compile compiles the blocks of both models. MFU uses cofre/flops.py's count of a sampling run.

    python benchmarks/sample_speed.py recipes/owt-mdlm.yaml recipes/owt-fp-mdlm.yaml --budget 48 --precision fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cofre.config import load_recipe
from cofre.evaluation.latency import Latency, measure_latency
from cofre.flops import peak_flops, sampling_flops_per_token
from cofre.models import Denoiser
from cofre.precision import resolve_precision
from cofre.sampling.budget import plan_budget
from cofre.sampling.mdlm import MDLMSampler, SamplerConfig
from cofre.sampling.reuse import ReuseConfig


def build(recipe_path: str, device: torch.device, compiled: bool) -> tuple[Denoiser, float]:
    recipe = load_recipe(recipe_path)
    torch.manual_seed(0)
    model = Denoiser(recipe.model).to(device).eval()
    if compiled:
        model.compile_blocks()
    return model, recipe.task.eps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mdlm", help="recipe of the plain MDLM (e.g. recipes/owt-mdlm.yaml)")
    parser.add_argument("fp", help="recipe of the FP-MDLM at the same width (e.g. recipes/owt-fp-mdlm.yaml)")
    parser.add_argument("--budget", type=int, default=96, help="transformer-block forward passes per sample")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, help="tokens per sample (default: the recipe's data.seq_len)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per sampler")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per sampler, alternating samplers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto",
                        help="comma-separated: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16; e.g. fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks of both models")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: known GPUs)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sample_speed.json"), help="JSON output")
    args = parser.parse_args()
    for path in (args.mdlm, args.fp):
        if not Path(path).is_file():
            sys.exit(f"error: recipe file not found: {path}")

    device = torch.device(args.device)
    precisions = list(dict.fromkeys(resolve_precision(p.strip(), device) for p in args.precision.split(",")))
    mdlm, eps = build(args.mdlm, device, args.compile)
    fp, _ = build(args.fp, device, args.compile)
    length = args.length or load_recipe(args.mdlm).data.seq_len
    depth = mdlm.cfg.K_pre + mdlm.cfg.K_post
    if mdlm.cfg.is_fixed_point or not fp.cfg.is_fixed_point or mdlm.cfg.hidden != fp.cfg.hidden:
        sys.exit("error: give a plain MDLM recipe, then an FP-MDLM recipe of the same width")
    if args.budget % depth:
        sys.exit(f"error: --budget must be a multiple of the MDLM depth {depth}")
    steps = args.budget // depth
    reuse = ReuseConfig("3sr")
    plans = {
        "mdlm": (mdlm, plan_budget(mdlm.cfg, args.budget, None, "fixed"), ReuseConfig()),
        "fp-3sr equal steps": (fp, plan_budget(fp.cfg, args.budget, steps, "fixed"), reuse),
        "fp-3sr default rule": (fp, plan_budget(fp.cfg, args.budget, None, "decreasing"), reuse),
    }
    samplers = {(name, p): MDLMSampler(model, plan, SamplerConfig(length, reuse=r, precision=p), eps)
                for p in precisions for name, (model, plan, r) in plans.items()}
    generator = torch.Generator(device).manual_seed(0)
    times: dict[tuple[str, str], list[Latency]] = {key: [] for key in samplers}
    for _ in range(args.repeats):  # alternate, so that machine noise hits every sampler alike
        for key, sampler in samplers.items():
            times[key].append(measure_latency(lambda s=sampler: s.sample(args.batch, generator), args.batch, length,
                                              device, key[1], warmup=args.warmup if not times[key] else 0, repeats=1))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = {}
    for (name, precision), sampler in samplers.items():
        runs = [t.mean_s for t in times[name, precision]]
        mean = sum(runs) / len(runs)
        spread = (sum((t - mean) ** 2 for t in runs) / max(1, len(runs) - 1)) ** 0.5
        iterations = sampler.plan.iterations or [0] * sampler.plan.steps
        flops = sampling_flops_per_token(sampler.model, length, iterations) * args.batch * length / mean
        peak = peak_flops(device_name, precision, args.peak_tflops)
        rows[f"{name} {precision}"] = {
            "sampler": name, "precision": precision, "steps": sampler.plan.steps, "blocks": args.budget,
            "batch_s": mean, "batch_s_std": spread, "ms_per_block": 1000 * mean / args.budget,
            "iterations": sampler.plan.iterations, "model_tflops_per_s": flops / 1e12,
            "mfu": flops / peak if peak else None,
        }
    for row in rows.values():
        row["vs_mdlm"] = row["ms_per_block"] / rows[f"mdlm {row['precision']}"]["ms_per_block"]
        row["vs_fp32"] = (row["ms_per_block"] / rows[f"{row['sampler']} fp32"]["ms_per_block"]
                          if f"{row['sampler']} fp32" in rows else None)

    console = Console()
    table = Table(title=f"sampling, {device_name}, batch {args.batch} x {length} tokens, budget {args.budget} blocks"
                        f"{', compiled' if args.compile else ''}")
    for column in ("sampler", "precision", "steps", "s / batch", "ms / block", "vs MDLM", "vs fp32", "MFU"):
        table.add_column(column, justify="right")
    for row in rows.values():
        table.add_row(row["sampler"], row["precision"], str(row["steps"]), f"{row['batch_s']:.3f} ± {row['batch_s_std']:.3f}",
                      f"{row['ms_per_block']:.2f}", f"{row['vs_mdlm']:.3f}",
                      f"{row['vs_fp32']:.3f}" if row["vs_fp32"] is not None else "",
                      f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a")
    console.print(table)
    for precision in precisions:
        overhead = rows[f"fp-3sr equal steps {precision}"]["vs_mdlm"] - 1
        console.print(f"{precision}: solver + 3SR overhead per block-forward (equal steps): {100 * overhead:+.1f}% "
                      "(target: within 3%; paper: +12% to +45%)")
    if "bf16" in precisions and "fp32" in precisions:
        console.print(f"bf16 speed-up per block (MDLM): {1 / rows['mdlm bf16']['vs_fp32']:.2f}x (target >= 3.5x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "batch": args.batch, "length": length, "device": str(device),
                                    "device_name": device_name, "compiled": args.compile, "repeats": args.repeats,
                                    "torch": torch.__version__,
                                    "latency_samples": {" ".join(k): [asdict(t) for t in v] for k, v in times.items()}},
                                   indent=2))
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
