"""`cofre convert` (§3.4, App. C.3.2): turn a pretrained MDLM into an FP-MDLM by mapping its layers.

Selected source layers initialise the pre-stack P, the shared fixed-point block F and the post-stack H;
embeddings, the sigma map and the output layer are copied as they are; the FP-specific projections (G and
F's mix) start close to identity (§3.4): G = I and F's mix returns h where h = h̃. Sources: a cofre checkpoint or run,
MDLM's Lightning `.ckpt` (read with `torch.load(weights_only=True)`: nothing in it is ever executed), or a
safetensors export of MDLM's DiT.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from cofre.config import MAX_HEADS, DataConfig, ModelConfig, Recipe, recipe_from_dict, recipe_to_dict
from cofre.checks import check_range
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.runs import atomic_write_text
from cofre.training.checkpoint import (
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    publish_checkpoint,
    resolve_checkpoint,
    run_root,
    staging_dir,
    write_checkpoint_files,
)

# MDLM's DiT (kuleshov-group/mdlm, models/dit.py) names everything as cofre does, except these.
BLOCK_KEYS = (  # DDiTBlock's parameters, in its registration (= named_parameters) order
    "norm1.weight",
    "attn_qkv.weight",
    "attn_out.weight",
    "norm2.weight",
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.2.weight",
    "mlp.2.bias",
    "adaLN_modulation.weight",
    "adaLN_modulation.bias",
)
SHARED_KEYS = (  # copied unchanged between source and target (cofre names)
    "vocab_embed.weight",
    "sigma_map.mlp.0.weight",
    "sigma_map.mlp.0.bias",
    "sigma_map.mlp.2.weight",
    "sigma_map.mlp.2.bias",
    "output_layer.norm_final.weight",
    "output_layer.linear.weight",
    "output_layer.linear.bias",
    "output_layer.adaLN_modulation.weight",
    "output_layer.adaLN_modulation.bias",
)
FP_KEYS = ("injection.weight", "injection.bias", "fixed_point.mix.weight", "fixed_point.mix.bias",
           "fixed_point.mix_out.weight", "fixed_point.mix_out.bias")
MDLM_ROTARY_KEY = "rotary_emb.inv_freq"  # a persistent buffer in MDLM, recomputed (not stored) by cofre
ROTARY_BASE = 10_000.0


# -- reading a source ---------------------------------------------------------------------------------
@dataclass
class SourceModel:
    """A plain (K_fp = 0) denoiser's weights in cofre's key layout, and what is known about it."""

    state: dict[str, Tensor]
    format: str  # a description of what was read, for the user
    config: ModelConfig
    recipe: Recipe | None  # the training recipe, when the source is a cofre checkpoint


@dataclass
class _Hints:
    """What a source says about the config beyond its tensor shapes."""

    heads: int | None = None
    heads_from: str = ""
    max_seq_len: int = 1024
    time_conditioning: bool = False
    recipe: Recipe | None = None


def _mdlm_to_cofre_key(key: str) -> str | None:
    """One MDLM DiT key (without `backbone.`) in cofre's layout; None for MDLM's rotary buffer."""
    if key == MDLM_ROTARY_KEY:
        return None
    if key == "vocab_embed.embedding":
        return "vocab_embed.weight"
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match and match.group(2) in BLOCK_KEYS:
        return f"pre.{match.group(1)}.{match.group(2)}"
    if key in SHARED_KEYS:
        return key
    raise CofreError(f"unexpected key '{key}': not a parameter of MDLM's DiT backbone")


def _cofre_to_mdlm_key(key: str) -> str:
    if key == "vocab_embed.weight":
        return "vocab_embed.embedding"
    match = re.fullmatch(r"pre\.(\d+)\.(.+)", key)
    return f"blocks.{match.group(1)}.{match.group(2)}" if match else key


def _from_mdlm(state: dict[str, Any], hints: _Hints) -> dict[str, Tensor]:
    """Rename bare MDLM DiT keys to cofre's; the rotary buffer gives the head dimension."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CofreError(f"'{key}' holds a {type(value).__name__}, not a tensor")
        new = _mdlm_to_cofre_key(key)
        if new is None:
            _heads_from_rotary(value, state, hints)
        else:
            out[new] = value
    return out


