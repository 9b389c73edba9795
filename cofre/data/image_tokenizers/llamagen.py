"""A pretrained VQ-GAN in LlamaGen's `vq_ds16_c2i.pt` layout (Sun et al., 2024; the taming-transformers design).

The checkpoint is a dict whose "model" entry is the state dict of: `encoder` (conv_in, per-resolution levels
`conv_blocks.{i}` of ResNet blocks, attention at the lowest resolution, stride-2 down-sampling, a
ResNet-attention-ResNet middle, GroupNorm + swish + conv_out), `quant_conv` (z_channels -> code width), `quantize`
(a codebook, 16384 x 8 for VQ-16, looked up after l2-normalising both codes and encoder outputs),
`post_quant_conv` (code width -> z_channels) and a mirrored `decoder` with nearest-neighbour up-sampling. Written
from the published architecture; the module names match the state dict, which is loaded strictly. The sizes
(codebook, code width, widths, levels: the down-sampling) are read from the state dict's shapes, so any checkpoint
of this layout loads (VQ-16, VQ-8, other codebooks); the image size is the recipe's `data.image_size`, which sets
the grid. Images are [-1, 1] inside.
"""

from __future__ import annotations

import argparse
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cofre.data.image_tokenizers.base import check_codes, check_images, file_sha256
from cofre.errors import CofreError

# A training statistic (a ring buffer of recently used codes) that plays no part in encoding or decoding.
USAGE_BUFFER = "quantize.codebook_used"


@dataclass(frozen=True)
class LlamaGenConfig:
    """A LlamaGen VQ model's sizes; the defaults are VQ-16 (`VQ_16`): 16384 codes of width 8, ds16 (five
    resolutions), base width 128."""

    codebook_size: int = 16384
    code_dim: int = 8
    ch: int = 128  # base conv width (a multiple of 32: GroupNorm uses 32 groups)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width multipliers per resolution; down-sampling 2^(len - 1)
    z_channels: int = 256
    num_res_blocks: int = 2
    channels: int = 3

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], where: Path) -> LlamaGenConfig:
        """The config whose modules have these shapes: codebook and code width from the codebook, image channels and
        base width from encoder.conv_in, the width multiplier of each level and the ResNet blocks per level from
        encoder.conv_blocks, z_channels from encoder.conv_out (the strict load then checks every other tensor)."""
        needed = ("quantize.embedding.weight", "encoder.conv_in.weight", "encoder.conv_out.weight")
        missing = [k for k in needed if k not in state or state[k].dim() < 2]
        if missing:
            raise CofreError(f"{where}: not a LlamaGen VQ checkpoint (no {', '.join(missing)})")
        codebook_size, code_dim = state["quantize.embedding.weight"].shape
        ch, channels = state["encoder.conv_in.weight"].shape[:2]
        level_width = re.compile(r"encoder\.conv_blocks\.(\d+)\.res\.(\d+)\.conv1\.weight")
        blocks: dict[int, dict[int, int]] = {}
        for key, value in state.items():
            if match := level_width.fullmatch(key):
                blocks.setdefault(int(match[1]), {})[int(match[2])] = int(value.shape[0])
        levels_ok = bool(blocks) and sorted(blocks) == list(range(len(blocks))) and all(0 in b for b in blocks.values())
        if not levels_ok or ch % 32 or any(w % ch for b in blocks.values() for w in b.values()):  # GroupNorm: 32 groups
            raise CofreError(f"{where}: the encoder levels (encoder.conv_blocks.*) do not follow the LlamaGen VQ layout")
        return cls(codebook_size=int(codebook_size), code_dim=int(code_dim), ch=int(ch),
                   ch_mult=tuple(blocks[i][0] // ch for i in range(len(blocks))),
                   z_channels=int(state["encoder.conv_out.weight"].shape[0]), num_res_blocks=len(blocks[0]),
                   channels=int(channels))


def norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, width, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(width_in), nn.Conv2d(width_in, width_out, 3, padding=1)
        self.norm2, self.conv2 = norm(width_out), nn.Conv2d(width_out, width_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(width_in, width_out, 1) if width_in != width_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h x w positions, 1 x 1 conv projections."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = norm(width)
        self.q, self.k, self.v = (nn.Conv2d(width, width, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the taming design


class Upsample(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: ResNet blocks (`res`), attention after each of them at the lowest resolution (`attn`),
    then a resampling layer (`downsample` in the encoder, `upsample` in the decoder) except at the end."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(a, b) for a, b in widths)
        self.attn = nn.ModuleList(AttnBlock(b) for _, b in widths) if attention else nn.ModuleList()
        self.resample_name = name
        if resample is not None:
            self.add_module(name, resample)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


def middle(width: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(width, width), AttnBlock(width), ResnetBlock(width, width)])


class Encoder(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.channels, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        width = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            out = cfg.ch * mult
            widths = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks)]
            width = out
            self.conv_blocks.append(Level(widths, i == n - 1, Downsample(width) if i < n - 1 else None, "downsample"))
        self.mid = middle(width)
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = middle(width)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(n)):  # lowest resolution first
            out = cfg.ch * cfg.ch_mult[i]
            widths = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks + 1)]
            width = out
            self.conv_blocks.append(Level(widths, i == n - 1, Upsample(width) if i > 0 else None, "upsample"))
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, cfg.channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class L2Codebook(nn.Module):
    """Nearest code by cosine: codes and encoder outputs are both l2-normalised before the lookup."""

    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.code_dim)

    def codes(self, z: Tensor) -> Tensor:
        """z [B, D, h, w] -> [B, h, w]: argmin ||z/|z| - e/|e|||^2 = argmax of the cosine."""
        z = F.normalize(z.permute(0, 2, 3, 1), dim=-1)
        return (z @ F.normalize(self.embedding.weight, dim=-1).t()).argmax(-1)

    def lookup(self, codes: Tensor) -> Tensor:
        return F.normalize(self.embedding.weight, dim=-1)[codes].permute(0, 3, 1, 2)


