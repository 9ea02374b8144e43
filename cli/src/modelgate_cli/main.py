"""`modelgate`: the operator's command line."""

from __future__ import annotations

import typer

from ._init import run_init
from ._paths import ProjectPaths

app = typer.Typer(
    help="Operate a modelgate stack: secrets, users, keys, models, status.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Run from the project folder, or set MG_ROOT."""


@app.command()
def init() -> None:
    """Create certificates, secrets and demo models that are missing (idempotent)."""
    made = run_init(ProjectPaths.from_env())
    for item in made:
        typer.echo(f"created {item}")
    if not made:
        typer.echo("nothing to do: everything exists")


if __name__ == "__main__":
    app()
