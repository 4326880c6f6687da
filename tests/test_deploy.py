"""The Kubernetes manifests in deploy/kubernetes: parsed, checked against the Kubernetes API schema (strict: unknown
fields fail), and held to what the service needs (probes on /livez and /readyz, the serving port, Prometheus
annotations, resource requests, a GPU variant, and only settings the service knows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cnnserve.service.settings import Settings

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


def _kustomize(folder: Path) -> list[dict]:
    """`kubectl kustomize FOLDER` (kubectl's own Kustomize, what `kubectl apply -k` runs), parsed."""
    import shutil

    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to build the overlays (it ships with this project's machine image)"
    built = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, f"kubectl kustomize {folder.relative_to(DEPLOY)}: {built.stderr}"
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("base", {("ConfigMap", "cnnserve-config"), ("Deployment", "cnnserve"), ("Service", "cnnserve")}),
        (
            "gpu",
            {
                ("ConfigMap", "cnnserve-config"),
                ("Deployment", "cnnserve"),
                ("Deployment", "cnnserve-gpu"),
                ("Service", "cnnserve"),
            },
        ),
    ],
)
def test_each_kustomization_builds_what_the_docs_apply(overlay: str, expected: set[tuple[str, str]]) -> None:
    """`kubectl apply -k deploy/kubernetes/<overlay>` as docs/deploy.md writes it: it builds (the GPU overlay once
    failed with "cycle detected"), with the objects the docs name, each valid against the Kubernetes schema, and
    the image set in base/ reaching every Deployment."""
    docs = _kustomize(DEPLOY / overlay)
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in docs} == expected
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        if doc["kind"] == "Deployment":
            assert _container(doc)["image"] == "cnnserve:latest"


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
        grpc = next(p for p in container["ports"] if p["name"] == "grpc")
        assert grpc["containerPort"] == Settings().grpc_port == 8001  # the gRPC service's default, Triton's
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
    assert env["CNNSERVE_PROVIDERS"] == "cuda,cpu" and env["CNNSERVE_TIERS"] == "two"
    cpu_env = {e["name"]: e["value"] for e in _container(_all()[("Deployment", "cnnserve")])["env"]}
    assert cpu_env["CNNSERVE_PROVIDERS"] == "cpu"
    assert "nvidia.com/gpu" not in _container(_all()[("Deployment", "cnnserve")])["resources"]["requests"]


def test_service_selects_both_deployments() -> None:
    objects = _all()
    service = objects[("Service", "cnnserve")]
    selector = service["spec"]["selector"].items()
    for name in ("cnnserve", "cnnserve-gpu"):
        assert selector <= objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http"
    assert ports["grpc"]["targetPort"] == "grpc" and ports["grpc"]["port"] == 8001
    assert objects[("ConfigMap", "cnnserve-config")]["data"]["CNNSERVE_GRPC_PORT"] == "8001"


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
        Settings(**{k.removeprefix("CNNSERVE_").lower(): v for k, v in env.items()})  # raises on a bad value


# --- Triton / KServe model repository (`cnnserve export-repo`) ---------------------------------------------------

ONNX_TO_TRITON = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8"}


def _cnnserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cnnserve"), *args], capture_output=True, text=True, timeout=300
    )


