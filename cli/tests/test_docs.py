"""The gateway's OpenAPI document and the /docs switch (MG_PUBLIC_DOCS) of nginx's
configuration. The browser test through a live stack is tests/integration/test_docs_ui.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from modelgate_cli._docs import (
    PAGE_FILES,
    UI_FILES,
    DocsError,
    EdgeRoutes,
    gateway_openapi,
    public_docs_enabled,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "nginx" / "nginx.conf.template").read_text()


def test_edge_routes_follow_nginx_choice() -> None:
    edge = EdgeRoutes.from_template(TEMPLATE)
    assert edge.service_of("/auth/token") == "auth"
    assert edge.service_of("/auth/users/{username}") == "auth"
    assert edge.service_of("/predict") == "inference"
    assert edge.service_of("/v1/models/{name}/predict") == "inference"
    assert edge.service_of("/v2/models/{name}/infer") == "inference"
    assert edge.service_of("/crypto/encrypt") == "crypto"
    assert edge.service_of("/encrypt/") == "crypto"
    # Not routed: nginx answers these itself (404, or its own /healthz).
    for path in ("/health/ready", "/metrics", "/docs", "/openapi.json", "/predict/x", "/"):
        assert edge.service_of(path) is None, path


def test_edge_routes_longest_prefix_and_exact_first() -> None:
    template = """
        location /a/ { proxy_pass http://$auth_backend; include ${MG_X}/p.conf; }
        location /a/b/ { proxy_pass http://crypto_upstream; }
        location = /a/x { proxy_pass http://$inference_backend; }
        location /z/ { proxy_pass http://elsewhere; }
        location / { return 404; }
    """
    edge = EdgeRoutes.from_template(template)
    assert edge.service_of("/a/q") == "auth"
    assert edge.service_of("/a/b/q") == "crypto"
    assert edge.service_of("/a/x") == "inference"
    assert edge.service_of("/z/q") is None
    assert edge.service_of("/b") is None


def test_a_template_without_service_locations_is_refused() -> None:
    with pytest.raises(DocsError, match="passes no location"):
        EdgeRoutes.from_template("location / { return 404; }")


def _doc(paths: dict[str, Any], schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "x", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas or {}},
    }


def _op(tag: str) -> dict[str, Any]:
    return {"get": {"tags": [tag], "responses": {}}}


EDGE = EdgeRoutes.from_template(TEMPLATE)


def test_merge_keeps_routed_paths_of_their_own_service() -> None:
    merged = gateway_openapi(
        EDGE,
        {
            "auth": _doc({"/auth/token": _op("tokens"), "/health/live": _op("health")}),
            # A path nginx sends to auth is not inference's to document.
            "inference": _doc({"/predict": _op("seed"), "/auth/evil": _op("x")}),
            "crypto": _doc({"/crypto/encrypt": _op("crypto"), "/metrics": _op("m")}),
        },
    )
    assert sorted(merged["paths"]) == ["/auth/token", "/crypto/encrypt", "/predict"]
    assert [tag["name"] for tag in merged["tags"]] == ["tokens", "seed", "crypto"]
    assert merged["info"]["title"] == "modelgate"


def test_merge_refuses_clashes() -> None:
    with pytest.raises(DocsError, match="components/schemas/Error differs"):
        gateway_openapi(
            EDGE,
            {
                "auth": _doc({}, {"Error": {"type": "object"}}),
                "crypto": _doc({}, {"Error": {"type": "string"}}),
            },
        )
    same = {"Error": {"type": "object"}}
    merged = gateway_openapi(EDGE, {"auth": _doc({}, same), "crypto": _doc({}, same)})
    assert merged["components"]["schemas"] == same


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("", False), ("0", False), ("off", False), ("1", True), ("true", True), ("ON", True)],
)
def test_public_docs_switch(value: str, enabled: bool) -> None:
    assert public_docs_enabled({"MG_PUBLIC_DOCS": value}) is enabled


def test_public_docs_switch_refuses_other_values() -> None:
    assert public_docs_enabled({}) is False
    with pytest.raises(DocsError, match="must be 1 or 0"):
        public_docs_enabled({"MG_PUBLIC_DOCS": "maybe"})


@pytest.fixture
def project(tmp_path: Path) -> dict[str, str]:
    """A project folder and a stand-in for Swagger UI's installed files."""
    ui = tmp_path / "swagger-ui-dist"
    ui.mkdir()
    for name in UI_FILES:
        (ui / name).write_text(f"/* {name} */")
    env = {
        **os.environ,
        "MG_ROOT": str(ROOT),
        "MG_VAR_DIR": str(tmp_path / "var"),
        "MG_CERTS_DIR": str(tmp_path / "certs"),
        "MG_SECRETS_DIR": str(tmp_path / "secrets"),
        "MG_SWAGGER_UI_DIR": str(ui),
    }
    env.pop("MG_PUBLIC_DOCS", None)
    return env


def _modelgate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: building the services' apps configures their logging.
    return subprocess.run(
        [sys.executable, "-m", "modelgate_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_docs_command_writes_the_merged_document(project: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "docs"
    done = _modelgate(project, "docs", "--out", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "openapi.json").read_text())
    paths = document["paths"]
    for path in ("/auth/token", "/auth/users/{username}", "/predict", "/v2/models/{name}/infer"):
        assert path in paths
    assert "/crypto/encrypt" in paths and "/encrypt/" in paths
    assert not [p for p in paths if p.startswith(("/health/", "/metrics"))]
    assert "/token" not in paths  # the seed's alias stays out of the document, as in auth's
    scheme = document["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "/auth/token"
    # Every operation that needs a token names the scheme the Authorize button fills.
    for path, operations in paths.items():
        for method, operation in operations.items():
            for requirement in operation.get("security", []):
                assert set(requirement) == {"OAuth2PasswordBearer"}, (method, path)
    assert sorted(p.name for p in (out / "ui").iterdir()) == sorted((*UI_FILES, *PAGE_FILES))
    assert (out / "openapi.json").stat().st_mode & 0o777 == 0o644


def test_docs_command_names_missing_swagger_ui(project: dict[str, str], tmp_path: Path) -> None:
    shutil.rmtree(project["MG_SWAGGER_UI_DIR"])
    done = _modelgate(project, "docs", "--out", str(tmp_path / "docs"))
    assert done.returncode == 1
    assert "make docs-ui" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("switch", ["0", "1"])
def test_render_nginx_with_docs_on_and_off(project: dict[str, str], switch: str) -> None:
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (make system-deps)")
    from modelgate_cli._certs import ensure_certificates

    ensure_certificates(Path(project["MG_CERTS_DIR"]))
    done = _modelgate({**project, "MG_PUBLIC_DOCS": switch}, "render-nginx")
    assert done.returncode == 0, done.stderr
    conf = Path(done.stdout.strip())
    state = "on" if switch == "1" else "off"
    assert f"snippets/docs-{state}.conf;" in conf.read_text()
    docs_dir = Path(project["MG_VAR_DIR"]) / "docs"
    assert (docs_dir / "openapi.json").is_file() is (switch == "1")
    tested = subprocess.run(
        ["nginx", "-t", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stderr


def test_render_nginx_refuses_an_unclear_switch(project: dict[str, str]) -> None:
    done = _modelgate({**project, "MG_PUBLIC_DOCS": "sometimes"}, "render-nginx")
    assert done.returncode == 1
    assert "MG_PUBLIC_DOCS must be 1 or 0" in done.stderr and "Traceback" not in done.stderr
