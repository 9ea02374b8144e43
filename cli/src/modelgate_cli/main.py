"""`modelgate`: the operator's command line."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from modelgate_common._logging import AUDIT_LOGGER, JsonFormatter, configure_audit

from . import keys, models
from ._auth import user_app
from ._clients import client_app
from ._configref import configuration_reference
from ._db import db_app
from ._docs import DocsError, build_docs
from ._init import run_init
from ._paths import ProjectPaths
from ._render import nginx_values, render_nginx
from ._status import preflight_problems, stack_status, wait_ready

app = typer.Typer(
    help="Operate a modelgate stack: secrets, users, keys, models, status.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="model")
app.add_typer(user_app, name="user")
app.add_typer(client_app, name="client")
app.add_typer(db_app, name="db")


@app.callback()
def main() -> None:
    """Run from the project folder, or set MG_ROOT."""
    # What an operator changes (users, keys, models) lands in the same audit
    # trail as what the services do, and is not echoed to the terminal.
    configure_audit(JsonFormatter("cli"), ProjectPaths.from_env().var / "log" / "audit.jsonl")
    logging.getLogger(AUDIT_LOGGER).propagate = False


@app.command()
def init() -> None:
    """Create certificates, secrets and demo models that are missing (idempotent)."""
    report_init(compose_env=True)


def report_init(*, compose_env: bool) -> None:
    """`init`, saying what it made; ``compose_env`` False in the compose stack's init
    container (modelgate_cli.container)."""
    try:
        made = run_init(ProjectPaths.from_env(), compose_env=compose_env)
    except ValueError as exc:  # a setting such as MG_TLS_HOSTNAMES
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for item in made:
        typer.echo(f"created {item}")
    if not made:
        typer.echo("nothing to do: everything exists")


@app.command("render-nginx")
def render_nginx_command() -> None:
    """Write nginx's configuration for the native stack into var/nginx from nginx/
    (and, when MG_PUBLIC_DOCS is on, the files of /docs into var/docs)."""
    typer.echo(_render_nginx(ProjectPaths.from_env()))


def _render_nginx(paths: ProjectPaths) -> Path:
    try:
        return render_nginx(paths)
    except DocsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def docs(
    out: Path = typer.Option(None, help="folder to write; default MG_DOCS_DIR or var/docs"),
    ui: Path = typer.Option(None, help="Swagger UI's files; default MG_SWAGGER_UI_DIR"),
) -> None:
    """Write what nginx serves at /docs and /openapi.json when MG_PUBLIC_DOCS is on: the
    gateway's OpenAPI document (every service route nginx passes on) and Swagger UI.
    `make run`/`make up` do this themselves; this is for an nginx elsewhere (compose)."""
    paths = ProjectPaths.from_env()
    try:
        values = nginx_values(paths)
        written = build_docs(
            out or Path(values["MG_DOCS_DIR"]),
            ui_dir=ui or Path(values["MG_SWAGGER_UI_DIR"]),
            nginx_dir=paths.root / "nginx",
        )
    except DocsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(written)


@app.command()
def status(
    wait: float = typer.Option(0, help="wait up to this many seconds for every part to be ready"),
) -> None:
    """Show what runs, what is ready and what is degraded; non-zero exit unless all serve."""
    paths = ProjectPaths.from_env()
    statuses = wait_ready(paths, wait) if wait > 0 else stack_status(paths)
    for s in statuses:
        typer.echo(f"{s.name:<10} {s.state:<9} {s.detail}")
    if not all(s.state in ("ok", "degraded") for s in statuses):
        raise typer.Exit(1)


@app.command()
def preflight() -> None:
    """Check that nginx and Redis are installed and the stack's ports are free."""
    problems = preflight_problems()
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)


@app.command()
def prepare() -> None:
    """Everything a native start needs, in one process: init, render nginx's
    configuration, preflight (what `make run` and `make up` call)."""
    init()
    _render_nginx(ProjectPaths.from_env())
    preflight()


@app.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (docs/configuration.md) generated from the settings."""
    typer.echo(configuration_reference(), nl=False)


if __name__ == "__main__":
    app()
