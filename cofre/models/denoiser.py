"""The masked denoiser of Eq. 2: pre-stack P, injection G, fixed-point block F, post-stack H, output head.

A plain MDLM (or MaskGIT) is the same class with K_fp = 0 (all its blocks in the pre-stack). The model is a
pure function of its inputs: the solver loop and any warm-start state live outside it (cofre.solver, samplers).
One class serves both modalities (DESIGN.md §9): `cfg.modality` picks the block, the embedding and positions,
the conditioning and the head; P, G, F (with SJFB) and H are the same code for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cofre.config import ModelConfig, SolverConfig
from cofre.models.blocks import DiTBlock, FinalLayer, Rotary, TimestepEmbedder
from cofre.models.image_blocks import ImageBlock, TiedHead
from cofre.solver import SolveStats, sjfb_solve


@dataclass
class Conditioning:
    """Per-call inputs shared by every block: the adaLN vector c [B, cond_dim] and rotary cos/sin (text; None
    for images, whose positions are learned and added at the embedding)."""

    c: Tensor
    rope: tuple[Tensor, Tensor] | None


@dataclass
class DenoiserOutput:
    logits: Tensor  # [B, L, V], or [M, V] at the requested positions
    hidden: Tensor  # final pre-logit hidden state after F and H, [B, L, hidden] (consistency loss, §3.2); no registers
    stats: SolveStats | None  # fixed-point solve report; None for a plain model


class FixedPointBlock(nn.Module):
    """F(h; h̃, t) = Blocks(M([h, h̃])): FPDM's injection of h̃ through a projection of the concatenation.

    M is FPDM's MLP fc2(GELU(fc1 [h, h̃])), fc1: 2D -> 2D, fc2: 2D -> D (`injection_mlp: fpdm`), or one
    Linear 2D -> D (`linear`); `mix` is fc1 (or the Linear) and `mix_out` is fc2. fc1 [h, h̃] = W_h h +
    (W_x h̃ + b); the bracket depends on h̃ only, so `inject` computes it once per denoising step and each
    iteration pays for W_h h (and fc2) alone. The solver state it writes is fp32 (as MDLM's residual stream is);
    its matmuls autocast like the blocks' (`mix_precision: autocast`) or run in fp32 (`fp32`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = d = cfg.hidden
        fpdm = cfg.injection_mlp == "fpdm"
        self.mix = nn.Linear(2 * d, 2 * d if fpdm else d)
        self.mix_out = nn.Linear(2 * d, d) if fpdm else None
        self.fp32 = cfg.mix_precision == "fp32"
        self.blocks = nn.ModuleList(_block(cfg) for _ in range(cfg.K_fp))
        if fpdm:  # trained from scratch, FPDM's block starts as FPDM's does: Xavier-uniform weights, zero biases
            for linear in (self.mix, self.mix_out):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
        else:
            self.near_identity_()

    @torch.no_grad()
    def near_identity_(self) -> None:
        """M([h, h̃]) = (h + h̃) / 2, which returns h at h = h̃: the conversion's start near the source (§3.4)."""
        d = self.hidden
        half = torch.cat([0.5 * torch.eye(d), 0.5 * torch.eye(d)], dim=1)
        self.mix.bias.zero_()
        if self.mix_out is None:
            self.mix.weight.copy_(half)
        else:  # GELU(u) - GELU(-u) = u exactly (tanh form too): fc1 = [u; -u], fc2 = [I, -I]
            self.mix.weight.copy_(torch.cat([half, -half], dim=0))
            self.mix_out.weight.copy_(torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
            self.mix_out.bias.zero_()

    def inject(self, h_tilde: Tensor) -> Tensor:
        """The h̃ part of fc1 (or of the Linear mix), W_x h̃ + b, as fp32."""
        return mix_linear(h_tilde, self.mix.weight[:, self.hidden :], self.mix.bias, self.fp32)

    def mixed_input(self, h: Tensor, injected: Tensor) -> Tensor:
        """The first blocks' input M([h, h̃]) as fp32: fc2(GELU(W_h h + injected)), or W_h h + injected."""
        x = mix_linear(h, self.mix.weight[:, : self.hidden], None, self.fp32) + injected.float()
        if self.mix_out is not None:  # FPDM's fc2(GELU(fc1 [h, h̃]))
            x = mix_linear(F.gelu(x, approximate="tanh"), self.mix_out.weight, self.mix_out.bias, self.fp32)
        return x

    def forward(self, h: Tensor, injected: Tensor, cond: Conditioning) -> Tensor:
        x = self.mixed_input(h, injected)
        for block in self.blocks:
            x = block(x, cond.c, cond.rope)
        return x


def mix_linear(x: Tensor, weight: Tensor, bias: Tensor | None, fp32: bool) -> Tensor:
    """x W^T + b for the solver state (h, h̃): an fp32 result either way; with `fp32` its matmul too (autocast off)."""
    if not fp32:
        return F.linear(x, weight, bias).float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


def _block(cfg: ModelConfig) -> DiTBlock | ImageBlock:
    """The modality's transformer block: MDLM's DiT block (text) or Halton-MaskGIT's block (image)."""
    kind = ImageBlock if cfg.modality == "image" else DiTBlock
    return kind(cfg.hidden, cfg.heads, cfg.cond_dim, cfg.mlp_ratio, cfg.dropout)


class Denoiser(nn.Module):
    """Embedding -> P -> G -> Fix(F) -> H -> head (Eq. 2-3); blocks per step = K_pre + N K_fp + K_post."""

    def __init__(self, cfg: ModelConfig, eval_iters: int = SolverConfig.eval_iters) -> None:
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.eval_iters = eval_iters  # fixed-point iterations of a call that names none (the run's solver.eval_iters)
        self.vocab_embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        if cfg.modality == "text":
            nn.init.kaiming_uniform_(self.vocab_embed.weight, a=5**0.5)  # as MDLM's EmbeddingLayer
            self.sigma_map = TimestepEmbedder(cfg.cond_dim)
            self.rotary = Rotary(cfg.hidden // cfg.heads)
        else:  # Halton-MaskGIT: N(0, 0.02) embeddings, learned positions, register tokens, class embedding
            nn.init.normal_(self.vocab_embed.weight, std=0.02)
            self.class_embed = nn.Embedding(cfg.num_classes + 1, cfg.cond_dim)  # the last row: the dropped label (CFG)
            self.pos_embed = nn.Parameter(torch.randn(cfg.max_seq_len, cfg.hidden) * 0.02)
            self.register_tokens = nn.Parameter(torch.randn(cfg.registers, cfg.hidden) * 0.02)
            nn.init.normal_(self.class_embed.weight, std=0.02)
        self.pre = nn.ModuleList(_block(cfg) for _ in range(cfg.K_pre))
        self.injection = nn.Linear(cfg.hidden, cfg.hidden) if cfg.is_fixed_point and cfg.injection == "linear" else None
        if self.injection is not None:
            with torch.no_grad():
                self.injection.weight.copy_(torch.eye(cfg.hidden))
                self.injection.bias.zero_()
        self.fixed_point = FixedPointBlock(cfg) if cfg.is_fixed_point else None
        self.post = nn.ModuleList(_block(cfg) for _ in range(cfg.K_post))
        head = FinalLayer if cfg.modality == "text" else TiedHead  # TiedHead: logits against vocab_embed's weights
        self.output_layer = head(cfg.hidden, cfg.vocab_size, cfg.cond_dim)

    def blocks(self) -> list[nn.Module]:
        """Every distinct transformer block: P, then F's shared blocks, then H."""
        shared = list(self.fixed_point.blocks) if self.fixed_point is not None else []
        return [*self.pre, *shared, *self.post]

    def compile_blocks(self) -> None:
        """torch.compile each block in place. The solver loop stays in Python, so SJFB's random iteration
        counts and a sampler's per-step schedule reuse the compiled graphs instead of recompiling."""
        for block in self.blocks():
            block.compile()

    # -- the four parts of Eq. 2, public so that samplers can own the solver loop ------------------
    def conditioning(self, signal: Tensor, seq_len: int) -> Conditioning:
        """c from `signal` [B]: the noise level sigma (text), or the class label (image; `num_classes` = dropped)."""
        if self.cfg.modality == "image":
            return Conditioning(c=F.silu(self.class_embed(signal)), rope=None)
        if not self.cfg.time_conditioning:
            signal = torch.zeros_like(signal)
        c = torch.nn.functional.silu(self.sigma_map(signal))
        return Conditioning(c=c, rope=self.rotary(seq_len, signal.device))

    def pre_stack(self, z: Tensor, cond: Conditioning) -> Tensor:
        """h_pre = P(z_t, t). Images: token + learned position embedding, register tokens appended after the grid
        (they stay in the solver state through F and leave at the end of H)."""
        h = self.vocab_embed(z)
        if self.cfg.modality == "image":
            h = h + self.pos_embed[: z.shape[1]]
            h = torch.cat([h, self.register_tokens.to(h.dtype).expand(z.shape[0], -1, -1)], dim=1)
        for block in self.pre:
            h = block(h, cond.c, cond.rope)
        return h

    def inject(self, h_pre: Tensor) -> Tensor:
        """h̃ = G(h_pre) (identity when no projection is used), returned as F's per-step injection term."""
        assert self.fixed_point is not None, "inject on a model without a fixed-point block"
        if self.injection is None:
            return self.fixed_point.inject(h_pre)
        h_tilde = mix_linear(h_pre, self.injection.weight, self.injection.bias, self.fixed_point.fp32)
        return self.fixed_point.inject(h_tilde)

    def fp_step(self, h: Tensor, injected: Tensor, cond: Conditioning) -> Tensor:
        """One fixed-point iteration h^{n+1} = F(h^n; h̃, t) (Eq. 3), given `injected` = inject(h_pre)."""
        assert self.fixed_point is not None, "fp_step on a model without a fixed-point block"
        return self.fixed_point(h, injected, cond)

    def post_stack(self, h: Tensor, cond: Conditioning) -> Tensor:
        """H without the head: the final pre-logit hidden state of the tokens (register tokens dropped)."""
        for block in self.post:
            h = block(h, cond.c, cond.rope)
        return h[:, : h.shape[1] - self.cfg.registers]

    def head(self, hidden: Tensor, cond: Conditioning, positions: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Logits everywhere, or only at (batch_idx, seq_idx) positions (training: the masked ones)."""
        if positions is not None:  # the norm is per position: only the positions asked for are normalised
            return self._logits(self.head_features(hidden[positions]), cond.c[positions[0]])
        return self._logits(self.head_features(hidden), cond.c[:, None])

    # -- the head in two parts, for MIGM-Shortcut: S predicts the first part's output; the second maps it to logits --
    def head_features(self, hidden: Tensor) -> Tensor:
        """The normalised tensor that feeds the logits: the head's norm_final of the final hidden state, before its
        adaLN modulation and linear map (the features MIGM-Shortcut's S records and predicts)."""
        return self.output_layer.norm_final(hidden)

    def head_logits(self, features: Tensor, cond: Conditioning, positions: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The rest of the head on `head_features`' output [B, L, D]: logits everywhere, or at (batch_idx, seq_idx)."""
        if positions is not None:
            return self._logits(features[positions], cond.c[positions[0]])
        return self._logits(features, cond.c[:, None])

    def _logits(self, features: Tensor, c: Tensor) -> Tensor:
        if self.cfg.modality == "image":  # the head is tied to the token embedding
            return self.output_layer.logits(features, c, self.vocab_embed.weight)
        return self.output_layer.logits(features, c)

    # -- the whole denoiser --------------------------------------------------------------------------
    def forward(
        self,
        z: Tensor,
        signal: Tensor,
        n_nograd: int | None = None,
        n_grad: int | None = None,
        positions: tuple[Tensor, Tensor] | None = None,
        track_residuals: bool = False,
    ) -> DenoiserOutput:
        """Denoise z [B, L] given `signal` [B] (noise level sigma, or class label); the FP block runs
        n_nograd + n_grad iterations (SJFB), or, when neither is given, the run's `eval_iters` (with gradients)."""
        if n_nograd is None and n_grad is None:
            n_nograd, n_grad = 0, self.eval_iters
        n_nograd, n_grad = n_nograd or 0, n_grad or 0
        cond = self.conditioning(signal, z.shape[1])
        h = self.pre_stack(z, cond)
        stats = None
        if self.fixed_point is not None:
            injected = self.inject(h)
            h, stats = sjfb_solve(lambda s: self.fp_step(s, injected, cond), h, n_nograd, n_grad, track_residuals)
        hidden = self.post_stack(h, cond)
        return DenoiserOutput(logits=self.head(hidden, cond, positions), hidden=hidden, stats=stats)

    def blocks_per_step(self, n_iters: int) -> int:
        """Transformer-block evaluations of one denoising step: K_pre + N K_fp + K_post (§3.1)."""
        return self.cfg.K_pre + n_iters * self.cfg.K_fp + self.cfg.K_post
