"""Compiled blocks: the same loss as eager, and SJFB's random iteration counts never recompile."""

import pytest
import torch
from torch._dynamo.utils import counters

from cofre.config import ModelConfig
from cofre.models import Denoiser

CFG = ModelConfig(vocab_size=64, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16, K_pre=1, K_fp=1, K_post=1)


def loss_and_grad(model: Denoiser, z: torch.Tensor, n_nograd: int, n_grad: int) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    out = model(z, torch.zeros(z.shape[0]), n_nograd=n_nograd, n_grad=n_grad)
    loss = out.logits.float().log_softmax(-1)[..., 0].mean() + out.hidden.square().mean()
    loss.backward()
    return float(loss), model.pre[0].attn_qkv.weight.grad.clone()


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_do_not_recompile() -> None:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = Denoiser(CFG)
    with torch.no_grad():  # non-zero adaLN and head, so that every block and the head shape the loss
        for p in eager.parameters():
            p.add_(0.05 * torch.randn_like(p))
    compiled = Denoiser(CFG)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    z = torch.randint(0, CFG.mask_id, (2, 16))

    ref_loss, ref_grad = loss_and_grad(eager, z, 1, 2)
    loss, grad = loss_and_grad(compiled, z, 1, 2)
    # fp32 on CPU: inductor fuses and reorders reductions, so agreement is to rounding, not bitwise
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)

    graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
    assert graphs >= 1
    for n_nograd, n_grad in [(4, 3), (0, 6), (2, 1)]:  # other SJFB draws: the same compiled graphs run
        loss, _ = loss_and_grad(compiled, z, n_nograd, n_grad)
        assert loss == pytest.approx(loss_and_grad(eager, z, n_nograd, n_grad)[0], rel=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs
    assert counters["frames"]["total"] == frames