def _heads_from_rotary(inv_freq: Tensor, state: dict[str, Any], hints: _Hints) -> None:
    """MDLM stores inv_freq = base^(-2i/d) for the head dimension d: it fixes the head count."""
    head_dim = 2 * inv_freq.numel()
    expected = 1.0 / ROTARY_BASE ** (torch.arange(0, head_dim, 2).double() / head_dim)
    if not torch.allclose(inv_freq.double().cpu(), expected, rtol=1e-4):
        raise CofreError(f"the source's rotary embedding does not use base {ROTARY_BASE:g}, which cofre assumes")
    embed = state.get("vocab_embed.embedding")
    if embed is not None and embed.shape[1] % head_dim == 0:
        hints.heads, hints.heads_from = embed.shape[1] // head_dim, "the rotary embedding's head dimension"


def _from_cofre_layout(state: dict[str, Tensor], cfg: ModelConfig | None) -> dict[str, Tensor]:
    """Put a plain cofre model's blocks in one stack `pre.N` (a K_fp = 0 model runs pre then post)."""
    if any(k.startswith(("fixed_point.", "injection.")) for k in state):
        k_fp = cfg.K_fp if cfg is not None else "> 0"
        raise CofreError(f"the source is already a fixed-point model (K_fp={k_fp}); convert takes a plain MDLM")
    n_pre = len({k.split(".")[1] for k in state if k.startswith("pre.")})
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"post\.(\d+)\.(.+)", key)
        out[f"pre.{n_pre + int(match.group(1))}.{match.group(2)}" if match else key] = value
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CofreError(f"cannot read {path}: {err}") from None
    return data if isinstance(data, dict) else {}


def _is_cofre_config(path: Path) -> bool:
    return path.is_file() and isinstance(_read_json(path).get("model"), dict)


def _read_cofre_checkpoint(path: Path, ema: bool, hints: _Hints) -> tuple[dict[str, Tensor], str]:
    folder = resolve_checkpoint(path)
    recipe = recipe_from_dict(_read_json(folder / CONFIG_FILE))
    use_ema = ema and (folder / EMA_FILE).is_file()
    state = _load_safetensors(folder / (EMA_FILE if use_ema else MODEL_FILE))
    hints.heads, hints.heads_from, hints.recipe = recipe.model.heads, "the checkpoint's config.json", recipe
    hints.max_seq_len, hints.time_conditioning = recipe.model.max_seq_len, recipe.model.time_conditioning
    if recipe.model.modality != "text":
        raise CofreError(f"{folder} is an {recipe.model.modality} model; convert takes a plain MDLM (text)")
    if recipe.model.is_fixed_point:
        raise CofreError(f"{folder} is already a fixed-point model (K_fp={recipe.model.K_fp}); convert takes a plain MDLM")
    weights = "EMA weights" if use_ema else ("model weights; no EMA saved" if ema else "model weights")
    return _from_cofre_layout(state, recipe.model), f"cofre checkpoint {folder.name} ({weights})"


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CofreError(f"cannot read {path} as safetensors: {err}") from None


def _read_hf_config(path: Path, hints: _Hints) -> None:
    """The Hugging Face export of MDLM (kuleshov-group/mdlm-owt) writes n_heads, model_length, time_conditioning."""
    if not path.is_file():
        return
    config = _read_json(path)
    if isinstance(config.get("n_heads"), int):
        hints.heads, hints.heads_from = config["n_heads"], f"{path.name}'s n_heads"
    if isinstance(config.get("model_length"), int):
        hints.max_seq_len = config["model_length"]
    if isinstance(config.get("time_conditioning"), bool):
        hints.time_conditioning = config["time_conditioning"]


