"""What a newcomer meets on the served API: which model answers, readiness that means something, every error as
JSON, sizes in one unit, transparency on the model's background, and a start-up log with no onnxruntime warning."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from cnnserve.export import DEFAULT_EXPORTS
from cnnserve.export.demos.digits import digits_split
from cnnserve.service.catalog import Catalog
from cnnserve.service.contract import ModelContract
from cnnserve.service.runtime.model import ModelInfo
from cnnserve.service.tasks import all_tasks, get_task
from conftest import post_image, start_server, stop_server
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


class _Runner:
    def __init__(self, name: str, task: str, ready: bool = True) -> None:
        contract = ModelContract(name=name, task=task, input_size=(32, 32))
        self.info = ModelInfo(name=name, contract=contract, ready=ready)


def _catalog(*models: tuple[str, str]) -> Catalog:
    return Catalog({name: _Runner(name, task) for name, task in models})


def test_the_default_set_model_answers_however_many_others_are_served() -> None:
    classify, segment = get_task("classify"), get_task("segment")
    # exported later, listed first, alphabetically first: lenet5 still answers /classify
    catalog = _catalog(("alexnet", "classification"), ("resnet18", "classification"), ("lenet5", "classification"))
    assert catalog.default_model(classify) == "lenet5" and catalog.pick(classify, None).info.name == "lenet5"
    # without the default set's model: the first served one of the endpoint's tasks, in the task's order
    catalog = _catalog(
        ("maskrcnn", "instance_segmentation"), ("resnet18", "classification"), ("seg", "semantic_segmentation")
    )
    assert catalog.default_model(classify) == "resnet18"
    assert catalog.default_model(segment) == "seg"  # /segment: semantic models before instance ones
    assert _catalog(("resnet18", "classification")).default_model(segment) is None


def test_every_endpoint_default_is_in_the_default_set() -> None:
    """The default models are the models `make serve` exports (and the bento packs), one per endpoint."""
    default_set = {name for name, _ in DEFAULT_EXPORTS}
    defaults = {task.route: task.default_model for task in all_tasks()}
    assert all(defaults.values()), defaults
    assert set(defaults.values()) == default_set
    bentofile = (ROOT / "bentofile.yaml").read_text()
    packed = bentofile.split("\nmodels:\n")[1].split("\n\n")[0].split("\npython:")[0]
    assert {line.strip(" -") for line in packed.splitlines() if line.strip().startswith("-")} == default_set


def test_models_states_each_endpoints_default_and_it_answers(server) -> None:
    body = requests.get(f"{server.url}/models", timeout=10).json()
    defaults = {e["route"]: e["default_model"] for e in body["endpoints"]}
    # The test server serves both YOLOs; /detect's default is the default set's, yolov1_shapes_conv.
    assert defaults["/classify"] == "lenet5" and defaults["/detect"] == "yolov1_shapes_conv"
    assert defaults["/segment"] == "unet" and defaults["/anomaly"] == "cae"
    digit = _digit_png()
    assert post_image(server, "/classify", digit).json()["model"] == "lenet5"


def _digit_png(rgba: bool = False) -> bytes:
    """The README's digit (a 2): light ink on black, or as white ink on a transparent background."""
    digit = digits_split().test_images[0]
    img = Image.fromarray(digit).resize((32, 32), Image.Resampling.BILINEAR)
    if rgba:
        ink = np.asarray(img)
        img = Image.fromarray(np.dstack([np.full_like(ink, 255)] * 3 + [ink]), mode="RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_transparency_is_composited_on_the_models_background(server) -> None:
    """The digits demo learned light ink on black: a white digit on a transparent background is still a 2 (on
    white it would be dark-on-light, and read as something else)."""
    opaque = post_image(server, "/classify", _digit_png(), top_k=1).json()["predictions"][0]
    transparent = post_image(server, "/classify", _digit_png(rgba=True), top_k=1).json()["predictions"][0]
    assert opaque["label"] == transparent["label"] == "2"
    assert transparent["score"] == pytest.approx(opaque["score"], abs=0.05)
    lenet = next(m for m in requests.get(f"{server.url}/models", timeout=10).json()["models"] if m["name"] == "lenet5")
    assert lenet["ready"]


@pytest.mark.parametrize(
    ("method", "path", "status", "phrase"),
    [
        ("GET", "/classify", 405, "use POST"),
        ("PUT", "/models", 405, "use GET"),
        ("GET", "/no-such-route", 404, "/docs"),  # BentoML's router answers this one, in plain text underneath
        ("DELETE", "/readyz", 405, "Method Not Allowed"),  # ... and this one
        ("POST", "/v2/models/lenet5/infer", 400, ""),
    ],
)
def test_every_error_body_is_json_with_an_error(server, method, path, status, phrase) -> None:
    response = requests.request(method, f"{server.url}{path}", timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert list(response.json()) == ["error"] and phrase in response.json()["error"]


def test_sizes_are_in_one_unit(server) -> None:
    """MB = 10⁶ bytes, as CNNSERVE_MAX_UPLOAD_MB (2 on the test server) is read: 2.5 MB is 2.5 MB, not 2.4."""
    response = post_image(server, "/classify", b"\xff" * 2_500_000)
    assert response.status_code == 413
    assert response.json()["error"] == "the upload is 2.5 MB, over the limit of 2 MB"


def test_a_normal_start_has_no_onnxruntime_warning(server) -> None:
    """The session server optimised and cached every graph at its start (a fresh cache): no onnxruntime warning
    (a serialised NCHWc graph, dead initializers) in its log."""
    log = server.log.read_text(errors="replace")
    assert "cache=written" in log
    assert "[W:onnxruntime" not in log, [line for line in log.splitlines() if "[W:onnxruntime" in line]


def test_readiness_means_a_model_is_ready(model_store, tmp_path: Path) -> None:
    """With no model ready (a tag mistyped, one not exported) /readyz and /v2/health/ready agree: 503, with the
    reason as JSON, and the start-up log names each model that is not served."""
    server = start_server({"CNNSERVE_MODELS": "lenet_5,not-exported"}, tmp_path / "serve.log", wait_for="/livez")
    try:
        for path in ("/readyz", "/v2/health/ready"):
            response = requests.get(f"{server.url}{path}", timeout=10)
            assert response.status_code == 503, (path, response.text)
            error = response.json()["error"]
            assert "no model is ready" in error and "lenet_5" in error and "not-exported" in error, error
        log = server.log.read_text(errors="replace")
        assert "model lenet_5 is not served" in log and "model not-exported is not served" in log
    finally:
        stop_server(server)
