"""`python -m cofre ...` (also what `accelerate launch -m cofre ...` runs)."""

from cofre.cli import run

run()
