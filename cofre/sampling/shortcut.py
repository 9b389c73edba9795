"""MIGM-Shortcut (the related paper in ../shared/paper/related-migm-shortcut.txt): a small learned step S that predicts
the denoiser's next features, so that only B of N sampling steps run the full model. The features are the normalised
tensor that feeds the logits, as in the authors' code: the head's norm_final output, before its adaLN modulation and
linear map (`Denoiser.head_features`); at a shortcut step the rest of the head (`Denoiser.head_logits`) maps f̂ to logits.

  f̂_{s+1} = f_s + S(f_s, e(tokens committed at step s), r_{s+1})   (S regresses the features' change between steps)

S projects the features and the committed tokens' embeddings to half width, runs one block of cross-attention
(queries: every position; keys/values: only the newly committed tokens) + FFN, then self-attention + FFN (pre-LN),
a LayerNorm with an adaLN scale/shift from the next mask ratio r, and projects back. The last projection is
zero-initialised, so S starts as "reuse the features" (f̂ = f_s). Token embeddings are the base model's own, frozen,
read from the base model at each call (S stores no copy). One module serves both modalities; what differs is how a
committed token carries its position: images add the base model's learned position embedding, text rotates the
attention's queries and keys by their rotary positions. With guidance, the sampler hands S the doubled batch, so the
unconditional half gets features of its own. Full steps: step 0 and t_k = max(t_{k-1} + 1, round(N (k / B))).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cofre.checks import MAX_BUDGET, check_range
from cofre.config import MAX_HEADS, MAX_WIDTH, ModelConfig, _rule, _within
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.models.blocks import LayerNorm, Rotary, TimestepEmbedder, apply_rotary, modulate
from cofre.sampling.budget import DEFAULT_MEAN_ITERS, BudgetPlan, plan_budget


# -- which steps run the full model -----------------------------------------------------------------------------
def full_steps(steps: int, full: int) -> list[int]:
    """The B of N steps that run the full model: 0 and t_k = max(t_{k-1} + 1, round(N * (k / B))) for k = 1..B-1,
    the authors' expression to the float: k / B first, then Python's round (half to even) of the product, which
    decides the ties (N = 45, B = 10 gives 31, not 32). Every (N, B) gives B distinct steps in 0..N-1."""
    check_range("--steps", steps, 1, MAX_BUDGET)  # before a list of B steps is built
    if not 1 <= full <= steps:
        raise CofreError(f"--full-steps must be between 1 and --steps ({steps}), got {full}")
    chosen = [0]
    for k in range(1, full):
        chosen.append(max(chosen[-1] + 1, round(steps * (k / full))))
    return chosen


def shortcut_plan(cfg: ModelConfig, steps: int, full: int, budget: int | None, schedule: str) -> BudgetPlan:
    """An N-step plan whose B full steps spend `budget` blocks (default: B x depth for a plain model, B x (K_pre +
    4 K_fp + K_post) for an FP model, split by `schedule`); shortcut steps spend no blocks and no iterations."""
    chosen = full_steps(steps, full)
    if budget is None:
        budget = full * (cfg.K_pre + cfg.K_post + (DEFAULT_MEAN_ITERS * cfg.K_fp if cfg.is_fixed_point else 0))
    inner = plan_budget(cfg, budget, full if cfg.is_fixed_point else None, schedule)
    if inner.steps != full:
        raise CofreError(f"budget {budget} is {inner.steps} full steps of this plain model, not --full-steps {full}; "
                         f"leave --budget out or give {full} x {cfg.K_pre + cfg.K_post}")
    iterations, blocks = [0] * steps, [0] * steps
    for k, step in enumerate(chosen):
        blocks[step] = inner.blocks_per_step[k]
        if inner.iterations:
            iterations[step] = inner.iterations[k]
    return BudgetPlan(budget, steps, iterations if inner.iterations else [], blocks)


# -- the shortcut model S ----------------------------------------------------------------------------------------
FEATURES = "post_norm"  # S's features: the head's normalised input (Denoiser.head_features)


@dataclass
class ShortcutConfig:
    """S's shape; `hidden` is the base model's width (set from the base run)."""

    hidden: int = 256
    width_ratio: float = 0.5  # S works at hidden x width_ratio (the paper's half width)
    heads: int = 4
    mlp_ratio: int = 4
    frequency_dim: int = 64  # sinusoidal features of 1000 r (DiT's timestep embedding)
    modality: str = "image"  # image: learned positions added to the keys; text: rotary positions in attention
    features: str = FEATURES  # what S regresses; a checkpoint without this field regressed pre-norm ones (refused)

    @property
    def width(self) -> int:
        return round(self.hidden * self.width_ratio)

    def validate(self, where: str = "shortcut") -> None:
        _within(where, self, 1, MAX_WIDTH, "hidden", "frequency_dim")
        _within(where, self, 1, MAX_HEADS, "heads")
        _within(where, self, 1, 64, "mlp_ratio")
        _rule(0 < self.width_ratio <= 1, f"{where}.width_ratio must be in (0, 1], got {self.width_ratio}")
        _rule(self.width % self.heads == 0 and (self.width // self.heads) % 2 == 0,
              f"{where}: width {self.width} (hidden x width_ratio) must split into {self.heads} heads of even size")
        _rule(self.modality in ("image", "text"), f"{where}.modality must be image or text, got '{self.modality}'")
        _rule(self.features == FEATURES, f"{where}.features must be {FEATURES} (the head's normalised input), got "
                                         f"'{self.features}'")


class Attention(nn.Module):
    """Multi-head attention of queries x over keys/values kv, optionally rotated by position, with a key mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))

    def forward(self, x: Tensor, kv: Tensor, rope_q: tuple[Tensor, Tensor] | None,
                rope_k: tuple[Tensor, Tensor] | None, key_mask: Tensor | None) -> Tensor:
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2)
        k, v = (proj(kv).view(B, kv.shape[1], self.heads, -1).transpose(1, 2) for proj in (self.k, self.v))
        if rope_q is not None and rope_k is not None:
            q, k = apply_rotary(q, *rope_q), apply_rotary(k, *rope_k)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        return self.o(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, L, D))


