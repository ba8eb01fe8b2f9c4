"""Writing files: safetensors' I/O failures (a full disk, a file-size limit) surface as the `OSError` they are."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def disk_writes(path: str | Path) -> Iterator[None]:
    """Around a safetensors write to `path`: its `SafetensorError("... I/O error: ... (os error N)")` becomes
    `OSError(N, strerror, path)`, so a full disk is one error kind for the trainer's cleanup and the CLI."""
    try:
        yield
    except Exception as e:
        found = re.search(r"os error (\d+)", str(e)) if type(e).__name__ == "SafetensorError" else None
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None
