"""A deterministic, resumable order over packed blocks, sharded over processes and micro-batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cofre.errors import CofreError


@dataclass(frozen=True)
class BatchLayout:
    """How one optimiser step's global batch is laid out: processes x accumulation x micro-batch (litgpt's rule:
    the recipe fixes the global batch, its micro-batch size is an upper bound per device)."""

    global_batch: int
    processes: int
    per_process: int  # sequences each process handles per optimiser step
    micro_batch: int  # sequences per forward pass on each process
    accumulation: int  # micro-batches per process per optimiser step

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.processes} process{'es' if self.processes > 1 else ''} x "
                f"{self.accumulation} micro-batch{'es' if self.accumulation > 1 else ''} of {self.micro_batch}")


def batch_layout(global_batch: int, micro_bound: int, processes: int) -> BatchLayout:
    """Each process takes global / processes sequences in the largest micro-batch <= micro_bound that divides its
    share; only a global batch that the processes cannot share evenly is an error."""
    if processes < 1:
        raise CofreError(f"the number of processes must be >= 1, got {processes}")
    if global_batch % processes:
        raise CofreError(f"trainer.global_batch_size {global_batch} cannot be split evenly over {processes} processes; "
                         f"use a multiple of {processes} (or another process count)")
    per_process = global_batch // processes
    micro = next(m for m in range(min(micro_bound, per_process), 0, -1) if per_process % m == 0)
    return BatchLayout(global_batch, processes, per_process, micro, per_process // micro)


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

    def micro_batches(self, step: int, rank: int, layout: BatchLayout) -> list[Tensor]:
        """This process's share of step `step`, split into the layout's micro-batches."""
        per_rank = layout.per_process
        mine = self.global_indices(step)[rank * per_rank : (rank + 1) * per_rank]
        return list(mine.split(layout.micro_batch))
