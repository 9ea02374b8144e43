"""The Kubernetes manifests, offline: every object of the base and of each overlay (as
`kubectl apply -k` would render it) validates against the Kubernetes API schemas
(kubernetes-validate, strict: no unknown fields), and a policy check holds: non-root,
read-only root file system, no capabilities, no privilege escalation, resources and
probes set, a Service and a PodDisruptionBudget per component, an HPA for inference,
NetworkPolicies that let only nginx reach the services and only services reach the stores.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).parent
KUBERNETES_VERSION = "1.30.0"  # the oldest version still in upstream support at writing
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
WORKLOADS = ("Deployment", "StatefulSet")
SERVICES = ("auth", "inference", "crypto")


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[dict[str, Any]]:
    """A small kustomize: resources (files or folders), namespace, images, replicas.
    It refuses any other field, so an overlay cannot rely on what this does not do."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - {"apiVersion", "kind", "resources", "namespace", "images", "replicas"}
    assert not unknown, f"{folder}: fields this loader does not render: {unknown}"
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        objects += render(target) if target.is_dir() else _load(target)
    objects = copy.deepcopy(objects)
    images = {i["name"]: i for i in spec.get("images", [])}
    replicas = {r["name"]: r["count"] for r in spec.get("replicas", [])}
    for obj in objects:
        if "namespace" in spec:
            obj["metadata"]["namespace"] = spec["namespace"]
        if obj["kind"] in WORKLOADS:
            name = obj["metadata"]["name"]
            if name in replicas:
                obj["spec"]["replicas"] = replicas[name]
            for container in obj["spec"]["template"]["spec"]["containers"]:
                repo, _, tag = container["image"].partition(":")
                if repo in images:
                    new = images[repo]
                    container["image"] = f"{new.get('newName', repo)}:{new.get('newTag', tag)}"
    return objects


TREES = ["base", *(f"overlays/{name}" for name in OVERLAYS)]


@pytest.fixture(params=TREES)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_there_are_overlays() -> None:
    assert "production" in OVERLAYS


def test_every_object_validates_against_the_api_schema(objects: list[dict[str, Any]]) -> None:
    assert len(objects) >= 20
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")


