"""Run under `accelerate launch`: train a recipe, then dump this rank's final weights for comparison."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from cofre.config import load_recipe
from cofre.training.loop import Trainer

recipe_path, run_dir, out_dir = sys.argv[1:4]
trainer = Trainer(load_recipe(recipe_path), run_dir)
trainer.fit()
rank = trainer.accelerator.process_index
state = {k: v.detach().contiguous() for k, v in trainer.unwrapped.state_dict().items()}
save_file(state, str(Path(out_dir) / f"rank{rank}-of-{trainer.accelerator.num_processes}.safetensors"))