def _read_safetensors_export(path: Path, hints: _Hints) -> tuple[dict[str, Tensor], str]:
    state = _load_safetensors(path)
    if "vocab_embed.weight" in state:  # a cofre model.safetensors on its own
        return _from_cofre_layout(state, None), f"safetensors in cofre's layout ({path.name})"
    prefixed = any(k.startswith("backbone.") for k in state)
    if prefixed:
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    _read_hf_config(path.parent / CONFIG_FILE, hints)
    layout = "backbone.-prefixed" if prefixed else "bare DiT keys"
    return _from_mdlm(state, hints), f"MDLM safetensors export ({path.name}, {layout})"


class _Opaque:
    """Stands in for a pickled class or function that is not allowlisted: built from its arguments and
    state without running any of the original code (weights_only never imports it)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _torch_load(path: Path) -> Any:
    """`torch.load(weights_only=True)`; pickled objects other than tensors and containers (a Lightning
    checkpoint's hyper-parameters: an OmegaConf config, a tokenizer) come back as inert `_Opaque` stand-ins."""
    mmap = zipfile.is_zipfile(path)  # a large checkpoint is not read into memory whole
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # the restricted unpickler refused something: see below
        first_error: Exception = err
    except Exception as err:  # noqa: BLE001 - not a torch.save file at all
        raise CofreError(f"cannot read {path} as a checkpoint: {type(err).__name__}: {err}") from None
    unsafe: list[str] = []
    if mmap:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - a static scan only; the load below decides
            unsafe = []
    if unsafe:
        stand_ins = [(type(f"_Opaque_{i}", (_Opaque,), {}), name) for i, name in enumerate(unsafe)]
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # noqa: BLE001
            first_error = err
    if not unsafe:
        reason = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", str(first_error), re.S)
        detail = " ".join((reason.group(1) if reason else str(first_error)).split())
        raise CofreError(f"cannot read {path} as a checkpoint with torch.load(weights_only=True): {detail[:200]}")
    raise CofreError(
        f"{path} holds pickled Python objects that cofre will not execute ({', '.join(sorted(unsafe)[:3])}); "
        "re-save its 'state_dict' (and 'ema') with torch.save where you trust the file, or use a safetensors export"
    )


def _ordered_mdlm_parameters(state: dict[str, Tensor]) -> list[str]:
    """MDLM's backbone parameter names in `named_parameters()` order, which cofre's plain Denoiser shares."""
    n_layers = len({k.split(".")[1] for k in state if k.startswith("pre.")})
    return [*SHARED_KEYS[:5], *(f"pre.{i}.{k}" for i in range(n_layers) for k in BLOCK_KEYS), *SHARED_KEYS[5:]]


def _apply_mdlm_ema(state: dict[str, Tensor], ema_state: Any, path: Path) -> dict[str, Tensor]:
    """MDLM's ExponentialMovingAverage saves `shadow_params`: a list aligned with the backbone's parameters
    (then the noise schedule's; the log-linear schedule has none)."""
    shadow = ema_state.get("shadow_params") if isinstance(ema_state, dict) else None
    names = _ordered_mdlm_parameters(state)
    if not isinstance(shadow, list) or len(shadow) != len(names):
        got = len(shadow) if isinstance(shadow, list) else type(shadow).__name__
        raise CofreError(f"{path}: 'ema' shadow_params ({got}) do not line up with the {len(names)} backbone parameters")
    out = dict(state)
    for name, value in zip(names, shadow):
        if not isinstance(value, Tensor) or value.shape != state[name].shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CofreError(
                f"{path}: EMA parameter for '{_cofre_to_mdlm_key(name)}' has shape {shape}, expected {tuple(state[name].shape)}"
            )
        out[name] = value
    return out


def _read_torch_file(path: Path, ema: bool, hints: _Hints) -> tuple[dict[str, Tensor], str]:
    """MDLM's Lightning checkpoint ({"state_dict": backbone.* keys, "ema": {...}}), or a bare state dict."""
    loaded = _torch_load(path)
    if not isinstance(loaded, dict):
        raise CofreError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dictionary")
    lightning = "state_dict" in loaded
    raw = loaded["state_dict"] if lightning else loaded
    if not isinstance(raw, dict) or not raw:
        raise CofreError(f"{path}: 'state_dict' holds no tensors")
    if any(k.startswith("backbone.") for k in raw):
        raw = {k[len("backbone.") :]: v for k, v in raw.items() if k.startswith("backbone.")}
    state = _from_mdlm(raw, hints) if "vocab_embed.weight" not in raw else _from_cofre_layout(raw, None)
    kind = "MDLM Lightning checkpoint" if lightning else "state dict"
    if not lightning or not ema:
        return state, f"{kind} ({path.name}, model weights)"
    if loaded.get("ema") is None:
        return state, f"{kind} ({path.name}, model weights; no EMA saved)"
    return _apply_mdlm_ema(state, loaded["ema"], path), f"{kind} ({path.name}, EMA weights)"


def _read(path: Path, ema: bool) -> tuple[dict[str, Tensor], str, _Hints]:
    hints = _Hints()
    if not path.exists():
        raise CofreError(f"source checkpoint not found: {path}")
    if path.is_dir():
        if (path / "checkpoints" / "latest").is_file() or _is_cofre_config(path / CONFIG_FILE):
            state, fmt = _read_cofre_checkpoint(path, ema, hints)
        elif (path / MODEL_FILE).is_file():
            state, fmt = _read_safetensors_export(path / MODEL_FILE, hints)
        else:
            raise CofreError(
                f"{path} holds no checkpoint: expected a cofre run or checkpoint folder, or a model.safetensors export"
            )
    elif path.suffix == ".safetensors":
        if path.parent.joinpath(CONFIG_FILE).is_file() and _is_cofre_config(path.parent / CONFIG_FILE):
            state, fmt = _read_cofre_checkpoint(path.parent, ema=path.name == EMA_FILE, hints=hints)
        else:
            state, fmt = _read_safetensors_export(path, hints)
    else:
        state, fmt = _read_torch_file(path, ema, hints)
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CofreError(f"{path}: '{key}' holds a {type(value).__name__}, not a tensor")
    return state, fmt, hints


def read_source_state(path: Path, ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """A plain denoiser's weights in cofre's layout (`pre.N.*`), and a description of the format found."""
    state, fmt, _ = _read(Path(path), ema)
    return state, fmt


def infer_model_config(
    state: dict[str, Tensor], heads: int = 12, max_seq_len: int = 1024, time_conditioning: bool = False
) -> ModelConfig:
    """A plain ModelConfig from the weight shapes; the head count is not in the shapes and is taken as given."""
    for key in ("vocab_embed.weight", "sigma_map.mlp.0.weight", "pre.0.mlp.0.weight"):
        if key not in state:
            raise CofreError(f"the source has no '{key}': not an MDLM DiT")
    vocab_size, hidden = state["vocab_embed.weight"].shape
    cond_dim, frequency_dim = state["sigma_map.mlp.0.weight"].shape
    if frequency_dim != 256:
        raise CofreError(f"the source's sigma map takes {frequency_dim} frequency features; cofre's uses 256")
    mlp_width = state["pre.0.mlp.0.weight"].shape[0]
    if mlp_width % hidden:
        raise CofreError(f"the source's MLP width {mlp_width} is not a multiple of its hidden size {hidden}")
    if hidden % heads:
        raise CofreError(f"hidden size {hidden} is not divisible by {heads} heads; pass the source's head count")
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("pre.")})
    if layers != list(range(len(layers))):
        raise CofreError(f"the source's layers are not numbered 0..{len(layers) - 1}: {layers}")
    return ModelConfig(
        vocab_size=vocab_size,
        hidden=hidden,
        heads=heads,
        cond_dim=cond_dim,
        mlp_ratio=mlp_width // hidden,
        max_seq_len=max_seq_len,
        K_pre=len(layers),
        K_fp=0,
        K_post=0,
        time_conditioning=time_conditioning,
    )


