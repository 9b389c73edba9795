"""A checkpoint in LlamaGen's `vq_ds16_c2i.pt` layout loads strictly, encodes and decodes, its sizes read from its
shapes and its image size given by the recipe.

The layout is written out below from LlamaGen's published VQ model (tokenizer/tokenizer_image/vq_model.py), name
by name and shape by shape, independently of cofre's modules; the tests build checkpoints of it with small
widths (the same config fields) and random weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

import pytest
import torch
import torch.nn.functional as F

from cofre.data.image_tokenizers import load_tokenizer
from cofre.data.image_tokenizers.llamagen import LlamaGenConfig, LlamaGenVQ, load_llamagen
from cofre.errors import CofreError

SMALL = LlamaGenConfig(codebook_size=64, code_dim=8, ch=32, ch_mult=(1, 1, 2, 2, 4), z_channels=32, num_res_blocks=2)


def llamagen_layout(cfg: LlamaGenConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of LlamaGen's VQModel and its shape."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int, k: int) -> None:
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def group_norm(name: str, c: int) -> None:
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (c,), (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        group_norm(f"{name}.norm1", c_in), conv(f"{name}.conv1", c_in, c_out, 3)
        group_norm(f"{name}.norm2", c_out), conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_in, c_out, 1)

    def attention(name: str, c: int) -> None:
        group_norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def middle(prefix: str, c: int) -> None:
        resnet(f"{prefix}.mid.0", c, c), attention(f"{prefix}.mid.1", c), resnet(f"{prefix}.mid.2", c, c)

    n, ch = len(cfg.ch_mult), cfg.ch
    conv("encoder.conv_in", cfg.channels, ch, 3)
    width = ch
    for i, mult in enumerate(cfg.ch_mult):
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.conv_blocks.{i}.res.{j}", width, ch * mult)
            width = ch * mult
            if i == n - 1:
                attention(f"encoder.conv_blocks.{i}.attn.{j}", width)
        if i < n - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", width, width, 3)
    middle("encoder", width)
    group_norm("encoder.norm_out", width), conv("encoder.conv_out", width, cfg.z_channels, 3)

    width = ch * cfg.ch_mult[-1]
    conv("decoder.conv_in", cfg.z_channels, width, 3)
    middle("decoder", width)
    for index, level in enumerate(reversed(range(n))):
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.conv_blocks.{index}.res.{j}", width, ch * cfg.ch_mult[level])
            width = ch * cfg.ch_mult[level]
            if level == n - 1:
                attention(f"decoder.conv_blocks.{index}.attn.{j}", width)
        if level > 0:
            conv(f"decoder.conv_blocks.{index}.upsample.conv", width, width, 3)
    group_norm("decoder.norm_out", width), conv("decoder.conv_out", width, cfg.channels, 3)

    keys["quantize.embedding.weight"] = (cfg.codebook_size, cfg.code_dim)
    keys["quantize.codebook_used"] = (65536,)  # LlamaGen's codebook-usage ring buffer (codebook_show_usage)
    conv("quant_conv", cfg.z_channels, cfg.code_dim, 1)
    conv("post_quant_conv", cfg.code_dim, cfg.z_channels, 1)
    return keys


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], **extra: object) -> Path:
    torch.save({"model": state, **extra}, path)
    return path


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in llamagen_layout(SMALL).items()}


def test_the_real_layout_has_vq16s_parameter_count() -> None:
    """VQ-16 (16384 x 8 codes, ds16): 71,883,403 parameters, LlamaGen's "72M" tokenizer."""
    layout = llamagen_layout(LlamaGenConfig())
    assert sum(torch.Size(s).numel() for k, s in layout.items() if k != "quantize.codebook_used") == 71_883_403
    assert {k: tuple(v.shape) for k, v in LlamaGenVQ(SMALL).state_dict().items()} == \
        {k: s for k, s in llamagen_layout(SMALL).items() if k != "quantize.codebook_used"}


