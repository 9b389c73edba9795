"""MaskGIT's transformer pieces, as Halton-MaskGIT builds them: RMSNorm, QK-norm attention, SwiGLU, adaLN-zero.

The block has the text block's interface, `block(x, c, rope)`, so that the shared denoiser (P, F, H) stacks
either kind; images have learned positions added at the embedding, so `rope` is None and unused here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cofre.models.blocks import modulate


class RMSNorm(nn.Module):
    """x / rms(x), computed in float32, with an optional learned scale and bias."""

    def __init__(self, dim: int, weight: bool = True, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        out = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out


def swiglu_width(hidden: int, mlp_ratio: int, multiple_of: int = 256) -> int:
    """SwiGLU's inner width: 2/3 of mlp_ratio x hidden (same parameters as a GELU MLP), rounded up to 256."""
    width = int(2 * mlp_ratio * hidden / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


class ImageBlock(nn.Module):
    """Pre-norm block with 6-way adaLN-zero from the class vector c; bidirectional attention with QK-norm
    (RMSNorm of q and k over the full width, no bias), SwiGLU MLP; dropout on attention and MLP."""

    def __init__(self, hidden: int, heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = RMSNorm(hidden)
        self.wq = nn.Linear(hidden, hidden, bias=False)
        self.wk = nn.Linear(hidden, hidden, bias=False)
        self.wv = nn.Linear(hidden, hidden, bias=False)
        self.wo = nn.Linear(hidden, hidden, bias=False)
        self.q_norm = RMSNorm(hidden, weight=False)
        self.k_norm = RMSNorm(hidden, weight=False)
        self.norm2 = RMSNorm(hidden)
        width = swiglu_width(hidden, mlp_ratio)
        self.w1 = nn.Linear(hidden, width, bias=False)
        self.w3 = nn.Linear(hidden, width, bias=False)
        self.w2 = nn.Linear(width, hidden, bias=False)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)
        for layer in (self.wq, self.wk, self.wv, self.wo, self.w1, self.w2, self.w3):
            nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(self.adaLN_modulation.weight)  # adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.adaLN_modulation.bias)

    def attention(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.q_norm(self.wq(x)).to(x.dtype), self.k_norm(self.wk(x)).to(x.dtype), self.wv(x)
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # bidirectional: no mask
        return self.wo(out.transpose(1, 2).reshape(B, L, D))

    def mlp(self, x: Tensor) -> Tensor:
        return self.w2(F.dropout(F.silu(self.w1(x)) * self.w3(x), self.dropout, self.training))

    def forward(self, x: Tensor, c: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        x = x + gate_msa * F.dropout(self.attention(modulate(self.norm1(x), shift_msa, scale_msa)), self.dropout, self.training)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class TiedHead(nn.Module):
    """adaLN-modulated RMSNorm (scale and bias), then logits against the token embedding (weights tied, as
    Halton-MaskGIT's head): only the bias is the head's own. The tied matrix is passed in, not stored twice,
    so a checkpoint holds it once."""

    def __init__(self, hidden: int, vocab_size: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(hidden, weight=True, bias=True)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        nn.init.xavier_uniform_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: Tensor, c: Tensor, token_embedding: Tensor) -> Tensor:
        """`h` is [..., hidden], `c` broadcasts to [..., cond_dim], `token_embedding` is [vocab, hidden]."""
        return self.logits(self.norm_final(h), c, token_embedding)

    def logits(self, features: Tensor, c: Tensor, token_embedding: Tensor) -> Tensor:
        """The head after its norm: the adaLN modulation and the tied linear map, on norm_final's output."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return F.linear(modulate(features, shift, scale), token_embedding, self.bias)
