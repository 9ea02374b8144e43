"""The gateway's API documentation: one OpenAPI document for every route a client
reaches through nginx, built from the three services' own apps, and the folder nginx
serves at /docs and /openapi.json when MG_PUBLIC_DOCS is on.

Which routes count is read from nginx's template: a service route is in the document
when nginx sends its path to that service, so a route the edge does not serve (health
probes, metrics) never appears, and a route a service adds appears without an edit here.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelgate_common import write_public

SERVICES = ("auth", "inference", "crypto")
# Swagger UI's release files that /docs serves (from the npm package swagger-ui-dist,
# installed by `make docs-ui` from nginx/docs/package-lock.json, which pins their hash).
UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE")
# Ours: the page and the script that starts Swagger UI (no inline script: the CSP forbids it).
PAGE_FILES = ("index.html", "swagger-initializer.js")

# A location block: its modifier, its path and its body (which holds ${MG_*} placeholders).
_LOCATION = re.compile(r"location\s+(=\s+)?(/\S*)\s*\{((?:[^{}]|\$\{MG_\w+\})*)\}")
# The service a location passes to: its upstream (or the variable holding it) is named
# after it: $auth_backend, auth_upstream.
_BACKEND = re.compile(r"proxy_pass\s+https?://\$?([a-z]+)")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class DocsError(RuntimeError):
    """The documentation cannot be built as asked (a clash, a missing file)."""


def public_docs_enabled(env: dict[str, str] | None = None) -> bool:
    """MG_PUBLIC_DOCS: off unless set to 1 (or true, yes, on)."""
    value = (os.environ if env is None else env).get("MG_PUBLIC_DOCS", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DocsError(f"MG_PUBLIC_DOCS must be 1 or 0, not {value!r}")


@dataclass(frozen=True)
class EdgeRoutes:
    """nginx's locations that pass requests to a service: exact ones and prefixes."""

    exact: dict[str, str]
    prefixes: dict[str, str]

    @classmethod
    def from_template(cls, template: str) -> EdgeRoutes:
        exact: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        for match in _LOCATION.finditer(template):
            backend = _BACKEND.search(match.group(3))
            if backend is None or backend.group(1) not in SERVICES:
                continue
            (exact if match.group(1) else prefixes)[match.group(2)] = backend.group(1)
        if not exact and not prefixes:
            raise DocsError("nginx's template passes no location to a service")
        return cls(exact, prefixes)

    def service_of(self, path: str) -> str | None:
        """The service nginx sends ``path`` to (exact match first, then the longest
        prefix, as nginx chooses), or None when nginx answers it itself."""
        if path in self.exact:
            return self.exact[path]
        matches = [prefix for prefix in self.prefixes if path.startswith(prefix)]
        return self.prefixes[max(matches, key=len)] if matches else None


def service_openapi(service: str) -> dict[str, Any]:
    """The OpenAPI document the service's own app builds."""
    module = importlib.import_module(f"modelgate_{service}.main")
    document: dict[str, Any] = module.create_app().openapi()
    return document


def gateway_openapi(
    edge: EdgeRoutes, documents: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Merge the services' documents into one, keeping each path that nginx sends to
    the service that declares it. Two services defining one path, or one component
    name differently, is an error rather than a silent choice."""
    documents = documents or {service: service_openapi(service) for service in SERVICES}
    paths: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}
    for service, document in documents.items():
        for path, operations in document.get("paths", {}).items():
            if edge.service_of(path) != service:
                continue
            if path in paths:
                raise DocsError(f"{path} is defined by two services")
            paths[path] = operations
            for operation in operations.values():
                for tag in operation.get("tags", ()):
                    tags.setdefault(tag, {"name": tag})
        for kind, entries in document.get("components", {}).items():
            merged = components.setdefault(kind, {})
            for name, value in entries.items():
                if merged.setdefault(name, value) != value:
                    raise DocsError(f"components/{kind}/{name} differs between services")
        for tag in document.get("tags", ()):
            if tag["name"] in tags:
                tags[tag["name"]] = tag
    first = next(iter(documents.values()))
    return {
        "openapi": first["openapi"],
        "info": {
            "title": "modelgate",
            "version": first["info"]["version"],
            "description": "Every route of the gateway, as clients call it through nginx: "
            "sign in at `/auth/token` (Authorize), then call the models and crypto routes "
            "with the token.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {kind: dict(sorted(v.items())) for kind, v in sorted(components.items())},
        "tags": list(tags.values()),
    }


def build_docs(out: Path, ui_dir: Path, nginx_dir: Path) -> Path:
    """Write the folder nginx serves: the merged openapi.json, Swagger UI's files and
    our page. The folder is written anew each time, so it holds nothing stale."""
    missing = [name for name in UI_FILES if not (ui_dir / name).is_file()]
    if missing:
        raise DocsError(
            f"Swagger UI's files are missing from {ui_dir} ({', '.join(missing)}): "
            "run `make docs-ui`"
        )
    edge = EdgeRoutes.from_template((nginx_dir / "nginx.conf.template").read_text())
    document = gateway_openapi(edge)
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "ui").mkdir(parents=True)
    for name in UI_FILES:
        shutil.copyfile(ui_dir / name, staging / "ui" / name)
    for name in PAGE_FILES:
        shutil.copyfile(nginx_dir / "docs" / name, staging / "ui" / name)
    write_public(staging / "openapi.json", json.dumps(document, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
