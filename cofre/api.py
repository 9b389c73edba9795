"""The Python API: `cofre.load` a run, checkpoint, exported folder or Hub id, then `generate`, `logits`,
`save_pretrained` and `push_to_hub` on what it returns. The CLI's sampling code does the work; nothing is written
unless asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cofre.config import Recipe
from cofre.errors import CofreError
from cofre.sampling.generate import LoadedCheckpoint, open_checkpoint

DEFAULT_STEPS = 64  # generate() without a budget: this many denoising steps at the model's evaluation iterations


class CofreModel:
    """A trained denoiser ready to sample: text (FP-)MDLM or image (FP-)MaskGIT."""

    def __init__(self, checkpoint: LoadedCheckpoint) -> None:
        self._ckpt = checkpoint

    def __repr__(self) -> str:
        from cofre.hub import architecture

        m = self.recipe.model
        return (f"CofreModel({architecture(m)}, {m.modality}, {sum(p.numel() for p in self.model.parameters()):,} "
                f"parameters, from {self._ckpt.folder})")

    @property
    def recipe(self) -> Recipe:
        """The recipe the model was trained with (for an exported folder: its architecture and tokenizer)."""
        return self._ckpt.recipe

    @property
    def model(self) -> torch.nn.Module:
        """The denoiser itself (a torch module in eval mode)."""
        return self._ckpt.model

    @property
    def device(self) -> torch.device:
        return self._ckpt.device

    def default_budget(self, steps: int = DEFAULT_STEPS) -> int:
        """Blocks for `steps` denoising steps at the model's evaluation iterations."""
        return steps * self._ckpt.model.blocks_per_step(self.recipe.solver.eval_iters)

    def generate(self, n: int = 1, *, budget: int | None = None, steps: int | None = None, reuse: str = "3sr",
                 prefix: str | None = None, infill: str | None = None, temperature: float = 1.0, top_p: float = 1.0,
                 length: int | None = None, seed: int = 1, batch_size: int | None = None,
                 classes: list[int | str] | None = None, cfg: float = 0.0, precision: str = "auto",
                 progress: bool = False) -> list[str] | list[np.ndarray]:
        """`n` samples under a block budget (default: 64 steps' worth). Text: strings, unconditional, after a
        `prefix`, or filling the `[mask]` gaps of an `infill` template. Images: uint8 arrays [S, S, C] of `classes`
        (indices or names, cycled; default random), with guidance weight `cfg`."""
        budget = budget or self.default_budget()
        if self.recipe.model.modality == "image":
            if prefix is not None or infill is not None or length is not None or top_p != 1.0:
                raise CofreError("prefix, infill, length and top_p are for text models; this is an image model")
            return self._generate_images(n, budget, steps, reuse, temperature, seed, batch_size or n, classes, cfg,
                                         precision)
        if classes is not None or cfg:
            raise CofreError("classes and cfg are for image models; this is a text model")
        return self._generate_text(n, budget, steps, reuse, prefix, infill, temperature, top_p, length, seed,
                                   batch_size or n, precision, progress)

    def _generate_text(self, n: int, budget: int, steps: int | None, reuse: str, prefix: str | None,
                       infill: str | None, temperature: float, top_p: float, length: int | None, seed: int,
                       batch_size: int, precision: str, progress: bool) -> list[str]:
        from cofre.data.tokenizer import text_tokenizer
        from cofre.sampling.generate import SampleSettings, build_sampler, conditioned_start, draw_batches, resolved

        settings = resolved(SampleSettings(budget=budget, steps=steps, reuse=reuse, num_samples=n,
                                           batch_size=batch_size, seed=seed, top_p=top_p, temperature=temperature,
                                           prefix=prefix, infill=infill, length=length, precision=precision,
                                           device=str(self.device)), self.device)
        sampler = build_sampler(self._ckpt, settings)
        start = conditioned_start(self._ckpt, sampler, settings)
        tokenizer = text_tokenizer(self.recipe.data)
        return [tokenizer.decode(ids) for batch, _ in draw_batches(sampler, settings, start, self.device, progress)
                for ids in batch.tokens.tolist()]

    def _generate_images(self, n: int, budget: int, steps: int | None, reuse: str, temperature: float, seed: int,
                         batch_size: int, classes: list[int | str] | None, cfg: float, precision: str) -> list[np.ndarray]:
        from cofre.data.image_tokenizers import load_tokenizer
        from cofre.data.images import class_names
        from cofre.sampling.generate_images import (
            ImageSampleSettings,
            build_image_sampler,
            class_labels,
            draw_images,
            validate_image_settings,
        )
        from cofre.training.shortcut import sampling_precision

        settings = ImageSampleSettings(budget=budget, steps=steps, reuse=reuse, num_samples=n, batch_size=batch_size,
                                       seed=seed, classes=[str(c) for c in classes] if classes is not None else None,
                                       temperature=temperature, temperature_end=temperature, cfg=cfg,
                                       precision=sampling_precision(precision, self.device, None))
        validate_image_settings(settings)
        tokenizer = load_tokenizer(self.recipe.data.tokenizer, self.device, image_size=self.recipe.data.image_size)
        sampler = build_image_sampler(self._ckpt, settings, tokenizer.grid)
        labels = class_labels(settings.classes, class_names(self.recipe.data), n, torch.Generator().manual_seed(seed))
        return list(draw_images(sampler, tokenizer, labels, settings, self.device).pixels)

    @torch.no_grad()
    def logits(self, tokens: Tensor, t: float | Tensor, iterations: int | None = None) -> Tensor:
        """Text: the denoiser's logits [B, L, V] for token ids [B, L] ([mask] = `recipe.model.mask_id`) at diffusion
        time t (a float or [B]); an FP model runs `iterations` fixed-point iterations (default: its evaluation N).
        Images: `t` is the class label (int or [B])."""
        from cofre.tasks.mdlm import LogLinearSchedule

        tokens = tokens.to(self.device)
        signal = torch.as_tensor(t, device=self.device).expand(tokens.shape[0])
        if self.recipe.model.modality == "text":
            signal = LogLinearSchedule(self.recipe.task.eps).sigma(signal.double()).float()
        kwargs: dict[str, Any] = {} if iterations is None else {"n_nograd": iterations}
        return self._ckpt.model(tokens, signal, **kwargs).logits

    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> Path:
        """A Hub-style folder (config.json, model.safetensors, tokenizer, README.md) of these weights."""
        from cofre.hub import export_model

        return Path(export_model(self._ckpt.folder, directory, ema=bool(self._ckpt.identity.get("ema", True)),
                                 overwrite=overwrite).out)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload cofre model") -> str:
        """Upload the Hub-style folder to the Hugging Face Hub (online); returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(getattr(info, "commit_url", info))


def load(path_or_hub_id: str | Path, *, ema: bool = True, device: str = "auto", revision: str | None = None) -> CofreModel:
    """A run directory (its selected, else latest checkpoint), a checkpoint folder, an exported folder, or a Hugging
    Face Hub id (`user/name`, downloaded once; online)."""
    path = Path(path_or_hub_id).expanduser()
    if not path.exists() and _looks_like_hub_id(str(path_or_hub_id)):
        path = _download(str(path_or_hub_id), revision)
    return CofreModel(open_checkpoint(path, ema=ema, device=device))


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RepositoryNotFoundError:
        raise CofreError(f"{repo_id}: no such local path, and no such model on the Hugging Face Hub") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise CofreError(f"{repo_id}: not a local path, and the Hub could not be reached "
                         f"({' '.join(str(err).split())[:160]}); check the network or give a local folder") from None


__all__ = ["CofreModel", "load"]