def test_a_llamagen_checkpoint_loads_encodes_and_decodes(tmp_path: Path, small_state: dict[str, torch.Tensor]) -> None:
    path = write_checkpoint(tmp_path / "vq_ds16_c2i.pt", small_state, steps=1000, args=argparse.Namespace(codebook_size=64))
    tokenizer = load_llamagen(path, image_size=32)
    assert (tokenizer.grid, tokenizer.codebook_size, tokenizer.channels) == ((2, 2), 64, 3)
    assert tokenizer.model.cfg == SMALL and tokenizer.name == "llamagen-vq-ds16-64x8"
    images = torch.rand(3, 3, 32, 32)
    codes = tokenizer.encode(images)
    assert codes.shape == (3, 2, 2) and codes.dtype == torch.int64
    # the lookup is by cosine: the code whose l2-normalised vector is nearest the normalised encoder output
    model = tokenizer.model
    with torch.no_grad():
        z = F.normalize(model.quant_conv(model.encoder(images * 2 - 1)).permute(0, 2, 3, 1), dim=-1)
        book = F.normalize(small_state["quantize.embedding.weight"], dim=-1)
        expected = torch.cdist(z.reshape(-1, 8), book).argmin(-1).reshape(3, 2, 2)
    assert torch.equal(codes, expected)
    decoded = tokenizer.decode(codes)
    assert decoded.shape == (3, 3, 32, 32) and 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    assert torch.equal(model.encoder.conv_in.weight, small_state["encoder.conv_in.weight"])
    assert len(tokenizer.sha256) == 64


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("decoder.conv_out.bias"), "missing: decoder.conv_out.bias"),
    (lambda s: s.update({"encoder.extra.weight": torch.zeros(1)}), "unexpected: encoder.extra.weight"),
    (lambda s: s.update({"quant_conv.weight": torch.zeros(4, 32, 1, 1)}), r"shape: quant_conv.weight \(4, 32, 1, 1\)"),
])
def test_load_is_strict(tmp_path: Path, small_state: dict[str, torch.Tensor], change: object, message: str) -> None:
    state = dict(small_state)
    change(state)  # type: ignore[operator]
    path = write_checkpoint(tmp_path / "vq.pt", state)
    with pytest.raises(CofreError, match=message):
        load_llamagen(path, image_size=32)


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path: Path, small_state: dict[str, torch.Tensor]) -> None:
    torch.save({"model": small_state, "payload": PurePosixPath("x")}, tmp_path / "pickled.pt")  # a class: not allowed
    with pytest.raises(CofreError, match="refused, it holds objects other than tensors"):
        load_llamagen(tmp_path / "pickled.pt", image_size=32)
    torch.save({"state_dict": small_state}, tmp_path / "other.pt")
    with pytest.raises(CofreError, match="no 'model' state dict"):
        load_llamagen(tmp_path / "other.pt", image_size=32)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CofreError, match="not a readable torch checkpoint"):
        load_llamagen(tmp_path / "junk.pt", image_size=32)


def test_tokenizer_specs_that_are_not_tokenizers(tmp_path: Path, tiny_recipe: Path) -> None:
    from cofre.config import load_recipe
    from cofre.training.loop import train

    (tmp_path / "file.txt").write_text("x")
    cases = [("", "no image tokenizer given"), (str(tmp_path / "nope"), "is neither a cofre VQ run"),
             (str(tmp_path / "file.txt"), "is neither a cofre VQ run"), ("llamagen:/no/such.pt", "no such LlamaGen VQ checkpoint"),
             (str(tmp_path), "neither a checkpoint folder")]
    for spec, message in cases:
        with pytest.raises(CofreError, match=message):
            load_tokenizer(spec, image_size=28)
    train(load_recipe(tiny_recipe, ["trainer.max_steps=1", "trainer.ckpt_every=1"]), tmp_path / "text-run")
    with pytest.raises(CofreError, match="is a denoiser .* run, not a VQ image tokenizer run"):
        load_tokenizer(str(tmp_path / "text-run"), image_size=28)


# Other members of the family: VQ-8 (ds8, four levels), another codebook and code width, three ResNet blocks a level.
OTHERS = [LlamaGenConfig(codebook_size=32, code_dim=4, ch=32, ch_mult=(1, 2, 2, 4), z_channels=32, num_res_blocks=2),
          LlamaGenConfig(codebook_size=100, code_dim=16, ch=64, ch_mult=(1, 2, 2), z_channels=64, num_res_blocks=3)]


@pytest.mark.parametrize("cfg", OTHERS, ids=["ds8-32x4", "ds4-100x16"])
def test_sizes_are_read_from_the_state_dict_and_the_image_size_from_the_recipe(tmp_path: Path, cfg: LlamaGenConfig) -> None:
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in llamagen_layout(cfg).items()}
    path = write_checkpoint(tmp_path / "vq.pt", state)
    for image_size in (16, 24):  # the grid follows the recipe's data.image_size: side / down-sampling
        tokenizer = load_tokenizer(f"llamagen:{path}", image_size=image_size)
        side = image_size // cfg.downsample
        assert tokenizer.model.cfg == cfg and (tokenizer.grid, tokenizer.codebook_size) == ((side, side), cfg.codebook_size)
        codes = tokenizer.encode(torch.rand(2, 3, image_size, image_size))
        assert codes.shape == (2, side, side) and int(codes.max()) < cfg.codebook_size
        assert tokenizer.decode(codes).shape == (2, 3, image_size, image_size)
    with pytest.raises(CofreError, match=f"image size 18 is not a multiple of the tokenizer's down-sampling {cfg.downsample}"):
        load_tokenizer(f"llamagen:{path}", image_size=18)


def test_a_state_dict_of_another_layout_is_named(tmp_path: Path, small_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in small_state.items() if not k.startswith("encoder.conv_blocks.2")}  # a level missing
    with pytest.raises(CofreError, match=r"encoder levels \(encoder.conv_blocks.\*\) do not follow"):
        load_llamagen(write_checkpoint(tmp_path / "gap.pt", state), image_size=32)
    state = {k: v for k, v in small_state.items() if not k.startswith("quantize")}
    with pytest.raises(CofreError, match="not a LlamaGen VQ checkpoint \\(no quantize.embedding.weight\\)"):
        load_llamagen(write_checkpoint(tmp_path / "nobook.pt", state), image_size=32)
