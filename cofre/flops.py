"""Model FLOPs of the denoiser, counted from its shapes, and MFU against a device's peak (benchmarks).

Counted: every matmul (2 FLOPs per multiply-add) and attention's two L x L products; not counted:
norms, activations, softmax, embeddings and the per-sequence adaLN vectors (small beside the matmuls).
Training costs 3x a forward (backward = 2x) for everything that carries gradients; SJFB's no-grad
iterations cost 1x. The output head is counted only where it is computed: at the masked positions in
training, at the revealed positions in sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cofre.config import ModelConfig
from cofre.models import Denoiser

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' datasheets; the first name contained in
# the device's name wins, so the specific variants come before the family (an H100 without a suffix is the SXM).
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
                   ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10", 125e12))


def _matmul_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class FlopCounts:
    """Forward FLOPs per token of each part of one denoising step at sequence length L."""

    block: float  # one transformer block: 2 x its token matmul weights + 4 L D for attention
    mix: float  # F's input mix per iteration: the h half of fc1 (or of the Linear mix), and fc2
    injection: float  # once per step: G and the h~ half of fc1, which `inject` precomputes
    head: float  # the output head at one position: 2 D V

    @staticmethod
    def of(model: Denoiser, seq_len: int) -> FlopCounts:
        cfg = model.cfg
        block = model.blocks()[0]
        per_token = _matmul_weights(block) - block.adaLN_modulation.weight.numel()  # adaLN runs once per sequence
        fp, mix, injection = model.fixed_point, 0, 0
        if fp is not None:
            h_half = fp.mix.weight[:, : cfg.hidden].numel()
            mix = h_half + (fp.mix_out.weight.numel() if fp.mix_out is not None else 0)
            injection = fp.mix.weight.numel() - h_half
        if model.injection is not None:
            injection += model.injection.weight.numel()
        return FlopCounts(block=2 * per_token + 4 * seq_len * cfg.hidden, mix=2 * mix, injection=2 * injection,
                          head=2 * cfg.vocab_size * cfg.hidden)  # text's Linear, or images' head tied to the embedding

    @staticmethod
    def of_config(cfg: ModelConfig, seq_len: int) -> FlopCounts:
        """The counts of the model `cfg` builds, from its shapes alone (built on PyTorch's meta device: no weights)."""
        with torch.device("meta"):
            return FlopCounts.of(Denoiser(cfg), seq_len)

    def step(self, cfg: ModelConfig, iterations: int) -> float:
        """Forward FLOPs per token of one denoising step's network pass, the head aside: P and H, and for an FP
        model G once and `iterations` x (K_fp blocks + F's input mix)."""
        explicit = (cfg.K_pre + cfg.K_post) * self.block
        return explicit + (self.injection + iterations * (cfg.K_fp * self.block + self.mix) if cfg.is_fixed_point else 0.0)


def train_flops_per_token(model: Denoiser, seq_len: int, n_nograd: int, n_grad: int, head_fraction: float) -> float:
    """Model FLOPs of one training step per token: P, G, H and N_g iterations at 3x, N_ng iterations at 1x,
    and the head at 3x on the `head_fraction` of positions that are masked."""
    f, cfg = FlopCounts.of(model, seq_len), model.cfg
    explicit = 3 * ((cfg.K_pre + cfg.K_post) * f.block + f.injection)
    iterations = (3 * n_grad + n_nograd) * (cfg.K_fp * f.block + f.mix)
    return explicit + iterations + 3 * head_fraction * f.head


def sampling_flops_per_token(model: Denoiser, seq_len: int, iterations: list[int]) -> float:
    """Forward FLOPs per generated token of a whole sampling run, one entry of `iterations` per denoising step
    (0 for a plain model): every step runs the stack over all positions, and each token meets the head once,
    at the step that reveals it."""
    f = FlopCounts.of(model, seq_len)
    return sum(f.step(model.cfg, n) for n in iterations) + f.head


def peak_flops(device_name: str, precision: str, override_tflops: float | None = None) -> float | None:
    """The device's dense peak for `precision`, or None when unknown (MFU is then not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    if precision != "bf16":
        return None
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in device_name), None)
