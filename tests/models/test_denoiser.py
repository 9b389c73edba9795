"""The denoiser of Eq. 2-3: parameter counts, block cost, SJFB, and the head at chosen positions."""

import dataclasses
import pytest
import torch

from cofre.config import ModelConfig
from cofre.models import Denoiser
from cofre.models.blocks import DiTBlock

SMALL = dict(vocab_size=50, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16)
FP_CFG = ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1)


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
    injection, mix = d * d + d, (2 * d * 2 * d + 2 * d) + (2 * d * d + d)  # G; FPDM's fc1 (2D -> 2D), fc2 (2D -> D)
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


@pytest.mark.parametrize("mlp", ["fpdm", "linear"])
def test_split_injection_equals_the_concatenated_mix(mlp: str) -> None:
    """F(h; h̃) = Blocks(M([h, h̃])), M = fc2(GELU(fc1 .)) (FPDM) or one Linear, with fc1's h̃ part computed once per step."""
    model = randomize(Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1, injection_mlp=mlp)))
    h, h_pre = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    cond = model.conditioning(torch.rand(2), 8)
    h_tilde = model.injection(h_pre)
    x = model.fixed_point.mix(torch.cat([h, h_tilde], dim=-1))
    if mlp == "fpdm":
        assert x.shape[-1] == 64  # fc1: 2D -> 2D
        x = model.fixed_point.mix_out(torch.nn.functional.gelu(x, approximate="tanh"))
    else:
        assert model.fixed_point.mix_out is None
    for block in model.fixed_point.blocks:
        x = block(x, cond.c, cond.rope)
    assert torch.allclose(model.fp_step(h, model.inject(h_pre), cond), x, atol=1e-5)


@pytest.mark.parametrize("mlp", ["fpdm", "linear"])
def test_near_identity_mix_is_the_mean_of_h_and_injection(mlp: str) -> None:
    """Near identity, both mixes give (h + h̃) / 2, so at h = h̃ F's input is h (conversion starts near the source, §3.4)."""
    model = Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1, injection_mlp=mlp))
    h, h_tilde = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    fp = model.fixed_point
    fp.near_identity_()
    assert torch.allclose(fp.mixed_input(h, fp.inject(h_tilde)), (h + h_tilde) / 2, atol=1e-5)


def test_fpdm_injection_is_the_default() -> None:
    model = Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1))
    assert model.fixed_point.mix.weight.shape == (64, 64) and model.fixed_point.mix_out.weight.shape == (32, 64)


def test_fpdm_mix_from_scratch_starts_as_fpdm_does() -> None:
    """FPDM's init (Xavier-uniform, zero bias), not the near-identity start that conversion uses: from that start,
    the tiny FP-MDLM learned an expanding iteration (||F(h)|| grew 4.4x per iteration, residual 3.4)."""
    torch.manual_seed(0)
    fp = Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1)).fixed_point
    for linear in (fp.mix, fp.mix_out):
        bound = (6 / sum(linear.weight.shape)) ** 0.5
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert linear.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05) and not linear.bias.any()
    linear_mix = Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1, injection_mlp="linear")).fixed_point.mix
    assert torch.equal(linear_mix.weight, torch.cat([0.5 * torch.eye(32), 0.5 * torch.eye(32)], dim=1))


def test_solver_state_stays_fp32_under_bf16_autocast() -> None:
    """Under bf16 autocast the blocks' matmuls run in bf16, but h_pre, h̃, every iterate and h* are fp32 (issue 9.1)."""
    model = randomize(Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1)))
    seen: dict[str, list[torch.dtype]] = {"iterate_in": [], "iterate_out": [], "qkv": []}

    def record(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen["iterate_in"].append(args[0].dtype)
        seen["iterate_out"].append(out.dtype)

    model.fixed_point.register_forward_hook(record)
    model.fixed_point.blocks[0].attn_qkv.register_forward_hook(lambda m, args, out: seen["qkv"].append(out.dtype) and None)
    z = torch.randint(0, 49, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = model.conditioning(torch.rand(2), 8)
        h_pre = model.pre_stack(z, cond)
        injected = model.inject(h_pre)
        out = model(z, torch.rand(2), n_nograd=1, n_grad=2)
    assert h_pre.dtype == injected.dtype == torch.float32
    assert seen["qkv"] and set(seen["qkv"]) == {torch.bfloat16}  # autocast is really on inside the blocks
    assert len(seen["iterate_out"]) == 3
    assert set(seen["iterate_in"]) == set(seen["iterate_out"]) == {torch.float32}
    assert out.hidden.dtype == torch.float32


@pytest.mark.parametrize("mlp", ["fpdm", "linear"])
def test_mix_precision_under_bf16_autocast(mlp: str) -> None:
    """`mix_precision: fp32` computes M([h, h̃]) exactly as without autocast; `autocast` runs its matmuls in bf16
    (the output differs by bf16 rounding only) and still hands the blocks an fp32 state."""
    torch.manual_seed(0)
    h, h_tilde = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    outputs = {}
    for precision in ("fp32", "autocast"):
        model = Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1, injection_mlp=mlp, mix_precision=precision))
        block = randomize(model).fixed_point
        exact = block.mixed_input(h, block.inject(h_tilde))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[precision] = block.mixed_input(h, block.inject(h_tilde))
        assert outputs[precision].dtype == torch.float32
        if precision == "fp32":
            assert torch.equal(outputs[precision], exact)
        else:
            assert not torch.equal(outputs[precision], exact)
            torch.testing.assert_close(outputs[precision], exact, rtol=0.05, atol=0.05)


def test_a_call_that_names_no_iterations_runs_the_runs_eval_iters() -> None:
    """model(z, sigma) in a notebook solves the fixed point with the run's solver.eval_iters, not zero iterations."""
    model = randomize(Denoiser(FP_CFG, eval_iters=5)).eval()
    z, sigma = torch.randint(0, FP_CFG.vocab_size - 1, (2, 8)), torch.zeros(2)
    with torch.no_grad():
        default, five, none = model(z, sigma), model(z, sigma, n_nograd=5), model(z, sigma, n_nograd=0)
    assert default.stats is not None and default.stats.iterations == 5
    assert torch.allclose(default.logits, five.logits)
    assert not torch.allclose(default.logits, none.logits)  # zero iterations only when asked


def test_loaded_model_takes_eval_iters_from_its_recipe(tmp_path) -> None:
    from cofre.config import DataConfig, Recipe, SolverConfig
    from cofre.training.checkpoint import load_model, publish_checkpoint, staging_dir, write_checkpoint_files

    cfg = dataclasses.replace(FP_CFG, vocab_size=258)  # a bpe-257 head
    recipe = Recipe(name="r", model=cfg, solver=SolverConfig(eval_iters=3), data=DataConfig(seq_len=16, text_tokenizer="bpe-257"))
    staging = staging_dir(tmp_path / "checkpoints", 1)
    write_checkpoint_files(staging, Denoiser(cfg), None, recipe, {})
    publish_checkpoint(tmp_path / "checkpoints", 1, keep_last=1)
    model, _ = load_model(tmp_path)
    assert model.eval_iters == 3
