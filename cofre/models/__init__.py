"""Transformer blocks and the (fixed-point) denoiser."""

from cofre.models.denoiser import Denoiser, DenoiserOutput

__all__ = ["Denoiser", "DenoiserOutput"]
