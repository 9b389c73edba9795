"""`cofre step-importance`: along the diffusion trajectory, how much worse a light denoiser is than the heavy one
(Sedykh et al., arXiv 2604.02340, step-importance analysis), and the model schedule that follows from it.

Both models see the same states: held-out sequences masked at a grid of t, each token masked while u < t with one
uniform u per token shared by all t (nested masks, so the curves differ by t, not by the draw). At the masked
positions it records each model's per-token cross-entropy -log p(x) (SUBS, unweighted: no ELBO weight 1/t), their
gap CE_light - CE_heavy, and KL(p_heavy || p_light), each averaged over all masked positions of all batches.

Step i of the ancestral sampler runs the network at t_i = 1 - i/S and reveals about L/S tokens whatever i is, so a
step's cost of going light is the KL at its t; the suggested schedule makes light the steps with the smallest KL
(the curve interpolated linearly in t), as many as the asked saving needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cofre.errors import CofreError
from cofre.evaluation.lagged_kl import LogProbs
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.runs import atomic_write_text, of_type, read_json_file
from cofre.sampling.model_schedule import HEAVY, LIGHT, Segment, schedule_text


@dataclass
class ImportancePoint:
    """Both models at one t, averaged over the masked positions of every batch."""

    t: float
    ce_heavy: float  # nats per masked token
    ce_light: float
    gap: float  # ce_light - ce_heavy
    kl: float  # KL(p_heavy || p_light), nats per masked token
    masked: int  # positions averaged


@dataclass
class Suggestion:
    """The schedule the KL curve suggests for a saving: the light steps are those with the smallest KL."""

    schedule: str
    steps: int
    light_steps: int
    asked_saving: float
    saving: float  # what the schedule saves: light_steps (D_H - D_L) / (S D_H)
    criterion: str = "KL(heavy || light) at each step's t (t_i = 1 - i/S), interpolated linearly between grid points"


@dataclass
class StepImportance:
    heavy: str
    light: str
    settings: dict[str, Any]
    points: list[ImportancePoint]
    thirds: dict[str, float]  # mean KL over the early (t > 2/3), middle and late (t < 1/3) points
    most_sensitive: str  # the third with the largest mean KL
    suggestion: Suggestion | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def default_times(points: int) -> list[float]:
    """`points` midpoints of equal intervals of (0, 1], from t near 1 (the first steps) down to t near 0."""
    return [1 - (k + 0.5) / points for k in range(points)]


def importance_point(heavy: LogProbs, light: LogProbs, batches: list[Tensor], t: float, mask_id: int,
                     seed: int) -> ImportancePoint:
    """CE of both models, their gap and KL(heavy || light) at t, over the masked positions of every batch."""
    ce_heavy = ce_light = kl = 0.0
    count = 0
    for i, x in enumerate(batches):
        u = torch.rand(x.shape, generator=torch.Generator(x.device).manual_seed(seed + i), device=x.device)
        masked = u < t  # the same u at every t: nested masks
        if not masked.any():
            continue
        z = torch.where(masked, torch.full_like(x, mask_id), x)
        targets = x[masked][:, None]
        log_h, log_l = heavy(z, t)[masked], light(z, t)[masked]  # [M, V] float64 log-probabilities
        ce_heavy -= float(log_h.gather(-1, targets).sum())  # -log p(x) per masked token, unweighted
        ce_light -= float(log_l.gather(-1, targets).sum())
        kl += float((log_h.exp() * (log_h - log_l)).sum())  # KL(p_heavy || p_light) per masked position
        count += int(masked.sum())
    if count == 0:
        raise CofreError(f"no token is masked at t = {t:g} in the held-out batches; use larger t or more batches")
    return ImportancePoint(t, ce_heavy / count, ce_light / count, (ce_light - ce_heavy) / count, kl / count, count)


def trajectory_thirds(points: list[ImportancePoint]) -> dict[str, float]:
    """Mean KL over the early (t > 2/3: the first steps), middle and late (t < 1/3) points of the grid."""
    groups = {"early (t > 2/3)": [p.kl for p in points if p.t > 2 / 3],
              "middle": [p.kl for p in points if 1 / 3 <= p.t <= 2 / 3],
              "late (t < 1/3)": [p.kl for p in points if p.t < 1 / 3]}
    return {name: sum(v) / len(v) for name, v in groups.items() if v}


def light_steps_for(saving: float, steps: int, heavy_blocks: int, light_blocks: int) -> int:
    """How many of `steps` must be light to save `saving` of the heavy model's blocks (nearest whole number)."""
    if light_blocks >= heavy_blocks:
        raise CofreError(f"the light model costs {light_blocks} blocks a step, the heavy one {heavy_blocks}: nothing to save")
    best = (heavy_blocks - light_blocks) / heavy_blocks  # every step light
    if not 0 < saving <= best:
        raise CofreError(f"--saving must be in (0, {best:.3f}]: a light step saves {heavy_blocks - light_blocks} of "
                         f"{heavy_blocks} blocks, got {saving}")
    light_steps = round(saving * steps / best)
    if light_steps < 1:
        raise CofreError(f"a saving of {saving} is less than one light step of {steps}; use more --steps")
    return light_steps


