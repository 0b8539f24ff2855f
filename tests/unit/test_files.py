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
