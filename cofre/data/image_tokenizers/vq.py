"""cofre's own image tokenizer: a small VQ-VAE (van den Oord et al., 2017), or a patch k-means codebook.

`encoder: conv` is the VQ-VAE: a conv encoder, an EMA codebook, a conv decoder. The codebook follows the
VQ-VAE paper's App. A.1: codes are exponential moving averages of the encoder outputs assigned to them (no
codebook gradient), the encoder gets the straight-through gradient plus the commitment loss
beta ||z - sg[e]||^2. The codebook starts from encoder outputs of the first batch, and a code no batch has
chosen for a while is restarted at a random encoder output (a dead-code restart), so the whole codebook
stays in use.

`encoder: patch` has no network: the "encoder output" at a grid cell is the cell's p x p pixel patch and the
decoder puts the chosen code's patch back. The same EMA update is then online (mini-batch) k-means on
patches, which minimises the reconstruction MSE directly; on a CPU it reaches a higher PSNR in seconds than
the VQ-VAE does in minutes (README, "Images: tokenizers and data").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cofre.data.image_tokenizers.base import check_codes, check_images, file_sha256
from cofre.data.image_tokenizers.recipe import VQConfig, read_vq_checkpoint
from cofre.errors import CofreError
from cofre.training.checkpoint import MODEL_FILE, load_weights_into


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), as in the VQ-VAE paper."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def encoder(cfg: VQConfig) -> nn.Module:
    if cfg.encoder == "patch":
        return nn.PixelUnshuffle(2**cfg.downsample)  # [C, S, S] -> [C p^2, S/p, S/p]: one patch per grid cell
    layers: list[nn.Module] = [nn.Conv2d(cfg.channels, cfg.hidden // 2, 3, padding=1)]
    width = cfg.hidden // 2
    for _ in range(cfg.downsample):  # a 4 x 4 stride-2 conv halves the side exactly
        layers += [nn.ReLU(), nn.Conv2d(width, cfg.hidden, 4, stride=2, padding=1)]
        width = cfg.hidden
    layers += [nn.Conv2d(width, cfg.hidden, 3, padding=1)]
    layers += [ResBlock(cfg.hidden) for _ in range(cfg.res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.code_dim, 1)]
    return nn.Sequential(*layers)


def decoder(cfg: VQConfig) -> nn.Module:
    if cfg.encoder == "patch":
        return nn.PixelShuffle(2**cfg.downsample)
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.hidden, 3, padding=1)]
    layers += [ResBlock(cfg.hidden) for _ in range(cfg.res_blocks)]
    for stage in range(cfg.downsample):
        out = cfg.hidden // 2 if stage == cfg.downsample - 1 else cfg.hidden
        layers += [nn.ReLU(), nn.ConvTranspose2d(cfg.hidden, out, 4, stride=2, padding=1)]
    width = cfg.hidden // 2 if cfg.downsample else cfg.hidden
    layers += [nn.ReLU(), nn.Conv2d(width, cfg.channels, 3, padding=1)]
    return nn.Sequential(*layers)


class EMAQuantizer(nn.Module):
    """Nearest-code quantisation; the codebook is an EMA of its assigned encoder outputs (VQ-VAE App. A.1)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.decay, self.dead_after = cfg.ema_decay, cfg.dead_after
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.code_dim))
        self.register_buffer("cluster_size", torch.zeros(cfg.codebook_size))  # N_i: EMA of assignments per batch
        self.register_buffer("embed_sum", torch.zeros(cfg.codebook_size, cfg.code_dim))  # m_i: EMA of their sum
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code (squared L2) for each row of z [n, D]."""
        distances = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.t() + self.codebook.pow(2).sum(1))
        return distances.argmin(1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z [B, D, h, w] -> (straight-through z_q [B, D, h, w], codes [B, h, w], commitment term ||z - sg[e]||^2)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._restart(torch.ones(len(self.codebook), dtype=torch.bool), flat.detach())
            self.initialized.fill_(True)
        codes = self.nearest(flat.detach())
        quantized = self.codebook[codes]
        if self.training:
            self._ema_update(flat.detach(), codes)
        commitment = F.mse_loss(flat, quantized.detach())  # VQ-VAE Eq. 3, third term (without beta)
        quantized = flat + (quantized - flat).detach()  # straight-through: d z_q / d z = I
        return quantized.reshape(b, h, w, d).permute(0, 3, 1, 2), codes.reshape(b, h, w), commitment

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor) -> None:
        """N_i <- g N_i + (1 - g) n_i; m_i <- g m_i + (1 - g) sum z; e_i = m_i / N_i (App. A.1, Laplace-smoothed)."""
        counts = torch.bincount(codes, minlength=len(self.codebook)).type_as(flat)  # n_i
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)  # sum of the z assigned to code i
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n, k, eps = self.cluster_size.sum(), len(self.codebook), 1e-5
        smoothed = (self.cluster_size + eps) / (n + k * eps) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self._restart(self.cluster_size < self.dead_after, flat)

    @torch.no_grad()
    def _restart(self, dead: Tensor, flat: Tensor) -> None:
        """Move the `dead` codes onto random encoder outputs of this batch, with a fresh count of one."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = flat[torch.randint(len(flat), (n_dead,), device=flat.device)]
        self.codebook[dead] = picks
        self.embed_sum[dead] = picks
        self.cluster_size[dead] = 1.0


class VQVAE(nn.Module):
    """encoder -> EMA quantizer -> decoder; `forward` returns the reconstruction, codes and losses."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder(cfg)
        self.quantizer = EMAQuantizer(cfg)
        self.decoder = decoder(cfg)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images in [0, 1] -> (reconstruction, codes, commitment term)."""
        quantized, codes, commitment = self.quantizer(self.encoder(images * 2 - 1))
        return self.decoder(quantized) * 0.5 + 0.5, codes, commitment

    def encode(self, images: Tensor) -> Tensor:
        return self.quantizer(self.encoder(images * 2 - 1))[1]

    def decode(self, codes: Tensor) -> Tensor:
        quantized = self.quantizer.codebook[codes].permute(0, 3, 1, 2)
        return (self.decoder(quantized) * 0.5 + 0.5).clamp(0, 1)


class VQTokenizer:
    """A trained cofre VQ-VAE as an ImageTokenizer."""

    def __init__(self, model: VQVAE, sha256: str, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.name = f"cofre-vq-{model.cfg.encoder}"
        self.sha256 = sha256
        self.codebook_size = model.cfg.codebook_size
        self.grid = model.cfg.grid
        self.image_size = model.cfg.image_size
        self.channels = model.cfg.channels
        self.device = device

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        check_images(images, self.channels, self.image_size, self.name)
        return self.model.encode(images.to(self.device, torch.float32))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        check_codes(codes, self.grid, self.codebook_size, self.name)
        return self.model.decode(codes.to(self.device, torch.long))


def load_vq(path: str | Path, device: torch.device | str = "cpu") -> VQTokenizer:
    """The VQ-VAE of a cofre VQ run directory (its latest checkpoint) or checkpoint folder."""
    folder, recipe = read_vq_checkpoint(Path(path))
    model = VQVAE(recipe.vq)
    load_weights_into(model, folder / MODEL_FILE)
    if not bool(model.quantizer.initialized):
        raise CofreError(f"{folder}: the VQ codebook was never initialised (a checkpoint written before training)")
    return VQTokenizer(model, file_sha256(folder / MODEL_FILE), torch.device(device))
