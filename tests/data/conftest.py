"""Fixtures for the text data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cofre.config import DataConfig


@pytest.fixture
def data_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., DataConfig]:
    """Build DataConfigs whose cache lives in a fresh temporary folder."""
    monkeypatch.delenv("COFRE_CACHE", raising=False)

    def make(**fields: object) -> DataConfig:
        return DataConfig(**{"cache_dir": str(tmp_path / "cache"), **fields})  # type: ignore[arg-type]

    return make
