"""The Kubernetes manifests start: each image they name runs with the very file layout and
process identity its pod spec gives it, and becomes ready.

No cluster runs here, so docker does what the kubelet would, read from the manifests'
YAML (deploy/k8s/base), so a manifest that changes to something that cannot start fails
here:

- the pod's securityContext: runAsUser and runAsGroup (``--user``), fsGroup as a
  supplementary group, a read-only root when the container asks for one, the capabilities
  it drops, no privilege gain;
- the container's environment: values, and the ConfigMap and Secret keys it names;
- each volume, laid out as the kubelet writes it: a Secret or projected volume is a folder
  (root, group fsGroup, 2777) holding a timestamped folder (2755) of the files (owner root,
  group fsGroup, mode defaultMode plus group-read), a ``..data`` link to it and one link
  per file; an emptyDir a fresh empty folder (root, group fsGroup, 2777); a claim of a
  volumeClaimTemplate a fresh empty volume (root, group fsGroup, 2775); the model store's
  claim the signed store, read-only.

Each container then is probed as its readinessProbe says, from its own network namespace;
a service's /health/ready must say ``ok`` (signed in to Redis; ``degraded`` otherwise).

The images are those make test-compose built; the Secrets hold `make init`'s files, as
docs/scale-out.md creates them. The one liberty: auth's database URL Secret names a SQLite
file in auth's emptyDir (the manifests' PostgreSQL is the official image, not ours)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_command
from tests.container_probes import ANONYMOUS, SERVICE_USER, redis_outcomes

pytestmark = pytest.mark.compose  # needs the images make test-compose builds

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
PROJECT_SECRETS = ROOT / "secrets"
STAMP = "..2026_01_01_00_00_00.000000001"
# The kubelet's modes: an emptyDir (0777) and a Secret volume's folder, its timestamped
# folder (0755), each with fsGroup's setgid bit; a fresh claim's root, group-writable.
EMPTY_DIR_MODE = 0o2777
STAMP_MODE = 0o2755
CLAIM_MODE = 0o2775
# Started in this order (a service waits for Redis, nginx resolves the services at start).
PODS = ("redis", "auth", "inference", "crypto", "nginx")
SERVICES = ("auth", "inference", "crypto")
HELPER_IMAGE = "modelgate/redis:local"  # any image with chown, chmod and sh


def _objects() -> list[dict[str, Any]]:
    found = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


OBJECTS = _objects()


def _workload(name: str) -> dict[str, Any]:
    return next(
        o
        for o in OBJECTS
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet") and o["metadata"]["name"] == name
    )


def _config_maps() -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o["data"] for o in OBJECTS if o["kind"] == "ConfigMap"}


def _secret_data() -> dict[str, dict[str, bytes]]:
    """The Secrets the operator creates with kubectl (docs/scale-out.md), from `make init`'s
    files."""
    read = lambda name: (PROJECT_SECRETS / name).read_bytes()  # noqa: E731
    certs = ROOT / "certs"
    return {
        "modelgate-jwks": {"jwks.json": read("jwks.json")},
        "modelgate-admin": {"admin_password": read("admin_password")},
        "modelgate-jwt-keys": {
            p.name: p.read_bytes() for p in (PROJECT_SECRETS / "jwt").glob("*.pem")
        },
        "modelgate-fernet": {"fernet_keyring.json": read("fernet_keyring.json")},
        "modelgate-model-signing": {"model_signing_key.pub": read("model_signing_key.pub")},
        "modelgate-tls": {
            name: (certs / name).read_bytes() for name in ("server.pem", "server-key.pem", "ca.pem")
        },
        "modelgate-redis": {
            "auth_password": read("redis_auth_password"),
            "inference_password": read("redis_inference_password"),
            "crypto_password": read("redis_crypto_password"),
            "users.acl": read("redis_users.acl"),
        },
        "modelgate-auth-database": {"url": b"sqlite:////var/lib/modelgate/data/users.db"},
    }


class Kubelet:
    """Runs pods' containers with docker, laid out as the kubelet would."""

    def __init__(self, root: Path, network: str) -> None:
        self.root = root
        self.network = network
        self.containers: dict[str, str] = {}
        self.secret_data = _secret_data()
        # (path, mode or None for a link): owner root, group fsGroup, applied by root.
        self._owned: list[tuple[Path, int | None, int]] = []

    def _owned_by_root(self, path: Path, mode: int | None, fs_group: int) -> None:
        self._owned.append((path, mode, fs_group))

    def _apply_ownership(self) -> None:
        """chown root:fsGroup, then chmod (a chown may clear set-id bits), in a root
        container: whoever runs the test."""
        lines = []
        for path, mode, group in self._owned:
            inside = "/v/" + str(path.relative_to(self.root))
            lines.append(f"chown -h 0:{group} {shlex.quote(inside)}")
            if mode is not None:
                lines.append(f"chmod {mode:o} {shlex.quote(inside)}")
        self._owned.clear()
        run_command(
            ["docker", "run", "--rm", "--user", "0", "--network", "none",
             "-v", f"{self.root}:/v", "--entrypoint", "sh", HELPER_IMAGE,
             "-e", "-c", "\n".join(lines)]
        )  # fmt: skip

    def _secret_volume(self, folder: Path, files: dict[str, bytes], mode: int, group: int) -> None:
        stamp = folder / STAMP
        stamp.mkdir(parents=True)
        self._owned_by_root(folder, EMPTY_DIR_MODE, group)
        self._owned_by_root(stamp, STAMP_MODE, group)
        for path, data in files.items():
            (stamp / path).write_bytes(data)
            # fsGroup on a read-only volume: group fsGroup and group-read added.
            self._owned_by_root(stamp / path, mode | 0o440, group)
        (folder / "..data").symlink_to(STAMP)
        self._owned_by_root(folder / "..data", None, group)
        for path in files:
            (folder / path).symlink_to(f"..data/{path}")
            self._owned_by_root(folder / path, None, group)

    def _volume_files(self, volume: dict[str, Any]) -> tuple[dict[str, bytes], int]:
        if "secret" in volume:
            spec = volume["secret"]
            data = self.secret_data[spec["secretName"]]
            items = spec.get("items") or [{"key": k, "path": k} for k in data]
            return {i["path"]: data[i["key"]] for i in items}, spec.get("defaultMode", 0o644)
        projected = volume["projected"]
        files: dict[str, bytes] = {}
        for source in projected["sources"]:
            data = self.secret_data[source["secret"]["name"]]
            files.update({i["path"]: data[i["key"]] for i in source["secret"]["items"]})
        return files, projected.get("defaultMode", 0o644)

    def _env(self, container: dict[str, Any]) -> list[str]:
        args = []
        for var in container.get("env", []):
            if "value" in var:
                value = var["value"]
            elif "secretKeyRef" in var["valueFrom"]:
                ref = var["valueFrom"]["secretKeyRef"]
                value = self.secret_data[ref["name"]][ref["key"]].decode()
            else:
                ref = var["valueFrom"]["configMapKeyRef"]
                value = _config_maps()[ref["name"]][ref["key"]]
            args += ["-e", f"{var['name']}={value}"]
        return args

    def run(self, name: str) -> str:
        workload = _workload(name)
        pod = workload["spec"]["template"]["spec"]
        context = pod["securityContext"]
        (container,) = pod["containers"]
        sc = container.get("securityContext", {})
        uid, gid, group = context["runAsUser"], context["runAsGroup"], context["fsGroup"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        args = [
            "docker", "run", "-d", "--name", f"mg-k8s-{name}-{secrets.token_hex(3)}",
            "--network", self.network, "--network-alias", name,
            "--user", f"{uid}:{gid}", "--group-add", str(group),
        ]  # fmt: skip
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for capability in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges:true"]
        for mount in container.get("volumeMounts", []):
            target = mount["mountPath"]
            folder = self.root / name / mount["name"]
            volume = volumes.get(mount["name"])
            if volume is None:
                assert mount["name"] in claims, f"{name}: no volume {mount['name']}"
                folder.mkdir(parents=True)
                self._owned_by_root(folder, CLAIM_MODE, group)
            elif "emptyDir" in volume:
                folder.mkdir(parents=True)
                self._owned_by_root(folder, EMPTY_DIR_MODE, group)
            elif "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] == "modelgate-model-store"
                folder = ROOT / "model_store"
            else:
                files, mode = self._volume_files(volume)
                self._secret_volume(folder, files, mode, group)
            read_only = ":ro" if mount.get("readOnly") else ""
            args += ["-v", f"{folder}:{target}{read_only}"]
        self._apply_ownership()
        args += self._env(container)
        args.append(container["image"])
        args += container.get("command", []) + container.get("args", [])
        self.containers[name] = run_command(args).strip()
        return self.containers[name]

    def remove(self) -> None:
        for container in self.containers.values():
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)


