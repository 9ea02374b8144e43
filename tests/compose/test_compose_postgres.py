"""make test-compose keeps users in PostgreSQL (deploy/compose/postgres.yaml): the suites
before this one ran through nginx against auth on PostgreSQL, and this checks that they
really did."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.compose.conftest import ComposeProject

pytestmark = pytest.mark.compose


def psql(project: ComposeProject, query: str) -> str:
    # The local socket (trust), as the database's owner role.
    return project.exec(
        "postgres",
        "psql", "-X", "-h", "/var/run/postgresql", "-U", "modelgate", "-d", "modelgate",
        "-tAc", query,
    ).stdout.strip()  # fmt: skip


def test_users_made_through_nginx_land_in_postgresql(
    compose_project: ComposeProject, make_user: Callable[..., dict[str, str]]
) -> None:
    user = make_user()
    # The name is ours (t-<hex>), safe to put in the query.
    assert (
        psql(compose_project, f"SELECT role FROM users WHERE username = '{user['username']}'")
        == "user"
    )
    # Alembic made the schema and stamped it.
    assert psql(compose_project, "SELECT count(*) FROM alembic_version") == "1"


def test_auth_keeps_no_sqlite_file(compose_project: ComposeProject) -> None:
    listing = compose_project.exec("auth", "ls", "-A", "/var/lib/modelgate/data").stdout
    assert listing.split() == []


def test_the_database_password_is_a_secret_not_an_environment_variable(
    compose_project: ComposeProject,
) -> None:
    for service in ("auth", "postgres"):
        env = compose_project.containers()[service]["Config"]["Env"]
        assert not [e for e in env if "PASSWORD=" in e or e.startswith("MG_AUTH_DATABASE_URL=")]
