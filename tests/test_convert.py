"""`cofre convert`: reading MDLM's release layouts, the layer map of App. C.3.2, and safe loading."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cofre.config import ModelConfig, Recipe, load_recipe
from cofre.convert import (
    LayerMap,
    convert,
    convert_checkpoint,
    infer_model_config,
    load_source,
    parse_layer_map,
    read_source_state,
    target_config,
)
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.summary import summarize
from cofre.training.checkpoint import load_model, publish_checkpoint, staging_dir, write_checkpoint_files

REPO = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(vocab_size=50258, hidden=32, heads=4, cond_dim=16, dropout=0.0, K_pre=12, K_fp=0, K_post=0)


def random_model(cfg: ModelConfig, seed: int) -> Denoiser:
    """A plain denoiser whose adaLN and head (zero at init) are non-zero too."""
    torch.manual_seed(seed)
    model = Denoiser(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


# MDLM's DIT (kuleshov-group/mdlm models/dit.py), written out independently of cofre.convert: the
# backbone's parameters in named_parameters() order, which is also the order of EMA `shadow_params`.
MDLM_BLOCK = ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
              "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias"]


def mdlm_parameter_names(n_blocks: int) -> list[tuple[str, str]]:
    """(MDLM name, cofre name) pairs."""
    names = [("vocab_embed.embedding", "vocab_embed.weight")]
    names += [(f"sigma_map.mlp.{i}.{w}", f"sigma_map.mlp.{i}.{w}") for i in (0, 2) for w in ("weight", "bias")]
    names += [(f"blocks.{n}.{k}", f"pre.{n}.{k}") for n in range(n_blocks) for k in MDLM_BLOCK]
    names += [(f"output_layer.{k}", f"output_layer.{k}") for k in
              ("norm_final.weight", "linear.weight", "linear.bias", "adaLN_modulation.weight", "adaLN_modulation.bias")]
    return names


def mdlm_state(model: Denoiser, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The model's weights as MDLM's DIT state dict (with its persistent rotary buffer)."""
    ours = model.state_dict()
    names = mdlm_parameter_names(model.cfg.K_pre)
    assert len(names) == len(ours)
    head_dim = model.cfg.hidden // model.cfg.heads
    state = {prefix + mdlm: ours[cofre].clone() for mdlm, cofre in names[:5]}
    state[prefix + "rotary_emb.inv_freq"] = 1.0 / 10_000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    state.update({prefix + mdlm: ours[cofre].clone() for mdlm, cofre in names[5:]})
    return state


def lightning_ckpt(path: Path, model: Denoiser, ema_model: Denoiser | None, extra: dict | None = None) -> Path:
    """A Lightning-like MDLM checkpoint holding only tensors, lists and dicts."""
    ckpt = {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": mdlm_state(model),
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 3e-4}]}],
        **(extra or {}),
    }
    if ema_model is not None:
        ema_params = ema_model.state_dict()
        ckpt["ema"] = {
            "decay": 0.9999,
            "num_updates": 1000,
            "shadow_params": [ema_params[cofre].clone() for _, cofre in mdlm_parameter_names(ema_model.cfg.K_pre)],
        }
    torch.save(ckpt, path)
    return path


def logits(model: Denoiser) -> torch.Tensor:
    torch.manual_seed(123)
    z, sigma = torch.randint(0, model.cfg.vocab_size, (2, 9)), torch.rand(2)
    with torch.no_grad():
        return model(z, sigma, n_nograd=2).logits


