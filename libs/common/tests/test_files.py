"""write_private: atomic, private, and owned like its folder when root writes it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from modelgate_common import write_private


def test_write_private_is_0600_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_private(target, "one")
    write_private(target, "two")
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_root_writing_into_a_handed_over_folder_keeps_its_owner(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    os.chown(folder, 10001, 10002)
    write_private(folder / "key", "x")
    st = (folder / "key").stat()
    assert (st.st_uid, st.st_gid) == (10001, 10002)
    assert stat.S_IMODE(st.st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's files are root-owned here")
def test_root_writing_into_its_own_folder_stays_root(tmp_path: Path) -> None:
    write_private(tmp_path / "key", "x")
    assert (tmp_path / "key").stat().st_uid == 0
