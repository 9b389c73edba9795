"""Generation-only latency (App. E.4, F.11): synchronised, warm-up batches excluded, mean ± std."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Latency:
    """Seconds per batch from fully masked ids to final ids, and what they were measured with."""

    mean_s: float
    std_s: float
    tokens_per_s: float
    batch_size: int
    length: int
    warmup: int
    repeats: int
    device: str
    dtype: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(run_batch: Callable[[], object], batch_size: int, length: int, device: torch.device,
                    dtype: str = "fp32", warmup: int = 2, repeats: int = 20) -> Latency:
    """Time `run_batch` (one sampling batch): `warmup` untimed calls, then `repeats` timed ones."""
    for _ in range(warmup):
        run_batch()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run_batch()
        _sync(device)
        times.append(time.perf_counter() - start)
    mean = statistics.fmean(times)
    return Latency(mean_s=mean, std_s=statistics.stdev(times) if repeats > 1 else 0.0,
                   tokens_per_s=batch_size * length / mean, batch_size=batch_size, length=length,
                   warmup=warmup, repeats=repeats, device=str(device), dtype=dtype)
