"""cofre: fixed-point masked generative models (FP-MDLM, FP-MaskGIT) and the CoFRe recipe.

The public API (README "Python API"):

    import cofre
    model = cofre.load("runs/tiny-fp-mdlm")          # a run, checkpoint, exported folder or Hub id
    model.generate(4, budget=64, prefix="The river")  # text; image runs give uint8 arrays
    model.logits(tokens, t=0.5)
    model.save_pretrained("export/tiny-fp-mdlm")      # config.json, model.safetensors, tokenizer, README.md
    recipe = cofre.load_recipe("recipes/tiny-fp-mdlm.yaml")

Names are imported on first use, so `import cofre` (and the CLI) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["CofreModel", "Recipe", "__version__", "load", "load_recipe"]

_LAZY = {"load": "cofre.api", "CofreModel": "cofre.api", "Recipe": "cofre.config", "load_recipe": "cofre.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cofre' has no attribute {name!r}")
