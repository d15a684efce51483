"""The Kubernetes base (deploy/kubernetes) renders with `kubectl kustomize` and every manifest
validates, strictly (no unknown field), against the Kubernetes API schemas shipped by the
`kubernetes-validate` package; then what operating fluxgate needs of it is checked: probes on
routes the app serves, non-root on a read-only root with writable /data and /tmp, the
migration as an init step, a grace period longer than the drain, a PodDisruptionBudget and an
HPA that select the Deployment's pods, an HPA metric the gateway exposes, and a config.yaml
that fluxgate accepts. The broken variants at the end show that each check can fail."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.serving import DRAIN_SECONDS
from gateway.settings import load_settings
from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.31.0"  # the oldest release the base is written for (preStop `sleep`: 1.30)
Doc = dict[str, Any]


def render() -> list[Doc]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomization)")
    out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def schema_errors(docs: list[Doc]) -> list[str]:
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: no schema ({exc})")
    return errors


def one(docs: list[Doc], kind: str) -> Doc:
    [found] = [d for d in docs if d["kind"] == kind]
    return found


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def operations_problems(docs: list[Doc], routes: set[str], metrics: set[str]) -> list[str]:
    """What a deployment of fluxgate must hold, beyond the schemas."""
    problems = []
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    if deploy["spec"].get("replicas", 1) < 2:
        problems.append("fewer than 2 replicas")
    if not _selects(deploy["spec"]["selector"]["matchLabels"], labels):
        problems.append("the Deployment's selector misses its pods")
    security = pod.get("securityContext", {})
    if not security.get("runAsNonRoot") or security.get("runAsUser", 0) == 0:
        problems.append("the pod may run as root")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = pod["containers"] + pod.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: privilege escalation allowed")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for path in ("/data", "/tmp"):
            mount = mounts.get(path)
            if mount is None or mount.get("readOnly") or mount["name"] not in volumes:
                problems.append(f"{c['name']}: no writable volume at {path}")
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("FLUXGATE_DATA_DIR", {}).get("value") != "/data":
            problems.append(f"{c['name']}: FLUXGATE_DATA_DIR is not the /data volume")
        if "secretKeyRef" not in env.get("FLUXGATE_DATABASE_URL", {}).get("valueFrom", {}):
            problems.append(f"{c['name']}: the database URL does not come from a Secret")
    [app] = [c for c in pod["containers"] if c["name"] == "fluxgate"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = app.get(probe, {}).get("httpGet", {}).get("path")
        if got != path or got not in routes:
            problems.append(f"{probe} is {got!r}, not the app's {path}")
    env = {e["name"]: e for e in app.get("env", [])}
    if "secretKeyRef" not in env.get("FLUXGATE_REDIS_URL", {}).get("valueFrom", {}):
        problems.append("the Redis URL does not come from a Secret")
    for shared in ("FLUXGATE_STORAGE__SIGNING_SECRET", "FLUXGATE_WEBHOOKS__SECRET"):
        if shared not in env:  # else each replica generates its own
            problems.append(f"{shared} is not shared by the replicas")
    migrate = [c for c in pod.get("initContainers", []) if c.get("command", [])[-2:]
               == ["db", "upgrade"]]
    if not migrate:
        problems.append("no init container runs `fluxgate db upgrade`")
    pause = app.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < pause + DRAIN_SECONDS + 10:
        problems.append(f"terminationGracePeriodSeconds {grace} leaves no room for the "
                        f"{pause} s pause and the {DRAIN_SECONDS} s drain")
    pdb = one(docs, "PodDisruptionBudget")
    if not _selects(pdb["spec"]["selector"]["matchLabels"], labels):
        problems.append("the PodDisruptionBudget selects no fluxgate pod")
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deploy["metadata"]["name"]):
        problems.append("the HPA scales something else")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                    if m["type"] == "Pods"]
    if not pods_metrics or not set(pods_metrics) <= metrics:
        problems.append(f"the HPA's metrics {pods_metrics} are not all exposed by /metrics")
    service = one(docs, "Service")
    if not _selects(service["spec"]["selector"], labels):
        problems.append("the Service selects no fluxgate pod")
    ports = {p["name"] for p in app.get("ports", [])}
    if any(p["targetPort"] not in ports for p in service["spec"]["ports"]):
        problems.append("the Service targets a port the container does not name")
    return problems


def config_problems(docs: list[Doc], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ConfigMap's config.yaml loads as fluxgate's settings."""
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    path = tmp / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    monkeypatch.setenv("FLUXGATE_DATA_DIR", str(tmp / "data"))
    try:
        settings = load_settings(path)
    except Exception as exc:
        return [f"config.yaml: {exc}"]
    problems = []
    if settings.auto_migrate:
        problems.append("config.yaml: every pod migrates on start (auto_migrate)")
    if settings.storage.kind != "s3":
        problems.append("config.yaml: replicas need shared storage (storage.kind s3)")
    if settings.host != "0.0.0.0":
        problems.append("config.yaml: the server does not listen on the pod's address")
    return problems


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return render()


