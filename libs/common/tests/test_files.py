"""write_private: atomic, private, and owned like its folder when root writes it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from modelgate_common import private_file_problem, read_secret, write_private


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


def kubernetes_secret_volume(folder: Path, files: dict[str, str], mode: int = 0o440) -> Path:
    """A Secret volume as the kubelet writes it: the files in a timestamped folder, a
    ``..data`` link to that folder, and one link per file through ``..data``; each file
    ``mode`` with the pod's fsGroup (here: this process's group)."""
    stamp = folder / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, text in files.items():
        (stamp / name).write_text(text)
        os.chown(stamp / name, -1, os.getegid())
        (stamp / name).chmod(mode)
    (folder / "..data").symlink_to(stamp.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")
    return folder


def test_read_secret_accepts_a_kubernetes_secret_volume(tmp_path: Path) -> None:
    volume = kubernetes_secret_volume(tmp_path / "run", {"admin_password": "a-real-secret"})
    assert read_secret(volume / "admin_password").get_secret_value() == "a-real-secret"


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o444, "readable by others"),
        (0o604, "readable by others"),
        (0o460, "writable or executable by its group"),
        (0o640, None),
        (0o600, None),
        (0o400, None),
    ],
)
def test_secret_modes_through_the_volume_links(
    tmp_path: Path, mode: int, problem: str | None
) -> None:
    volume = kubernetes_secret_volume(tmp_path / "run", {"s": "a-real-secret"}, mode)
    if problem is None:
        assert read_secret(volume / "s").get_secret_value() == "a-real-secret"
    else:
        with pytest.raises(RuntimeError, match=problem):
            read_secret(volume / "s")


def test_group_readable_only_for_a_group_this_process_runs_in() -> None:
    mine = {os.getegid(), *os.getgroups()}
    foreign = next(gid for gid in range(60000, 70000) if gid not in mine)

    def st(mode: int, gid: int) -> os.stat_result:
        return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, 0, gid, 10, 0, 0, 0))

    assert private_file_problem(st(0o440, os.getegid())) is None
    assert "group this process is not in" in str(private_file_problem(st(0o440, foreign)))
    assert private_file_problem(st(0o400, foreign)) is None  # the group cannot read it
    assert "readable by others" in str(private_file_problem(st(0o444, os.getegid())))
