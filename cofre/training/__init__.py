"""The Accelerate training loop, checkpoints, EMA, optimiser and batch order."""