def _check_shapes(state: dict[str, Tensor], cfg: ModelConfig) -> None:
    """Every parameter of Denoiser(cfg) present with its shape, and nothing else."""
    with torch.device("meta"):
        expected = Denoiser(cfg).state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'"
        raise CofreError(f"the source does not match a {cfg.K_pre}-layer DiT: {what} ({len(missing) + len(extra)} keys differ)")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise CofreError(f"'{key}' has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}")


def load_source(path: Path, heads: int | None = None, ema: bool = True) -> SourceModel:
    """Read a source and settle its ModelConfig: `heads` as given, else as the source records it, else 12."""
    state, fmt, hints = _read(Path(path), ema)
    if heads is not None and hints.heads is not None and heads != hints.heads:
        raise CofreError(f"--heads {heads} contradicts the source: {hints.heads_from} gives {hints.heads} heads")
    n_heads = heads if heads is not None else (hints.heads if hints.heads is not None else ModelConfig.heads)
    cfg = infer_model_config(state, n_heads, hints.max_seq_len, hints.time_conditioning)
    if hints.recipe is not None:  # keep what a cofre checkpoint records beyond the shapes (dropout, ...)
        cfg = dataclasses.replace(hints.recipe.model, K_pre=cfg.K_pre, K_fp=0, K_post=0)
    _check_shapes(state, cfg)
    return SourceModel(state=state, format=fmt, config=cfg, recipe=hints.recipe)


