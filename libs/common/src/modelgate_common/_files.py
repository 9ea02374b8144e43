"""Writing secrets and generated files safely: atomic, and 0600 from the first byte."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data``; the file is never world-readable."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        _keep_folder_owner(fd, path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep_folder_owner(fd: int, folder: Path) -> None:
    # Root writing into a folder that belongs to another user (secrets/ handed to the
    # containers' user by `modelgate init`, see modelgate_cli._compose) gives the new file
    # to that user too, so whoever reads the folder can still read what it holds.
    if os.geteuid() != 0:
        return
    owner = folder.stat()
    if owner.st_uid != 0:
        os.fchown(fd, owner.st_uid, owner.st_gid)


def write_public(path: Path, data: bytes | str) -> None:
    write_private(path, data, mode=0o644)