def test_identity_map_reproduces_the_mdlm_source_from_every_format(tmp_path: Path) -> None:
    source, ema_source = random_model(SMALL, 0), random_model(SMALL, 1)
    ckpt = lightning_ckpt(tmp_path / "mdlm.ckpt", source, ema_source)
    export = tmp_path / "hf"
    export.mkdir()
    save_file(mdlm_state(ema_source), str(export / "model.safetensors"))
    (export / "config.json").write_text(json.dumps({"model_type": "mdlm", "n_heads": 4, "model_length": 64}))
    bare = tmp_path / "bare.safetensors"
    save_file(mdlm_state(source, prefix=""), str(bare))

    cases = [(ckpt, True, ema_source, "EMA"), (ckpt, False, source, "model weights"), (export, True, ema_source, "backbone"),
             (bare, True, source, "bare DiT keys")]
    for path, ema, reference, described in cases:
        report = convert_checkpoint(path, "all", tmp_path / f"out-{path.stem}-{ema}", ema=ema)
        assert described in report.format
        converted, recipe = load_model(report.out)
        assert recipe.model.K_pre == 12 and recipe.model.K_fp == 0 and recipe.model.heads == 4
        assert recipe.data.corpus == "openwebtext" and recipe.data.packing == "wrap"  # an MDLM release's corpus
        assert torch.allclose(logits(converted.eval()), logits(reference), atol=1e-5, rtol=0), path
        assert report.params_source == report.params_target == sum(p.numel() for p in source.parameters())
    assert load_model(tmp_path / "out-hf-True")[1].model.max_seq_len == 64  # from the export's config.json
    record = json.loads((tmp_path / "out-mdlm-True" / "conversion.json").read_text())
    assert record["layer_map"] == "1+2+3+4+5+6+7+8+9+10+11+12" and record["format"].startswith("MDLM Lightning")


def test_mdlm_head_count_comes_from_the_rotary_buffer_and_conflicts_are_refused(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=50258, hidden=48, heads=2, cond_dim=16, dropout=0.0, K_pre=2)
    ckpt = lightning_ckpt(tmp_path / "mdlm.ckpt", random_model(cfg, 0), None)
    assert load_source(ckpt).config.heads == 2  # 12 (the default) also divides 48: shapes alone cannot tell
    with pytest.raises(CofreError, match="contradicts"):
        load_source(ckpt, heads=12)


def test_paper_map_copies_layers_1_6_12_with_identity_like_fp_projections(tmp_path: Path) -> None:
    source = random_model(SMALL, 0)
    state, description = read_source_state(lightning_ckpt(tmp_path / "mdlm.ckpt", source, None))
    assert "MDLM Lightning" in description
    target, cfg, lines = convert(state, infer_model_config(state, heads=4), parse_layer_map("1,6,12", 12))
    assert (cfg.K_pre, cfg.K_fp, cfg.K_post) == (1, 1, 1) and cfg.injection == "linear"
    ours = source.state_dict()
    block_keys = {k.split(".", 2)[2] for k in ours if k.startswith("pre.")}
    for key in block_keys:
        assert torch.equal(target[f"pre.0.{key}"], ours[f"pre.0.{key}"])
        assert torch.equal(target[f"fixed_point.blocks.0.{key}"], ours[f"pre.5.{key}"])
        assert torch.equal(target[f"post.0.{key}"], ours[f"pre.11.{key}"])
    for key in ("vocab_embed.weight", "sigma_map.mlp.2.weight", "output_layer.linear.weight"):
        assert torch.equal(target[key], ours[key])
    eye, hidden = torch.eye(32), 32
    assert torch.equal(target["injection.weight"], eye) and not target["injection.bias"].any()
    half = torch.cat([0.5 * eye, 0.5 * eye], dim=1)  # FPDM's fc1 = [u; -u], fc2 = [I, -I]: (h + h~)/2 exactly
    assert cfg.injection_mlp == "fpdm" and torch.equal(target["fixed_point.mix.weight"], torch.cat([half, -half]))
    assert torch.equal(target["fixed_point.mix_out.weight"], torch.cat([eye, -eye], dim=1))
    assert not target["fixed_point.mix.bias"].any() and not target["fixed_point.mix_out.bias"].any()
    assert lines[:3] == ["source layer 1 -> pre.0", "source layer 6 -> fixed_point.blocks.0 (shared, iterated)",
                         "source layer 12 -> post.0"]
    assert "source layers 2-5, 7-11 -> dropped" in lines

    # At the fixed point h = h_pre, G = I and FPDM's mix return h: one iteration equals pre -> layer 6 -> post.
    model = Denoiser(cfg).eval()
    model.load_state_dict(target)
    z, sigma = torch.randint(0, 41, (2, 7)), torch.zeros(2)
    with torch.no_grad():
        cond = source.conditioning(sigma, 7)
        h = source.pre[5](source.pre[0](source.vocab_embed(z), cond.c, cond.rope), cond.c, cond.rope)
        expected = source.head(source.pre[11](h, cond.c, cond.rope), cond)
        assert torch.allclose(model(z, sigma, n_grad=1).logits, expected, atol=1e-5, rtol=0)


