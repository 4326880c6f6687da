"""What Triton's own example client does, with the stock `tritonclient`, over HTTP and gRPC.

`image_client.py` (triton-inference-server/client, src/python/examples) is not in any package and CI has no GitHub,
so this test makes its calls and its checks itself, in its order: model metadata and configuration; its
validation (one input and one output, an FP32 output that is a vector, an image input of 3 dims plus the batch axis
when max_batch_size > 0, `format` FORMAT_NCHW or FORMAT_NHWC — over HTTP the format arrives as the enum's name);
its pre-processing (PIL convert to L/RGB, resize to (w, h) BILINEAR, cast to the input's datatype, no scaling,
HWC → CHW); one batched request with a request id and `class_count`; its post-processing
("score:index:label" strings, one row per image). The real script was run unmodified against `make serve`; its
output is in the README.

Its scalings never divide by 255, so it classifies correctly only a uint8-input export (`lenet5-u8`): the float32
[0, 1] export gets pixel values 0–255 and answers nonsense, which the last test pins down.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
from cnnserve.export.demos.digits import digit_png, digits_split
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

SAMPLES = Path(__file__).resolve().parent.parent / "service" / "app" / "static" / "samples"


class _Fields(dict):
    """Attribute access on a JSON dict, as image_client.py gets from `attrdict` for the HTTP answers."""

    def __getattr__(self, name: str) -> Any:
        value = self[name]
        if isinstance(value, dict):
            return _Fields(value)
        if isinstance(value, list):
            return [_Fields(v) if isinstance(v, dict) else v for v in value]
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _client(protocol: str, server) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(url=server.grpc_url)
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=1)


def _metadata_and_config(protocol: str, client: Any, model: str) -> tuple[Any, Any]:
    metadata = client.get_model_metadata(model_name=model, model_version="")
    config = client.get_model_config(model_name=model, model_version="")
    if protocol == "grpc":
        return metadata, config.config
    return _Fields(metadata), _Fields(config)


def parse_model(metadata: Any, config: Any) -> tuple[int, str, str, int, int, int, int, str]:
    """image_client.py's checks, in its order and with its conditions."""
    assert len(metadata.inputs) == 1, f"expecting 1 input, got {len(metadata.inputs)}"
    assert len(metadata.outputs) == 1, f"expecting 1 output, got {len(metadata.outputs)}"
    assert len(config.input) == 1, f"expecting 1 input in model configuration, got {len(config.input)}"
    input_metadata, input_config, output_metadata = metadata.inputs[0], config.input[0], metadata.outputs[0]
    assert output_metadata.datatype == "FP32", f"output type is {output_metadata.datatype}"

    output_batch_dim = config.max_batch_size > 0
    non_one = 0
    for dim in output_metadata.shape:
        if output_batch_dim:
            output_batch_dim = False
        elif dim > 1:
            non_one += 1
            assert non_one <= 1, "expecting model output to be a vector"

    input_batch_dim = config.max_batch_size > 0
    assert len(input_metadata.shape) == 3 + (1 if input_batch_dim else 0)

    fmt = input_config.format
    if isinstance(fmt, str):  # HTTP: the enum's name
        fmt = dict(mc.ModelInput.Format.items())[fmt]
    assert fmt in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC), f"unexpected input format {fmt}"
    if fmt == mc.ModelInput.FORMAT_NHWC:
        h, w, c = (input_metadata.shape[i + (1 if input_batch_dim else 0)] for i in range(3))
    else:
        c, h, w = (input_metadata.shape[i + (1 if input_batch_dim else 0)] for i in range(3))
    return (
        config.max_batch_size,
        input_metadata.name,
        output_metadata.name,
        int(c),
        int(h),
        int(w),
        fmt,
        input_metadata.datatype,
    )


