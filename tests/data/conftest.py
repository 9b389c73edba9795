"""Fixtures for the text data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cofre.config import DataConfig


@pytest.fixture
def data_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., DataConfig]:
    """Build DataConfigs whose cache lives in a fresh temporary folder; concat packing unless named (the
    hand-worked blocks of most tests are plain cuts; the wrap tests name their mode)."""
    monkeypatch.delenv("COFRE_CACHE", raising=False)

    def make(**fields: object) -> DataConfig:
        return DataConfig(**{"cache_dir": str(tmp_path / "cache"), "packing": "concat", **fields})  # type: ignore[arg-type]

    return make
