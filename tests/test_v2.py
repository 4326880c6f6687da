"""Open Inference Protocol v2 through the stock `tritonclient`, HTTP and gRPC alike, against the real server.

Every test that a client library can express runs over both transports (`triton` fixture): the gRPC service must
pass what the HTTP routes pass. Raw-HTTP cases (bodies no client would send) are HTTP only.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from cnnserve.export.demos.digits import digit_png, digits_split
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

LENET_PIXELS = 32 * 32


@dataclass
class Triton:
    """One protocol's stock client, with the few calls whose return types differ between the two made alike."""

    protocol: str
    mod: ModuleType
    client: Any

    def metadata(self, name: str, version: str = "") -> dict[str, Any]:
        if self.protocol == "http":
            return self.client.get_model_metadata(name, version)
        meta = self.client.get_model_metadata(name, version, as_json=True)
        for tensor in meta.get("inputs", []) + meta.get("outputs", []):
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # proto3 JSON writes int64 as strings
        return meta

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        """Parsed with Triton's own ModelConfig schema either way (an unknown field fails)."""
        if self.protocol == "http":
            raw = self.client.get_model_config(name, version)
            return json_format.MessageToDict(
                json_format.ParseDict(raw, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
            )
        return json_format.MessageToDict(
            self.client.get_model_config(name, version).config, preserving_proto_field_name=True
        )

    def statistics(self, name: str = "") -> list[dict[str, Any]]:
        if self.protocol == "http":
            return self.client.get_inference_statistics(name)["model_stats"]
        return self.client.get_inference_statistics(name, as_json=True)["model_stats"]

    def infer(self, model: str, batch: np.ndarray, *, datatype: str = "FP32", binary: bool = True, k: int = 0,
              **kwargs: Any) -> Any:  # fmt: skip
        tensor = self.mod.InferInput("images", list(batch.shape), datatype)
        if self.protocol == "http":
            tensor.set_data_from_numpy(batch, binary_data=binary)
            output = self.mod.InferRequestedOutput("probabilities", binary_data=binary, class_count=k)
        else:
            tensor.set_data_from_numpy(batch)
            output = self.mod.InferRequestedOutput("probabilities", class_count=k)
        return self.client.infer(model, [tensor], outputs=[output], **kwargs)


@pytest.fixture(scope="module", params=["http", "grpc"])
def triton(request, server) -> Triton:
    if request.param == "http":
        return Triton("http", triton_http, triton_http.InferenceServerClient(server.url.removeprefix("http://")))
    return Triton("grpc", triton_grpc, triton_grpc.InferenceServerClient(server.grpc_url))


def _digits(count: int, *, offset: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Test digits as PNGs and as the graph's float32 input (the shared pre-processing), with their labels."""
    from cnnserve.service.imaging import Preprocess, preprocess
    from PIL import Image

    split = digits_split()
    pngs = [digit_png(split.test_images[i]) for i in range(offset, offset + count)]
    pre = Preprocess(input_size=(32, 32), in_channels=1)
    return pngs, np.stack([preprocess(Image.open(io.BytesIO(p)), pre) for p in pngs])


def test_health_and_readiness_per_model(triton: Triton) -> None:
    client = triton.client
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lenet5")
    assert client.is_model_ready("lenet5", model_version="1")
    assert not client.is_model_ready("broken")  # truncated file: not ready, the rest serve
    assert not client.is_model_ready("not-exported")
    assert not client.is_model_ready("../../etc/passwd")


def test_server_metadata_lists_the_extensions(triton: Triton) -> None:
    meta = triton.client.get_server_metadata()
    if triton.protocol == "grpc":
        meta = json_format.MessageToDict(meta, preserving_proto_field_name=True)
    assert meta["name"] == "cnnserve"
    assert set(meta["extensions"]) == {"binary_tensor_data", "classification", "model_configuration", "statistics"}


def test_model_metadata(triton: Triton) -> None:
    meta = triton.metadata("resnet18")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]},
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 512]},  # /embed's vector, a graph output
    ]
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.metadata("nope")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_classify_endpoint(triton: Triton, server, binary: bool) -> None:
    """The same digits through v2 (the raw graph) and /classify (decode + preprocess) give the same probabilities."""
    pngs, batch = _digits(3)
    result = triton.infer("lenet5", batch, binary=binary, model_version="1", request_id="seven")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10)
    response = result.get_response() if triton.protocol == "http" else result.get_response(as_json=True)
    assert response["id"] == "seven" and response["model_name"] == "lenet5"
    for png, row in zip(pngs, probs, strict=True):
        answer = requests.post(
            f"{server.url}/classify", files={"image": png}, data={"model": "lenet5", "top_k": "10"}, timeout=30
        ).json()
        by_index = {p["index"]: p["score"] for p in answer["predictions"]}
        np.testing.assert_allclose([by_index[i] for i in range(10)], row, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_extension(triton: Triton, binary: bool) -> None:
    """class_count=k answers BYTES [N, k] "score:index:label", best first, ranked like the probabilities."""
    _, batch = _digits(4, offset=10)
    probs = triton.infer("lenet5", batch, binary=binary).as_numpy("probabilities")
    classes = triton.infer("lenet5", batch, binary=binary, k=3).as_numpy("probabilities")
    assert classes.dtype == np.object_ and classes.shape == (4, 3)
    for row, ranked in zip(probs, classes, strict=True):
        # binary tensors arrive as bytes, JSON ones as str (tritonclient reads Triton's answers the same way)
        fields = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in ranked]
        assert [int(f[1]) for f in fields] == list(np.argsort(-row)[:3])
        assert [f[2] for f in fields] == [str(int(f[1])) for f in fields]  # LeNet-5's labels are the digits
        np.testing.assert_allclose([float(f[0]) for f in fields], np.sort(row)[::-1][:3], atol=1e-6)
    assert triton.infer("lenet5", batch[:1], binary=binary, k=50).as_numpy("probabilities").shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"priority": 1}, "priority"),
        ({"timeout": 1000}, "timeout"),
        ({"sequence_id": 4, "sequence_start": True}, "sequence_id"),
        ({"parameters": {"my_option": 3}}, "my_option"),
    ],
    ids=["priority", "timeout", "sequence", "custom"],
)
def test_request_parameters_not_implemented_are_refused(triton: Triton, kwargs, named: str) -> None:
    _, batch = _digits(1)
    with pytest.raises(InferenceServerException, match=f"'{named}'.* not implemented") as raised:
        triton.infer("lenet5", batch, **kwargs)
    assert raised.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_output_shared_memory_is_refused(triton: Triton) -> None:
    _, batch = _digits(1)
    tensor = triton.mod.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    output = triton.mod.InferRequestedOutput("probabilities")
    output.set_shared_memory("region", 40)
    with pytest.raises(InferenceServerException, match="'shared_memory_region'.* not implemented"):
        triton.client.infer("lenet5", [tensor], outputs=[output])


