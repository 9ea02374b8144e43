"""Swagger UI at /docs in a real browser, for the native and the compose stack's tests.

The browser is Debian's Chromium, headless, driven by Playwright. It trusts the stack's CA
the way a user's browser would: the CA is imported into a throwaway NSS database (certutil)
in a throwaway HOME, and nothing relaxes certificate checks. Its connections leave through a
local CONNECT proxy that tunnels only to the stack's address and opens each tunnel from a
given loopback address, so a sign-in counts against a per-address budget of its own, and a
request for anything else (a CDN, a font host) is refused and noted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, Playwright, expect

CHROMIUM = "/usr/bin/chromium"
PREDICT_OPERATION = "#operations-seed-predict_seed_predict_post"


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


def nss_home(home: Path, ca_file: str | None) -> Path:
    """A HOME whose NSS database (what Chromium on Linux trusts) holds the stack's CA,
    or an empty one."""
    nssdb = home / ".pki" / "nssdb"
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
    return home


def launch_chromium(
    playwright: Playwright, home: Path, base_url: str, ca_file: str | None, source_ip: str
) -> tuple[Browser, Tunnel]:
    """Chromium trusting ``ca_file`` (None: no CA of the stack), reaching only the stack's
    address, from ``source_ip``. The caller closes both."""
    nss_home(home, ca_file)
    origin = urlsplit(base_url)
    tunnel = Tunnel(f"{origin.hostname}:{origin.port or 443}", source_ip)
    try:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
            env={**os.environ, "HOME": str(home)},
            proxy={"server": f"http://127.0.0.1:{tunnel.port}", "bypass": "<-loopback>"},
        )
    except BaseException:
        tunnel.close()
        raise
    return browser, tunnel


def authorize_and_predict(
    browser: Browser, tunnel: Tunnel, base_url: str, username: str, password: str
) -> None:
    """Open /docs, Authorize (the OAuth2 password flow against /auth/token), then Try it out
    on /predict with the example body: a prediction, everything from the stack's origin,
    no script error or CSP violation."""
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
    page.locator("#oauth_username").fill(username)
    page.locator("#oauth_password").fill(password)
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
    page.close()
