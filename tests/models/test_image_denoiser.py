"""The image side of the shared denoiser: Halton-MaskGIT's block, register token, class conditioning, tied head."""

import pytest
import torch
from safetensors.torch import load_file

from cofre.config import ModelConfig
from cofre.models import Denoiser
from cofre.models.image_blocks import ImageBlock, swiglu_width
from cofre.solver import sjfb_solve
from cofre.summary import summarize
from cofre.training.checkpoint import save_weights

IMAGE = dict(modality="image", vocab_size=17, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16,
             num_classes=3, registers=1)


def randomized(cfg: ModelConfig) -> Denoiser:
    torch.manual_seed(0)
    model = Denoiser(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # adaLN-zero starts every block at the identity
    return model


def test_blocks_and_parts_are_the_image_ones() -> None:
    model = Denoiser(ModelConfig(**IMAGE, K_pre=2, K_fp=1, K_post=1))
    assert all(isinstance(b, ImageBlock) for b in model.blocks()) and len(model.blocks()) == 4
    assert model.class_embed.weight.shape == (3 + 1, 16)  # one extra row: the dropped label (CFG)
    assert model.pos_embed.shape == (16, 32) and model.register_tokens.shape == (1, 32)
    block = model.pre[0]
    assert block.w1.weight.shape == (swiglu_width(32, 4), 32) and swiglu_width(1024, 4) == 2816  # 2/3 x 4096, to 256
    assert (block.adaLN_modulation.weight == 0).all()  # adaLN-zero


def test_head_is_tied_to_the_token_embedding_and_stored_once(tmp_path) -> None:
    model = randomized(ModelConfig(**IMAGE, K_pre=1))
    cond = model.conditioning(torch.tensor([0, 3]), 16)
    hidden = torch.randn(2, 16, 32)
    before = model.head(hidden, cond)
    with torch.no_grad():
        model.vocab_embed.weight[5] += 1.0
    after = model.head(hidden, cond)
    changed = (after - before).abs().amax(dim=(0, 1)) > 0
    assert changed.tolist() == [i == 5 for i in range(17)]  # only code 5's logit moves: the head is the embedding
    save_weights(model, tmp_path / "m.safetensors")  # a shared tensor would make safetensors refuse the file
    shapes = {k: tuple(v.shape) for k, v in load_file(str(tmp_path / "m.safetensors")).items()}
    assert [k for k, v in shapes.items() if v == (17, 32)] == ["vocab_embed.weight"]


def test_register_token_is_in_the_state_and_out_of_the_output() -> None:
    model = randomized(ModelConfig(**IMAGE, K_pre=1, K_fp=1, K_post=1))
    z, y = torch.randint(0, 17, (2, 16)), torch.tensor([1, 2])
    cond = model.conditioning(y, 16)
    h_pre = model.pre_stack(z, cond)
    assert h_pre.shape == (2, 17, 32)  # 16 cells + 1 register
    out = model(z, y, n_nograd=3)
    assert out.hidden.shape == (2, 16, 32) and out.logits.shape == (2, 16, 17)
    # the Eq. 2 parts that samplers call reproduce the forward pass
    injected = model.inject(h_pre)
    h, _ = sjfb_solve(lambda s: model.fp_step(s, injected, cond), h_pre, 3, 0)
    assert torch.allclose(model.head(model.post_stack(h, cond), cond), out.logits, atol=1e-6)


def test_class_conditions_the_output() -> None:
    model = randomized(ModelConfig(**IMAGE, K_pre=2))
    z = torch.full((1, 16), 16)  # all masked
    logits = [model(z, torch.tensor([c])).logits for c in range(4)]  # 3 = dropped
    assert all(not torch.allclose(logits[0], other) for other in logits[1:])


@pytest.mark.parametrize("modality", ["text", "image"])
def test_summary_counts_every_parameter(modality: str) -> None:
    kwargs = IMAGE if modality == "image" else dict(vocab_size=17, hidden=32, heads=4, cond_dim=16, max_seq_len=16)
    cfg = ModelConfig(**kwargs, K_pre=1, K_fp=1, K_post=1)
    summary = summarize(cfg, 4)
    assert summary.total_params == sum(p.numel() for p in Denoiser(cfg).parameters())
