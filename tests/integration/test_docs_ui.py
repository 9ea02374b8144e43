"""/docs and /openapi.json through nginx, with MG_PUBLIC_DOCS on for these tests only:
nginx's configuration is rendered with the switch on and reloaded, and rendered off and
reloaded again afterwards (the rest of the suite checks that both stay hidden).

The browser (tests/swagger_browser.py) is Debian's Chromium, headless, driven by Playwright,
trusting the stack's CA as a user's browser would; the same browser without that CA must
refuse the page. Its sign-in leaves from a loopback address of this test's own.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import make_client
from tests.swagger_browser import Tunnel, authorize_and_predict, launch_chromium

if TYPE_CHECKING:
    from tests.conftest import NativeStack

pytestmark = [pytest.mark.native, pytest.mark.slow]


def _render_and_reload(var_dir: Path, public_docs: str) -> None:
    venv = Path(os.environ.get("MG_VENV", ".venv"))
    env = {**os.environ, "MG_PUBLIC_DOCS": public_docs}
    done = subprocess.run(
        [str(venv / "bin" / "modelgate"), "render-nginx"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    conf = var_dir / "nginx"
    reload = subprocess.run(
        ["nginx", "-p", str(conf), "-c", str(conf / "nginx.conf"), "-s", "reload"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reload.returncode == 0, reload.stderr


def _wait_for(client: httpx.Client, path: str, status: int, timeout: float = 30.0) -> None:
    """Until nginx's new workers answer ``path`` with ``status`` (a reload hands over)."""
    deadline = time.monotonic() + timeout
    while (answer := client.get(path).status_code) != status:
        assert time.monotonic() < deadline, f"{path} still {answer} after the reload"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def public_docs(
    native_stack: NativeStack, var_dir: Path, base_url: str, ca_file: str
) -> Iterator[None]:
    with make_client(base_url, ca_file) as client:
        _render_and_reload(var_dir, "1")
        try:
            _wait_for(client, "/openapi.json", 200)
            yield
        finally:
            _render_and_reload(var_dir, "0")
            _wait_for(client, "/openapi.json", 404)
            assert client.get("/docs").status_code == 404


@pytest.fixture(scope="module")
def document(public_docs: None, base_url: str, ca_file: str) -> dict[str, Any]:
    with make_client(base_url, ca_file) as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    loaded: dict[str, Any] = answer.json()
    return loaded


def test_one_document_for_every_service(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path in (
        "/auth/token",
        "/auth/users",
        "/predict",
        "/v1/models",
        "/v2/models/{name}/infer",
        "/crypto/encrypt",
    ):
        assert path in paths, path
    # Nothing nginx does not pass on: the services' own probes and metrics stay out.
    assert not [p for p in paths if p.startswith(("/health", "/metrics", "/docs", "/openapi"))]
    flow = document["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]
    assert flow["tokenUrl"] == "/auth/token"


def test_every_documented_route_reaches_its_service(
    document: dict[str, Any], base_url: str, ca_file: str, fresh_source_ip: Callable[[], str]
) -> None:
    """Each path and method, called as documented without a token, is answered by a
    service (401, 422, 200...), never by nginx's 404 or 405 for a path it does not route."""
    values = {"{name}": "iris", "{version}": "1", "{username}": "admin"}
    # From an address of its own: the sign-in route counts calls per client address.
    with make_client(base_url, ca_file, fresh_source_ip()) as client:
        for path, operations in document["paths"].items():
            url = path
            for placeholder, value in values.items():
                url = url.replace(placeholder, value)
            for method in operations:
                body = {} if method in ("post", "put", "patch") else None
                answer = client.request(method.upper(), url, json=body)
                assert answer.status_code not in (404, 405), (method, path, answer.text)


Launcher = Callable[[str | None], tuple[Browser, Tunnel]]


@pytest.fixture
def browser_for(
    tmp_path: Path, base_url: str, fresh_source_ip: Callable[[], str]
) -> Iterator[Launcher]:
    opened: list[tuple[Browser, Tunnel]] = []
    playwright = sync_playwright().start()

    def launch(ca_file: str | None) -> tuple[Browser, Tunnel]:
        home = tmp_path / f"home{len(opened)}"
        opened.append(launch_chromium(playwright, home, base_url, ca_file, fresh_source_ip()))
        return opened[-1]

    try:
        yield launch
    finally:
        for browser, tunnel in opened:
            browser.close()
            tunnel.close()
        playwright.stop()


def test_browser_refuses_the_stack_without_its_ca(
    public_docs: None, base_url: str, browser_for: Launcher
) -> None:
    browser, tunnel = browser_for(None)
    page = browser.new_page()
    with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
        page.goto(f"{base_url}/docs")
    assert tunnel.tunnelled  # it did reach nginx: the certificate is what it refused


def test_swagger_ui_authorizes_and_predicts(
    public_docs: None, base_url: str, ca_file: str, browser_for: Launcher, admin_password: str
) -> None:
    browser, tunnel = browser_for(ca_file)
    authorize_and_predict(browser, tunnel, base_url, "admin", admin_password)
