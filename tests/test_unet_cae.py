"""U-Net and the convolutional autoencoder: the paper's shape arithmetic, the export contract, and the demos.

The shipped demo weights must meet the issue's targets, and re-evaluating them here on freshly generated
held-out data must give the numbers their training records (and the README) state.
"""

from __future__ import annotations

import json
from pathlib import Path

import cnnserve.export.dense  # noqa: F401  (registers the dense tasks' export wrappers)
import cnnserve.models.cae  # noqa: F401  (registers "cae")
import cnnserve.models.unet  # noqa: F401  (registers "unet")
import numpy as np
import onnxruntime as ort
import pytest
import torch
from cnnserve.export import export_model
from cnnserve.export.onnx import read_metadata
from cnnserve.export.weights import DEMO_WEIGHTS_DIR
from cnnserve.models import build_model, get_spec
from cnnserve.models.unet import UNet, valid_output_size
from safetensors.torch import load_file

MIOU_TARGET = 0.85
AUROC_TARGET = 0.95
PSNR_GAIN_TARGET = 6.0


def _demo(name: str) -> tuple[torch.nn.Module, dict]:
    model = build_model(name).eval()
    model.load_state_dict(load_file(str(DEMO_WEIGHTS_DIR / f"{name}.safetensors")), strict=True)
    return model, json.loads((DEMO_WEIGHTS_DIR / f"{name}.json").read_text())


# --- U-Net ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (64, 48), (100, 130), (17, 33)])
def test_unet_same_padding_keeps_the_input_size(size: tuple[int, int]) -> None:
    model = UNet(in_channels=3, num_classes=4, base_width=4).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 4, *size)


def test_unet_valid_padding_follows_the_paper_572_to_388() -> None:
    assert valid_output_size(572, depth=4) == 388  # Fig. 1 of the paper
    model = UNet(in_channels=1, num_classes=2, base_width=2, depth=4, padding="valid").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 572, 572)).shape == (1, 2, 388, 388)
        assert model(torch.rand(1, 1, 188, 188)).shape == (1, 2, valid_output_size(188), valid_output_size(188))
    shallow = UNet(in_channels=3, num_classes=3, base_width=2, depth=2, padding="valid").eval()
    with torch.no_grad():
        assert shallow(torch.rand(1, 3, 92, 92)).shape[-1] == valid_output_size(92, depth=2) == 52
    with pytest.raises(ValueError):
        valid_output_size(570)  # 566 → 283: an odd map before a pool


def test_unet_skip_connections_concatenate_the_encoder_features() -> None:
    model = UNet(in_channels=3, num_classes=4, base_width=8, depth=4)
    widths = [8, 16, 32, 64, 128]
    assert [d.conv.block[0].in_channels for d in model.downs] == widths[:-1]
    for up, (skip_width, below) in zip(model.ups, [(64, 128), (32, 64), (16, 32), (8, 16)], strict=True):
        assert up.up.in_channels == below and up.up.out_channels == below // 2  # up-convolution halves the width
        assert up.conv.block[0].in_channels == skip_width + below // 2  # concatenated with the skip
    seen = []
    model.ups[0].conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 64, 64))
    assert seen == [torch.Size([1, 128, 8, 8])]  # 64 up-sampled + 64 skip channels at H/8


def test_unet_spec_and_paper_width() -> None:
    spec = get_spec("unet")
    assert spec.task == "semantic_segmentation" and spec.input_size == (128, 128)
    assert spec.labels == ("background", "circle", "square", "triangle")
    from cnnserve.export.demos.shapes import CLASSES

    assert spec.labels == CLASSES
    paper = build_model("unet", base_width=64, in_channels=1, num_classes=2)
    assert 31_000_000 < sum(p.numel() for p in paper.parameters()) < 31_100_000  # the paper's ~31 M
    with pytest.raises(ValueError):
        build_model("unet", padding="reflect")


# --- CAE -----------------------------------------------------------------------------------------------------


def test_cae_reconstruction_is_in_unit_range_with_the_input_shape() -> None:
    model = build_model("cae").eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        y = model(x * 10 - 5)  # even for inputs far outside [0, 1]
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    rgb = build_model("cae", in_channels=3, channels=(8, 16), latent_dim=4, input_size=(16, 24)).eval()
    with torch.no_grad():
        assert rgb(torch.rand(2, 3, 16, 24)).shape == (2, 3, 16, 24)
        assert rgb.encode(torch.rand(2, 3, 16, 24)).shape == (2, 4)  # the bottleneck
    with pytest.raises(ValueError):
        build_model("cae", channels=(8, 16, 32, 64, 128, 256))  # 32 is not divisible by 64


