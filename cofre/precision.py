"""Where and at what precision the network runs: bf16 autocast on GPUs (as the paper trains and samples), fp32 on CPUs.

Only the blocks' matmuls run under autocast; losses stay in fp32 and sampling logits are cast to float64
before the categorical draw (App. D.4), wherever the network ran.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from cofre.errors import CofreError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present, else CPU) or a device this machine has; anything else is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CofreError(f"--device '{name}' is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CofreError(f"--device {name}: CUDA is not available on this machine; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CofreError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered 0..{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CofreError(f"--device {name}: MPS is not available on this machine; use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise CofreError(f"--device {name}: cofre runs on cpu, cuda or mps")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA and fp32 elsewhere (bf16 on a CPU is correct but slow); the others are kept."""
    if name not in PRECISIONS:
        raise CofreError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{name}'")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of a resolved precision ('fp32' disables it)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