# -- the layer map --------------------------------------------------------------------------------------
@dataclass
class LayerMap:
    """1-based source layers for P, F and H (App. C.3.2's choice for a 12-layer MDLM is 1, 6, 12)."""

    pre: list[int]
    fp: list[int]
    post: list[int]

    @property
    def is_plain(self) -> bool:
        return not self.fp

    def __str__(self) -> str:
        parts = [self.pre] if self.is_plain else [self.pre, self.fp, self.post]
        return ",".join("+".join(str(i) for i in part) for part in parts)


def parse_layer_map(text: str, n_source_layers: int | None) -> LayerMap:
    """`PRE,FP,POST`, each a `+`-joined list of 1-based layers (`1+2,6,11+12`); one field or `all`: a plain model.

    With `n_source_layers` None only the syntax is checked (and `all` stands for an empty list)."""
    text = text.strip()
    if text == "all":
        return LayerMap(pre=list(range(1, (n_source_layers or 0) + 1)), fp=[], post=[])
    fields = text.split(",")
    if len(fields) not in (1, 3):
        raise CofreError(
            f"layer map '{text}' has {len(fields)} fields; expected PRE,FP,POST (e.g. 1,6,12 or 1+2,6,11+12), "
            "or one field (1+2+...) or 'all' for a plain model"
        )
    names = ("pre", "fp", "post") if len(fields) == 3 else ("layers",)
    parts = []
    for name, field_text in zip(names, fields):
        items = field_text.split("+")
        if not field_text.strip() or any(not item.strip() for item in items):
            raise CofreError(f"layer map '{text}': the {name} field is empty or has an empty entry")
        layers = []
        for item in items:
            if not re.fullmatch(r"\s*\d+\s*", item):
                raise CofreError(f"layer map '{text}': '{item.strip()}' is not a layer number")
            layer = int(item)
            if layer < 1 or (n_source_layers is not None and layer > n_source_layers):
                valid = f"1..{n_source_layers}" if n_source_layers is not None else "from 1"
                raise CofreError(f"layer map '{text}': layer {layer} is out of range; the source has layers {valid}")
            layers.append(layer)
        parts.append(layers)
    if len(parts) == 1:
        return LayerMap(pre=parts[0], fp=[], post=[])
    return LayerMap(pre=parts[0], fp=parts[1], post=parts[2])