def suggest_schedule(points: list[ImportancePoint], steps: int, heavy_blocks: int, light_blocks: int,
                     saving: float) -> Suggestion:
    """Light at the steps of smallest KL, as many as `saving` (a fraction of the heavy model's blocks) needs."""
    light_steps = light_steps_for(saving, steps, heavy_blocks, light_blocks)
    best = (heavy_blocks - light_blocks) / heavy_blocks
    order = sorted(points, key=lambda p: p.t)
    step_kl = np.interp([1 - i / steps for i in range(steps)], [p.t for p in order], [p.kl for p in order])
    light = set(sorted(range(steps), key=lambda i: (step_kl[i], i))[:light_steps])
    segments: list[Segment] = []
    for i in range(steps):
        model = LIGHT if i in light else HEAVY
        if segments and segments[-1].model == model:
            segments[-1] = Segment(model, segments[-1].steps + 1)
        else:
            segments.append(Segment(model, 1))
    return Suggestion(schedule_text(segments), steps, light_steps, saving, light_steps * best / steps)


def stored_points(path: Path, settings: dict[str, Any]) -> dict[float, ImportancePoint]:
    """Points an interrupted or earlier run with identical settings and weights already wrote, by t."""
    if not path.is_file():
        return {}
    remedy = "remove it to compute every point again"
    record = read_json_file(path, "step-importance file", remedy, {"settings": dict, "points": list})
    if record["settings"] != settings:
        return {}
    names = {f.name: f.type for f in dataclasses.fields(ImportancePoint)}
    if not all(isinstance(p, dict) and set(p) == set(names) and all(of_type(v, (int, float)) for v in p.values())
               for p in record["points"]):
        raise CofreError(f"{path}: its points are not records of {', '.join(names)}; {remedy}")
    return {p["t"]: ImportancePoint(**p) for p in record["points"]}


def analyse(heavy: LogProbs, light: LogProbs, batches: list[Tensor], times: list[float], mask_id: int,
            settings: dict[str, Any], path: Path, names: tuple[str, str]) -> StepImportance:
    """Every point of the grid; each is written as soon as it is computed, and read back when the same settings
    (weights included) ran before, so an interrupted analysis resumes."""
    done = stored_points(path, settings)
    points: list[ImportancePoint] = []
    for t in times:
        points.append(done[t] if t in done else importance_point(heavy, light, batches, t, mask_id, settings["seed"]))
        atomic_write_text(path, json.dumps({"settings": settings, "points": [dataclasses.asdict(p) for p in points]},
                                           indent=2))
    thirds = trajectory_thirds(points)
    return StepImportance(names[0], names[1], settings, points, thirds, max(thirds, key=thirds.__getitem__))


