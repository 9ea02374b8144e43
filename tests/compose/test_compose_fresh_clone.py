"""A new user's first start: a clean clone, `docker compose up -d`, nothing else.

No `make init`, no Python, no .env on the host: the clone holds only what git holds (plus
build/wheels/ for a build that cannot reach the package index, and the base images given as
MG_PYTHON_IMAGE / MG_DEBIAN_IMAGE where no registry answers). make test-compose runs this
after the suites, with their images built; the clone's compose reuses them by name.

Run as root, the clone belongs to another user, as a clone in a home folder does: the
files `init` writes must be that user's, and the containers still run as their own user.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.compose.conftest import ComposeProject
from tests.conftest import make_client, run_command

pytestmark = [pytest.mark.compose, pytest.mark.clone]

ROOT = Path(__file__).resolve().parents[2]
OWNER = 4242  # the clone's owner when root runs the test
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# What compose itself may read from the environment here: where to publish, which base
# images to build from; none of it prepares anything in the project folder.
PASSED_ON = ("MG_HTTPS_PORT", "MG_HTTP_PORT", "MG_PYTHON_IMAGE", "MG_DEBIAN_IMAGE")


@pytest.fixture(scope="module")
def clone() -> Iterator[ComposeProject]:
    command = shlex.split(os.environ.get("MG_COMPOSE_COMMAND", "docker compose"))
    folder = Path(tempfile.mkdtemp(prefix="modelgate-clone-", dir="/var/tmp"))
    root = folder / "modelgate"
    run_command(["git", "clone", "-q", str(ROOT), str(root)])
    if (ROOT / "build" / "wheels").is_dir():
        shutil.copytree(ROOT / "build" / "wheels", root / "build" / "wheels")
    if os.getuid() == 0:
        folder.chmod(0o755)
        run_command(["chown", "-R", f"{OWNER}:{OWNER}", str(root)])
    name = f"mgclone{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MG_", "COMPOSE_"))}
    env.update({k: os.environ[k] for k in PASSED_ON if k in os.environ})
    env["COMPOSE_PROJECT_NAME"] = name
    # Beside a compose stack of one's own (default subnet) and make test-compose's.
    env["MG_INTERNAL_NET"] = os.environ.get("MG_TEST_CLONE_NET", "172.31.253")
    project = ComposeProject(command, name, root, env=env)
    try:
        yield project
    finally:
        project.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        shutil.rmtree(folder)


def sign_in(client: httpx.Client, username: str, password: str) -> dict[str, str]:
    response = client.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_a_clean_clone_comes_up_with_docker_compose_alone(
    clone: ComposeProject, https_port: int
) -> None:
    root = clone.root
    assert not (root / ".env").exists()
    assert not (root / "secrets" / "admin_password").exists()
    base_url = f"https://localhost:{https_port}"
    clone.compose("up", "-d", timeout=900)
    ca_file = str(root / "certs" / "ca.pem")
    clone.wait_healthy(base_url, ca_file)

    # What a user relies on lands in the project folder, as `make init` makes it.
    owner = root.stat().st_uid
    password_file = root / "secrets" / "admin_password"
    st = password_file.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner, 0o600)
    assert (root / "certs" / "ca.pem").stat().st_uid == owner
    # Redis's ACL users, one password per service, as `make init` makes them.
    for name in ("redis_auth_password", "redis_inference_password", "redis_crypto_password"):
        st = (root / "secrets" / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner, 0o600), name
    assert "user auth on #" in (root / "secrets" / "redis_users.acl").read_text()
    assert [p.name for p in (root / "model_store" / "iris").iterdir()] == ["1"]
    assert not (root / ".env").exists()
    init = clone.exited("init")
    assert init["State"]["ExitCode"] == 0
    # Every container runs as MG_UID (10001 by default), never as the clone's owner.
    users = {service: c["Config"]["User"] for service, c in clone.containers().items()}
    assert users == {
        "nginx": "10001:10001",
        "auth": "10001:10001",
        "inference": "10001:10001",
        "crypto": "10001:10001",
        "redis": "10001:10001",
    }, users

    admin_password = password_file.read_text()
    with make_client(base_url, ca_file) as client:
        admin = sign_in(client, "admin", admin_password)
        answer = client.post("/predict", json=IRIS_ROW, headers=admin)
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"] == 0

        made = clone.cli("user", "add", "bob", "--generate", "--show")
        bob_password = re.search(r"^password: (\S+)$", made, re.M)
        assert bob_password, made
        bob = sign_in(client, "bob", bob_password.group(1))
        assert client.get("/auth/users/me", headers=bob).json()["username"] == "bob"
        assert "bob" in clone.cli("user", "list")
        ciphertext = client.post("/crypto/encrypt", json={"plaintext": "kept"}, headers=bob)
        assert ciphertext.status_code == 200, ciphertext.text

        # A revocation by the CLI reaches the running services through Redis at once.
        made = clone.cli("user", "add", "carol", "--generate", "--show")
        carol_password = re.search(r"^password: (\S+)$", made, re.M)
        assert carol_password, made
        carol = sign_in(client, "carol", carol_password.group(1))
        assert client.get("/auth/users/me", headers=carol).status_code == 200
        disabled = clone.cli("user", "disable", "carol")
        assert "existing tokens of the user are revoked\n" in disabled, disabled
        assert client.get("/auth/users/me", headers=carol).status_code == 401
        assert client.post("/predict", json=IRIS_ROW, headers=carol).status_code == 401

        # `modelgate status` from inside the stack: nginx and every service ready.
        parts = ("nginx", "auth", "inference", "crypto")
        status = clone.cli("status")
        rows = [line.split() for line in status.splitlines()]
        states = {row[0]: row[1] for row in rows if len(row) > 1 and row[0] in parts}
        assert states == dict.fromkeys(parts, "ok"), status

    # Down and up again: users (a volume) and keys (the project folder) stay.
    clone.compose("down", "--timeout", "30")
    assert clone.running() == {}
    clone.compose("up", "-d", timeout=600)
    clone.wait_healthy(base_url, ca_file)
    assert password_file.read_text() == admin_password
    with make_client(base_url, ca_file) as client:
        bob = sign_in(client, "bob", bob_password.group(1))
        plain = client.post(
            "/crypto/decrypt", json={"ciphertext": ciphertext.json()["ciphertext"]}, headers=bob
        )
        assert plain.status_code == 200 and plain.json() == {"plaintext": "kept"}, plain.text
        sign_in(client, "admin", admin_password)

    # down -v: no container, volume or network of the project is left.
    clone.compose("down", "--volumes", "--timeout", "30")
    for kind in ("container", "volume", "network"):
        everything = ["-a"] if kind == "container" else []
        label = f"label=com.docker.compose.project={clone.name}"
        listing = ["docker", kind, "ls", *everything, "-q", "--filter", label]
        assert run_command(listing).split() == [], kind
