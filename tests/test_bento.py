"""The serving bento: built from bentofile.yaml with the chosen models inside, torch-free, and served by a fresh
virtual environment made only from the bento's own requirements (pip from PyPI, through pip's cache).

The served bento is exported to a ``.bento`` archive and imported into an empty BENTOML_HOME first, so the models
it serves can only have come from inside the bento; it is served from an empty working directory, so no repository
code is importable either. Docker is not available here: the Dockerfile BentoML generates for ``bentoml
containerize`` is checked as a file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
from cnnserve.export.demos.digits import digit_png, digits_split

BIN = Path(sys.executable).parent
TRAINING_ONLY = {"torch", "torchvision", "onnxscript", "safetensors", "scikit-learn"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _names(requirements: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in requirements.splitlines())
    return {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in lines if line and line[0] != "-"}


@pytest.fixture(scope="module")
def bento(model_store: dict[str, str]):
    import bentoml

    result = subprocess.run(
        [str(BIN / "cnnserve"), "bento", "lenet5"], capture_output=True, text=True, env=os.environ, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = re.search(r"built (\S+) with", result.stdout).group(1)
    return bentoml.bentos.get(tag)


def test_bento_packs_the_chosen_models_and_serving_requirements_only(bento, model_store: dict[str, str]) -> None:
    assert [str(m.tag) for m in bento.info.models] == [model_store["lenet5"]]
    requirements = _names((Path(bento.path) / "env" / "python" / "requirements.txt").read_text())
    assert {"onnxruntime-gpu", "bentoml", "pillow", "numpy", "pydantic", "tritonclient"} <= requirements
    assert not requirements & TRAINING_ONLY
    sources = {p.relative_to(Path(bento.path) / "src").parts[0] for p in (Path(bento.path) / "src").rglob("*.py")}
    assert sources == {"cnnserve", "service"}  # no models/, export/ (torch) or tests/ in the serving code
    assert [p.name for p in (Path(bento.path) / "src" / "cnnserve").rglob("*.py")] == ["__init__.py"]


def test_bento_dockerfile_serves_on_3000_and_adds_cuda_libraries(bento) -> None:
    dockerfile = (Path(bento.path) / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "EXPOSE 3000" in dockerfile
    assert "requirements.txt" in dockerfile and "torch" not in dockerfile
    # the setup script (deploy/docker/cuda-libs.sh) is copied into the bento and run while the image is built
    script = re.search(r"RUN chmod \+x (\./env/docker/script__\w+) && \1", dockerfile).group(1)
    body = (Path(bento.path) / script).read_text()
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in body and "ldconfig" in body


def _check_grpc(address: str) -> None:
    """The served bento's gRPC service answers the stock client: ready, and the top class of a digit."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_ready() and client.is_model_ready("lenet5")
    split = digits_split()
    pixels = np.repeat(np.repeat(split.test_images[:1].astype(np.float32) / 255.0, 4, axis=1), 4, axis=2)
    tensor = grpcclient.InferInput("images", [1, 1, 32, 32], "FP32")
    tensor.set_data_from_numpy(pixels[:, None])
    result = client.infer("lenet5", [tensor], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=1)])
    assert result.as_numpy("probabilities").shape == (1, 1)


def test_built_bento_serves_in_a_fresh_environment(bento, model_store: dict[str, str], tmp_path: Path) -> None:
    archive = tmp_path / "cnnserve.bento"
    subprocess.run([str(BIN / "bentoml"), "export", str(bento.tag), str(archive)], check=True, capture_output=True)
    with tarfile.open(archive) as tar:
        version = model_store["lenet5"].split(":")[1]
        assert f"./models/lenet5/{version}/model.onnx" in tar.getnames()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-r", str(Path(bento.path) / "env/python/requirements.txt")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"fresh venv install: {time.monotonic() - started:.1f} s")
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True).stdout
    assert not _names(freeze) & TRAINING_ONLY
    assert {"grpcio", "protobuf", "tritonclient"} <= _names(freeze)  # the gRPC service: Triton's own messages

    home, cwd = tmp_path / "bentoml-home", tmp_path / "empty"
    cwd.mkdir()
    grpc_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNNSERVE_", "VIRTUAL_ENV", "PYTHON"))} | {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "CNNSERVE_GRPC_PORT": str(grpc_port),
    }
    imported = subprocess.run(
        [str(venv / "bin" / "bentoml"), "import", str(archive)], env=env, capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr[-3000:]

    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(venv / "bin" / "bentoml"), "serve", str(bento.tag), "--port", str(port), "--host", "127.0.0.1"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a cold start: first imports compile
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        served = requests.get(f"{url}/models", timeout=10).json()["models"]
        assert [(m["name"], m["ready"]) for m in served] == [("lenet5", True)]
        split = digits_split()
        for pixels, label in zip(split.test_images[:5], split.test_labels[:5], strict=True):
            answer = requests.post(f"{url}/classify", files={"image": digit_png(pixels)}, timeout=30).json()
            assert answer["model"] == "lenet5" and answer["predictions"][0]["label"] == str(label)
        _check_grpc(f"127.0.0.1:{grpc_port}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
