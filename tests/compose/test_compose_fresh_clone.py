"""A new user's first start: a clean clone, `docker compose up -d`, nothing else.

No `make init`, no Python, no .env on the host: the clone holds only what git holds (plus
build/wheels/ and build/docs-ui/ for a build that cannot reach a package registry, and the
base images given as MG_PYTHON_IMAGE / MG_DEBIAN_IMAGE where no registry answers). make
test-compose runs this after the suites, with their images built; the clone's compose reuses
them by name.

The second start turns the API docs on (MG_PUBLIC_DOCS=1): Swagger UI in a real browser
(tests/swagger_browser.py). A LightGBM model from the project folder is registered and loaded
with the compose CLI and predicts through nginx.

Every client reaches auth from Docker's gateway address here, so all sign-ins of this test
share one per-address budget (5 a minute, kept in Redis across down/up): five at most, and
`model load`'s, the last, waits out a refusal by itself.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.compose.conftest import ComposeProject
from tests.conftest import make_client, run_command
from tests.swagger_browser import authorize_and_predict, launch_chromium

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
    for prepared in ("wheels", "docs-ui/node_modules"):
        if (ROOT / "build" / prepared).is_dir():
            shutil.copytree(ROOT / "build" / prepared, root / "build" / prepared)
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


def owned_by_the_clone(root: Path, folder: Path) -> None:
    """What the test writes into the clone belongs to the clone's owner, as a user's own
    files would."""
    owner = root.stat()
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, owner.st_uid, owner.st_gid)


def lightgbm_model(root: Path) -> tuple[Any, Any]:
    """A LightGBM regressor and its training table in the project folder (own-model/), as
    docs/serve-your-own-model.md makes them; (model, features)."""
    import joblib
    from lightgbm import LGBMRegressor
    from sklearn.datasets import load_diabetes

    out = root / "own-model"
    out.mkdir()
    frame = load_diabetes(as_frame=True).frame
    features = frame.drop(columns="target")
    model = LGBMRegressor(n_estimators=40, random_state=0, verbose=-1).fit(
        features, frame["target"]
    )
    joblib.dump(model, out / "diabetes_lgbm.joblib")
    frame.to_csv(out / "diabetes_lgbm.csv", index=False)
    owned_by_the_clone(root, out)
    return model, features


def test_a_clean_clone_comes_up_with_docker_compose_alone(
    clone: ComposeProject, https_port: int, tmp_path: Path, fresh_source_ip: Callable[[], str]
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
        # The API docs are off unless asked for: nginx has no such route.
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404
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

    # Down and up again, with the API docs on: users (a volume) and keys (the project
    # folder) stay.
    clone.compose("down", "--timeout", "30")
    assert clone.running() == {}
    assert clone.env is not None
    clone.env["MG_PUBLIC_DOCS"] = "1"
    clone.compose("up", "-d", timeout=600)
    clone.wait_healthy(base_url, ca_file)
    assert password_file.read_text() == admin_password
    with make_client(base_url, ca_file) as client:
        bob = sign_in(client, "bob", bob_password.group(1))
        plain = client.post(
            "/crypto/decrypt", json={"ciphertext": ciphertext.json()["ciphertext"]}, headers=bob
        )
        assert plain.status_code == 200 and plain.json() == {"plaintext": "kept"}, plain.text

        document = client.get("/openapi.json")
        assert document.status_code == 200, document.text
        assert "/predict" in document.json()["paths"]
        # Swagger UI, offline: Authorize as admin (the password kept), Try it out on /predict.
        with sync_playwright() as playwright:
            browser, tunnel = launch_chromium(
                playwright, tmp_path / "home", base_url, ca_file, fresh_source_ip()
            )
            try:
                authorize_and_predict(browser, tunnel, base_url, "admin", admin_password)
            finally:
                browser.close()
                tunnel.close()

        # A LightGBM model from the project folder, registered and loaded with the compose
        # CLI, served by LightGBM itself (its OpenMP runtime is in the images) from the model
        # store the inference container reads.
        model, features = lightgbm_model(root)
        registered = clone.cli(
            "model", "register", "diabetes-lgbm", "own-model/diabetes_lgbm.joblib",
            "--data", "own-model/diabetes_lgbm.csv", "--target", "target",
        )  # fmt: skip
        assert "registered diabetes-lgbm version 1" in registered, registered
        assert "runtime: lightgbm" in registered, registered
        assert all(p.stat().st_uid == owner for p in (root / "model_store").rglob("*"))
        loaded = clone.cli("model", "load", "diabetes-lgbm")
        assert "serving diabetes-lgbm version 1" in loaded, loaded
        row = features.iloc[:1].to_dict(orient="records")
        answer = client.post(
            "/v1/models/diabetes-lgbm/predict", json={"instances": row}, headers=bob
        )
        assert answer.status_code == 200, answer.text
        expected = model.predict(features.iloc[:1])[0]
        assert answer.json()["predictions"] == [pytest.approx(expected, rel=1e-9)]

    # down -v: no container, volume or network of the project is left.
    clone.compose("down", "--volumes", "--timeout", "30")
    for kind in ("container", "volume", "network"):
        everything = ["-a"] if kind == "container" else []
        label = f"label=com.docker.compose.project={clone.name}"
        listing = ["docker", kind, "ls", *everything, "-q", "--filter", label]
        assert run_command(listing).split() == [], kind
