"""The denoiser of Eq. 2-3: parameter counts, block cost, SJFB, and the head at chosen positions."""

import pytest
import torch

from cofre.config import ModelConfig
from cofre.models import Denoiser
from cofre.models.blocks import DiTBlock

SMALL = dict(vocab_size=50, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16)


def block_params(d: int, c: int, r: int = 4) -> int:
    attention = 3 * d * d + d * d  # qkv and out projections, no biases
    mlp = d * r * d + r * d + r * d * d + d
    return 2 * d + attention + mlp + c * 6 * d + 6 * d  # two weight-only norms, adaLN (6-way)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the zero initialisation of adaLN and the head so that every block does something."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("K_fp", [1, 2])
def test_fixed_point_part_parameter_count(K_fp: int) -> None:
    cfg = ModelConfig(**SMALL, K_pre=1, K_fp=K_fp, K_post=1)
    model = Denoiser(cfg)
    fp = sum(p.numel() for p in model.fixed_point.parameters()) + sum(p.numel() for p in model.injection.parameters())
    d = cfg.hidden
    injection, mix = d * d + d, 2 * d * d + d
    assert fp == K_fp * block_params(d, cfg.cond_dim) + injection + mix
    # the shared block is counted once however many times it is iterated
    assert len(model.pre) == 1 and len(model.fixed_point.blocks) == K_fp and len(model.post) == 1


def test_plain_model_has_no_fixed_point_part() -> None:
    model = Denoiser(ModelConfig(**SMALL, K_pre=4))
    assert model.fixed_point is None and model.injection is None
    assert model.blocks_per_step(n_iters=0) == 4


def test_blocks_per_step() -> None:
    model = Denoiser(ModelConfig(**SMALL, K_pre=2, K_fp=3, K_post=1))
    assert model.blocks_per_step(4) == 2 + 4 * 3 + 1


def test_dit_block_is_identity_at_init() -> None:
    block = DiTBlock(32, 4, 16, dropout=0.0)
    x = torch.randn(2, 5, 32)
    rope = (torch.ones(5, 8), torch.zeros(5, 8))
    assert torch.equal(block(x, torch.randn(2, 16), rope), x)  # zero-initialised adaLN gates


def test_head_at_positions_equals_full_head() -> None:
    model = randomize(Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1))).eval()
    z = torch.randint(0, 49, (3, 8))
    sigma = torch.rand(3)
    full = model(z, sigma, n_nograd=3)
    positions = (torch.tensor([0, 2, 2]), torch.tensor([5, 0, 7]))
    part = model(z, sigma, n_nograd=3, positions=positions)
    assert torch.allclose(part.logits, full.logits[positions], atol=1e-6)


def test_sjfb_same_value_different_gradient() -> None:
    """N_ng no-grad + N_g grad iterations give the same output as N unrolled ones, but only the last N_g
    carry gradient to the shared block."""
    model = randomize(Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1)))
    z = torch.randint(0, 49, (2, 8))
    sigma = torch.rand(2)

    def grads(n_nograd: int, n_grad: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model(z, sigma, n_nograd=n_nograd, n_grad=n_grad)
        out.logits.square().mean().backward()
        return out.logits.detach(), model.fixed_point.blocks[0].attn_qkv.weight.grad.clone()

    value_a, grad_a = grads(2, 1)
    value_b, grad_b = grads(0, 3)
    assert torch.allclose(value_a, value_b, atol=1e-5)
    assert not torch.allclose(grad_a, grad_b, atol=1e-6)
    assert grad_a.abs().sum() > 0


def test_time_conditioning_switch() -> None:
    z = torch.randint(0, 49, (2, 8))
    for flag in (False, True):
        model = randomize(Denoiser(ModelConfig(**SMALL, K_pre=2, time_conditioning=flag))).eval()
        a = model(z, torch.tensor([0.1, 0.1])).logits
        b = model(z, torch.tensor([2.0, 2.0])).logits
        assert torch.allclose(a, b) != flag  # without time conditioning the output ignores sigma


def test_split_injection_equals_the_concatenated_mix() -> None:
    """F(h; h̃) = Blocks(W [h, h̃] + b), with the h̃ part computed once per step."""
    model = randomize(Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1)))
    h, h_pre = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    cond = model.conditioning(torch.rand(2), 8)
    h_tilde = model.injection(h_pre)
    x = model.fixed_point.mix(torch.cat([h, h_tilde], dim=-1))
    for block in model.fixed_point.blocks:
        x = block(x, cond.c, cond.rope)
    assert torch.allclose(model.fp_step(h, model.inject(h_pre), cond), x, atol=1e-5)
