"""What `docker compose` needs beyond the native stack's files: the user its containers run as.

The containers read certs/, secrets/ and model_store/ through read-only bind mounts, and the
secret files are 0600, so the containers run as the files' owner. ``init`` writes that owner
to ``.env`` (MG_UID, MG_GID), which compose reads. No container runs as root: when root runs
``init``, the files the containers read are handed to uid 10001 instead (root reads them
all the same), and ``write_private`` keeps new files in those folders with that owner.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._paths import ProjectPaths

CONTAINER_UID = 10001
CONTAINER_GID = 10001


def container_user(uid: int, gid: int) -> tuple[int, int]:
    """The uid:gid the containers run as for a host user ``uid:gid``: never root."""
    if uid == 0:
        return CONTAINER_UID, CONTAINER_GID
    return uid, gid


def update_env_file(path: Path, values: dict[str, str]) -> bool:
    """Set ``values`` in a dotenv file, keeping every other line; True when it changed."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in values]
    new = kept + [f"{name}={value}" for name, value in values.items()]
    if new == lines:
        return False
    path.write_text("\n".join(new) + "\n", encoding="utf-8")
    return True


def container_files(paths: ProjectPaths) -> list[Path]:
    """Every path a container reads from the host (the CA's key is not among them)."""
    found: list[Path] = []
    for folder in (paths.secrets, paths.model_store):
        if folder.is_dir():
            found.append(folder)
            found.extend(sorted(folder.rglob("*")))
    found.extend(
        p for p in (paths.certs / "server.pem", paths.certs / "server-key.pem") if p.exists()
    )
    return found


def hand_over(files: list[Path], uid: int, gid: int) -> int:
    """chown ``files`` to ``uid:gid`` (symlinks untouched); how many changed."""
    changed = 0
    for path in files:
        st = path.lstat()
        if path.is_symlink() or (st.st_uid, st.st_gid) == (uid, gid):
            continue
        os.chown(path, uid, gid)
        changed += 1
    return changed


def ensure_compose_env(paths: ProjectPaths) -> list[str]:
    """Write MG_UID/MG_GID to .env; as root, hand the containers' files to that user."""
    host_uid, host_gid = os.getuid(), os.getgid()
    uid, gid = container_user(host_uid, host_gid)
    made: list[str] = []
    if host_uid == 0 and hand_over(container_files(paths), uid, gid):
        made.append(f"container access (secrets/, model_store/, server certificate owned by {uid})")
    if update_env_file(paths.root / ".env", {"MG_UID": str(uid), "MG_GID": str(gid)}):
        made.append(f"compose settings (.env: MG_UID={uid}, MG_GID={gid})")
    return made
