"""MIGM-Shortcut: the full-step rule, S's zero init, exact equality with the vanilla samplers at B = N, keys with
padding, and the cost accounting."""

import math

import pytest
import torch

from cofre.config import ModelConfig
from cofre.flops import FlopCounts
from cofre.models import Denoiser
from cofre.sampling.budget import plan_budget
from cofre.sampling.maskgit import ImageSamplerConfig, MaskGITSampler
from cofre.sampling.mdlm import MDLMSampler, SamplerConfig
from cofre.sampling.shortcut import (Shortcut, ShortcutConfig, ShortcutSteps, TrajectoryRecorder, block_flops,
                                     committed_keys, full_steps, predict_features, shortcut_cost, shortcut_plan)

GRID = (4, 4)


def image_model(K: tuple[int, int, int] = (2, 0, 0)) -> Denoiser:
    torch.manual_seed(0)
    cfg = ModelConfig(modality="image", vocab_size=17, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16,
                      K_pre=K[0], K_fp=K[1], K_post=K[2], num_classes=3, registers=1)
    return Denoiser(cfg).eval()


def text_model(K: tuple[int, int, int] = (2, 0, 0)) -> Denoiser:
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=50, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16,
                                 K_pre=K[0], K_fp=K[1], K_post=K[2]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def trained_like(model: Denoiser, seed: int = 1) -> Shortcut:
    """An S whose last projection is no longer zero, as after training."""
    torch.manual_seed(seed)
    shortcut = Shortcut(ShortcutConfig(hidden=model.cfg.hidden, heads=2, modality=model.cfg.modality))
    with torch.no_grad():
        for p in shortcut.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return shortcut.eval()


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def test_full_step_sets_of_the_issue() -> None:
    assert full_steps(32, 12) == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29]
    assert full_steps(64, 11) == [0, 6, 12, 17, 23, 29, 35, 41, 47, 52, 58]


def reference_full_steps(n: int, b: int) -> list[int]:
    """The related paper's code, written out: t_k = max(t_{k-1} + 1, round(N * (k / B)))."""
    chosen = [0]
    for k in range(1, b):
        chosen.append(max(chosen[-1] + 1, round(n * (k / b))))
    return chosen


def test_the_rule_matches_the_reference_expression_for_every_n_up_to_128() -> None:
    """k / B is divided first, so the float product decides the .5 ties: (45, 10) gives 31 where round(N k / B)
    gives 32 (68 of the 8128 pairs with N <= 128 differ between the two)."""
    for n in range(1, 129):
        for b in range(1, n + 1):
            assert full_steps(n, b) == reference_full_steps(n, b), (n, b)
    assert full_steps(45, 10)[7] == 31 and round(45 * 7 / 10) == 32
    for n, b in ((32, 12), (64, 11)):  # no exact half there: round-half-up agrees
        chosen = [0]
        for k in range(1, b):
            chosen.append(max(chosen[-1] + 1, half_up(n * k / b)))
        assert chosen == full_steps(n, b)


def test_every_full_step_set_is_b_distinct_steps_in_range() -> None:
    for n in range(1, 65):
        for b in range(1, n + 1):
            chosen = full_steps(n, b)
            assert len(chosen) == b and chosen[0] == 0 and chosen == sorted(set(chosen)) and chosen[-1] <= n - 1
    assert full_steps(7, 7) == list(range(7))


@pytest.mark.parametrize("make", [text_model, image_model])
def test_features_are_the_heads_normalised_input_and_the_rest_of_the_head_gives_the_logits(make) -> None:
    """What S records and predicts is the tensor that feeds the logits (after the head's norm_final, before its adaLN
    modulation and linear map, as the authors' code); the rest of the head maps it to the model's logits."""
    model = make()
    z = torch.randint(0, model.cfg.mask_id + 1, (2, 16))
    cond = model.conditioning(torch.tensor([0, 1]) if model.cfg.modality == "image" else torch.rand(2), 16)
    hidden = model.post_stack(model.pre_stack(z, cond), cond)
    features = model.head_features(hidden)
    assert torch.allclose(features, model.output_layer.norm_final(hidden))
    if model.cfg.modality == "text":  # weight-only LayerNorm: zero mean per position before its weight
        assert torch.allclose((features / model.output_layer.norm_final.weight).mean(-1), torch.zeros(2, 16), atol=1e-4)
    positions = (torch.tensor([0, 1, 1]), torch.tensor([3, 0, 7]))
    assert torch.allclose(model.head_logits(features, cond), model.head(hidden, cond), atol=1e-6)
    assert torch.allclose(model.head_logits(features, cond, positions), model.head(hidden, cond, positions), atol=1e-6)


def test_the_sampler_hands_the_hook_post_norm_features() -> None:
    model = text_model()
    recorder = TrajectoryRecorder()
    plan = plan_budget(model.cfg, 4 * 2, None, "decreasing")
    MDLMSampler(model, plan, SamplerConfig(length=16), hook=recorder).sample(2, torch.Generator().manual_seed(1))
    assert len(recorder.features) == 4
    with torch.no_grad():
        for z, recorded in zip(recorder.tokens, recorder.features):
            cond = model.conditioning(torch.zeros(2), 16)
            expected = model.head_features(model.post_stack(model.pre_stack(z, cond), cond))
            assert torch.allclose(recorded.float(), expected, atol=5e-3)  # stored in fp16


