"""Render nginx's configuration from nginx/ templates for the native stack.

The templates use ``${MG_*}`` placeholders only (envsubst syntax, so the
container image can render the same files); nginx's own ``$variables`` are
left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ._docs import build_docs, public_docs_enabled
from ._paths import ProjectPaths

_PLACEHOLDER = re.compile(r"\$\{(MG_[A-Z0-9_]+)\}")


def nginx_values(paths: ProjectPaths, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    conf_dir = paths.var / "nginx"
    values = {
        "MG_NGINX_WORKERS": "auto",
        "MG_NGINX_CONF_DIR": str(conf_dir),
        "MG_NGINX_RUN_DIR": str(conf_dir / "run"),
        "MG_NGINX_ERROR_LOG": str(paths.var / "log" / "nginx-error.log"),
        "MG_NGINX_ACCESS_LOG": str(paths.var / "log" / "nginx-access.jsonl"),
        "MG_NGINX_MAX_BODY": "1m",
        "MG_NGINX_RATE": "100r/s",
        "MG_NGINX_BURST": "200",
        "MG_NGINX_BURST_DELAY": "50",
        "MG_NGINX_CONN_PER_IP": "256",
        "MG_NGINX_LOGIN_RATE": "1r/s",
        "MG_NGINX_LOGIN_BURST": "10",
        "MG_NGINX_UPSTREAMS": "static",
        "MG_NGINX_RESOLVER": "127.0.0.53",
        "MG_NGINX_RESOLVER_VALID": "5s",
        "MG_CERTS_DIR": str(paths.certs),
        "MG_HTTPS_PORT": "8443",
        "MG_HTTP_PORT": "8080",
        "MG_BIND_ADDRESS": "127.0.0.1",
        "MG_AUTH_PORT": "8101",
        "MG_INFERENCE_PORT": "8102",
        "MG_CRYPTO_PORT": "8103",
        "MG_DOCS_DIR": str(paths.var / "docs"),
        "MG_SWAGGER_UI_DIR": str(
            paths.root / "build" / "docs-ui" / "node_modules" / "swagger-ui-dist"
        ),
    }
    values.update({k: v for k, v in env.items() if k.startswith("MG_")})
    values["MG_NGINX_DOCS"] = "on" if public_docs_enabled(values) else "off"
    host = values["MG_BIND_ADDRESS"]
    values.setdefault("MG_HTTPS_LISTEN", f"{host}:{values['MG_HTTPS_PORT']}")
    values.setdefault("MG_HTTP_LISTEN", f"{host}:{values['MG_HTTP_PORT']}")
    # The services' Unix sockets (MG_SOCKET_DIR of deploy/supervisord.conf): only there do
    # they believe the X-Forwarded-For nginx sets.
    sockets = paths.var / "run" / "sockets"
    for service in ("AUTH", "INFERENCE", "CRYPTO"):
        values.setdefault(f"MG_{service}_UPSTREAM", f"unix:{sockets}/{service.lower()}.sock")
    return values


def render_text(template: str, values: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"nginx template needs {name}")
        return values[name]

    return _PLACEHOLDER.sub(substitute, template)


def render_nginx(paths: ProjectPaths, source: Path | None = None) -> Path:
    source = source or paths.root / "nginx"
    values = nginx_values(paths)
    out = Path(values["MG_NGINX_CONF_DIR"])
    (out / "snippets").mkdir(parents=True, exist_ok=True)
    Path(values["MG_NGINX_RUN_DIR"]).mkdir(parents=True, exist_ok=True)
    (paths.var / "log").mkdir(parents=True, exist_ok=True)
    template = (source / "nginx.conf.template").read_text()
    (out / "nginx.conf").write_text(render_text(template, values))
    for snippet in sorted((source / "snippets").glob("*.conf")):
        (out / "snippets" / snippet.name).write_text(render_text(snippet.read_text(), values))
    shutil.copyfile(source / "ffdhe2048.pem", out / "ffdhe2048.pem")
    if values["MG_NGINX_DOCS"] == "on":
        build_docs(
            Path(values["MG_DOCS_DIR"]), ui_dir=Path(values["MG_SWAGGER_UI_DIR"]), nginx_dir=source
        )
    return out / "nginx.conf"