@pytest.mark.parametrize(
    ("shape", "datatype", "phrase"),
    [([1, 1, 32, 31], "FP32", "shape"), ([1, 1, 32, 32], "INT64", "must be FP32"), ([0, 1, 32, 32], "FP32", "empty")],
    ids=["wrong-shape", "wrong-dtype", "empty-batch"],
)
def test_infer_errors_name_the_problem(triton: Triton, shape, datatype, phrase) -> None:
    batch = np.zeros(shape, dtype=np.int64 if datatype == "INT64" else np.float32)
    with pytest.raises(InferenceServerException, match=phrase) as raised:
        triton.infer("lenet5", batch, datatype=datatype)
    assert raised.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_nan_values_are_refused_with_what_to_do(triton: Triton) -> None:
    batch = np.zeros((1, 1, 32, 32), dtype=np.float32)
    batch[0, 0, 3, 4] = np.nan
    with pytest.raises(InferenceServerException, match="NaN or infinite") as raised:
        triton.infer("lenet5", batch)
    assert "--input-data zero" in raised.value.message()


def test_unknown_version_and_not_ready_models(triton: Triton) -> None:
    _, batch = _digits(1)
    assert triton.infer("lenet5", batch, model_version="1").as_numpy("probabilities").shape == (1, 10)
    with pytest.raises(InferenceServerException, match="no version '7'") as raised:
        triton.infer("lenet5", batch, model_version="7")
    assert raised.value.status() in ("404", "StatusCode.NOT_FOUND")
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.infer("nope", batch)
    with pytest.raises(InferenceServerException, match="not ready") as raised:
        triton.infer("broken", batch)
    assert raised.value.status() in ("503", "StatusCode.UNAVAILABLE")


