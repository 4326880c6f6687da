"""The Kubernetes manifests in deploy/kubernetes: parsed, checked against the Kubernetes API schema (strict: unknown
fields fail), and held to what the service needs (probes on /livez and /readyz, the serving port, Prometheus
annotations, resource requests, a GPU variant, and only settings the service knows)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in _docs(path)}


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_every_manifest_is_listed_by_a_kustomization() -> None:
    listed = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            target = (kustomization.parent / resource).resolve()
            if target.is_file():
                listed.add(target)
    assert {p.resolve() for p in MANIFESTS} == listed


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)  # raises ValidationError with the field's path


def test_deployments_probe_health_and_expose_metrics() -> None:
    objects = _all()
    deployments = [doc for (kind, _), doc in objects.items() if kind == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"cnnserve", "cnnserve-gpu"}
    for deployment in deployments:
        template = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        container = _container(deployment)
        port = next(p for p in container["ports"] if p["name"] == "http")
        assert port["containerPort"] == 3000  # BentoML's serving port in the image
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "3000" and annotations["prometheus.io/path"] == "/metrics"
        requests = container["resources"]["requests"]
        assert "cpu" in requests and "memory" in requests


def test_gpu_variant_asks_for_a_gpu_and_cuda_first() -> None:
    gpu = _all()[("Deployment", "cnnserve-gpu")]
    container = _container(gpu)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CNNSERVE_PROVIDERS"] == "cuda,cpu"
    cpu_env = {e["name"]: e["value"] for e in _container(_all()[("Deployment", "cnnserve")])["env"]}
    assert cpu_env["CNNSERVE_PROVIDERS"] == "cpu"
    assert "nvidia.com/gpu" not in _container(_all()[("Deployment", "cnnserve")])["resources"]["requests"]


def test_service_selects_both_deployments() -> None:
    objects = _all()
    service = objects[("Service", "cnnserve")]
    selector = service["spec"]["selector"].items()
    for name in ("cnnserve", "cnnserve-gpu"):
        assert selector <= objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_settings_are_real_and_valid() -> None:
    """Every CNNSERVE_* variable the manifests set is a field of the service's Settings, with a value it accepts."""
    objects = _all()
    config = objects[("ConfigMap", "cnnserve-config")]["data"]
    for deployment in (objects[("Deployment", "cnnserve")], objects[("Deployment", "cnnserve-gpu")]):
        container = _container(deployment)
        assert {"configMapRef": {"name": "cnnserve-config"}} in container["envFrom"]
        env = {**config, **{e["name"]: e["value"] for e in container["env"]}}
        fields = {f"CNNSERVE_{name.upper()}" for name in Settings.model_fields}
        assert set(env) <= fields, set(env) - fields
        settings = Settings(**{k.removeprefix("CNNSERVE_").lower(): v for k, v in env.items()})
        assert settings.intra_op_threads >= 1  # one pool per session, sized to the CPU limit