# A readinessProbe, from inside the pod's network namespace: argv kind, port, path.
PROBE = """
import json, socket, sys, urllib.request
kind, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    if kind == "tcpSocket":
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        print("open")
    else:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            print(answer.status, json.loads(answer.read()).get("status"))
except Exception as exc:
    print("not-ready", type(exc).__name__, getattr(exc, "code", ""))
"""


def _probe(kubelet: Kubelet, name: str, python_image: str) -> str:
    (container,) = _workload(name)["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]
    kind = "tcpSocket" if "tcpSocket" in probe else "httpGet"
    port = probe[kind]["port"]
    if isinstance(port, str):  # a named port
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", f"container:{kubelet.containers[name]}",
         "--read-only", "--cap-drop", "ALL", "--entrypoint", "python3", python_image,
         "-c", PROBE, kind, str(port), probe[kind].get("path", "")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()[-300:]


def _logs(container: str) -> str:
    done = subprocess.run(
        ["docker", "logs", "--tail", "20", container], capture_output=True, text=True, timeout=30
    )
    return (done.stdout + done.stderr)[-3000:]


def _running(container: str) -> bool:
    state = run_command(["docker", "inspect", "--format", "{{.State.Running}}", container])
    return state.strip() == "true"


def _wait_ready(kubelet: Kubelet, names: tuple[str, ...], python_image: str) -> None:
    # A service's ready answer: 200 with "ok"; Redis's and nginx's probe: the port is open.
    wanted = {"tcpSocket": "open", "httpGet": "200 ok"}
    pending = set(names)
    answers: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            if not _running(kubelet.containers[name]):
                answers[name] = "exited"
                deadline = 0  # a container that stopped will not become ready
                continue
            probe = _workload(name)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
            answers[name] = _probe(kubelet, name, python_image)
            if answers[name] == wanted["tcpSocket" if "tcpSocket" in probe else "httpGet"]:
                pending.discard(name)
        if pending and time.monotonic() < deadline:
            time.sleep(2)
    details = {name: f"{answers.get(name)}\n{_logs(kubelet.containers[name])}" for name in pending}
    assert not pending, f"not ready: {json.dumps(details, indent=1)}"


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[Kubelet]:
    network = f"mg-k8s-{secrets.token_hex(4)}"
    run_command(["docker", "network", "create", "--internal", network])
    node = Kubelet(tmp_path, network)
    try:
        yield node
    finally:
        node.remove()
        subprocess.run(["docker", "network", "rm", network], capture_output=True, timeout=60)
        # The volumes' files belong to root now: hand them back for pytest's clean-up.
        subprocess.run(
            ["docker", "run", "--rm", "--user", "0", "--network", "none", "-v",
             f"{tmp_path}:/v", "--entrypoint", "chown", HELPER_IMAGE, "-R", "-h",
             f"{os.getuid()}:{os.getgid()}", "/v"],
            capture_output=True, timeout=60,
        )  # fmt: skip


def test_every_image_starts_ready_with_the_manifests_file_layout(kubelet: Kubelet) -> None:
    # The manifests name these images and lay out these volumes, as the module says.
    assert {name: _workload(name)["kind"] for name in PODS} == {
        "redis": "StatefulSet",
        **dict.fromkeys(("auth", "inference", "crypto", "nginx"), "Deployment"),
    }
    kubelet.run("redis")
    for name in SERVICES:
        kubelet.run(name)
    python_image = _workload("auth")["spec"]["template"]["spec"]["containers"][0]["image"]
    _wait_ready(kubelet, ("redis", *SERVICES), python_image)
    kubelet.run("nginx")
    _wait_ready(kubelet, ("nginx",), python_image)

    # Redis loaded the ACL file from its Secret: nothing but PING without a password, each
    # service signs in with the password from its own Secret volume.
    for name in SERVICES:
        container = kubelet.containers[name]
        assert redis_outcomes(container, "redis", "") == ANONYMOUS, name
        assert redis_outcomes(container, "redis", name) == SERVICE_USER, name