# --- model configuration ----------------------------------------------------------------------------------------


def test_model_config_is_tritons(triton: Triton, server) -> None:
    """What image_client.py and perf_analyzer read: NCHW image input, dims without the batch axis, the served batch
    limit as max_batch_size, dynamic batching, one CPU instance group, the labels file on the probabilities."""
    served = {m["name"]: m for m in requests.get(f"{server.url}/models", timeout=10).json()["models"]}
    config = triton.config("lenet5-u8")
    assert config["name"] == "lenet5-u8" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == served["lenet5-u8"]["batching"]["max_batch_size"] > 1
    assert config["input"] == [
        {"name": "images", "data_type": "TYPE_UINT8", "format": "FORMAT_NCHW", "dims": ["1", "32", "32"]}
    ]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["10"], "label_filename": "labels.txt"}
    ]  # exported with --no-embedding, for image_client.py (one output)
    assert "dynamic_batching" in config
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert triton.config("lenet5", "1")["input"][0]["data_type"] == "TYPE_FP32"
    # scalar threshold inputs: Triton cannot batch this graph, the client sends the batch axis itself
    yolo = triton.config("yolov1_shapes")
    assert yolo.get("max_batch_size", 0) == 0 and "dynamic_batching" not in yolo
    assert yolo["input"][0]["dims"][0] == "-1" and yolo["input"][0]["format"] == "FORMAT_NCHW"
    assert {i["name"]: i.get("reshape") for i in yolo["input"][1:]} == {
        "score_threshold": {},
        "iou_threshold": {},
    }
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.config("nope")
    with pytest.raises(InferenceServerException, match="no version"):
        triton.config("lenet5", "3")


# --- statistics and the repository --------------------------------------------------------------------------------


def test_statistics_count_what_was_served(triton: Triton, server) -> None:
    before = {s["name"]: s for s in triton.statistics()}
    assert {"lenet5", "lenet5-u8", "resnet18"} <= set(before) and "broken" not in before
    _, batch = _digits(3)
    for _ in range(2):
        triton.infer("lenet5", batch)
    with pytest.raises(InferenceServerException):
        triton.infer("lenet5", np.zeros((1, 1, 32, 31), dtype=np.float32))
    (after,) = triton.statistics("lenet5")
    stats, old = after["inference_stats"], before["lenet5"]["inference_stats"]

    def count(entry: dict[str, Any], field: str) -> int:
        return int(entry.get(field, {}).get("count", 0))

    def ns(entry: dict[str, Any], field: str) -> int:
        return int(entry.get(field, {}).get("ns", 0))

    assert count(stats, "success") - count(old, "success") == 2
    assert count(stats, "fail") - count(old, "fail") == 1
    assert int(after["inference_count"]) - int(before["lenet5"].get("inference_count", 0)) == 6
    assert 1 <= int(after["execution_count"]) - int(before["lenet5"].get("execution_count", 0)) <= 2
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert count(stats, field) > count(old, field) and ns(stats, field) > ns(old, field), field
    assert ns(stats, "success") > ns(stats, "compute_infer")
    assert int(after["last_inference"]) > 1.6e12  # ms since the epoch
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.statistics("nope")


def test_repository_index(triton: Triton) -> None:
    index = triton.client.get_model_repository_index()
    if triton.protocol == "grpc":
        index = json_format.MessageToDict(index, preserving_proto_field_name=True)["models"]
    states = {m["name"]: m for m in index}
    assert states["lenet5"]["state"] == "READY" and states["lenet5"]["version"] == "1"
    assert states["broken"]["state"] == "UNAVAILABLE" and states["broken"]["reason"]
    with pytest.raises(InferenceServerException):  # the repository is what the service was started with
        triton.client.load_model("lenet5")