def test_a_broken_manifest_is_refused() -> None:
    """The validator itself can fail: an unknown field and a wrong type are refused."""
    deployment = copy.deepcopy(_by_kind(render(K8S / "base"), "Deployment")["auth"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(_by_kind(render(K8S / "base"), "Deployment")["auth"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_container_is_locked_down_with_resources_and_probes(
    objects: list[dict[str, Any]],
) -> None:
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    assert {w["metadata"]["name"] for w in workloads} == {*SERVICES, "nginx", "redis", "postgres"}
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert not sc.get("privileged"), name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), name
            assert container.get("readinessProbe"), name
            assert container.get("livenessProbe"), name
            assert ":" in container["image"] and not container["image"].endswith(":latest"), name


def test_services_probe_their_health_routes(objects: list[dict[str, Any]]) -> None:
    deployments = _by_kind(objects, "Deployment")
    for name in SERVICES:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert deployments[name]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_each_component_has_a_service_and_the_replicated_ones_a_budget(
    objects: list[dict[str, Any]],
) -> None:
    services = _by_kind(objects, "Service")
    assert {*SERVICES, "nginx", "redis", "postgres"} <= set(services)
    budgets = _by_kind(objects, "PodDisruptionBudget")
    assert {*SERVICES, "nginx"} <= set(budgets)
    hpa = _by_kind(objects, "HorizontalPodAutoscaler")["inference"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "inference"
    assert hpa["spec"]["minReplicas"] >= 2


def test_secrets_are_referenced_never_written(objects: list[dict[str, Any]]) -> None:
    assert not _by_kind(objects, "Secret"), "secrets are created by the operator (docs)"
    auth = _by_kind(objects, "Deployment")["auth"]["spec"]["template"]["spec"]["containers"][0]
    url = next(e for e in auth["env"] if e["name"] == "MG_AUTH_DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"]["name"] == "modelgate-auth-database"


def _allowed_sources(objects: list[dict[str, Any]], target: dict[str, str]) -> list[Any]:
    """The `from` clauses of every policy whose pod selector matches a pod with ``target``
    labels (an empty selector matches every pod)."""
    sources = []
    for policy in _by_kind(objects, "NetworkPolicy").values():
        match = policy["spec"]["podSelector"].get("matchLabels", {})
        if all(target.get(k) == v for k, v in match.items()):
            for rule in policy["spec"].get("ingress", []):
                sources.append(rule.get("from", "anywhere"))
    return sources


def test_network_policies_let_only_the_right_pods_in(objects: list[dict[str, Any]]) -> None:
    deny = _by_kind(objects, "NetworkPolicy")["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["ingress"] == []
    assert deny["policyTypes"] == ["Ingress"]
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for w in objects
        if w["kind"] in WORKLOADS
    }
    nginx_only = [[{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nginx"}}}]]
    for name in SERVICES:
        assert _allowed_sources(objects, pods[name]) == nginx_only, name
    services_only = [[{"podSelector": {"matchLabels": {"modelgate.io/tier": "service"}}}]]
    assert _allowed_sources(objects, pods["redis"]) == services_only
    auth_only = [[{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "auth"}}}]]
    assert _allowed_sources(objects, pods["postgres"]) == auth_only
    assert _allowed_sources(objects, pods["nginx"]) == ["anywhere"]
    # Only the three services carry the label that opens Redis.
    tier = [n for n, labels in pods.items() if labels.get("modelgate.io/tier") == "service"]
    assert sorted(tier) == sorted(SERVICES)


def test_overlays_change_images_and_replicas() -> None:
    production = _by_kind(render(K8S / "overlays/production"), "Deployment")
    assert production["inference"]["spec"]["replicas"] == 3
    assert production["auth"]["spec"]["replicas"] == 2
    image = production["auth"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/modelgate/auth:0.1.0"
    assert production["auth"]["metadata"]["namespace"] == "modelgate"


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_client_addresses_are_kept_and_trusted_from_nginx_only(
    objects: list[dict[str, Any]],
) -> None:
    """X-Forwarded-For believed from the pod network only (never "*"), where the
    NetworkPolicy admits nginx's pods alone; the load balancer keeps client addresses."""
    network = _by_kind(objects, "ConfigMap")["modelgate-network"]["data"]["pod-cidr"]
    assert ipaddress.ip_network(network).prefixlen >= 8
    deployments = _by_kind(objects, "Deployment")
    for name in SERVICES:
        env = _env(deployments[name]["spec"]["template"]["spec"]["containers"][0])
        allow = env["MG_FORWARDED_ALLOW_IPS"]
        assert "value" not in allow, f"{name}: {allow}"
        assert allow["valueFrom"]["configMapKeyRef"] == {
            "name": "modelgate-network",
            "key": "pod-cidr",
        }, name
    policy = _by_kind(objects, "NetworkPolicy")["services-from-nginx"]["spec"]
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nginx"}}}],
            "ports": [{"port": 8000}],
        }
    ]
    nginx = _by_kind(objects, "Service")["nginx"]["spec"]
    assert nginx["type"] == "LoadBalancer"
    assert nginx["externalTrafficPolicy"] == "Local"


def test_each_service_signs_in_to_redis_as_its_own_user(objects: list[dict[str, Any]]) -> None:
    deployments = _by_kind(objects, "Deployment")
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        assert _env(pod["containers"][0])["MG_REDIS_USERNAME"]["value"] == name
        secrets = next(v for v in pod["volumes"] if v["name"] == "secrets")["projected"]
        items = [
            item
            for source in secrets["sources"]
            if source["secret"]["name"] == "modelgate-redis"
            for item in source["secret"]["items"]
        ]
        assert items == [{"key": f"{name}_password", "path": f"redis_{name}_password"}], name
    redis = _by_kind(objects, "StatefulSet")["redis"]["spec"]["template"]["spec"]
    acl = next(v for v in redis["volumes"] if v["name"] == "acl")["secret"]
    assert acl["secretName"] == "modelgate-redis"
    assert acl["items"] == [{"key": "users.acl", "path": "redis_users.acl"}]
    mount = next(m for m in redis["containers"][0]["volumeMounts"] if m["name"] == "acl")
    # The Redis image loads its ACL users from where the manifest mounts them, and no
    # argument of the manifest's container overrides its configuration.
    config = (K8S.parent / "redis" / "redis.conf").read_text().splitlines()
    aclfile = [line.split()[1] for line in config if line.startswith("aclfile ")]
    assert aclfile == [f"{mount['mountPath']}/redis_users.acl"]
    assert "command" not in redis["containers"][0] and "args" not in redis["containers"][0]
