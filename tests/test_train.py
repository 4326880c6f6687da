"""The LeNet-5 digits demo: the shipped weights meet the bar, and `cnnserve train` reproduces them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cnnserve.export.demos.digits import _to_batch, digits_split
from cnnserve.export.weights import DEMO_WEIGHTS_DIR
from cnnserve.models import build_model
from safetensors.torch import load_file


def _accuracy(state: dict[str, torch.Tensor]) -> float:
    model = build_model("lenet5").eval()
    model.load_state_dict(state, strict=True)
    split = digits_split()
    x = torch.from_numpy(_to_batch(split.test_images))
    with torch.no_grad():
        predicted = model((x - 0.5) / 0.5).argmax(1).numpy()
    return float((predicted == split.test_labels).mean())


def test_shipped_weights_reach_97_percent_on_the_held_out_split() -> None:
    record = json.loads((DEMO_WEIGHTS_DIR / "lenet5.json").read_text())
    accuracy = _accuracy(load_file(str(DEMO_WEIGHTS_DIR / "lenet5.safetensors")))
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-4)  # the README's number is this one


def test_shipped_sidecars_hold_no_run_timing() -> None:
    """A sidecar is committed with its weights: a retrain must not change it by how long the run took."""
    from cnnserve.export.demos.records import RUN_ONLY_KEYS

    sidecars = sorted(DEMO_WEIGHTS_DIR.glob("*.json"))
    assert sidecars
    for path in sidecars:
        assert not set(json.loads(path.read_text())) & set(RUN_ONLY_KEYS), path.name


@pytest.mark.slow
def test_training_is_reproducible(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "cnnserve")
    report = tmp_path / "report.json"
    subprocess.run(
        [cli, "train", "lenet5-digits", "--output-dir", str(tmp_path), "--report", str(report)],
        check=True,
        env=os.environ,
    )
    record = json.loads((tmp_path / "lenet5.json").read_text())
    assert record["test_accuracy"] >= 0.97
    assert _accuracy(load_file(str(tmp_path / "lenet5.safetensors"))) == pytest.approx(
        record["test_accuracy"], abs=1e-4
    )
    # the sidecar is the shipped one, byte for byte (a retrain in the checkout leaves it unmodified) ...
    assert (tmp_path / "lenet5.json").read_bytes() == (DEMO_WEIGHTS_DIR / "lenet5.json").read_bytes()
    # ... and the run's timing is in its report
    assert json.loads(report.read_text())["train_seconds"] > 0