def test_repository_index_of_ready_models_and_stats_routes(server) -> None:
    ready = requests.post(f"{server.url}/v2/repository/index", json={"ready": True}, timeout=10).json()
    assert ready and all(m["state"] == "READY" for m in ready)
    bad = requests.post(f"{server.url}/v2/repository/index", json={"ready": "yes"}, timeout=10)
    assert bad.status_code == 400 and "ready" in bad.json()["error"]
    # /v2/models/stats is the statistics route, not a model called "stats"
    assert "model_stats" in requests.get(f"{server.url}/v2/models/stats", timeout=10).json()
    assert requests.get(f"{server.url}/v2/models/lenet5/versions/1/stats", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/v2/models/broken/stats", timeout=10).status_code == 503


# --- HTTP only: bodies no client library would send -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 5}]},
            400,
            "values",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": ["NaN"] * 1024}]},
            400,
            "",
        ),
        ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0.0]}]}, 400, "unknown input"),
        ({"inputs": []}, 400, "inputs"),
        (
            {
                "inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "outputs",
        ),
        (
            {
                "inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": "three"}}],
            },
            400,
            "classification",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [1, 1, 32, 32],
                        "datatype": "FP32",
                        "data": [0.0] * 1024,
                        "parameters": {"shared_memory_region": "x"},
                    }
                ]
            },
            400,
            "'shared_memory_region' is not implemented",
        ),
    ],
    ids=["too-few-values", "nan", "unknown-input", "no-inputs", "unknown-output", "bad-k", "input-shm"],
)
def test_infer_errors_are_400_with_a_message(server, body, status, phrase) -> None:
    response = requests.post(f"{server.url}/v2/models/lenet5/infer", data=json.dumps(body), timeout=30)
    assert response.status_code == status, response.text
    assert phrase.lower() in response.json()["error"].lower()


def test_nan_literal_is_refused(server) -> None:
    data = [0.0] * 1023 + [float("nan")]
    tensor = json.dumps({"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": data})  # NaN literal
    body = '{"inputs": [' + tensor + "]}"
    response = requests.post(f"{server.url}/v2/models/lenet5/infer", data=body, timeout=30)
    assert response.status_code == 400 and "nan" in response.json()["error"].lower()