def target_config(source_cfg: ModelConfig, layer_map: LayerMap, injection: Literal["linear", "identity"] = "linear") -> ModelConfig:
    """The converted model's config: the source's widths with the mapped depths."""
    return dataclasses.replace(
        source_cfg, K_pre=len(layer_map.pre), K_fp=len(layer_map.fp), K_post=len(layer_map.post), injection=injection
    )


# -- conversion -------------------------------------------------------------------------------------------
def _spans(layers: list[int]) -> str:
    """1,2,3,5 -> '1-3, 5'."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][-1] + 1:
            spans[-1].append(layer)
        else:
            spans.append([layer])
    return ", ".join(str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}" for s in spans)


def convert_model(
    state: dict[str, Tensor],
    source_cfg: ModelConfig,
    layer_map: LayerMap,
    injection: Literal["linear", "identity"] = "linear",
) -> tuple[Denoiser, list[str]]:
    """The converted denoiser (App. C.3.2), and what went where: source layers into P, F, H; the rest copied."""
    if source_cfg.is_fixed_point:
        raise CofreError("the source is already a fixed-point model; convert takes a plain MDLM")
    n_source = source_cfg.K_pre
    for layer in layer_map.pre + layer_map.fp + layer_map.post:
        if not 1 <= layer <= n_source:
            raise CofreError(f"layer {layer} is out of range; the source has layers 1..{n_source}")
    cfg = target_config(source_cfg, layer_map, injection if layer_map.fp else "linear")
    target = Denoiser(cfg)  # G starts as the identity
    if target.fixed_point is not None:
        target.fixed_point.near_identity_()  # "FP-specific projections initialized close to identity" (§3.4)
    copied = {key: state[key] for key in SHARED_KEYS}
    lines = []
    parts = [("pre", layer_map.pre, ""), ("fixed_point.blocks", layer_map.fp, " (shared, iterated)"), ("post", layer_map.post, "")]
    for prefix, layers, note in parts:
        for i, layer in enumerate(layers):
            for key in BLOCK_KEYS:
                copied[f"{prefix}.{i}.{key}"] = state[f"pre.{layer - 1}.{key}"]
            lines.append(f"source layer {layer} -> {prefix}.{i}{note}")
    fresh = set(target.state_dict()) - set(copied)
    if not fresh <= set(FP_KEYS):  # Denoiser grew a parameter that conversion does not know about
        raise AssertionError(f"conversion would leave {sorted(fresh - set(FP_KEYS))} randomly initialised")
    target.load_state_dict(copied, strict=False)  # copies values (and checks shapes) into the model's own storage
    lines.append("embedding, sigma_map, output_layer -> copied")
    if target.injection is not None:
        lines.append("injection G -> new, identity (W = I, b = 0)")
    if target.fixed_point is not None:
        if target.fixed_point.mix_out is None:
            lines.append("fixed_point.mix -> new, [0.5 I, 0.5 I] (returns h where h = h~), b = 0")
        else:
            lines.append("fixed_point.mix, mix_out -> new, FPDM's fc1/fc2 giving (h + h~)/2 exactly "
                         "(fc1 = [[I, I], [-I, -I]]/2, fc2 = [I, -I], b = 0; returns h where h = h~)")
    unused = sorted(set(range(1, n_source + 1)) - set(layer_map.pre + layer_map.fp + layer_map.post))
    if unused:
        lines.append(f"source layers {_spans(unused)} -> dropped")
    return target, lines


def convert(
    state: dict[str, Tensor],
    source_cfg: ModelConfig,
    layer_map: LayerMap,
    injection: Literal["linear", "identity"] = "linear",
) -> tuple[dict[str, Tensor], ModelConfig, list[str]]:
    """Map source layers into P, F, H (App. C.3.2); returns the target state, its config, and what went where."""
    target, lines = convert_model(state, source_cfg, layer_map, injection)
    return {k: v.detach() for k, v in target.state_dict().items()}, target.cfg, lines


# -- the command ------------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    source: Path
    format: str
    layer_map: str  # canonical PRE,FP,POST text
    lines: list[str]  # what went where, for the terminal
    params_source: int
    params_target: int
    out: Path  # the run directory written
    checkpoint: Path  # its checkpoint folder (load it with cofre.training.checkpoint.load_model)
    model: ModelConfig  # the converted model's config


def _count(state: dict[str, Tensor]) -> int:
    return sum(v.numel() for v in state.values())


def source_recipe(src: SourceModel, name: str) -> Recipe:
    """The recipe a converted run carries, before its model is set: the source run's, or for an MDLM release, which was
    trained on OpenWebText (wrap packing, last 100k documents held out), the defaults on that corpus."""
    if src.recipe is not None:
        return dataclasses.replace(src.recipe, name=name)
    recipe = Recipe(name=name, model=src.config, data=DataConfig(corpus="openwebtext", seq_len=src.config.max_seq_len))
    try:
        recipe.validate()  # e.g. a head that is not GPT-2's 50257 ids + [mask] (an LM1B release's BERT vocabulary)
    except CofreError as err:
        raise CofreError(f"{src.format}: cofre cannot run this release: {err}") from None
    return recipe


def default_output(source: Path) -> Path:
    """runs/<source name>-fp: the run's name for a cofre run or checkpoint, the file's stem for `mdlm.ckpt`."""
    source = Path(source)
    is_file = source.is_file() or source.suffix in (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
    name = source.stem if is_file else run_root(source.resolve()).name
    return Path("runs") / f"{name}-fp"


def convert_checkpoint(
    source: Path,
    layer_map: str,
    out: Path,
    heads: int | None = None,
    ema: bool = True,
    injection: Literal["linear", "identity"] = "linear",
) -> ConversionReport:
    """Convert `source` with `layer_map` (e.g. "1,6,12") into a new run directory `out` holding one checkpoint."""
    source, out = Path(source), Path(out)
    check_range("--heads", heads, 1, MAX_HEADS)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CofreError(f"{out} exists and is not an empty directory; choose another output directory")
    parse_layer_map(layer_map, None)  # a typo fails before a large checkpoint is read
    src = load_source(source, heads=heads, ema=ema)
    base = source_recipe(src, out.name)
    parsed = parse_layer_map(layer_map, src.config.K_pre)
    model, lines = convert_model(src.state, src.config, parsed, injection)
    cfg = model.cfg
    recipe = dataclasses.replace(base, model=cfg)
    checkpoints = out / "checkpoints"
    staging = staging_dir(checkpoints, 0)
    write_checkpoint_files(staging, model, None, recipe, {})
    folder = publish_checkpoint(checkpoints, 0, keep_last=1)
    report = ConversionReport(
        source=source,
        format=src.format,
        layer_map=str(parsed),
        lines=lines,
        params_source=_count(src.state),
        params_target=sum(p.numel() for p in model.parameters()),
        out=out,
        checkpoint=folder,
        model=cfg,
    )
    record = {
        "source": str(source.resolve()),
        "format": src.format,
        "layer_map": str(parsed),
        "layers": {"pre": parsed.pre, "fixed_point": parsed.fp, "post": parsed.post},
        "lines": lines,
        "params_source": report.params_source,
        "params_target": report.params_target,
        "checkpoint": str(folder.relative_to(out)),
        "recipe": recipe_to_dict(recipe),
    }
    atomic_write_text(out / "conversion.json", json.dumps(record, indent=2) + "\n")
    return report
