"""The wheel installs and works outside the repository: it carries the demo weights, the batching defaults and the
page, installs the project under one name (``cnnserve.models``, ``cnnserve.export``, ``cnnserve.service``), and a
directory with its own ``models.py`` and ``service/`` package cannot shadow it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("cnnserve-*.whl")
    return built


def test_the_wheel_holds_the_data_under_one_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("cnnserve-")}
    assert tops == {"cnnserve"}  # no top-level models/, export/ or service/ to shadow or be shadowed
    for required in (
        "cnnserve/models/weights/lenet5.safetensors",
        "cnnserve/models/weights/unet.json",
        "cnnserve/service/runtime/batching_defaults.json",
        "cnnserve/service/app/static/index.html",
        "cnnserve/service/app/static/samples/digit.png",
        "cnnserve/service/tasks/classify.py",
        "cnnserve/export/demos/digits.py",
    ):
        assert required in names, required
    assert not [n for n in names if n.startswith(("benchmarks/", "cnnserve/benchmarks", "tests/"))]


def test_an_installed_wheel_runs_from_a_directory_that_shadows_its_old_names(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dev environment's packages (torch, onnx, bentoml…) visible to the new venv, after its own
    dev = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    (site / "dev-env.pth").write_text("\n".join(dev) + "\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True
    )
    work = tmp_path / "someone-elses-project"
    (work / "service").mkdir(parents=True)
    (work / "models.py").write_text("raise ImportError('the user project models.py was imported')\n")
    (work / "export.py").write_text("raise ImportError('the user project export.py was imported')\n")
    (work / "service" / "__init__.py").write_text("raise ImportError('the user project service/ was imported')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")
    cli = [str(python), "-c", "import sys; from cnnserve.cli import app; sys.argv[0] = 'cnnserve'; app()"]

    listed = subprocess.run([*cli, "list"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "lenet5" in listed.stdout and "maskrcnn_resnet50_fpn" in listed.stdout
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import cnnserve.service.contract as c, cnnserve.models as m; print(c.__file__, m.__file__)",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0 and str(site) in where.stdout and str(ROOT) not in where.stdout, where.stdout

    exported = subprocess.run(
        [*cli, "export", "--defaults"], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    for name in ("lenet5", "yolov1_shapes_conv", "cae", "unet"):
        assert f"{name}: {name}:" in exported.stdout and "weights=demo:" in exported.stdout
