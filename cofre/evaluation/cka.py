"""Layer similarity of a checkpoint with linear CKA (App. C.3.1, Fig. 6), and the `--map` it suggests (App. C.3.2).

For each timestep t, held-out blocks are masked at level t, the residual stream after every transformer-block
evaluation is collected as a token-by-feature matrix X_l^(t) [N, d], and linear CKA is taken between all pairs
of layers; the matrices are then averaged over t. The strongest drop of consecutive-layer CKA marks the boundary
between an early and a late block; the late block's first layer seeds the shared fixed-point block.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from cofre.data.packing import load_corpus
from cofre.errors import CofreError
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.models import Denoiser
from cofre.precision import autocast, resolve_device, resolve_precision
from cofre.tasks.mdlm import MDLMTask, mask_tokens
from cofre.training.checkpoint import load_model, resolve_checkpoint

# -- linear CKA (Kornblith et al., 2019) --------------------------------------------------------------------------


def _centred(X: Tensor) -> Tensor:
    if X.ndim != 2:
        raise CofreError(f"CKA takes a 2-D feature matrix [tokens, features], got shape {tuple(X.shape)}")
    X = X.to(torch.float64)
    return X - X.mean(dim=0, keepdim=True)


def _hsic(X: Tensor, Y: Tensor) -> Tensor:
    """||X^T Y||_F^2 for centred X, Y; through the N x N Gram matrices when that is the cheaper product."""
    if X.shape[0] * (X.shape[1] + Y.shape[1]) < X.shape[1] * Y.shape[1]:
        return (X @ X.T).mul_(Y @ Y.T).sum()  # ||X^T Y||_F^2 = <X X^T, Y Y^T>_F
    return (X.T @ Y).square().sum()


def linear_cka(X: Tensor, Y: Tensor) -> float:
    """CKA(X, Y) = ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred [N, d] features, in float64."""
    if X.shape[0] != Y.shape[0]:
        raise CofreError(f"CKA needs the same token rows in both matrices, got {X.shape[0]} and {Y.shape[0]}")
    X, Y = _centred(X), _centred(Y)
    return float(_hsic(X, Y) / (_hsic(X, X).sqrt() * _hsic(Y, Y).sqrt()))


def cka_matrix(features: list[Tensor]) -> Tensor:
    """Linear CKA between every pair of layers' features: a symmetric [L, L] float64 matrix, ones on the diagonal."""
    centred = [_centred(X) for X in features]
    norms = [_hsic(X, X).sqrt() for X in centred]
    n = len(centred)
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = (_hsic(centred[i], centred[j]) / (norms[i] * norms[j])).cpu()
    return out


# -- the residual stream after every block evaluation -------------------------------------------------------------


def residual_streams(model: Denoiser, z: Tensor, sigma: Tensor, n_iters: int = 0) -> tuple[list[Tensor], list[str]]:
    """The residual stream [B*L, d] after each block evaluation, in order, and its labels.

    Plain model: "layer 1".."layer K". Fixed-point model: "pre k", then "fp n" ("fp n.k" when K_fp > 1) for
    iteration n = 1..n_iters started from h_pre (no reuse), then "post k".
    """
    cond = model.conditioning(sigma, z.shape[1])
    streams: list[Tensor] = []
    labels: list[str] = []

    def keep(h: Tensor, label: str) -> None:
        streams.append(h.reshape(-1, h.shape[-1]))
        labels.append(label)

    plain = model.fixed_point is None and not model.post
    h = model.vocab_embed(z)
    for k, block in enumerate(model.pre, start=1):
        h = block(h, cond.c, cond.rope)
        keep(h, f"layer {k}" if plain else f"pre {k}")
    if model.fixed_point is not None:
        fp = model.fixed_point
        injected = model.inject(h)
        for n in range(1, n_iters + 1):
            # FixedPointBlock.forward, opened up so that each of its blocks is seen
            h = fp.mixed_input(h, injected)
            for k, block in enumerate(fp.blocks, start=1):
                h = block(h, cond.c, cond.rope)
                keep(h, f"fp {n}" if len(fp.blocks) == 1 else f"fp {n}.{k}")
    for k, block in enumerate(model.post, start=1):
        h = block(h, cond.c, cond.rope)
        keep(h, f"post {k}")
    return streams, labels


# -- the analysis of one checkpoint -------------------------------------------------------------------------------


