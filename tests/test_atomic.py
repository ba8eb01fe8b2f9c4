"""The one write-to-temporary-then-rename helper every writer uses."""

from __future__ import annotations

import os

import pytest

from hf_reflow.atomic import TEMPORARY_MARK, atomic_path, replace_path, temporary_sibling, write_text


def test_write_text_replaces_a_file_and_leaves_no_temporary(tmp_path):
    file = tmp_path / "results.json"
    write_text(file, "old")
    write_text(file, "new")
    assert file.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_folder_and_deletes_the_temporary(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "model.safetensors").write_text("old weights")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a save
    assert (target / "model.safetensors").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "stale.parquet").write_text("x")
    with atomic_path(target) as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path and TEMPORARY_MARK in tmp.name
        tmp.mkdir()
        (tmp / "data.parquet").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["data.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # the moved-aside old one is gone


def test_a_killed_writers_temporary_is_cleared_before_writing(tmp_path):
    target = tmp_path / "shard.parquet"
    leftover = temporary_sibling(target)
    leftover.mkdir()  # what a writer of the same PID left (a folder where a file goes)
    with atomic_path(target) as tmp:
        tmp.write_text("ok")
    assert target.read_text() == "ok" and not leftover.exists()


def test_temporary_names(tmp_path):
    assert temporary_sibling(tmp_path / "000100", shared=True).name == ".000100.tmp"
    assert temporary_sibling(tmp_path / "a.json").name == f".a.json.tmp-{os.getpid()}"


def test_commit_false_leaves_the_rename_to_the_caller(tmp_path):
    target = tmp_path / "last"
    with atomic_path(target, commit=False) as tmp:
        tmp.write_text("x")
    assert not target.exists() and tmp.exists()
    replace_path(tmp, target)
    assert target.read_text() == "x"


def test_a_symlink_is_replaced_not_followed(tmp_path):
    (tmp_path / "000001").mkdir()
    (tmp_path / "000002").mkdir()
    link = tmp_path / "last"
    os.symlink("000001", link, target_is_directory=True)
    with atomic_path(link) as tmp:
        os.symlink("000002", tmp, target_is_directory=True)
    assert os.readlink(link) == "000002" and (tmp_path / "000001").is_dir()


def test_link_tree_links_files_keeps_relative_links_and_skips_locks_and_half_written_files(tmp_path):
    """What `--from_run` and the final model rely on: hard links (no second copy), `checkpoints/last` still a
    relative link, and neither a live run's lock file (written in place) nor a temporary name copied."""
    from hf_reflow.artifacts.run_dir import link_tree
    from hf_reflow.artifacts.run_lock import LOCK_FILE

    src = tmp_path / "run"
    (src / "checkpoints" / "000010").mkdir(parents=True)
    (src / "checkpoints" / "000010" / "model.safetensors").write_bytes(b"weights")
    (src / "checkpoints" / "last").symlink_to("000010", target_is_directory=True)
    for name in (LOCK_FILE, ".eval.json.tmp-123", ".shard.tmp"):
        (src / name).write_text("x")
    link_tree(src, tmp_path / "copy", symlinks=True)
    copy = tmp_path / "copy"
    assert sorted(p.name for p in copy.iterdir()) == ["checkpoints"]
    weights = "checkpoints/000010/model.safetensors"
    assert (copy / weights).stat().st_ino == (src / weights).stat().st_ino
    assert os.readlink(copy / "checkpoints" / "last") == "000010"