def test_multi_block_parts_and_plain_subsets() -> None:
    assert parse_layer_map("1+2,6,11+12", 12) == LayerMap(pre=[1, 2], fp=[6], post=[11, 12])
    assert parse_layer_map(" all ", 3) == LayerMap(pre=[1, 2, 3], fp=[], post=[])
    assert parse_layer_map("1+2+3", 3) == LayerMap(pre=[1, 2, 3], fp=[], post=[])
    assert str(parse_layer_map("1+2,6,11+12", 12)) == "1+2,6,11+12"
    source = random_model(SMALL, 2)
    target, cfg, _ = convert(source.state_dict(), SMALL, parse_layer_map("1+2,6+7,12", 12))
    assert (cfg.K_pre, cfg.K_fp, cfg.K_post) == (2, 2, 1)
    assert torch.equal(target["fixed_point.blocks.1.attn_qkv.weight"], source.state_dict()["pre.6.attn_qkv.weight"])
    assert torch.equal(target["pre.1.mlp.0.bias"], source.state_dict()["pre.1.mlp.0.bias"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,6,13", r"layer 13 is out of range; the source has layers 1\.\.12"),
        ("0,6,12", r"layer 0 is out of range"),
        ("1,,12", r"the fp field is empty"),
        ("1+,6,12", r"the pre field is empty or has an empty entry"),
        ("1,6", r"has 2 fields; expected PRE,FP,POST"),
        ("1,2,3,4", r"has 4 fields"),
        ("1,six,12", r"'six' is not a layer number"),
        ("1,6.5,12", r"'6.5' is not a layer number"),
        ("", r"empty"),
    ],
)
def test_bad_maps_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(CofreError, match=message) as err:
        parse_layer_map(text, 12)
    assert "\n" not in str(err.value)


def test_paper_scale_conversion_is_the_104m_fp_mdlm_recipe() -> None:
    with torch.device("meta"):  # shapes only: the paper's 12-layer MDLM (169.6M parameters)
        state = Denoiser(ModelConfig(K_pre=12)).state_dict()
    cfg = infer_model_config(state)
    assert cfg == ModelConfig()  # vocab 50258, hidden 768, cond 128, MLP x4, 12 layers (heads: the default 12)
    target = target_config(cfg, parse_layer_map("1,6,12", 12))
    assert target == load_recipe(REPO / "recipes" / "owt-fp-mdlm.yaml").model
    params = summarize(target, 8).total_params
    assert abs(params - 104e6) / 104e6 < 0.01 and abs(summarize(cfg, 8).total_params - 170e6) / 170e6 < 0.01


def test_cofre_run_as_source_keeps_its_recipe_and_refuses_fp_models(tmp_path: Path) -> None:
    plain = ModelConfig(vocab_size=50258, hidden=32, heads=4, cond_dim=16, dropout=0.0, K_pre=2, K_fp=0, K_post=1)
    recipe = Recipe(name="plain", model=plain)  # K_fp = 0: post runs right after pre, one stack of 3 layers
    recipe.optim.lr = 1e-4
    model, ema_model = random_model(recipe.model, 0), random_model(recipe.model, 1)
    checkpoints = tmp_path / "run" / "checkpoints"
    write_checkpoint_files(staging_dir(checkpoints, 7), model, ema_model.state_dict(), recipe, {})
    publish_checkpoint(checkpoints, 7, 1)
    report = convert_checkpoint(tmp_path / "run", "1,2,3", tmp_path / "fp")
    converted, new_recipe = load_model(report.checkpoint)
    assert "EMA" in report.format and new_recipe.optim.lr == 1e-4 and new_recipe.model.K_fp == 1
    converted_state, ema_state = converted.state_dict(), ema_model.state_dict()
    assert torch.equal(converted_state["fixed_point.blocks.0.norm1.weight"], ema_state["pre.1.norm1.weight"])
    assert torch.equal(converted_state["post.0.attn_qkv.weight"], ema_state["post.0.attn_qkv.weight"])
    with pytest.raises(CofreError, match="already a fixed-point model"):
        convert_checkpoint(tmp_path / "fp", "1,2,3", tmp_path / "again")
    with pytest.raises(CofreError, match="not an empty directory"):
        convert_checkpoint(tmp_path / "run", "all", tmp_path / "fp")