@dataclass
class CKAReport:
    """Mean and per-t CKA between layers, the block boundary it shows, and the `cofre convert --map` it suggests."""

    timesteps: list[float]
    labels: list[str]
    matrix: list[list[float]]  # mean over timesteps, [L, L]
    per_t: dict[str, list[list[float]]]  # "0.1" -> [L, L]
    consecutive: list[float]  # CKA(layer l, layer l+1), l = 1..L-1
    boundary: int  # 1-based layer after which consecutive CKA is lowest (5: between layers 5 and 6)
    within_early: float  # mean off-diagonal CKA within layers 1..boundary (nan when that block is one layer)
    within_late: float  # mean off-diagonal CKA within layers boundary+1..L (nan when one layer)
    across: float  # mean CKA between a layer of the early block and one of the late block
    suggested_map: str  # "first,first-of-late,last" for a plain model (App. C.3.2); "" for a fixed-point model
    checkpoint: str
    num_tokens: int  # token rows per layer and timestep
    seed: int
    boundary_per_t: dict[str, int]  # the boundary found at each timestep alone (its stability, App. C.3.1)
    device: str = "cpu"
    precision: str = "fp32"  # of the network's forward passes; CKA itself is computed in fp32


def block_boundary(consecutive: list[float]) -> int:
    """The 1-based layer after which the consecutive-layer CKA is lowest: the sharpest break in depth."""
    if not consecutive:
        raise CofreError("a CKA block boundary needs at least two layers")
    return min(range(len(consecutive)), key=consecutive.__getitem__) + 1


def _mean_block(matrix: Tensor, rows: slice, cols: slice, off_diagonal: bool) -> float:
    block = matrix[rows, cols]
    if off_diagonal:
        n = block.shape[0]
        return float((block.sum() - block.diagonal().sum()) / (n * (n - 1))) if n > 1 else math.nan
    return float(block.mean())


def summarize(matrix: Tensor) -> tuple[list[float], int, float, float, float]:
    """Consecutive CKA, boundary, and mean CKA within the early block, within the late block and across them."""
    consecutive = [float(matrix[i, i + 1]) for i in range(matrix.shape[0] - 1)]
    b = block_boundary(consecutive)
    early, late = slice(0, b), slice(b, matrix.shape[0])
    return (consecutive, b, _mean_block(matrix, early, early, True), _mean_block(matrix, late, late, True),
            _mean_block(matrix, early, late, False))


def suggested_map(boundary: int, n_layers: int) -> str:
    """App. C.3.2: layer 1 -> pre-stack, the late block's first layer -> fixed-point block, last layer -> post-stack."""
    return f"1,{boundary + 1},{n_layers}"


def _time_key(t: float) -> str:
    return f"{t:g}"


def analyze_checkpoint(
    checkpoint: str | Path,
    timesteps: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
    batches: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    ema: bool = True,
    max_tokens: int = 4096,
    n_iters: int | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> CKAReport:
    """CKA between all block evaluations of a checkpoint on held-out blocks masked at each t, averaged over t.

    The same blocks, mask draws u (so masks are nested across t) and token rows serve every t and layer.
    `n_iters` (fixed-point models) defaults to the recipe's solver.eval_iters; `device` to CUDA when present;
    the network runs at `precision` (auto: bf16 autocast on CUDA), CKA itself in fp32.
    """
    if not timesteps or any(not 0.0 <= t <= 1.0 for t in timesteps):
        raise CofreError(f"CKA timesteps must be in [0, 1], got {list(timesteps)}")
    if batches < 1 or batch_size < 1 or max_tokens < 2:
        raise CofreError("CKA needs batches >= 1, batch_size >= 1 and max_tokens >= 2")
    folder = resolve_checkpoint(checkpoint)
    model, recipe = load_model(folder, ema=ema)
    if recipe.model.modality != "text":  # held-out blocks are token windows of a text corpus (App. C.3.1)
        raise CofreError(f"{folder} is an {recipe.model.modality} model; cofre cka analyses text runs")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    iters = recipe.solver.eval_iters if n_iters is None else n_iters
    if model.blocks_per_step(iters) < 2:
        raise CofreError(f"{folder}: CKA compares layers, but one step of this model evaluates fewer than two blocks")
    task = MDLMTask(recipe.task, recipe.model.mask_id)

    val = load_corpus(recipe.data).val
    if len(val) == 0:
        raise CofreError(f"{folder}: the corpus '{recipe.data.corpus}' has no held-out blocks")
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(val), generator=gen)[: batches * batch_size]
    x_all = val[picked.sort().values].long()
    u_all = torch.rand(x_all.shape, generator=gen)  # one uniform per token, reused at every t
    n_rows = x_all.numel()
    rows = torch.randperm(n_rows, generator=gen)[: min(max_tokens, n_rows)].sort().values  # same rows for all layers

    per_t: dict[str, Tensor] = {}
    labels: list[str] = []
    for t in timesteps:
        collected: list[list[Tensor]] = []
        for start in range(0, len(x_all), batch_size):
            x, u = x_all[start : start + batch_size], u_all[start : start + batch_size]
            t_vec = torch.full((len(x),), float(t))
            z = mask_tokens(x, 1 - task.schedule.alpha(t_vec), task.mask_id, u)
            first = start * x_all.shape[1]
            local = rows[(rows >= first) & (rows < first + x.numel())] - first
            with torch.inference_mode(), autocast(dev, precision):
                streams, labels = residual_streams(model, z.to(dev), task.schedule.sigma(t_vec).to(dev), iters)
            collected.append([s[local.to(dev)].float().cpu() for s in streams])
        features = [torch.cat(layer) for layer in zip(*collected)]
        per_t[_time_key(t)] = cka_matrix([X.to(dev) for X in features])

    mean = torch.stack(list(per_t.values())).mean(dim=0)
    consecutive, boundary, within_early, within_late, across = summarize(mean)
    return CKAReport(
        timesteps=[float(t) for t in timesteps],
        labels=labels,
        matrix=mean.tolist(),
        per_t={k: m.tolist() for k, m in per_t.items()},
        consecutive=consecutive,
        boundary=boundary,
        within_early=within_early,
        within_late=within_late,
        across=across,
        suggested_map="" if recipe.model.is_fixed_point else suggested_map(boundary, len(labels)),
        checkpoint=str(folder),
        num_tokens=len(rows),
        seed=seed,
        boundary_per_t={k: summarize(m)[1] for k, m in per_t.items()},
        device=str(dev),
        precision=precision,
    )