def _onnx_tensors(values) -> list[tuple[str, str, list[int]]]:
    import onnx

    return [
        (
            v.name,
            ONNX_TO_TRITON[onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)],
            [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def _config_tensors(tensors, batched: bool) -> list[tuple[str, str, list[int]]]:
    from tritonclient.grpc import model_config_pb2

    found = []
    for t in tensors:
        dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        found.append((t.name, model_config_pb2.DataType.Name(t.data_type), ([-1] if batched else []) + dims))
    return found


REPO_MODELS = ("lenet5", "yolov1_shapes", "cae", "unet", "cae_inpaint", "cvae")  # the default set


@pytest.fixture(scope="module")
def model_repo(model_store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "models"
    result = _cnnserve("export-repo", str(repo), *REPO_MODELS)
    assert result.returncode == 0, result.stderr[-3000:]
    return repo


def test_repository_has_one_versioned_folder_per_model(model_repo: Path, model_store: dict[str, str]) -> None:
    from cnnserve.service.store import find_entry

    assert sorted(p.name for p in model_repo.iterdir()) == sorted(REPO_MODELS)
    for model in model_repo.iterdir():
        assert sorted(p.name for p in model.iterdir() if p.name != "labels.txt") == ["1", "config.pbtxt"]
        assert [p.name for p in (model / "1").iterdir()] == ["model.onnx"]
        assert (model / "1" / "model.onnx").read_bytes() == find_entry(model_store[model.name]).path.read_bytes()


@pytest.mark.parametrize("name", REPO_MODELS)
def test_config_matches_the_onnx_file(model_repo: Path, name: str) -> None:
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    # Triton's own schema: an unknown field or enum value fails to parse.
    config = text_format.Parse((model_repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(model_repo / name / "1" / "model.onnx").graph
    initializers = {i.name for i in graph.initializer}
    onnx_inputs = _onnx_tensors([v for v in graph.input if v.name not in initializers])
    onnx_outputs = _onnx_tensors(graph.output)

    assert config.name == name and config.platform == "onnxruntime_onnx"
    batched = config.max_batch_size > 0
    assert _config_tensors(config.input, batched) == onnx_inputs
    assert _config_tensors(config.output, batched) == onnx_outputs
    # image inputs say their layout (Triton's image_client.py refuses one without), scalars do not
    for tensor in config.input:
        rank = len(tensor.dims) + (1 if batched else 0)
        expected = model_config_pb2.ModelInput.FORMAT_NCHW if rank == 4 else model_config_pb2.ModelInput.FORMAT_NONE
        assert tensor.format == expected, (name, tensor.name)
    every = onnx_inputs + onnx_outputs
    if all(dims and dims[0] == -1 for _, _, dims in every):  # batchable by Triton: batching on, batch axis implied
        assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    else:  # scalar threshold inputs: the client sends the batch axis
        assert name == "yolov1_shapes" and config.max_batch_size == 0 and not config.HasField("dynamic_batching")


def test_classifier_labels_follow_the_spec(model_repo: Path) -> None:
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(model_repo / "lenet5" / "1" / "model.onnx").metadata_props}
    labels = json.loads(meta["cnnserve.spec"])["labels"]
    assert (model_repo / "lenet5" / "labels.txt").read_text().splitlines() == labels
    assert 'label_filename: "labels.txt"' in (model_repo / "lenet5" / "config.pbtxt").read_text()


@pytest.mark.parametrize("name", ["lenet5", "yolov1_shapes"])
def test_served_config_is_the_exported_one(model_repo: Path, server, name: str) -> None:
    """GET /v2/models/{name}/config and config.pbtxt come from one function: the same tensors and labels; only what
    is the serving's own differs (the served batch limit, no added queue delay, the instances it runs)."""
    import requests
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    exported = text_format.Parse((model_repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    served = json_format.ParseDict(
        requests.get(f"{server.url}/v2/models/{name}/config", timeout=10).json(), model_config_pb2.ModelConfig()
    )
    assert served.input == exported.input and served.output == exported.output
    assert served.name == exported.name and served.platform == exported.platform
    limit = {m["name"]: m for m in requests.get(f"{server.url}/models", timeout=10).json()["models"]}[name]
    assert served.max_batch_size == (limit["batching"]["max_batch_size"] if exported.max_batch_size else 0)
    assert served.HasField("dynamic_batching") == exported.HasField("dynamic_batching")
    if served.HasField("dynamic_batching"):
        assert served.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.kind for g in served.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


def test_export_repo_refuses_a_broken_or_unknown_model(model_store: dict[str, str], tmp_path: Path) -> None:
    for tag, message in [("broken", "not a loadable ONNX file"), ("nope", "not in the model store")]:
        result = _cnnserve("export-repo", str(tmp_path / "repo"), tag)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