class Payload:
    """Stands for a pickled object in a foreign checkpoint; unpickling it for real would call `leave_mark`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (leave_mark, (self.marker,))


def leave_mark(path: str) -> None:
    Path(path).write_text("executed")


class ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_pickled_objects_are_never_executed(tmp_path: Path) -> None:
    source = random_model(SMALL, 0)
    marker = tmp_path / "marker"
    # MDLM's real .ckpt pickles its hyper-parameters (an OmegaConf config, a tokenizer): they are read as
    # inert stand-ins, never run, and the weights still convert.
    ckpt = lightning_ckpt(tmp_path / "hparams.ckpt", source, None, {"hyper_parameters": {"config": Payload(marker)}})
    with pytest.raises(Exception):  # what a plain weights_only load does with it
        torch.load(ckpt, weights_only=True)
    state, _ = read_source_state(ckpt)
    assert torch.equal(state["pre.3.attn_qkv.weight"], source.state_dict()["pre.3.attn_qkv.weight"])
    assert not marker.exists()

    # A payload calling into os (blocked by torch's restricted unpickler) is refused, with one line.
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": mdlm_state(source), "hyper_parameters": ShellPayload(marker)}, evil)
    with pytest.raises(CofreError, match=r"pickled Python objects that cofre will not execute \(posix\.system") as err:
        read_source_state(evil)
    assert "\n" not in str(err.value) and not marker.exists()

    # Weights that are themselves opaque objects are refused too.
    opaque = tmp_path / "opaque.ckpt"
    torch.save({"state_dict": {"backbone.vocab_embed.embedding": Payload(marker)}}, opaque)
    with pytest.raises(CofreError, match="not a tensor"):
        read_source_state(opaque)
    assert not marker.exists()


def test_unreadable_and_mismatched_sources_are_one_line_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CofreError, match="cannot read"):
        read_source_state(garbage)
    with pytest.raises(CofreError, match="not found"):
        read_source_state(tmp_path / "missing.ckpt")
    state = mdlm_state(random_model(SMALL, 0))
    state["backbone.blocks.0.attn.qkv.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CofreError, match=re.escape("unexpected key 'blocks.0.attn.qkv.weight'")):
        read_source_state(tmp_path / "odd.safetensors")
    state = mdlm_state(random_model(SMALL, 0))
    del state["backbone.blocks.4.mlp.2.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CofreError, match="missing 'pre.4.mlp.2.bias'"):
        load_source(tmp_path / "partial.safetensors")
    ckpt = tmp_path / "short-ema.ckpt"
    source = random_model(SMALL, 0)
    torch.save({"state_dict": mdlm_state(source), "ema": {"shadow_params": [p for p in source.parameters()][:-1]}}, ckpt)
    with pytest.raises(CofreError, match="do not line up"):
        read_source_state(ckpt)


def test_map_typos_fail_before_the_source_is_read_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(CofreError, match="'x' is not a layer number"):
        convert_checkpoint(tmp_path / "missing.ckpt", "1,x,12", tmp_path / "out")
    ckpt = lightning_ckpt(tmp_path / "mdlm.ckpt", random_model(SMALL, 0), None)
    with pytest.raises(CofreError, match="out of range"):
        convert_checkpoint(ckpt, "1,6,13", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_default_output_names_the_source() -> None:
    from cofre.convert import default_output

    assert default_output(Path("downloads/mdlm.ckpt")) == Path("runs/mdlm-fp")  # a file that need not exist yet
    run = Path("runs/tiny-mdlm")
    assert default_output(run) == Path("runs/tiny-mdlm-fp")
    assert default_output(run / "checkpoints" / "step-000000160") == Path("runs/tiny-mdlm-fp")


def test_a_release_whose_head_is_not_gpt2s_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """An MDLM release with another vocabulary (LM1B's BERT ids) cannot be decoded by cofre: one error, no run folder."""
    other = ModelConfig(vocab_size=41, hidden=32, heads=4, cond_dim=16, dropout=0.0, K_pre=2)
    ckpt = lightning_ckpt(tmp_path / "lm1b.ckpt", random_model(other, 0), None)
    with pytest.raises(CofreError, match="50257 ids"):
        convert_checkpoint(ckpt, "1,2,2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
