"""Whole-folder writes: the new folder replaces the old only once complete; a failure or a crash between
the two renames leaves a complete folder in place."""

import os

import pytest

from formats.errors import FileWriteError
from formats.files import atomic_folder, recover_folder


def test_a_folder_is_replaced_only_once_complete(tmp_path):
    out = str(tmp_path / "export")
    with atomic_folder(out) as tmp:
        (tmp_path / "export.tmp" / "weights").write_text("old")
        assert tmp == out + ".tmp" and not os.path.exists(out)
    assert (tmp_path / "export" / "weights").read_text() == "old"
    with pytest.raises(FileWriteError, match="export: could not write .*the previous one is kept"):
        with atomic_folder(out) as tmp:
            (tmp_path / "export.tmp" / "weights").write_text("half")
            raise OSError(28, "No space left on device")
    assert (tmp_path / "export" / "weights").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["export"]
    with atomic_folder(out):
        (tmp_path / "export.tmp" / "weights").write_text("new")
    assert (tmp_path / "export" / "weights").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_a_crash_between_the_renames_is_recovered(tmp_path):
    (tmp_path / "export.old").mkdir()  # what a crash after moving the old folder aside leaves
    (tmp_path / "export.old" / "weights").write_text("old")
    recover_folder(str(tmp_path / "export"))
    assert (tmp_path / "export" / "weights").read_text() == "old"
    assert not (tmp_path / "export.old").exists()


def test_fsync_tree_syncs_every_file_and_every_folder_under_it(tmp_path, monkeypatch):
    """A new file's entry lives in its folder: the folders are synced with the files' bytes (the real fsync
    runs; the recorder only notes which path each descriptor names)."""
    from formats import files

    (tmp_path / "state" / "ranks").mkdir(parents=True)
    for name in ("state/model.pt", "state/ranks/rank0.json", "client.json"):
        (tmp_path / name).write_text("x")
    synced, real_fsync = [], os.fsync

    def recording_fsync(fd):
        synced.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), tmp_path))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    files.fsync_tree(str(tmp_path))
    assert sorted(synced) == sorted([".", "client.json", "state", "state/model.pt", "state/ranks",
                                     "state/ranks/rank0.json"])
