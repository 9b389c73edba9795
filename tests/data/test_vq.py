"""cofre's VQ-VAE: round-trip shapes, the straight-through and commitment gradients, the EMA codebook by hand."""

from __future__ import annotations

import pytest
import torch

from cofre.data.image_tokenizers.recipe import VQConfig
from cofre.data.image_tokenizers.vq import VQVAE, EMAQuantizer, VQTokenizer
from cofre.errors import CofreError


@pytest.mark.parametrize("cfg, grid", [
    (VQConfig(hidden=8, res_blocks=1, codebook_size=16, code_dim=4), (7, 7)),  # Fashion-MNIST: 28 -> 7
    (VQConfig(channels=3, image_size=32, hidden=8, downsample=3, res_blocks=0, codebook_size=8, code_dim=2), (4, 4)),
])
def test_vq_round_trip_shapes(cfg: VQConfig, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = VQVAE(cfg)
    images = torch.rand(5, cfg.channels, cfg.image_size, cfg.image_size)
    model(images)  # one training-mode pass initialises the codebook from encoder outputs
    tokenizer = VQTokenizer(model, "sha", torch.device("cpu"))
    codes = tokenizer.encode(images)
    assert tokenizer.grid == grid and codes.shape == (5, *grid) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < cfg.codebook_size
    decoded = tokenizer.decode(codes)
    assert decoded.shape == images.shape and 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    assert torch.equal(tokenizer.encode(images), codes)  # eval mode: encoding changes nothing
    with pytest.raises(CofreError, match="codes must be in"):
        tokenizer.decode(torch.full((1, *grid), cfg.codebook_size))  # the mask token is not a code
    with pytest.raises(CofreError, match="encodes float images"):
        tokenizer.encode(torch.zeros(1, cfg.channels, cfg.image_size + 4, cfg.image_size + 4))


def _quantizer(codebook: list[list[float]], decay: float = 0.5, dead_after: float = 0.0) -> EMAQuantizer:
    q = EMAQuantizer(VQConfig(codebook_size=len(codebook), code_dim=len(codebook[0]), ema_decay=decay,
                              dead_after=dead_after))
    q.codebook.copy_(torch.tensor(codebook))
    q.embed_sum.copy_(torch.tensor(codebook))
    q.cluster_size.fill_(1.0)
    q.initialized.fill_(True)
    return q


def test_straight_through_and_commitment_gradients() -> None:
    q = _quantizer([[0.0, 0.0], [10.0, 10.0]]).eval()  # eval: no EMA step, the codebook stays put
    z = torch.tensor([[[[1.0, 9.0]], [[2.0, 8.0]]]], requires_grad=True)  # [B=1, D=2, h=1, w=2]
    quantized, codes, commitment = q(z)
    assert codes.tolist() == [[[0, 1]]]
    assert torch.equal(quantized.detach(), torch.tensor([[[[0.0, 10.0]], [[0.0, 10.0]]]]))  # z_q = e_k
    weights = torch.randn_like(z)
    (quantized * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # straight-through: d z_q / d z = I
    z.grad = None
    commitment.backward()  # ||z - sg[e]||^2 / n: gradient 2 (z - e) / n on z, nothing on the codebook
    assert torch.allclose(z.grad, 2 * (z.detach() - quantized.detach()) / 4)
    assert not any(p.requires_grad for p in q.buffers())


def test_ema_codebook_update_by_hand() -> None:
    """decay 0.5; codes 0 and 10; batch 1, 2 -> code 0 and 9 -> code 1 (VQ-VAE App. A.1)."""
    q = _quantizer([[0.0], [10.0]]).train()
    q(torch.tensor([1.0, 2.0, 9.0]).reshape(1, 1, 1, 3))
    # N = 0.5 * 1 + 0.5 * (2, 1) = (1.5, 1.0); m = 0.5 * (0, 10) + 0.5 * (3, 9) = (1.5, 9.5); e = m / N
    assert torch.allclose(q.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(q.embed_sum, torch.tensor([[1.5], [9.5]]))
    assert torch.allclose(q.codebook, torch.tensor([[1.0], [9.5]]), atol=1e-4)  # Laplace smoothing moves it < 1e-4


def test_dead_codes_restart_on_encoder_outputs() -> None:
    q = _quantizer([[0.0], [100.0]], decay=0.5, dead_after=0.6).train()
    batch = torch.tensor([1.0, 2.0, 3.0])
    q(batch.reshape(1, 1, 1, 3))  # code 1 is never chosen: its count 0.5 falls below 0.6
    assert float(q.codebook[1]) in batch.tolist() and float(q.cluster_size[1]) == 1.0
    assert torch.allclose(q.codebook[0], torch.tensor([(0.5 * 0 + 0.5 * 6) / 2.0]), atol=1e-4)


def test_codebook_starts_from_encoder_outputs() -> None:
    q = EMAQuantizer(VQConfig(codebook_size=4, code_dim=2, dead_after=0.0)).train()
    z = torch.randn(1, 2, 3, 3)
    q(z)
    rows = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert bool(q.initialized)
    # after init every code is a batch vector; one EMA step (decay 0.99) keeps each within reach of the batch
    assert all(float(torch.cdist(code[None], rows).min()) < 0.5 for code in q.codebook)


def test_patch_encoder_is_exact_on_patches_of_the_codebook() -> None:
    """encoder: patch: a grid cell's code is its nearest 2 x 2 patch; an image made of codebook patches comes back."""
    cfg = VQConfig(encoder="patch", channels=1, image_size=4, downsample=1, codebook_size=3, code_dim=4)
    model = VQVAE(cfg)
    assert not list(model.parameters())  # no network: only the codebook
    patches = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [1.0, -1.0, -1.0, 1.0]])  # in [-1, 1]
    model.quantizer.codebook.copy_(patches)
    model.quantizer.initialized.fill_(True)
    tokenizer = VQTokenizer(model, "sha", torch.device("cpu"))
    codes = torch.tensor([[[2, 0], [1, 2]]])
    image = tokenizer.decode(codes)
    assert torch.equal(image[0, 0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]))
    assert torch.equal(tokenizer.encode(image), codes)
    assert torch.equal(tokenizer.encode((image + 0.1).clamp(0, 1)), codes)  # nearest patch
