"""Writes a reader never sees half done: build under a temporary sibling, then rename it into place.

Every writer of something another process or a later run reads (checkpoints, datasets, couplings shards,
the `checkpoints/last` link, JSON records, cards) goes through here. An interrupted writer therefore
leaves only `.NAME.tmp-PID` siblings, which `artifacts.run_dir.remove_temporary`, the couplings store and
the Hub upload filter (`hub.TEMPORARY`) know to skip or delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_MARK = ".tmp"  # in every temporary name: `.NAME.tmp-PID`, or `.NAME.tmp` when processes share it


def temporary_sibling(target: Path, *, shared: bool = False) -> Path:
    """`.NAME.tmp-PID` next to `target`; `shared=True` gives `.NAME.tmp`, the one name every process of a
    distributed run agrees on (only the main process then renames it)."""
    target = Path(target)
    return target.with_name(f".{target.name}{TEMPORARY_MARK}" + ("" if shared else f"-{os.getpid()}"))


def replace_path(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an older folder `dst` is moved aside first and deleted after, so readers see the
    old one or the new one, with only a brief window without either. Files are replaced atomically."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not (dst.is_dir() and not dst.is_symlink()):
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old)


def remove(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path, *, shared: bool = False, commit: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `target` that does not exist yet (write a file or a folder there);
    when the block ends normally it replaces `target`, on any exception (a full disk, Ctrl-C) it is deleted.

    Args:
        target: the file or folder to (re)place.
        shared: one temporary name for every process of a distributed run (see `temporary_sibling`).
        commit: False leaves the rename to the caller (e.g. only the main process of a distributed run
            renames, once every process has written its part); a failure still deletes the temporary.
    """
    tmp = temporary_sibling(target, shared=shared)
    remove(tmp)  # a killed earlier writer of the same name
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    if commit:
        replace_path(tmp, target)


def write_text(file: Path, text: str) -> None:
    """Replace `file` with `text` atomically (a reader never sees half a file)."""
    with atomic_path(file) as tmp:
        tmp.write_text(text)