def preprocess(img: Image.Image, fmt: int, dtype: str, c: int, h: int, w: int) -> np.ndarray:
    """image_client.py's pre-processing with its default scaling (NONE)."""
    sample = img.convert("L") if c == 1 else img.convert("RGB")
    resized = np.array(sample.resize((w, h), Image.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, np.newaxis]
    typed = resized.astype(triton_to_np_dtype(dtype))
    return np.transpose(typed, (2, 0, 1)) if fmt == mc.ModelInput.FORMAT_NCHW else typed


def classify(protocol: str, server, model: str, images: list[Image.Image], classes: int) -> list[list[list[str]]]:
    """The whole of image_client.py for one batch: each image's `classes` answers as [score, index, label]."""
    module = grpcclient if protocol == "grpc" else httpclient
    client = _client(protocol, server)
    metadata, config = _metadata_and_config(protocol, client, model)
    max_batch_size, input_name, output_name, c, h, w, fmt, dtype = parse_model(metadata, config)
    assert max_batch_size >= len(images) > 0
    batch = np.stack([preprocess(img, fmt, dtype, c, h, w) for img in images], axis=0)
    inputs = [module.InferInput(input_name, batch.shape, dtype)]
    inputs[0].set_data_from_numpy(batch)
    outputs = [module.InferRequestedOutput(output_name, class_count=classes)]
    response = client.infer(model, inputs, request_id="1", model_version="", outputs=outputs)
    answer_id = response.get_response().id if protocol == "grpc" else response.get_response()["id"]
    assert answer_id == "1"
    output = response.as_numpy(output_name)
    assert len(output) == len(images)
    rows = []
    for result in output:
        found = []
        for item in result:
            cls = "".join(chr(x) for x in item).split(":") if output.dtype.type == np.object_ else item.split(":")
            found.append(cls)
        rows.append(found)
    return rows


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client_classifies_the_demo_digits(protocol: str, server) -> None:
    """The page's sample digit (a 2) and test digits, one batch, three classes each, best first."""
    split = digits_split()
    pngs = [(SAMPLES / "digit.png").read_bytes()] + [digit_png(split.test_images[i]) for i in range(7)]
    truth = ["2"] + [str(int(label)) for label in split.test_labels[:7]]
    images = [Image.open(io.BytesIO(png)) for png in pngs]
    rows = classify(protocol, server, "lenet5-u8", images, classes=3)
    for expected, classes in zip(truth, rows, strict=True):
        assert len(classes) == 3 and all(len(cls) == 3 for cls in classes)
        scores = [float(cls[0]) for cls in classes]
        assert scores == sorted(scores, reverse=True) and 0.0 <= scores[-1] <= scores[0] <= 1.0
        assert classes[0][2] == classes[0][1] == expected  # LeNet-5's labels are the digits


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client_agrees_with_classify(protocol: str, server) -> None:
    """Its answer for the sample digit is /classify's, to the printed precision (the same resize, in the graph's
    uint8 input)."""
    import requests

    (classes,) = classify(protocol, server, "lenet5-u8", [Image.open(SAMPLES / "digit.png")], classes=5)
    answer = requests.post(
        f"{server.url}/classify",
        files={"image": (SAMPLES / "digit.png").read_bytes()},
        data={"model": "lenet5-u8", "top_k": "5"},
        timeout=30,
    ).json()
    assert [int(cls[1]) for cls in classes] == [p["index"] for p in answer["predictions"]]
    np.testing.assert_allclose(
        [float(cls[0]) for cls in classes], [p["score"] for p in answer["predictions"]], atol=2e-6
    )


def test_image_client_needs_the_uint8_export(server) -> None:
    """The default export (float32 [0, 1] input; the probabilities and the embedding) fails image_client.py's own
    checks (one output), and past them it would still answer nonsense: the client's NONE scaling sends 0–255 values
    (why the README points Triton-client users at the uint8 export with --no-embedding)."""
    split = digits_split()
    images = [Image.open(io.BytesIO(digit_png(split.test_images[i]))) for i in range(12)]
    truth = [str(int(label)) for label in split.test_labels[:12]]
    with pytest.raises(AssertionError, match="expecting 1 output, got 2"):
        classify("http", server, "lenet5", images, 1)
    client = _client("http", server)  # what image_client.py would send it: 0-255 values, its only scaling
    batch = np.stack([preprocess(img, mc.ModelInput.FORMAT_NCHW, "FP32", 1, 32, 32) for img in images])
    inputs = [httpclient.InferInput("images", batch.shape, "FP32")]
    inputs[0].set_data_from_numpy(batch)
    wanted = [httpclient.InferRequestedOutput("probabilities")]
    probabilities = client.infer("lenet5", inputs, outputs=wanted).as_numpy("probabilities")
    right = sum(str(int(row.argmax())) == t for row, t in zip(probabilities, truth, strict=True))
    assert right <= 6  # chance is 1 in 10; the uint8 export gets all of these right (test above)
