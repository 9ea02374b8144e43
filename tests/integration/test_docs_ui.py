"""/docs and /openapi.json through nginx, with MG_PUBLIC_DOCS on for these tests only:
nginx's configuration is rendered with the switch on and reloaded, and rendered off and
reloaded again afterwards (the rest of the suite checks that both stay hidden).

The browser is Debian's Chromium, headless, driven by Playwright. It trusts the stack's CA
the way a user's browser would: the CA is imported into a throwaway NSS database (certutil)
in a throwaway HOME, and nothing relaxes certificate checks; the same browser without that
database must refuse the page. Its connections leave through a local CONNECT proxy that
tunnels only to the stack's address and opens each tunnel from a loopback address of
this test's own, so the sign-in counts against a per-address budget no other test spends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import make_client

if TYPE_CHECKING:
    from tests.conftest import NativeStack

pytestmark = [pytest.mark.native, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
PREDICT_OPERATION = "#operations-seed-predict_seed_predict_post"


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


class Tunnel:
    """A CONNECT proxy for the browser: tunnels to one address only, each tunnel opened
    from ``source_ip``; every other destination is refused and noted."""

    def __init__(self, allowed: str, source_ip: str) -> None:
        self.allowed = allowed
        self.source_ip = source_ip
        self.tunnelled: list[str] = []
        self.refused: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk or len(head) > 16384:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "CONNECT" or target != self.allowed:
                self.refused.append(f"{method} {target}")
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnelled.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection(
                (host, int(port)), source_address=(self.source_ip, 0)
            ) as up:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=_pipe, args=(up, conn), daemon=True)
                back.start()
                _pipe(conn, up)
                back.join()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass  # the other side closed: the tunnel ends
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already closed


def _nss_home(tmp: Path, ca_file: str | None) -> Path:
    """A HOME whose NSS database (what Chromium on Linux trusts) holds the stack's CA,
    or an empty one."""
    nssdb = tmp / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    if ca_file is not None:
        subprocess.run(
            [
                "certutil",
                "-A",
                "-d",
                f"sql:{nssdb}",
                "-t",
                "C,,",
                "-n",
                "modelgate test CA",
                "-i",
                ca_file,
            ],
            check=True,
        )
    return tmp


Launcher = Callable[[str | None], tuple[Browser, "Tunnel"]]


@pytest.fixture
def browser_for(
    tmp_path: Path, base_url: str, fresh_source_ip: Callable[[], str]
) -> Iterator[Launcher]:
    opened: list[tuple[Browser, Tunnel]] = []
    playwright = sync_playwright().start()

    def launch(ca_file: str | None) -> tuple[Browser, Tunnel]:
        home = _nss_home(tmp_path / f"home{len(opened)}", ca_file)
        origin = urlsplit(base_url)
        tunnel = Tunnel(f"{origin.hostname}:{origin.port or 443}", fresh_source_ip())
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
            env={**os.environ, "HOME": str(home)},
            proxy={"server": f"http://127.0.0.1:{tunnel.port}", "bypass": "<-loopback>"},
        )
        opened.append((browser, tunnel))
        return browser, tunnel

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
    page: Page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    answer = page.goto(f"{base_url}/docs")
    assert answer is not None and answer.status == 200
    expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)

    # Authorize: the OAuth2 password flow against /auth/token.
    page.get_by_role("button", name="Authorize").first.click()
    page.locator("#oauth_username").fill("admin")
    page.locator("#oauth_password").fill(admin_password)
    page.locator(".auth-container .modal-btn.auth.authorize").click()
    expect(page.locator(".auth-container .modal-btn.auth", has_text="Logout")).to_be_visible(
        timeout=30_000
    )
    page.locator(".modal-btn.btn-done").first.click()

    # Try it out on /predict with the example body the document gives.
    operation = page.locator(PREDICT_OPERATION)
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status")
    expect(status).to_have_text("200", timeout=30_000)
    body = operation.locator(".live-responses-table .response-col_description pre").first
    result = json.loads(body.inner_text())
    assert result["model"] == "iris" and result["prediction"] in (0, 1, 2)

    origin = base_url.rstrip("/")
    assert f"{origin}/auth/token" in requests and f"{origin}/predict" in requests
    # Everything the page loaded came from the stack: no CDN, no validator, no font host.
    assert [url for url in requests if not url.startswith(origin + "/")] == []
    assert problems == []  # no script error, no CSP violation
    assert set(tunnel.tunnelled) == {tunnel.allowed}
