"""How the compose stack's containers run, from `docker inspect` and from inside them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.compose.conftest import ComposeProject
from tests.conftest import run_command
from tests.container_probes import (
    ANONYMOUS,
    SERVICE_USER,
    WRONG_PASSWORD,
    redis_outcomes,
    redis_ping,
)

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[2]
# make test-compose runs compose.yaml with deploy/compose/postgres.yaml.
SERVICES = {"nginx", "auth", "inference", "crypto", "redis", "postgres"}
# What each container may read from secrets/: its own copies, which `init` puts into its
# volume under /run/secrets (nginx's certificate and key: /etc/modelgate/certs).
SECRETS = {
    "nginx": {"server.pem", "server-key.pem"},
    "redis": {"redis_users.acl"},
    "postgres": {"postgres_password"},
    "auth": {"admin_password", "jwks.json", "jwt", "database_url", "redis_auth_password"},
    "inference": {"jwks.json", "model_signing_key.pub", "redis_inference_password"},
    "crypto": {"jwks.json", "fernet_keyring.json", "redis_crypto_password"},
}
# The networks each container is on: nginx shares none with Redis or PostgreSQL.
NETWORKS = {
    "nginx": {"public", "internal"},
    "auth": {"internal", "backend"},
    "inference": {"internal", "backend"},
    "crypto": {"internal", "backend"},
    "redis": {"backend"},
    "postgres": {"backend"},
}


def proc_status(project: ComposeProject, service: str) -> dict[str, str]:
    """/proc/1/status of the service's main process, as the kernel sees it."""
    text = project.exec(service, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_the_whole_stack_runs(compose_project: ComposeProject) -> None:
    containers = compose_project.containers()
    assert set(containers) == SERVICES
    for service, c in containers.items():
        assert c["State"]["Health"]["Status"] == "healthy", service


def test_every_container_runs_as_a_non_root_user(compose_project: ComposeProject) -> None:
    for service, c in compose_project.containers().items():
        user = c["Config"]["User"]
        assert user and user.split(":")[0] not in ("0", "root"), f"{service} user {user!r}"
        uids = proc_status(compose_project, service)["Uid"].split()
        assert "0" not in uids, f"{service} runs with uid {uids}"


def test_root_file_systems_are_read_only(compose_project: ComposeProject) -> None:
    for service, c in compose_project.containers().items():
        assert c["HostConfig"]["ReadonlyRootfs"] is True, service
        probe = compose_project.exec(service, "touch", "/usr/local/probe", check=False)
        assert probe.returncode != 0, service
        assert "Read-only file system" in probe.stderr, f"{service}: {probe.stderr}"


def test_no_capabilities_and_no_privilege_gain(compose_project: ComposeProject) -> None:
    for service, c in compose_project.containers().items():
        host = c["HostConfig"]
        assert host["CapDrop"] == ["ALL"], service
        assert not host["CapAdd"], service
        assert host["Privileged"] is False, service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        status = proc_status(compose_project, service)
        for kind in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[kind], 16) == 0, f"{service} {kind} {status[kind]}"
        assert status["NoNewPrivs"].strip() == "1", service


def test_only_nginx_publishes_ports_and_only_on_loopback(
    compose_project: ComposeProject, https_port: int, http_port: int
) -> None:
    for service, c in compose_project.containers().items():
        bindings = {
            port: [(b["HostIp"], int(b["HostPort"])) for b in (hosts or [])]
            for port, hosts in (c["NetworkSettings"]["Ports"] or {}).items()
            if hosts
        }
        if service == "nginx":
            assert bindings == {
                "8443/tcp": [("127.0.0.1", https_port)],
                "8080/tcp": [("127.0.0.1", http_port)],
            }
        else:
            assert bindings == {}, service
            assert not c["HostConfig"]["PortBindings"], service


def test_services_sit_on_internal_networks_and_nginx_apart_from_redis(
    compose_project: ComposeProject,
) -> None:
    assert compose_project.network("internal")["Internal"] is True
    assert compose_project.network("backend")["Internal"] is True
    assert compose_project.network("public")["Internal"] is False
    for service, c in compose_project.containers().items():
        networks = {
            name.removeprefix(f"{compose_project.name}_")
            for name in c["NetworkSettings"]["Networks"]
        }
        assert networks == NETWORKS[service], service


