"""One run per output folder: an advisory lock file (`.hf-reflow.lock`, holding the owner's pid).

`fcntl.flock` is released by the kernel when its process dies, however it dies, so a lock left by a killed
run is stale by construction: the next run takes it over. A second live run into the same folder is refused
in one line naming the pid that holds it. Only the main process of a distributed launch locks (RANK 0).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from hf_reflow.errors import CheckpointError

LOCK_FILE = ".hf-reflow.lock"


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder`'s run lock for the `with` body (creating `folder`); `CheckpointError` if a live run holds it."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: the main process holds it for all
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / LOCK_FILE
    handle = open(file, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise CheckpointError(
            f"output dir {str(folder)!r} is in use by another hf-reflow run (pid {owner}); wait for it to finish "
            "or choose another --output_dir."
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            file.unlink()  # before unlocking: a run that opens it next makes a new file
        handle.close()