# --- export --------------------------------------------------------------------------------------------------


def test_unet_export_parity_and_dynamic_size(tmp_path: Path) -> None:
    result = export_model("unet", weights="demo", save=False, output=tmp_path / "unet.onnx")
    assert result.parity <= 1e-4
    meta = read_metadata(tmp_path / "unet.onnx")
    assert meta["cnnserve.spec"]["task"] == "semantic_segmentation"
    assert meta["cnnserve.spec"]["weights"] == "demo:synthetic-shapes"
    session = ort.InferenceSession(str(tmp_path / "unet.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    model, _ = _demo("unet")
    mean = torch.tensor(0.5).view(1, 1, 1, 1)
    for size in [(128, 128), (96, 160)]:  # H and W are dynamic in the graph
        x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1))
        (logits,) = session.run(None, {"images": x.numpy()})
        assert logits.shape == (3, 4, *size)
        with torch.no_grad():
            expected = model((x - mean) / 0.5).numpy()
        assert np.abs(logits - expected).max() <= 1e-4


def test_cae_export_parity_error_output_and_threshold(tmp_path: Path) -> None:
    result = export_model("cae", weights="demo", save=False, output=tmp_path / "cae.onnx")
    assert result.parity <= 1e-4
    meta = read_metadata(tmp_path / "cae.onnx")
    _, record = _demo("cae")
    assert float(meta["cnnserve.threshold"]) == pytest.approx(record["onnx_metadata"]["threshold"])
    assert meta["cnnserve.spec"]["weights"] == "demo:sklearn-digits-0to7"
    session = ort.InferenceSession(str(tmp_path / "cae.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32)
    reconstruction, error = session.run(["reconstruction", "error"], {"images": x})
    assert reconstruction.shape == x.shape and error.shape == (4,)
    np.testing.assert_allclose(error, ((reconstruction - x) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)


# --- shipped demo weights ------------------------------------------------------------------------------------


def test_unet_demo_meets_its_target_and_reproduces_its_record() -> None:
    from cnnserve.export.demos.unet_shapes import evaluate

    model, record = _demo("unet")
    assert record["dataset"] == "synthetic-shapes"
    assert record["mean_iou"] >= MIOU_TARGET
    measured = evaluate(model)  # freshly generated make_dataset(200, seed=HELD_OUT_SEED)
    assert measured["mean_iou"] == pytest.approx(record["mean_iou"], abs=1e-3)
    assert measured["mean_iou"] >= MIOU_TARGET


def test_cae_demo_meets_its_targets_and_reproduces_its_record() -> None:
    from cnnserve.export.demos.cae_digits import evaluate

    model, record = _demo("cae")
    assert record["dataset"] == "sklearn-digits-0to7"
    assert record["auroc_8_9"] >= AUROC_TARGET
    assert record["psnr_gain_db"] >= PSNR_GAIN_TARGET
    measured = evaluate(model)
    for key in ("auroc_8_9", "psnr_noisy_db", "psnr_denoised_db", "psnr_gain_db"):
        assert measured[key] == pytest.approx(record[key], abs=1e-3), key
    assert measured["threshold"] == pytest.approx(record["onnx_metadata"]["threshold"], rel=1e-4)
    assert measured["auroc_8_9"] >= AUROC_TARGET and measured["psnr_gain_db"] >= PSNR_GAIN_TARGET


# --- retraining (slow) ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unet_shapes_training_reaches_the_target(tmp_path: Path) -> None:
    from cnnserve.export.demos.unet_shapes import train_unet_shapes

    record = train_unet_shapes(tmp_path, log=lambda _msg: None)
    assert record["mean_iou"] >= MIOU_TARGET
    assert (tmp_path / "unet.safetensors").is_file()


@pytest.mark.slow
def test_cae_digits_training_reaches_the_targets(tmp_path: Path) -> None:
    from cnnserve.export.demos.cae_digits import train_cae_digits

    record = train_cae_digits(tmp_path, log=lambda _msg: None)
    assert record["auroc_8_9"] >= AUROC_TARGET
    assert record["psnr_gain_db"] >= PSNR_GAIN_TARGET
    assert record["onnx_metadata"]["threshold"] > 0