def test_nginx_cannot_reach_redis(compose_project: ComposeProject) -> None:
    containers = compose_project.containers()
    redis_ip = containers["redis"]["NetworkSettings"]["Networks"][
        f"{compose_project.name}_backend"
    ]["IPAddress"]
    python_image = containers["auth"]["Config"]["Image"]
    # Redis answers the probe from a service's network namespace ...
    assert redis_ping(containers["auth"]["Id"], redis_ip, 6379, python_image) == "PONG"
    # ... and from nginx's gets no answer from Redis, by address or by name.
    for host in (redis_ip, "redis"):
        found = redis_ping(containers["nginx"]["Id"], host, 6379, python_image)
        assert found != "PONG", f"nginx reached Redis at {host}"


def test_redis_lets_in_each_service_as_its_own_user_only(
    compose_project: ComposeProject,
) -> None:
    containers = compose_project.containers()
    for service in ("auth", "inference", "crypto"):
        container = containers[service]["Id"]
        assert redis_outcomes(container, "redis", "") == ANONYMOUS, service
        assert redis_outcomes(container, "redis", service) == SERVICE_USER, service
        wrong = redis_outcomes(container, "redis", service, f"not-{service}s-password")
        assert wrong == WRONG_PASSWORD, service


def test_services_trust_forwarded_headers_from_nginx_alone(
    compose_project: ComposeProject,
) -> None:
    containers = compose_project.containers()
    nginx_ip = containers["nginx"]["NetworkSettings"]["Networks"][
        f"{compose_project.name}_internal"
    ]["IPAddress"]
    for service in ("auth", "inference", "crypto"):
        env = dict(e.split("=", 1) for e in containers[service]["Config"]["Env"])
        assert env["MG_FORWARDED_ALLOW_IPS"] == nginx_ip, service


def test_each_container_gets_only_its_own_secrets(compose_project: ComposeProject) -> None:
    for service, c in compose_project.containers().items():
        folder = "/etc/modelgate/certs" if service == "nginx" else "/run/secrets"
        listing = compose_project.exec(
            service, "sh", "-c", f"cd {folder} 2>/dev/null && stat -c '%n %a %u' * || true"
        ).stdout.split("\n")
        found = {line.split()[0]: line.split()[1:] for line in listing if line.strip()}
        assert set(found) == SECRETS[service], service
        uid = c["Config"]["User"].split(":")[0]
        for name, (mode, owner) in found.items():
            # A folder (auth's jwt/) is 500; files are 400; all the container user's own.
            assert (mode, owner) in (("400", uid), ("500", uid)), f"{service} {name}"
        for m in c["Mounts"]:
            if m["Type"] == "bind" and m["Source"] != os.environ.get("MG_TEST_LOG_DIR"):
                assert m["RW"] is False, f"{service} mounts {m['Source']} writable"
                # Private keys that stay on the host: the CA's and the model-signing key.
                assert Path(m["Source"]).name not in ("ca-key.pem", "model_signing_key"), service


def test_images_hold_no_compiler_pip_or_cache(compose_project: ComposeProject) -> None:
    for service in ("auth", "inference", "crypto"):
        found = compose_project.exec(
            service,
            "sh",
            "-c",
            "for b in gcc cc c++ make pip pip3; do command -v $b; done; "
            "ls -d /root/.cache /tmp/deps 2>/dev/null; true",
        ).stdout.split()
        assert found == [], f"{service}: {found}"


def test_stop_grace_outlasts_gunicorn_graceful_timeout(compose_project: ComposeProject) -> None:
    config = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r'MG_GRACEFUL_TIMEOUT", "(\d+)"', config).group(1))  # type: ignore[union-attr]
    for service in ("auth", "inference", "crypto"):
        c = compose_project.containers()[service]
        assert c["Config"]["StopTimeout"] > graceful, service


def test_service_images_differ_only_in_their_own_source(compose_project: ComposeProject) -> None:
    """One Dockerfile builds them: the dependency layers are built once and shared."""
    containers = compose_project.containers()
    layers = {
        service: json.loads(
            run_command(["docker", "image", "inspect", containers[service]["Image"]])
        )[0]["RootFS"]["Layers"]
        for service in ("auth", "inference", "crypto")
    }
    assert layers["auth"][:-1] == layers["inference"][:-1] == layers["crypto"][:-1]
    assert len({tuple(found) for found in layers.values()}) == 3