def test_zero_initialised_last_projection_returns_the_features() -> None:
    """The chosen init: proj_out is zero, so f̂ = f_s exactly before training."""
    for model in (image_model(), text_model()):
        shortcut = Shortcut(ShortcutConfig(hidden=32, heads=2, modality=model.cfg.modality))
        assert shortcut.proj_out.weight.abs().sum() == 0 and shortcut.proj_out.bias.abs().sum() == 0
        f = torch.randn(3, 16, 32)
        z_s = torch.full((3, 16), model.cfg.mask_id)
        z_next = z_s.clone()
        z_next[:, :5] = 3
        assert torch.equal(predict_features(shortcut, model, f, z_s, z_next), f)
        assert not torch.equal(predict_features(trained_like(model), model, f, z_s, z_next), f)


def test_keys_are_the_committed_tokens_padded_per_row() -> None:
    model = text_model()
    m = model.cfg.mask_id
    z_s = torch.tensor([[m, m, m, 4], [m, m, m, m]])
    z_next = torch.tensor([[7, m, 9, 4], [m, 2, m, m]])
    keys, positions, valid = committed_keys(model, z_s, z_next)
    assert positions[0].tolist() == [0, 2] and positions[1, :1].tolist() == [1]
    assert valid.tolist() == [[True, True], [True, False]]
    assert torch.equal(keys[0], model.vocab_embed(torch.tensor([7, 9])))
    image = image_model()
    keys, positions, _ = committed_keys(image, z_s.clamp(max=16), torch.tensor([[7, 16, 9, 4], [16, 2, 16, 16]]))
    assert torch.allclose(keys[0, 1], image.vocab_embed.weight[9] + image.pos_embed[2])


@pytest.mark.parametrize("make", [text_model, image_model])
def test_padding_does_not_change_a_row_and_a_row_with_no_commit_keeps_its_features(make) -> None:
    """Rows revealing different counts share a batch through the key mask; each equals its own batch of one."""
    model = make()
    shortcut = trained_like(model)
    m = model.cfg.mask_id
    torch.manual_seed(3)
    f = torch.randn(3, 16, 32)
    z_s = torch.full((3, 16), m)
    z_next = z_s.clone()
    z_next[0, [1, 4, 9, 12]] = torch.tensor([1, 2, 3, 4])
    z_next[1, 7] = 5  # one token
    batch = predict_features(shortcut, model, f, z_s, z_next)
    for row in range(2):
        alone = predict_features(shortcut, model, f[row:row + 1], z_s[row:row + 1], z_next[row:row + 1])
        assert torch.allclose(batch[row], alone[0], atol=1e-5)
    assert torch.equal(batch[2], f[2])  # row 2 committed nothing: its features are reused


def draw_images(model: Denoiser, steps: int, full: int | None, shortcut: Shortcut | None, **cfg: object):
    plan = plan_budget(model.cfg, steps * model.cfg.K_pre, None, "decreasing") if full is None \
        else shortcut_plan(model.cfg, steps, full, None, "decreasing")
    hook = ShortcutSteps(shortcut, model, steps, full) if shortcut is not None and full is not None else None
    sampler = MaskGITSampler(model, plan, GRID, ImageSamplerConfig(**cfg), hook=hook)
    return sampler.sample(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(5)), hook, plan


@pytest.mark.parametrize("cfg", [dict(), dict(cfg=2.0, order="confidence"), dict(cfg=1.0, cfg_schedule="linear")])
def test_b_equal_n_is_the_vanilla_image_sampler(cfg: dict) -> None:
    model = image_model()
    vanilla, _, _ = draw_images(model, 8, None, None, **cfg)
    same, _, _ = draw_images(model, 8, 8, trained_like(model), **cfg)
    assert torch.equal(vanilla.tokens, same.tokens) and vanilla.blocks_spent == same.blocks_spent
    fewer, hook, plan = draw_images(model, 8, 3, trained_like(model), **cfg)
    assert not (fewer.tokens == model.cfg.mask_id).any()
    assert [r.shortcut for r in fewer.steps] == [i not in (0, 3, 5) for i in range(8)]
    assert fewer.blocks_spent == 3 * 2 == sum(plan.blocks_per_step)
    assert len(hook.keys) == 5 and all(k >= 1 for k in hook.keys)


def draw_text(model: Denoiser, steps: int, full: int | None, shortcut: Shortcut | None, **cfg: object):
    if full is None:
        plan = plan_budget(model.cfg, steps * (model.cfg.K_pre + model.cfg.K_post + 2 * model.cfg.K_fp),
                           steps if model.cfg.is_fixed_point else None, "decreasing")
        hook = None
    else:
        budget = full * (model.cfg.K_pre + model.cfg.K_post + 2 * model.cfg.K_fp)
        plan = shortcut_plan(model.cfg, steps, full, budget, "decreasing")
        hook = ShortcutSteps(shortcut, model, steps, full)
    sampler = MDLMSampler(model, plan, SamplerConfig(length=16, **cfg), hook=hook)
    return sampler.sample(4, torch.Generator().manual_seed(9)), plan


