"""Writing a LeRobotDataset atomically: what to do with one that failed half-way."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any


def discard_dataset(dataset: Any, folder: Path) -> None:
    """Delete a dataset being written (`dataset` may be None), closing its metadata writer first: LeRobot's
    parquet writer would otherwise write its footer into the folder again when it is garbage-collected."""
    if dataset is not None:
        with contextlib.suppress(Exception):
            dataset.meta.finalize()
    shutil.rmtree(folder, ignore_errors=True)