@pytest.fixture
def exposed(gateway: Gateway) -> tuple[set[str], set[str]]:
    """(the probe paths the app answers with 200, metric names its /metrics exposes)."""
    routes = {path for path in ("/healthz", "/readyz", "/livez", "/health")
              if httpx.get(f"{gateway.base_url}{path}", timeout=30).status_code == 200}
    text = httpx.get(f"{gateway.base_url}/metrics", timeout=30).text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    return routes, names


def test_the_base_renders_and_validates_strictly(rendered: list[Doc]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert schema_errors(rendered) == []


def test_every_manifest_file_validates_without_kubectl() -> None:
    """The files themselves (and secret.example.yaml, which is not applied), so a broken one
    fails even where kubectl is missing."""
    docs = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "config.yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) >= 6
    assert schema_errors(docs) == []


def test_the_base_holds_what_operating_fluxgate_needs(
        rendered: list[Doc], exposed: tuple[set[str], set[str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    routes, metrics = exposed
    assert operations_problems(rendered, routes, metrics) == []
    assert config_problems(rendered, tmp_path, monkeypatch) == []


def _deployment(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment")


def _pod(docs: list[Doc]) -> Doc:
    pod: Doc = _deployment(docs)["spec"]["template"]["spec"]
    return pod


def _app(docs: list[Doc]) -> Doc:
    app: Doc = _pod(docs)["containers"][0]
    return app


BROKEN_SCHEMA: dict[str, Callable[[list[Doc]], None]] = {
    "a misspelt field": lambda d: _deployment(d)["spec"].update(replica=3),
    "a wrong type": lambda d: _deployment(d)["spec"].update(replicas="three"),
    "a probe without a handler port": lambda d: _app(d)["livenessProbe"]["httpGet"].pop(
        "port"),
    "an unknown kind field": lambda d: one(d, "PodDisruptionBudget")["spec"].update(
        maxUnavailible=1),
}
BROKEN_OPERATIONS: dict[str, Callable[[list[Doc]], None]] = {
    "a writable root": lambda d: _app(d)["securityContext"].update(
        readOnlyRootFilesystem=False),
    "root": lambda d: _pod(d)["securityContext"].update(runAsNonRoot=False, runAsUser=0),
    "no /tmp volume": lambda d: _app(d).update(volumeMounts=[
        m for m in _app(d)["volumeMounts"] if m["mountPath"] != "/tmp"]),
    "a liveness probe on the database": lambda d: _app(d)["livenessProbe"]["httpGet"].update(
        path="/readyz"),
    "a short grace period": lambda d: _pod(d).update(terminationGracePeriodSeconds=20),
    "no migration": lambda d: _pod(d).pop("initContainers"),
    "a PDB for other pods": lambda d: one(d, "PodDisruptionBudget")["spec"]["selector"]
    ["matchLabels"].update({"app.kubernetes.io/name": "other"}),
    "an HPA on a metric nobody exposes": lambda d: one(d, "HorizontalPodAutoscaler")["spec"]
    ["metrics"][0]["pods"]["metric"].update(name="fluxgate_made_up"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_SCHEMA))
def test_a_broken_manifest_fails_the_schemas(rendered: list[Doc], name: str) -> None:
    docs = copy.deepcopy(rendered)
    BROKEN_SCHEMA[name](docs)
    assert schema_errors(docs), name


def test_broken_operations_fail_the_checks(rendered: list[Doc],
                                           exposed: tuple[set[str], set[str]]) -> None:
    routes, metrics = exposed
    for name, breaks in BROKEN_OPERATIONS.items():
        docs = copy.deepcopy(rendered)
        breaks(docs)
        assert operations_problems(docs, routes, metrics), name


def test_a_config_fluxgate_refuses_fails(rendered: list[Doc], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    docs = copy.deepcopy(rendered)
    config_map = one(docs, "ConfigMap")
    config_map["data"]["config.yaml"] += "jobs:\n  deadline: -1\n"
    assert config_problems(docs, tmp_path, monkeypatch)
