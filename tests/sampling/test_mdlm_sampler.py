"""The budgeted MDLM sampler: exact budgets, reuse policies, known distributions, top-p, adaptive stopping."""

import math

import pytest
import torch

from cofre.config import ModelConfig
from cofre.models import Denoiser
from cofre.sampling.budget import SCHEDULES, plan_budget
from cofre.sampling.mdlm import MDLMSampler, SamplerConfig, nucleus
from cofre.sampling.reuse import REUSE_POLICIES, ReuseConfig
from cofre.tasks.mdlm import LogLinearSchedule

SMALL = dict(vocab_size=50, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16)


def fp_model(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    model = Denoiser(ModelConfig(**SMALL, K_pre=1, K_fp=1, K_post=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def draw(model: Denoiser, budget: int, seed: int = 0, batch: int = 3, **cfg: object) -> tuple[torch.Tensor, int, list]:
    plan = plan_budget(model.cfg, budget, cfg.pop("steps", None), cfg.pop("schedule", "decreasing"))
    sampler = MDLMSampler(model, plan, SamplerConfig(length=16, **cfg))
    out = sampler.sample(batch, torch.Generator().manual_seed(seed))
    return out.tokens, out.blocks_spent, out.steps


@pytest.mark.parametrize("reuse", REUSE_POLICIES)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("budget", [96, 192, 384, 768])
def test_every_policy_and_schedule_unmasks_fully_and_spends_the_budget(reuse: str, schedule: str, budget: int) -> None:
    model = fp_model()
    tokens, spent, steps = draw(model, budget, schedule=schedule, reuse=ReuseConfig(reuse))
    assert not (tokens == model.cfg.mask_id).any()
    assert spent == budget == sum(r.blocks for r in steps)


def test_seeds() -> None:
    model = fp_model()
    a, _, _ = draw(model, 96, seed=1)
    b, _, _ = draw(model, 96, seed=1)
    c, _, _ = draw(model, 96, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def reference_no_reuse(model: Denoiser, budget: int, seed: int) -> torch.Tensor:
    """Alg. 1 without reuse written with the model's own forward (solve from h_pre every step)."""
    plan = plan_budget(model.cfg, budget, None, "decreasing")
    gen = torch.Generator().manual_seed(seed)
    schedule = LogLinearSchedule()
    z = torch.full((3, 16), model.cfg.mask_id)
    times = torch.linspace(1.0, 0.0, plan.steps + 1, dtype=torch.float64).tolist()
    for i, n in enumerate(plan.iterations):
        t, s = times[i], times[i + 1]
        reveal = (z == model.cfg.mask_id) & (torch.rand(z.shape, generator=gen, dtype=torch.float64) < (t - s) / t)
        with torch.no_grad():
            logits = model(z, schedule.sigma(torch.full((3,), t)), n_nograd=n).logits[reveal]
        log_p = logits.double()[:, : model.cfg.mask_id].log_softmax(-1)
        u = torch.rand(log_p.shape, dtype=torch.float64, generator=gen)
        z = z.clone()
        z[reveal] = (log_p - torch.log(-torch.log(u))).argmax(-1)
    return z


def test_none_reuse_equals_solving_from_h_pre() -> None:
    model = fp_model()
    tokens, _, _ = draw(model, 96, seed=5, reuse=ReuseConfig("none"))
    assert torch.equal(tokens, reference_no_reuse(model, 96, seed=5))
    # with one iteration per step the solve is far from converged, so each warm start shows in the samples
    one_iter = {name: draw(model, 48, seed=5, steps=16, batch=8, reuse=ReuseConfig(name))[0] for name in REUSE_POLICIES}
    assert not torch.equal(one_iter["none"], one_iter["full"])
    assert not torch.equal(one_iter["3sr"], one_iter["full"]) and not torch.equal(one_iter["3sr"], one_iter["none"])


def constant_model(probs: list[float]) -> Denoiser:
    """A plain model whose every output is the same known distribution over the first tokens."""
    model = Denoiser(ModelConfig(**SMALL, K_pre=1)).eval()
    logits = torch.full((SMALL["vocab_size"],), -1e4)  # ~zero probability for the other tokens
    logits[: len(probs)] = torch.log(torch.tensor(probs))
    with torch.no_grad():
        model.output_layer.linear.weight.zero_()
        model.output_layer.linear.bias.copy_(logits)
    return model


def test_revealed_tokens_follow_the_model_distribution() -> None:
    """Through the float64 SUBS path, revealed values have the stand-in's known frequencies."""
    probs = [0.5, 0.3, 0.15, 0.05]
    tokens, _, _ = draw(constant_model(probs), 8, batch=2000)
    freq = torch.bincount(tokens.flatten(), minlength=50)[:4].double() / tokens.numel()
    n = tokens.numel()
    for f, p in zip(freq.tolist(), probs):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_top_p_keeps_only_the_nucleus() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    tokens, _, _ = draw(constant_model(probs), 8, batch=500, top_p=0.7)
    freq = torch.bincount(tokens.flatten(), minlength=50).double() / tokens.numel()
    assert freq[2:].sum() == 0  # 0.5 + 0.3 reaches 0.7: the other tokens are cut
    assert freq[0].item() == pytest.approx(0.5 / 0.8, abs=0.03)
    log_p = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    assert torch.isinf(nucleus(log_p, 0.5)).tolist() == [[False, True, True, True]]
    assert torch.isinf(nucleus(log_p, 0.95)).tolist() == [[False, False, False, True]]


def test_reveal_schedule_is_log_linear() -> None:
    _, _, steps = draw(constant_model([1.0]), 16, batch=400)
    L, B = 16, 400
    still_masked = L * B
    times = torch.linspace(1.0, 0.0, 17).tolist()
    for record, s in zip(steps, times[1:]):
        still_masked -= record.revealed
        assert still_masked / (L * B) == pytest.approx(s, abs=0.02)  # P(masked at s) = s
    assert still_masked == 0


@pytest.mark.parametrize("tol", [1e9, 1e-2, 1e-30])
def test_adaptive_stopping_never_exceeds_the_budget(tol: float) -> None:
    model = fp_model()
    _, spent, steps = draw(model, 96, tol=tol, trace=True)
    assert spent <= 96 and spent == sum(r.blocks for r in steps)
    if tol == 1e-30:
        assert spent == 96
    if tol == 1e9:  # every solve stops after one iteration; the unspent iterations carry to the end
        assert [r.iterations for r in steps] == [1] * len(steps)
        assert steps[-1].allocated_iters == 96 - len(steps) * 2 - (len(steps) - 1)
    assert all(r.iterations <= r.allocated_iters for r in steps)


def test_trace_records_residuals_and_shifts() -> None:
    _, _, steps = draw(fp_model(), 96, trace=True)
    assert all(len(r.residuals) == r.iterations for r in steps)
    assert steps[0].solution_shift == {}
    assert set(steps[-1].solution_shift) <= {"unchanged_visible", "still_masked", "newly_revealed"}
    assert any("newly_revealed" in r.solution_shift for r in steps)


def test_cache_skips_steps_that_reveal_nothing() -> None:
    model = fp_model()
    _, spent, steps = draw(model, 768, batch=1, cache=True, steps=256)
    cached = [r for r in steps if r.cached]
    assert cached and all(r.blocks == 0 and r.revealed == 0 for r in cached)
    assert spent == 768 - sum(2 + n for r, n in zip(steps, plan_budget(model.cfg, 768, 256, "decreasing").iterations) if r.cached)


def test_noise_removal_is_mdlms_final_argmax_pass_inside_the_budget() -> None:
    """S - 1 steps on MDLM's grid 1 -> 1e-5, then one pass at t = 1e-5 filling what is still masked with the argmax."""
    probs = [0.4, 0.35, 0.25]
    tokens, spent, steps = draw(constant_model(probs), 16, batch=400, noise_removal=True)
    assert spent == 16 == len(steps)  # the extra pass is the budget's 16th block forward, not a 17th
    grid = torch.linspace(1.0, 1e-5, 16, dtype=torch.float64).tolist()
    assert [r.t for r in steps] == pytest.approx(grid, abs=1e-12)
    assert steps[-1].t == pytest.approx(1e-5) and steps[-1].revealed <= 3  # ~ 1e-5 x 6400 tokens left for it
    assert not (tokens == SMALL["vocab_size"] - 1).any()
    _, _, only = draw(constant_model(probs), 1, batch=50, noise_removal=True)  # one pass: all of it is the fill
    tokens_one, _, _ = draw(constant_model(probs), 1, batch=50, noise_removal=True)
    assert only[0].t == 1.0 and (tokens_one == 0).all()  # the most likely token everywhere


@pytest.mark.parametrize("budget", [96, 192])
def test_noise_removal_spends_the_budget_exactly_on_fp_models(budget: int) -> None:
    tokens, spent, steps = draw(fp_model(), budget, noise_removal=True, reuse=ReuseConfig("3sr"))
    assert spent == budget == sum(r.blocks for r in steps) and not (tokens == 49).any()