def test_classification_as_json_tensors(server) -> None:
    body = {
        "id": "a",
        "inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.5] * LENET_PIXELS}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    answer = requests.post(f"{server.url}/v2/models/lenet5/infer", json=body, timeout=30).json()
    (output,) = answer["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2] and answer["id"] == "a"
    assert all(len(item.split(":")) == 3 for item in output["data"])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers(triton: Triton, algorithm: str) -> None:
    """tritonclient's request/response compression: gzip and deflate bodies in, compressed answers out (HTTP); the
    gRPC channel's own compression."""
    _, batch = _digits(2)
    plain = triton.infer("lenet5", batch).as_numpy("probabilities")
    if triton.protocol == "http":
        options = {"request_compression_algorithm": algorithm, "response_compression_algorithm": algorithm}
    else:
        options = {"compression_algorithm": algorithm}
    np.testing.assert_array_equal(triton.infer("lenet5", batch, **options).as_numpy("probabilities"), plain)


def test_bad_or_oversized_compressed_bodies(server) -> None:
    url = f"{server.url}/v2/models/lenet5/infer"
    body = json.dumps(
        {"inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.1] * 1024}]}
    )
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = raw_deflate.compress(body.encode()) + raw_deflate.flush()
    assert requests.post(url, data=raw, headers={"Content-Encoding": "deflate"}, timeout=30).status_code == 200
    for encoding, data, phrase in [
        ("gzip", b"not gzip at all", "not valid gzip"),
        ("gzip", gzip.compress(body.encode())[:-20], "truncated"),
        ("br", body.encode(), "unsupported content-encoding"),
    ]:
        response = requests.post(url, data=data, headers={"Content-Encoding": encoding}, timeout=30)
        assert response.status_code == 400 and phrase in response.json()["error"].lower(), (encoding, response.text)
    bomb = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * 2**20
    data = b"".join(bomb.compress(chunk) for _ in range(300)) + bomb.flush()  # 300 MB in a few hundred KB
    response = requests.post(url, data=data, headers={"Content-Encoding": "gzip"}, timeout=60)
    assert response.status_code == 413 and "inflates" in response.json()["error"]


def test_unknown_v2_routes_answer_json(server) -> None:
    for method, path, status in [
        ("GET", "/v2/nothing/here", 404),
        ("POST", "/v2/repository/models/lenet5/load", 404),
        ("GET", "/v2/models/lenet5/infer", 405),
        ("DELETE", "/v2/models/lenet5", 405),
    ]:
        response = requests.request(method, f"{server.url}{path}", timeout=10)
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["content-type"] == "application/json" and response.json()["error"]


# --- batching -------------------------------------------------------------------------------------------------------


def test_concurrent_v2_clients_share_runs(triton: Triton, server) -> None:
    """Eight clients at once on a slow model (ResNet-18 on the CPU): fewer onnxruntime runs than requests, and each
    client gets its own image's answer (the same as alone)."""
    rng = np.random.default_rng(0)
    images = rng.random((8, 1, 3, 224, 224), dtype=np.float32)
    alone = [triton.infer("resnet18", image).as_numpy("probabilities") for image in images[:2]]
    (before,) = triton.statistics("resnet18")
    answers: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(images))

    def client(index: int) -> None:
        own = Triton(triton.protocol, triton.mod, _new_client(triton, server))
        start.wait()
        answers[index] = own.infer("resnet18", images[index]).as_numpy("probabilities")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (after,) = triton.statistics("resnet18")
    runs = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == len(images)
    assert runs < len(images), runs
    for index, expected in enumerate(alone):
        np.testing.assert_allclose(answers[index], expected, atol=1e-5)


def _new_client(triton: Triton, server) -> Any:
    if triton.protocol == "http":
        return triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    return triton_grpc.InferenceServerClient(server.grpc_url)


def test_grpc_stream_answers_every_request(server) -> None:
    """ModelStreamInfer (image_client.py --streaming, perf_analyzer --streaming): one answer per request, by id;
    a bad request gets an error on the stream and the others still get theirs."""
    import queue

    client = triton_grpc.InferenceServerClient(server.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    _, batch = _digits(3)
    try:
        for index in range(3):
            tensor = triton_grpc.InferInput("images", [1, 1, 32, 32], "FP32")
            tensor.set_data_from_numpy(batch[index : index + 1])
            client.async_stream_infer("lenet5", [tensor], request_id=str(index))
        bad = triton_grpc.InferInput("images", [1, 1, 32, 31], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 32, 31), dtype=np.float32))
        client.async_stream_infer("lenet5", [bad], request_id="bad")
        results = [answers.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    errors = [error for _, error in results if error is not None]
    assert len(errors) == 1 and "does not fit" in errors[0].message()
    by_id = {result.get_response().id: result.as_numpy("probabilities") for result, error in results if error is None}
    assert sorted(by_id) == ["0", "1", "2"]
    expected = triton_grpc.InferenceServerClient(server.grpc_url)
    for index in range(3):
        tensor = triton_grpc.InferInput("images", [1, 1, 32, 32], "FP32")
        tensor.set_data_from_numpy(batch[index : index + 1])
        np.testing.assert_allclose(by_id[str(index)], expected.infer("lenet5", [tensor]).as_numpy("probabilities"))


def test_grpc_typed_contents_and_unimplemented_calls(server) -> None:
    """A gRPC client that sends typed `contents` instead of raw bytes gets the same answer; calls for what is not
    implemented here (shared memory) answer UNIMPLEMENTED rather than pretending."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    _, batch = _digits(2)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    request = service_pb2.ModelInferRequest(model_name="lenet5", id="typed")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=list(batch.shape))
    tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed" and list(response.outputs[0].shape) == [2, 10]
    typed = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
    raw = Triton("grpc", triton_grpc, triton_grpc.InferenceServerClient(server.grpc_url)).infer("lenet5", batch)
    np.testing.assert_allclose(typed, raw.as_numpy("probabilities"), atol=1e-6)
    short = service_pb2.ModelInferRequest(model_name="lenet5")
    short.inputs.add(name="images", datatype="FP32", shape=[1, 1, 32, 32]).contents.fp32_contents.extend([0.0] * 5)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(short, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "5 values" in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest(), timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