def _ffn(width: int, mlp_ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * width, width))


class Shortcut(nn.Module):
    """S(f_s, e(new tokens), r) -> f_s + delta, at every position (f̂_{s+1} of the related paper)."""

    def __init__(self, cfg: ShortcutConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.width
        self.proj_in = nn.Linear(cfg.hidden, d)  # features -> half width
        self.key_proj = nn.Linear(cfg.hidden, d)  # committed tokens' embeddings -> half width
        self.norm_q, self.norm_kv, self.norm_ff1 = LayerNorm(d), LayerNorm(d), LayerNorm(d)
        self.cross = Attention(d, cfg.heads)
        self.ff1 = _ffn(d, cfg.mlp_ratio)
        self.norm_self, self.norm_ff2 = LayerNorm(d), LayerNorm(d)
        self.self_attn = Attention(d, cfg.heads)
        self.ff2 = _ffn(d, cfg.mlp_ratio)
        self.norm_out = LayerNorm(d)
        self.ratio_embed = TimestepEmbedder(d, cfg.frequency_dim)
        self.adaLN_modulation = nn.Linear(d, 2 * d)  # scale and shift from r
        self.proj_out = nn.Linear(d, cfg.hidden)
        nn.init.zeros_(self.proj_out.weight)  # the chosen init: S starts as f̂ = f_s (tested)
        nn.init.zeros_(self.proj_out.bias)
        self.rotary = Rotary(d // cfg.heads) if cfg.modality == "text" else None

    def forward(self, f: Tensor, keys: Tensor, key_pos: Tensor, key_valid: Tensor, r: Tensor) -> Tensor:
        """f [B, L, D] features; keys [B, M, D] embeddings of the committed tokens at positions key_pos [B, M]
        (key_valid [B, M] False on padding); r [B] the next mask ratio. A row with no committed token keeps f."""
        B, L, _ = f.shape
        if keys.shape[1] == 0:
            return f
        has_keys = key_valid.any(dim=1)
        key_valid = key_valid | ~has_keys[:, None]  # attend to padding in rows that are then discarded below
        rope_q = rope_k = None
        if self.rotary is not None:
            cos, sin = self.rotary(L, f.device)
            rope_q, rope_k = (cos, sin), (cos[key_pos][:, None], sin[key_pos][:, None])
        x = self.proj_in(f)
        kv = self.norm_kv(self.key_proj(keys))
        x = x + self.cross(self.norm_q(x), kv, rope_q, rope_k, key_valid)
        x = x + self.ff1(self.norm_ff1(x))
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, rope_q, rope_q, None)
        x = x + self.ff2(self.norm_ff2(x))
        shift, scale = self.adaLN_modulation(F.silu(self.ratio_embed(1000 * r)))[:, None].chunk(2, dim=-1)
        delta = self.proj_out(modulate(self.norm_out(x), shift, scale))
        return torch.where(has_keys[:, None, None], f + delta.to(f.dtype), f)  # f̂_{s+1} = f_s + S(...)

    def flops(self, seq_len: int, keys: float) -> float:
        """Forward FLOPs of one call on one sequence of `seq_len` queries and `keys` committed tokens (matmuls and
        attention's products, as cofre.flops counts a block; the per-sequence r embedding is left out)."""
        d, D, m = self.cfg.width, self.cfg.hidden, self.cfg.mlp_ratio
        per_query = D * d + 2 * d * d + 2 * m * d * d + 4 * d * d + 2 * m * d * d + d * D  # in, cross q/o, ffn, self, ffn, out
        per_key = D * d + 2 * d * d  # key projection, cross k/v
        return 2 * (seq_len * per_query + keys * per_key) + 4 * seq_len * keys * d + 4 * seq_len * seq_len * d


def block_flops(model: Denoiser, seq_len: int) -> float:
    """Forward FLOPs of one base transformer block on one sequence (cofre.flops' count: 2 x the token matmul
    weights without adaLN, which runs once per sequence, plus attention's 4 L D per token)."""
    block = model.blocks()[0]
    weights = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    weights -= block.adaLN_modulation.weight.numel()
    return seq_len * (2 * weights + 4 * seq_len * model.cfg.hidden)


def parameter_fraction(shortcut: Shortcut, model: Denoiser) -> float:
    return sum(p.numel() for p in shortcut.parameters()) / sum(p.numel() for p in model.parameters())


# -- what S sees: the committed tokens as keys -------------------------------------------------------------------
def committed_keys(model: Denoiser, z_s: Tensor, z_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The tokens committed between the inputs z_s and z_next of two steps, gathered to [B, M] (M: the most any row
    committed; rows that committed fewer are padded): their frozen embeddings [B, M, D] (token, plus the learned
    position for images), positions [B, M] and a validity mask [B, M]."""
    mask_id = model.cfg.mask_id
    committed = (z_s == mask_id) & (z_next != mask_id)
    counts = committed.sum(dim=1)
    width = int(counts.max()) if committed.numel() else 0
    positions = torch.argsort((~committed).to(torch.uint8), dim=1, stable=True)[:, :width]  # committed first, in order
    valid = torch.arange(width, device=z_s.device)[None] < counts[:, None]
    tokens = z_next.gather(1, positions)
    with torch.no_grad():
        keys = model.vocab_embed(tokens)
        if model.cfg.modality == "image":
            keys = keys + model.pos_embed[positions]
    return keys, positions, valid


def mask_ratio(z: Tensor, mask_id: int) -> Tensor:
    """r [B]: the fraction of each row still masked."""
    return (z == mask_id).float().mean(dim=1)


def predict_features(shortcut: Shortcut, model: Denoiser, f_s: Tensor, z_s: Tensor, z_next: Tensor) -> Tensor:
    """f̂ for the step whose input is z_next, from the features f_s of the step whose input was z_s."""
    keys, positions, valid = committed_keys(model, z_s, z_next)
    return shortcut(f_s, keys, positions, valid, mask_ratio(z_next, model.cfg.mask_id))


# -- the samplers' hook ------------------------------------------------------------------------------------------
class ShortcutSteps:
    """Hooked into a sampler: at a shortcut step it returns f̂ in place of the network's pass; it keeps the previous
    step's features and input across the steps of one batch (the sampler calls `start` per batch)."""

    def __init__(self, shortcut: Shortcut, model: Denoiser, steps: int, full: int,
                 identity: dict[str, Any] | None = None) -> None:
        self.shortcut = shortcut.eval()
        self.model = model
        self.full = frozenset(full_steps(steps, full))
        self.identity = identity or {}  # which shortcut weights run (written beside the samples)
        self.previous: tuple[Tensor, Tensor] | None = None
        self.keys: list[float] = []  # this batch: the keys per row (padded) at each call that ran S (FLOPs report)

    def start(self) -> None:
        self.previous, self.keys = None, []

    def must_run(self, step: int) -> bool:
        """A full step runs the network even when it reveals nothing: its features start the next shortcut chain."""
        return step in self.full

    def predict(self, step: int, z: Tensor) -> Tensor | None:
        if step in self.full:
            return None
        assert self.previous is not None, "step 0 always runs the full model"
        f_s, z_s = self.previous
        counts = ((z_s == self.model.cfg.mask_id) & (z != self.model.cfg.mask_id)).sum(1)
        if int(counts.max()) > 0:  # S runs (a batch that commits nothing reuses the features at no cost)
            self.keys.append(float(counts.max()))  # every row attends over the padded keys: the work done
        return predict_features(self.shortcut, self.model, f_s, z_s, z)

    def observe(self, step: int, z: Tensor, features: Tensor) -> None:
        self.previous = (features, z)


class TrajectoryRecorder:
    """Hooked into a sampler with every step full: keeps each step's input tokens and features (the head's
    normalised input)."""

    def __init__(self) -> None:
        self.tokens: list[Tensor] = []
        self.features: list[Tensor] = []

    def start(self) -> None:
        self.tokens, self.features = [], []

    def must_run(self, step: int) -> bool:
        return True  # every step of a trajectory is recorded

    def predict(self, step: int, z: Tensor) -> Tensor | None:
        return None

    def observe(self, step: int, z: Tensor, features: Tensor) -> None:
        self.tokens.append(z)  # kept on the sampler's device: the trainer draws its pairs there
        self.features.append(features.detach().to(torch.float16))  # fp16: half the memory of a pool


StepHook = ShortcutSteps | TrajectoryRecorder


def shortcut_cost(hook: ShortcutSteps, seq_len: int, plan: BudgetPlan) -> dict[str, float]:
    """Per sample of the last batch (the guided pass not counted twice, as the budget): full-model blocks, shortcut
    steps, and S's FLOPs in units of one base block's forward on the same sequence."""
    block = block_flops(hook.model, seq_len)
    flops = sum(hook.shortcut.flops(seq_len, k) for k in hook.keys)
    calls = plan.blocks_per_step.count(0)
    full_blocks = float(sum(plan.blocks_per_step))
    vanilla = full_blocks * plan.steps / (plan.steps - calls)  # the plain sampler: every step at a full step's mean cost
    total = full_blocks + flops / block
    return {"full_blocks": full_blocks, "shortcut_steps": float(calls), "shortcut_blocks": flops / block,
            "shortcut_call_blocks": flops / block / calls if calls else 0.0, "total_blocks": total,
            "vanilla_blocks": vanilla, "saving": 1 - total / vanilla, "block_flops": float(block)}


def check_shortcut_options(shortcut: str | None, steps: int | None, full: int | None, budget: int | None) -> None:
    """`--shortcut RUN --steps N --full-steps B` go together; without them `--budget` is required."""
    if shortcut is None and full is not None:
        raise CofreError("--full-steps needs --shortcut (the shortcut run that replaces the other steps)")
    if shortcut is not None and (steps is None or full is None):
        raise CofreError("--shortcut needs --steps N (all steps) and --full-steps B (those that run the full model)")
    if shortcut is None and budget is None:
        raise CofreError("--budget is required (or --shortcut RUN with --steps and --full-steps)")
    check_range("--steps", steps, 1, MAX_BUDGET)
    check_range("--budget", budget, 1, MAX_BUDGET)
    if steps is not None and full is not None:
        full_steps(steps, full)
