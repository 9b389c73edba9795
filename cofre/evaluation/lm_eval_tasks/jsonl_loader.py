"""lm-eval `custom_dataset` for the task YAMLs in this folder: a JSONL file beside this one as the `test` split.

Built in memory with `datasets.Dataset.from_list`, so nothing is downloaded and nothing is cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets


def load(data_file: str, **metadata: object) -> datasets.DatasetDict:
    """lm-eval calls this with the task's `dataset_kwargs` and `metadata`; only `data_file` is used."""
    path = Path(__file__).parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
