"""Shared fixtures: a private BentoML model store, the exported test models, and one real `bentoml serve`.

BENTOML_HOME is set before anything imports bentoml (it is read once at import), so the tests never touch the
user's store. The server is a real `bentoml serve` subprocess on a free port, started once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cnnserve-tests-"))
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# onnxruntime's optimised-graph cache goes to the session's directory, not the user's ~/.cache.
os.environ.setdefault("CNNSERVE_ORT_CACHE_DIR", str(_SESSION_DIR / "ort-cache"))
# ... and so do measured batch curves: a user's `cnnserve tune` must not change what the tests see.
os.environ.setdefault("CNNSERVE_BATCH_PROFILES", str(_SESSION_DIR / "batching.json"))

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_store() -> dict[str, str]:
    """Export the test models into the session store once: the trained demos (LeNet-5, both YOLOs, CAE, U-Net,
    the inpainting CAE, the VAE), LeNet-5's uint8-input variant (what a Triton client's own pre-processing feeds:
    tests/test_triton_clients.py) and a seeded random ResNet-18, plus a deliberately broken entry (a truncated ONNX
    file) to prove that one bad model does not stop the others, and a LeNet-5 whose contract is that of a file
    exported before `/embed` (no list of outputs)."""
    from cnnserve.export import export_model
    from cnnserve.export.store import save_to_store

    tags = {
        "lenet5": export_model("lenet5", weights="demo").tag,
        # what Triton's image_client.py takes: raw pixels, one output (README: Triton and KServe clients)
        "lenet5-u8": export_model("lenet5", weights="demo", input_dtype="uint8", embedding=False).tag,
        "resnet18": export_model("resnet18", weights="random").tag,
        "yolov1_shapes": export_model("yolov1_shapes", weights="demo").tag,
        "yolov1_shapes_conv": export_model("yolov1_shapes_conv", weights="demo").tag,  # /detect's default
        "cae": export_model("cae", weights="demo").tag,
        "unet": export_model("unet", weights="demo").tag,
        "cae_inpaint": export_model("cae_inpaint", weights="demo").tag,
        "cvae": export_model("cvae", weights="demo").tag,
    }
    broken = _SESSION_DIR / "broken" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x08\x07\x12\x04this is not a complete onnx model")
    tags["broken"] = save_to_store(broken, name="broken", task="classification", metadata={"model": "broken"})
    tags["xss_labels"] = _relabelled(tags["lenet5"], "xss_labels", [XSS_LABEL.replace("1", str(d)) for d in range(10)])
    tags["lenet5_before_embed"] = _respecced(tags["lenet5"], "lenet5_before_embed", drop=("outputs",))
    return tags


XSS_LABEL = "<img src=x onerror=alert(1)>"  # the label of class 1 of `xss_labels`: the page must show it as text


def _relabelled(tag: str, name: str, labels: list[str]) -> str:
    """A copy of a stored model under another name whose metadata carries other labels."""
    return _respecced(tag, name, labels=labels)


def _respecced(tag: str, name: str, *, drop: tuple[str, ...] = (), **changes: object) -> str:
    """A copy of a stored model under another name whose ``cnnserve.spec`` has ``changes`` and lacks ``drop``."""
    import json

    import bentoml
    import onnx
    from cnnserve.export.store import save_to_store

    entry = bentoml.models.get(tag)
    model = onnx.load(entry.path_of(entry.info.metadata["onnx_file"]))
    spec = next(p for p in model.metadata_props if p.key == "cnnserve.spec")
    fields = {k: v for k, v in json.loads(spec.value).items() if k not in drop}
    spec.value = json.dumps({**fields, **changes})
    path = _SESSION_DIR / name / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, path)
    return save_to_store(path, name=name, task="classification", metadata=dict(entry.info.metadata))


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, grpc_url: str = "") -> None:
        self.url = url
        self.process = process
        self.log = log
        self.grpc_url = grpc_url  # host:port of its KServe v2 gRPC service ("" when off)


def png_bytes(array: Any) -> bytes:
    """A numpy image (H, W[, C], uint8) as PNG bytes: what the HTTP tests upload."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def post_image(server: Server, route: str, data: bytes, *, timeout: float = 60, **fields: object) -> Any:
    """POST ``data`` as the multipart ``image`` field, the other fields as form fields (str of each value)."""
    import requests

    return requests.post(
        f"{server.url}{route}",
        files={"image": ("image.png", data)},
        data={k: str(v) for k, v in fields.items()},
        timeout=timeout,
    )


def start_server(env_overrides: dict[str, str], log: Path, *, wait_for: str = "/readyz") -> Server:
    """A real `bentoml serve` on a free port, returned once ``wait_for`` answers 200 (``/livez`` for a server that
    is meant not to become ready)."""
    import requests

    port = free_port()
    # gRPC on a free port of its own: servers of one test session (and of other checkouts) never share 8001.
    env = {**os.environ, "CNNSERVE_GRPC_PORT": str(free_port()), "CNNSERVE_GRPC_HOST": "127.0.0.1", **env_overrides}
    # Each server gets its own BENTOML_HOME sharing the session's model store: BentoML keeps its Prometheus
    # multiprocess files under BENTOML_HOME and clears them at start, so two servers on one home would wipe
    # each other's /metrics.
    home = log.parent / f"{log.stem}-home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
    env["BENTOML_HOME"] = str(home)
    out = log.open("wb")
    process = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}{wait_for}", timeout=2).status_code == 200:
                grpc_port = int(env["CNNSERVE_GRPC_PORT"])
                return Server(url, process, log, f"127.0.0.1:{grpc_port}" if grpc_port else "")
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"bentoml serve did not become ready in 120 s:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    import signal

    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.process.pid, signal.SIGKILL)


# What the session's server serves: the store's test models, a tag that is not in the store, and the broken entry.
SERVED = (
    "lenet5", "lenet5-u8", "resnet18", "yolov1_shapes", "yolov1_shapes_conv", "cae", "unet", "broken", "not-exported",
    "xss_labels", "cae_inpaint", "cvae", "lenet5_before_embed",
)  # fmt: skip


@pytest.fixture(scope="session")
def server(model_store: dict[str, str]) -> Iterator[Server]:
    """One `bentoml serve` for the session: the test models, the broken entry, a tag that is not in the store and a
    classifier whose labels are HTML (for the page's tests)."""
    srv = start_server(
        {
            "CNNSERVE_MODELS": ",".join(SERVED),
            "CNNSERVE_MAX_UPLOAD_MB": "2",
            "CNNSERVE_HEADER_TIMEOUT_S": "3",  # tests/test_reliability.py: slow-header clients
        },
        _SESSION_DIR / "serve.log",
    )
    yield srv
    stop_server(srv)
