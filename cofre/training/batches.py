"""A deterministic, resumable order over packed blocks, sharded over processes and micro-batches."""

from __future__ import annotations

import torch
from torch import Tensor


class BlockOrder:
    """Epoch e visits the blocks in a permutation drawn from (seed, e); the data position is the step."""

    def __init__(self, n_blocks: int, global_batch: int, seed: int) -> None:
        self.n_blocks = n_blocks
        self.global_batch = global_batch
        self.seed = seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n_blocks, generator=g)}  # keep one epoch in memory
        return self._perms[epoch]

    def global_indices(self, step: int) -> Tensor:
        """Block indices of optimizer step `step`, over all processes."""
        positions = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = positions // self.n_blocks, positions % self.n_blocks
        indices = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            here = epochs == epoch
            indices[here] = self._perm(epoch)[offsets[here]]
        return indices

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[Tensor]:
        """This process's share of step `step`, split into micro-batches of `micro` blocks."""
        per_rank = self.global_batch // world
        mine = self.global_indices(step)[rank * per_rank : (rank + 1) * per_rank]
        return list(mine.split(micro))