@pytest.mark.parametrize("K", [(2, 0, 0), (1, 1, 1)])
def test_b_equal_n_is_the_vanilla_text_sampler(K: tuple[int, int, int]) -> None:
    model = text_model(K)
    vanilla, _ = draw_text(model, 10, None, None)
    same, _ = draw_text(model, 10, 10, trained_like(model))
    assert torch.equal(vanilla.tokens, same.tokens) and vanilla.blocks_spent == same.blocks_spent
    fewer, plan = draw_text(model, 10, 4, trained_like(model))
    assert not (fewer.tokens == model.cfg.mask_id).any()
    assert sum(r.shortcut for r in fewer.steps) == 6 and all(r.blocks == 0 for r in fewer.steps if r.shortcut)
    assert fewer.blocks_spent == plan.budget == sum(plan.blocks_per_step)


def test_a_zero_initialised_shortcut_samples_with_the_previous_full_steps_features() -> None:
    """At init S returns f_s: the shortcut steps then draw from the last full step's logits (feature reuse)."""
    model = image_model()
    shortcut = Shortcut(ShortcutConfig(hidden=32, heads=2, modality="image"))
    hook = ShortcutSteps(shortcut, model, 6, 2)
    seen: list[torch.Tensor] = []
    observe = hook.observe
    hook.observe = lambda step, z, hidden: (seen.append(hidden), observe(step, z, hidden))  # type: ignore[method-assign]
    sampler = MaskGITSampler(model, shortcut_plan(model.cfg, 6, 2, None, "fixed"), GRID, ImageSamplerConfig(), hook=hook)
    sampler.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert hook.full == {0, 3}
    assert all(torch.equal(seen[i], seen[0]) for i in (1, 2)) and all(torch.equal(seen[i], seen[3]) for i in (4, 5))
    assert not torch.equal(seen[0], seen[3])


def test_cache_never_skips_a_full_step_so_every_shortcut_step_has_features() -> None:
    """The review's reproducer: L = 8, 64 steps, 16 full, batch 1, MDLM's cache. Step 0 often reveals nothing; it
    still runs the full model and hands S its features (before the fix: AssertionError on most seeds)."""
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=101, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=8)).eval()
    shortcut = Shortcut(ShortcutConfig(hidden=32, heads=4, modality="text"))
    plan = shortcut_plan(model.cfg, 64, 16, None, "decreasing")
    hook = ShortcutSteps(shortcut, model, 64, 16)
    sampler = MDLMSampler(model, plan, SamplerConfig(length=8, cache=True), hook=hook)
    skipped_full_step_zero = 0
    for seed in range(8):
        batch = sampler.sample(1, torch.Generator().manual_seed(seed))
        assert not (batch.tokens == model.cfg.mask_id).any()
        for r in batch.steps:
            assert (r.step in hook.full) == (r.blocks > 0) and not (r.cached and r.step in hook.full)
        skipped_full_step_zero += batch.steps[0].revealed == 0
    assert skipped_full_step_zero > 0  # the case that crashed is exercised


def test_plan_of_a_fixed_point_model_spends_the_budget_on_the_full_steps() -> None:
    model = text_model((1, 1, 1))
    plan = shortcut_plan(model.cfg, 8, 3, 3 * 2 + 9, "fixed")
    assert plan.steps == 8 and plan.iterations == [3, 0, 0, 3, 0, 3, 0, 0]
    assert plan.blocks_per_step == [5, 0, 0, 5, 0, 5, 0, 0]
    with pytest.raises(Exception, match="not --full-steps"):
        shortcut_plan(text_model().cfg, 8, 3, 8, "fixed")


def test_block_flops_match_cofre_flops_and_the_cost_report() -> None:
    model = text_model()
    assert block_flops(model, 16) == FlopCounts.of(model, 16).block * 16
    shortcut = trained_like(model)
    d, D = 16, 32
    by_hand = 2 * 16 * (D * d + 2 * d * d + 8 * d * d + 4 * d * d + 8 * d * d + d * D) + 2 * 3 * (D * d + 2 * d * d) \
        + 4 * 16 * 3 * d + 4 * 16 * 16 * d
    assert shortcut.flops(16, 3) == by_hand
    _, plan = draw_text(model, 10, 4, shortcut)
    hook = ShortcutSteps(shortcut, model, 10, 4)
    MDLMSampler(model, plan, SamplerConfig(length=16), hook=hook).sample(4, torch.Generator().manual_seed(9))
    cost = shortcut_cost(hook, 16, plan)
    assert cost["full_blocks"] == 8 and cost["shortcut_steps"] == 6 and cost["vanilla_blocks"] == 20
    assert cost["shortcut_blocks"] == pytest.approx(sum(shortcut.flops(16, k) for k in hook.keys) / block_flops(model, 16))
    assert 0 < cost["shortcut_call_blocks"] < 1  # S costs less than one base block per call