class LlamaGenVQ(nn.Module):
    """encoder -> quant_conv -> quantize | quantize -> post_quant_conv -> decoder, images in [-1, 1]."""

    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = L2Codebook(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)

    def encode(self, images: Tensor) -> Tensor:
        return self.quantize.codes(self.quant_conv(self.encoder(images)))

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))


class LlamaGenTokenizer:
    """A LlamaGen-layout VQ-GAN as an ImageTokenizer (images in [0, 1] outside, [-1, 1] inside)."""

    def __init__(self, model: LlamaGenVQ, sha256: str, image_size: int, device: torch.device) -> None:
        if image_size % model.cfg.downsample:
            raise CofreError(f"image size {image_size} is not a multiple of the tokenizer's down-sampling {model.cfg.downsample}")
        self.model = model.to(device).eval()
        self.name = f"llamagen-vq-ds{model.cfg.downsample}-{model.cfg.codebook_size}x{model.cfg.code_dim}"
        self.sha256 = sha256
        self.codebook_size = model.cfg.codebook_size
        side = image_size // model.cfg.downsample
        self.grid = (side, side)
        self.image_size = image_size
        self.channels = model.cfg.channels
        self.device = device

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        check_images(images, self.channels, self.image_size, self.name)
        return self.model.encode(images.to(self.device, torch.float32) * 2 - 1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        check_codes(codes, self.grid, self.codebook_size, self.name)
        return ((self.model.decode(codes.to(self.device, torch.long)) + 1) / 2).clamp(0, 1)


def read_llamagen_state(path: Path) -> dict[str, Tensor]:
    """The "model" state dict of a LlamaGen VQ checkpoint, read with weights_only=True (nothing is executed).

    LlamaGen's training script also stores its argparse `args`; that one plain class is allowed through."""
    if not path.is_file():
        raise CofreError(f"{path}: no such LlamaGen VQ checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise CofreError(f"{path}: refused, it holds objects other than tensors and plain containers") from None
        raise CofreError(f"{path}: not a readable torch checkpoint (a damaged pickle)") from None
    except (RuntimeError, EOFError, ValueError, OSError, struct.error) as err:
        raise CofreError(f"{path}: not a readable torch checkpoint ({str(err).strip().splitlines()[0][:200]})") from None
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CofreError(f"{path}: not a LlamaGen VQ checkpoint (no 'model' state dict of tensors)")
    return {k: v for k, v in state.items() if k != USAGE_BUFFER}


def load_llamagen(path: str | Path, image_size: int, device: torch.device | str = "cpu") -> LlamaGenTokenizer:
    """A LlamaGen VQ-GAN checkpoint (e.g. `vq_ds16_c2i.pt`) for `image_size` images, its sizes read from its shapes
    and its weights loaded strictly."""
    path = Path(path).expanduser()
    state = read_llamagen_state(path)
    model = LlamaGenVQ(LlamaGenConfig.from_state(state, path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if keys)
        raise CofreError(f"{path}: the weights do not fit the LlamaGen VQ layout ({detail})")
    model.load_state_dict(state, strict=True)
    return LlamaGenTokenizer(model, file_sha256(path), image_size, torch.device(device))