def plot_importance(result: StepImportance, path: Path) -> None:
    """Left: each model's CE over t; right: the CE gap and KL(heavy || light), the suggested light steps shaded."""
    plt = pyplot()

    t = [p.t for p in result.points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(t, [p.ce_heavy for p in result.points], marker="o", label=f"heavy: {result.heavy}")
    left.plot(t, [p.ce_light for p in result.points], marker="s", label=f"light: {result.light}")
    left.set_ylabel("cross-entropy at masked positions, nats/token")
    left.set_title("per-token CE (unweighted)", fontsize=9)
    right.plot(t, [p.gap for p in result.points], marker="o", label="CE gap (light - heavy)")
    right.plot(t, [p.kl for p in result.points], marker="s", label="KL(heavy || light)")
    right.axhline(0, color="0.5", linewidth=0.8)
    right.set_ylabel("nats per masked token")
    s = result.suggestion
    if s is not None:
        step = 0
        for part in s.schedule.split(","):
            n = int(part[1:])
            if part[0] == LIGHT:  # steps step .. step + n - 1 run at t from 1 - step/S down to 1 - (step + n)/S
                right.axvspan(1 - (step + n) / s.steps, 1 - step / s.steps, color="tab:green", alpha=0.15)
            step += n
        right.set_title(f"suggested for {100 * s.asked_saving:.1f}% saving: {s.schedule} (light shaded, "
                        f"saves {100 * s.saving:.1f}%)", fontsize=8)
    for ax in (left, right):
        ax.set_xlim(1, 0)  # sampling runs from t = 1 (all masked) on the left to t = 0 on the right
        ax.set_xlabel("t (sampling goes left to right: early steps at t near 1)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    masked = [p.masked for p in result.points]
    fig.suptitle(f"step importance: {result.heavy} (heavy) vs {result.light} (light); {min(masked)}-{max(masked)} "
                 "masked held-out positions per t", fontsize=10)
    save_figure(fig, path)


def step_importance(heavy_run: Path, light_run: Path, times: list[float], batches: int, batch_size: int, seed: int,
                    ema: bool, device: str, saving: float, steps: int, out_dir: Path,
                    precision: str = "auto") -> StepImportance:
    """Load both runs (matched as a model schedule requires), analyse held-out batches of the heavy run's corpus,
    suggest a schedule; write `step-importance.json` and `.png` into `out_dir`."""
    from cofre.data.packing import load_corpus
    from cofre.evaluation.lagged_kl import denoiser_log_probs
    from cofre.sampling.generate import open_checkpoint
    from cofre.sampling.model_schedule import blocks_of_step, check_compatible, step_iterations

    if not times or not all(math.isfinite(t) and 0 < t <= 1 for t in times):
        raise CofreError(f"t values must lie in (0, 1], got {', '.join(map(str, times))}")
    heavy, light = (open_checkpoint(run, ema=ema, device=device) for run in (heavy_run, light_run))
    check_compatible(heavy.recipe, light.recipe, str(heavy.folder), str(light.folder))
    light_steps_for(saving, steps, blocks_of_step(heavy.recipe), blocks_of_step(light.recipe))  # before any forward
    val = load_corpus(heavy.recipe.data).val
    if val.shape[0] < batches * batch_size:
        raise CofreError(f"the validation split has {val.shape[0]} blocks, fewer than --batches x --batch-size "
                         f"= {batches * batch_size}")
    data = [val[i * batch_size:(i + 1) * batch_size].to(heavy.device) for i in range(batches)]
    mask_id = heavy.recipe.model.mask_id
    from cofre.precision import resolve_precision

    run_precision = resolve_precision(precision, heavy.device)
    log_probs = [denoiser_log_probs(c.model, c.recipe.solver.eval_iters, c.recipe.task.eps, mask_id, run_precision)
                 for c in (heavy, light)]
    weights = [{k: v for k, v in c.identity.items() if k != "code"} for c in (heavy, light)]  # code changes keep points
    settings = {"times": times, "batches": batches, "batch_size": batch_size, "seed": seed, "ema": ema,
                "precision": run_precision,
                "heavy": weights[0], "light": weights[1],
                "iterations": {"heavy": step_iterations(heavy.recipe), "light": step_iterations(light.recipe)}}
    json_path = out_dir / "step-importance.json"
    result = analyse(log_probs[0], log_probs[1], data, times, mask_id, settings, json_path,
                     (heavy.run_root.name, light.run_root.name))
    result.suggestion = suggest_schedule(result.points, steps, blocks_of_step(heavy.recipe), blocks_of_step(light.recipe),
                                         saving)
    result.outputs = {"json": str(json_path), "png": str(out_dir / "step-importance.png")}
    plot_importance(result, Path(result.outputs["png"]))
    atomic_write_text(json_path, json.dumps(dataclasses.asdict(result), indent=2))
    return result