# -- outputs ------------------------------------------------------------------------------------------------------


def _json_safe(value: object) -> object:
    """NaN (a one-layer block has no off-diagonal pair) is written as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _short(checkpoint: str) -> str:
    return "/".join(Path(checkpoint).parts[-3:])


def _tick_labels(labels: list[str]) -> list[str]:
    return [label.removeprefix("layer ") for label in labels]


def write_cka_outputs(report: CKAReport, out_dir: Path) -> list[Path]:
    """cka.json, cka_heatmap.png (mean CKA, Fig. 6a) and cka_consecutive.png (Fig. 6b) in `out_dir`."""
    plt = pyplot()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "cka.json"
    json_path.write_text(json.dumps(_json_safe(asdict(report)), indent=2) + "\n")

    n = len(report.labels)
    ticks = _tick_labels(report.labels)
    times = ", ".join(_time_key(t) for t in report.timesteps)
    axis_name = "layer" if all(label.startswith("layer ") for label in report.labels) else "block evaluation"

    fig, ax = plt.subplots(figsize=(max(5.5, 0.45 * n + 2.5), max(4.8, 0.45 * n + 1.8)))
    image = ax.imshow(report.matrix, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_xticks(range(n), ticks, rotation=90 if axis_name != "layer" else 0)
    ax.set_yticks(range(n), ticks)
    ax.set_xlabel(axis_name)
    ax.set_ylabel(axis_name)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                v = report.matrix[i][j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 else "white")
    if report.boundary < n:
        ax.axhline(report.boundary - 0.5, color="red", linewidth=1.2, linestyle="--")
        ax.axvline(report.boundary - 0.5, color="red", linewidth=1.2, linestyle="--")
    ax.set_title(f"Mean linear CKA over t ∈ {{{times}}}\n{_short(report.checkpoint)}", fontsize=9)
    heatmap = out_dir / "cka_heatmap.png"
    save_figure(fig, heatmap)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * n + 2.0), 4.0))
    pairs = list(range(1, n))
    for key, m in report.per_t.items():
        ax.plot(pairs, [m[i][i + 1] for i in range(n - 1)], linewidth=0.8, alpha=0.45, label=f"t = {key}")
    ax.plot(pairs, report.consecutive, "o-", color="black", linewidth=2.0, label="mean over t")
    ax.axvline(report.boundary, color="red", linestyle="--", linewidth=1.2)
    right_half = report.boundary > n / 2  # put the note on the side of the line with more room
    ax.text(
        report.boundary + (-0.15 if right_half else 0.15), 0.5,
        f"boundary: {report.labels[report.boundary - 1]} | {report.labels[report.boundary]}"
        + (f"\nsuggested --map {report.suggested_map}" if report.suggested_map else ""),
        transform=ax.get_xaxis_transform(), ha="right" if right_half else "left", va="center", color="red",
        fontsize=8, bbox={"facecolor": "white", "edgecolor": "red", "alpha": 0.9, "boxstyle": "round"},
    )
    ax.set_xticks(pairs, [f"{ticks[i]}→{ticks[i + 1]}" for i in range(n - 1)], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(min(0.0, min(report.consecutive) - 0.05), 1.05)
    ax.set_xlabel(f"consecutive {axis_name}s")
    ax.set_ylabel("linear CKA")
    title = f"CKA between consecutive {axis_name}s over t ∈ {{{times}}}"
    ax.set_title(f"{title}\n{_short(report.checkpoint)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    consecutive = out_dir / "cka_consecutive.png"
    save_figure(fig, consecutive)
    return [json_path, heatmap, consecutive]
