"""The autoencoder's other uses as specifications: `/embed`, `/inpaint` and `/generate` against the real served
process, the graphs that compute them, and the demo models' held-out figures.

* `/embed`: every classifier and both CAEs answer an L2-normalised vector computed in the graph (the `embedding`
  output, so `/v2` gets it too); the digits demos carry a gallery (neighbours, a 2-D map) and their k-NN accuracy,
  ≥ 95 % for the default, the inpainting CAE; a file exported before `/embed` is refused with the command that
  re-exports it.
* `/inpaint`: a hole given as a `mask` image or as the upload's transparency is filled; pixels outside it come
  back as sent; bad masks get a 400 that says what to send. The demo beats the border-mean fill by ≥ 3 dB.
* `/generate`: `count` images from `seed`, the same seed the same images; the served LeNet-5 reads ≥ 80 % of 100
  samples with probability ≥ 0.9 and finds at least 8 of the 10 digits among them.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
import torch
from cnnserve.export import export_model
from cnnserve.export.demos.digits import digit_png, digits_split
from cnnserve.export.onnx import read_contract
from cnnserve.export.weights import DEMO_WEIGHTS_DIR
from cnnserve.export.wrappers import wrap_for_export
from cnnserve.service.contract import ModelContract
from conftest import png_bytes, post_image
from PIL import Image

from cnnserve import models

KNN_GOAL = 0.95
INPAINT_GAIN_GOAL_DB = 3.0
CONFIDENT_GOAL, DIGITS_GOAL = 0.8, 8
# One small member per classifier family (every family's head split is the same code shape).
FAMILIES = ["lenet5", "alexnet", "vgg11", "googlenet", "resnet18", "densenet121", "efficientnet_b0", "vit_b_32"]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@pytest.fixture(scope="module")
def digit() -> bytes:
    return digit_png(digits_split().test_images[0])  # a 2, row 0 of the gallery


# --- the graphs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_every_classifier_family_splits_at_its_penultimate_layer(name: str) -> None:
    """forward = last layer ∘ forward_head(pre_logits) ∘ forward_features, so the exported graph's probabilities
    are the model's and its embedding is the layer below the logits."""
    spec = models.get_spec(name)
    torch.manual_seed(0)
    model = models.build_model(name).eval()
    x = torch.rand(2, spec.in_channels, *spec.input_size)
    with torch.no_grad():
        penultimate = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(penultimate)
        assert torch.allclose(logits, model(x), atol=1e-5)
        wrapped, outputs = wrap_for_export(model, spec)
        probabilities, embedding = wrapped(x)
        penultimate = model.forward_head(model.forward_features(wrapped.normalize(x)), pre_logits=True)
    assert outputs == ("probabilities", "embedding")
    assert penultimate.shape[1] == {"lenet5": 84, "alexnet": 4096, "vgg11": 4096}.get(name, penultimate.shape[1])
    assert torch.allclose(embedding, torch.nn.functional.normalize(penultimate, dim=1), atol=1e-6)
    norms = penultimate.norm(dim=1)  # a random EfficientNet's pooled features can be ~1e-12: then not unit length
    assert torch.allclose(embedding.norm(dim=1)[norms > 1e-6], torch.ones(2)[norms > 1e-6], atol=1e-5)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2), atol=1e-5)


def test_exported_files_declare_their_outputs_and_demo_figures(tmp_path: Path) -> None:
    result = export_model("cae", weights="demo", save=False, output=tmp_path / "cae.onnx")
    contract = read_contract(tmp_path / "cae.onnx")
    assert contract.inputs == ("images",) and contract.outputs == ("reconstruction", "error", "embedding")
    (knn,) = result.evaluation  # trained on 0-7 only (the anomaly demo): its codes place the unseen 8s, 9s less well
    assert knn.metric == "knn_accuracy" and 0.9 <= knn.value <= 1 and "k=5" in knn.data
    assert contract.evaluation == result.evaluation
    gallery = contract.gallery
    assert gallery is not None and gallery.count == len(digits_split().test_labels) == len(gallery.labels)
    assert gallery.vectors.shape == (gallery.count, gallery.dim) and gallery.points.shape == (gallery.count, 2)
    assert np.allclose(np.linalg.norm(gallery.vectors, axis=1), 1, atol=2e-3)  # float16 storage
    assert gallery.images.shape == (gallery.count, 8, 8)
    # the gallery is what the file computes for the test split
    session = ort.InferenceSession(str(tmp_path / "cae.onnx"), providers=["CPUExecutionProvider"])
    from cnnserve.export.demos.cae_digits import digits_batch

    (embedding,) = session.run(["embedding"], {"images": digits_batch(digits_split().test_images[:5])})
    np.testing.assert_allclose(embedding, gallery.vectors[:5], atol=2e-3)


def test_files_from_before_the_new_fields_still_parse() -> None:
    old = {"cnnserve.spec": json.dumps({"name": "lenet5", "task": "classification", "input_size": [32, 32]})}
    contract = ModelContract.from_metadata(old)
    assert contract.outputs == () and contract.evaluation == () and contract.gallery is None
    assert ModelContract.from_metadata(contract.to_metadata()) == contract


def test_new_tasks_export_only_the_variants_that_fit(tmp_path: Path) -> None:
    from cnnserve.export import ExportError

    with pytest.raises(ExportError, match=r"is exported in fp32; float32 input only"):
        export_model("cvae", weights="random", precision="fp16", save=False, output=tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="float32 input only"):
        export_model("cae_inpaint", weights="random", input_dtype="uint8", save=False, output=tmp_path / "y.onnx")


def test_no_embedding_leaves_one_output_for_one_output_clients(tmp_path: Path) -> None:
    """Triton's image_client.py takes models of one output: --no-embedding exports the probabilities alone."""
    from cnnserve.export import ExportError

    result = export_model("lenet5", weights="random", embedding=False, save=False, output=tmp_path / "one.onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    assert read_contract(result.path).outputs == ("probabilities",)
    with pytest.raises(ExportError, match="only a classifier's embedding output can be left out"):
        export_model("cvae", weights="random", embedding=False, save=False, output=tmp_path / "x.onnx")


def test_inpainting_graph_keeps_the_known_pixels_and_generation_graph_decodes_codes(tmp_path: Path) -> None:
    export_model("cae_inpaint", weights="random", save=False, output=tmp_path / "inpaint.onnx")
    session = ort.InferenceSession(str(tmp_path / "inpaint.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("images", [1, 32, 32]), ("mask", [1, 32, 32])]
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    mask = np.zeros_like(x)
    mask[:, :, 8:20, 4:30] = 1
    (filled,) = session.run(["inpainted"], {"images": x, "mask": mask})
    assert np.array_equal(filled[mask == 0], x[mask == 0]) and not np.allclose(filled[mask == 1], x[mask == 1])

    export_model("cvae", weights="random", save=False, output=tmp_path / "cvae.onnx")
    session = ort.InferenceSession(str(tmp_path / "cvae.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("noise", ["batch", 17])]
    (images,) = session.run(None, {"noise": np.zeros((5, 17), np.float32)})
    assert images.shape == (5, 1, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert read_contract(tmp_path / "cvae.onnx").noise_dim == 17


def test_mixture_prior_picks_a_component_with_the_first_number_and_shapes_the_rest() -> None:
    from cnnserve.models.vae import MixturePrior

    prior = MixturePrior(3, 2)
    noise = torch.randn(6, 3)
    assert torch.equal(prior(noise), noise[:, 1:])  # unfitted: N(0, I) itself
    prior.weights.copy_(torch.tensor([0.5, 0.25, 0.25]))
    prior.means.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    prior.scale_tril.copy_(torch.eye(2).repeat(3, 1, 1) * 0.1)
    first = torch.tensor([-1.0, 0.3, 1.5])  # Φ: 0.16, 0.62, 0.93 → components 0, 1, 2 (bounds 0.5, 0.75)
    codes = prior(torch.cat([first[:, None], torch.zeros(3, 2)], dim=1))
    assert torch.allclose(codes, prior.means)


# --- /embed -------------------------------------------------------------------------------------------------------


def test_embed_defaults_to_the_digits_inpainting_autoencoder_and_is_unit_length(server, digit) -> None:
    response = post_image(server, "/embed", digit)
    assert response.status_code == 200, response.text
    body = response.json()
    latent = models.build_model("cae_inpaint").to_latent.out_features
    assert body["model"] == "cae_inpaint" and body["dim"] == len(body["embedding"]) == latent
    assert np.linalg.norm(body["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert set(body) == {"model", "dim", "embedding"}  # neighbours and the map only when asked for


def test_embed_answers_the_same_vector_as_v2_and_every_request_shape(server, digit) -> None:
    vector = post_image(server, "/embed", digit, model="lenet5").json()["embedding"]
    assert len(vector) == 84
    as_json = requests.post(
        f"{server.url}/embed", json={"image": base64.b64encode(digit).decode(), "model": "lenet5"}, timeout=30
    )
    raw = requests.post(
        f"{server.url}/embed?model=lenet5", data=digit, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert as_json.json()["embedding"] == raw.json()["embedding"] == vector
    pixels = np.asarray(Image.open(io.BytesIO(digit)).resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255
    v2 = requests.post(
        f"{server.url}/v2/models/lenet5/infer",
        json={
            "inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": pixels.ravel().tolist()}]
        },
        timeout=30,
    ).json()
    embedding = next(o for o in v2["outputs"] if o["name"] == "embedding")
    assert embedding["shape"] == [1, 84]
    np.testing.assert_allclose(embedding["data"], vector, atol=1e-6)


def test_embed_lists_nearest_gallery_digits_and_places_the_image_on_the_map(server, digit) -> None:
    body = post_image(server, "/embed", digit, neighbors=5, map="true").json()
    assert body["gallery"].startswith("digits test split (450")
    neighbours = body["neighbors"]
    assert [n["index"] for n in neighbours][0] == 0 and neighbours[0]["distance"] < 1e-2  # the image itself
    assert [n["distance"] for n in neighbours] == sorted(n["distance"] for n in neighbours)
    assert all(n["label"] == "2" for n in neighbours[:3])
    assert _decode(neighbours[1]["image"]).shape == (8, 8)
    points = body["map"]["points"]
    assert len(points) == 450 and {p["label"] for p in points} == {str(d) for d in range(10)}
    assert "t-SNE" in body["map"]["method"]
    # placed among its own kind: nearer the 2s' centre than any other digit's
    xy = np.array([body["map"]["x"], body["map"]["y"]])
    centres = {
        label: np.mean([[p["x"], p["y"]] for p in points if p["label"] == label], axis=0)
        for label in map(str, range(10))
    }
    assert min(centres, key=lambda label: np.linalg.norm(centres[label] - xy)) == "2"


def test_models_records_the_held_out_knn_accuracy(server) -> None:
    """The issue's held-out check, on the default /embed model: k-NN on its embeddings of the digits training split
    labels ≥ 95 % of the test split (measured through the served file at export)."""
    listed = {m["name"]: m for m in requests.get(f"{server.url}/models", timeout=10).json()["models"]}
    for name in ("cae_inpaint", "cae", "lenet5"):
        (knn,) = [e for e in listed[name]["evaluation"] if e["metric"] == "knn_accuracy"]
        assert knn["value"] >= (KNN_GOAL if name == "cae_inpaint" else 0.9), (name, knn)
        assert knn["goal"] == (KNN_GOAL if name == "cae_inpaint" else None)  # the goal, where it applies
        assert "/embed" in listed[name]["routes"] and listed[name]["gallery"]
    endpoints = {e["route"]: e for e in requests.get(f"{server.url}/models", timeout=10).json()["endpoints"]}
    assert endpoints["/embed"]["tasks"] == ["inpainting", "autoencoder", "classification"]
    defaults = {route: endpoints[route]["default_model"] for route in ("/embed", "/inpaint", "/generate")}
    assert defaults == {"/embed": "cae_inpaint", "/inpaint": "cae_inpaint", "/generate": "cvae"}
    assert endpoints["/inpaint"]["files"] == [{"name": "image", "required": True}, {"name": "mask", "required": False}]
    assert endpoints["/generate"]["files"] == []


@pytest.mark.parametrize(
    ("fields", "status", "phrase"),
    [
        ({"model": "lenet5_before_embed"}, 400, "cnnserve export lenet5 --weights demo"),
        ({"model": "resnet18", "neighbors": "3"}, 400, "no reference gallery"),
        ({"model": "cvae"}, 400, "needs an inpainting or autoencoder or classification model"),
        ({"neighbors": "51"}, 400, "between 0 and 50"),
        ({"model": "nope"}, 404, "not served"),
    ],
)
def test_embed_refuses_what_it_cannot_answer(server, digit, fields, status, phrase) -> None:
    response = post_image(server, "/embed", digit, **fields)
    assert response.status_code == status and phrase in response.json()["error"]


def test_a_file_from_before_embed_still_classifies(server, digit) -> None:
    response = post_image(server, "/classify", digit, model="lenet5_before_embed")
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "2"


def test_embed_resnet_gives_its_pooled_features(server) -> None:
    photo = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    body = post_image(server, "/embed", photo, model="resnet18").json()
    assert body["dim"] == 512 and np.linalg.norm(body["embedding"]) == pytest.approx(1, abs=1e-5)


# --- /inpaint -----------------------------------------------------------------------------------------------------


def _digit_and_hole(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    pixels = digits_split().test_images[0]
    hole = np.zeros((8, 8), bool)
    hole[2:5, 2:6] = True
    if size != 8:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST))
        hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize((size, size))) > 127
    return pixels, hole


def test_inpaint_fills_the_mask_and_keeps_every_other_pixel(server) -> None:
    pixels, hole = _digit_and_hole(size=40)
    scribbled = pixels.copy()
    scribbled[hole] = 255  # the hole's content must not matter
    mask = _png(Image.fromarray(hole.astype(np.uint8) * 255))
    response = requests.post(
        f"{server.url}/inpaint",
        files={"image": ("d.png", png_bytes(scribbled)), "mask": ("m.png", mask)},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(response.content)))
    assert out.shape == pixels.shape  # the upload's size and mode (grey)
    assert np.array_equal(out[~hole], scribbled[~hole])
    assert np.abs(out[hole].astype(int) - pixels[hole]).mean() < np.abs(255 - pixels[hole].astype(int)).mean()


def test_inpaint_takes_the_uploads_transparency_and_json(server) -> None:
    pixels, hole = _digit_and_hole()
    alpha = np.where(hole, 0, 255).astype(np.uint8)
    with_alpha = _png(Image.fromarray(np.stack([pixels, alpha], axis=-1), "LA"))
    multipart = requests.post(f"{server.url}/inpaint", files={"image": ("a.png", with_alpha)}, timeout=30)
    raw = requests.post(f"{server.url}/inpaint", data=with_alpha, headers={"Content-Type": "image/png"}, timeout=30)
    mask = _png(Image.fromarray(hole.astype(np.uint8) * 255))
    as_json = requests.post(
        f"{server.url}/inpaint",
        json={"image": base64.b64encode(digit_png(pixels)).decode(), "mask": base64.b64encode(mask).decode()},
        timeout=30,
    )
    assert multipart.status_code == raw.status_code == as_json.status_code == 200
    filled = [np.asarray(Image.open(io.BytesIO(r.content))) for r in (multipart, raw, as_json)]
    assert filled[0].shape == (8, 8) and np.array_equal(filled[0], filled[1])
    assert np.array_equal(filled[0][hole], filled[2][hole])  # the same hole, told two ways


def test_inpaint_with_a_mask_puts_other_transparency_on_the_models_background(server) -> None:
    """A white digit drawn on a transparent page, and a mask: the mask marks the hole (/inpaint's rule), and the
    transparent background is the digits model's black, as on every other endpoint — not white paper."""
    pixels, hole = _digit_and_hole()
    drawn = _png(Image.fromarray(np.stack([np.full_like(pixels, 255), pixels], axis=-1), "LA"))  # ink = opacity
    mask = _png(Image.fromarray(hole.astype(np.uint8) * 255))
    with_mask = requests.post(
        f"{server.url}/inpaint", files={"image": ("a.png", drawn), "mask": ("m.png", mask)}, timeout=30
    )
    plain = requests.post(
        f"{server.url}/inpaint", files={"image": ("d.png", digit_png(pixels)), "mask": ("m.png", mask)}, timeout=30
    )
    assert with_mask.status_code == plain.status_code == 200, with_mask.text
    out, reference = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (with_mask, plain))
    assert np.abs(out[~hole].astype(int) - pixels[~hole]).max() <= 1  # composited on black: the digit itself
    assert np.abs(out[hole].astype(int) - reference[hole]).max() <= 2  # and filled as the plain digit is


def _mask(array: np.ndarray) -> bytes:
    return _png(Image.fromarray(array.astype(np.uint8)))


@pytest.mark.parametrize(
    ("mask", "phrase"),
    [
        (None, "nothing marks the hole"),
        (_mask(np.zeros((8, 8))), "marks nothing to fill"),
        (_mask(np.full((8, 8), 255)), "covers the whole image"),
        (_mask(np.full((9, 8), 255)), "the mask is 8×9 but the image is 8×8"),
        (b"not an image", "not an image we can read"),
    ],
)
def test_inpaint_refuses_bad_masks_with_what_to_send(server, digit, mask, phrase) -> None:
    files = {"image": ("d.png", digit)}
    if mask is not None:
        files["mask"] = ("m.png", mask)
    response = requests.post(f"{server.url}/inpaint", files=files, timeout=30)
    assert response.status_code == 400 and phrase in response.json()["error"]


def test_inpaint_refuses_a_second_mask_or_a_mask_as_text(server, digit) -> None:
    two = [("image", ("d.png", digit)), ("mask", ("m.png", digit)), ("mask", ("n.png", digit))]
    response = requests.post(f"{server.url}/inpaint", files=two, timeout=30)
    assert response.status_code == 400 and "more than one `mask`" in response.json()["error"]
    response = requests.post(f"{server.url}/inpaint", files={"image": ("d.png", digit)}, data={"mask": "x"}, timeout=30)
    assert response.status_code == 400 and "must be a file upload" in response.json()["error"]


def test_inpaint_graph_over_v2(server) -> None:
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    mask = np.zeros_like(x)
    mask[..., 10:20, 10:20] = 1
    tensors = [
        {"name": name, "shape": [1, 1, 32, 32], "datatype": "FP32", "data": value.ravel().tolist()}
        for name, value in (("images", x), ("mask", mask))
    ]
    body = requests.post(f"{server.url}/v2/models/cae_inpaint/infer", json={"inputs": tensors}, timeout=30).json()
    out, embedding = body["outputs"]
    filled = np.asarray(out["data"], np.float32).reshape(x.shape)
    assert out["name"] == "inpainted" and np.allclose(filled[mask == 0], x[mask == 0])
    assert embedding["name"] == "embedding" and np.linalg.norm(embedding["data"]) == pytest.approx(1, abs=1e-5)


def test_models_records_the_inpainting_gain(server) -> None:
    listed = {m["name"]: m for m in requests.get(f"{server.url}/models", timeout=10).json()["models"]}
    figures = {e["metric"]: e for e in listed["cae_inpaint"]["evaluation"]}
    assert figures["hole_psnr_gain_db"]["value"] >= INPAINT_GAIN_GOAL_DB
    assert figures["hole_psnr_db"]["value"] - figures["border_mean_psnr_db"]["value"] == pytest.approx(
        figures["hole_psnr_gain_db"]["value"], abs=2e-3
    )


# --- /generate ----------------------------------------------------------------------------------------------------


def test_generate_the_same_seed_gives_the_same_images(server) -> None:
    first = requests.post(f"{server.url}/generate", data={"count": "6", "seed": "7"}, timeout=30)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["model"] == "cvae" and body["seed"] == 7 and len(body["images"]) == 6
    assert {_decode(i).shape for i in body["images"]} == {(32, 32)}
    grid = _decode(body["grid"])
    assert grid.shape == (2 * 32 + 2, 3 * 32 + 2 * 2)  # 3 columns × 2 rows, 2 px between tiles
    again = requests.post(f"{server.url}/generate", json={"count": 6, "seed": 7}, timeout=30).json()
    query = requests.post(f"{server.url}/generate?count=6&seed=7", timeout=30).json()
    assert again["images"] == body["images"] == query["images"]
    other = requests.post(f"{server.url}/generate", json={"count": 6, "seed": 8}, timeout=30).json()
    assert other["images"] != body["images"]


def test_generate_picks_a_seed_and_says_which(server) -> None:
    body = requests.post(f"{server.url}/generate", json={"count": 2}, timeout=30).json()
    repeat = requests.post(f"{server.url}/generate", json={"count": 2, "seed": body["seed"]}, timeout=30).json()
    assert repeat["images"] == body["images"]


@pytest.mark.parametrize(
    ("send", "phrase"),
    [
        ({"json": {"count": 0}}, "`count` must be between 1 and 64"),
        ({"json": {"count": 65}}, "`count` must be between 1 and 64"),
        ({"json": {"seed": -1}}, "`seed` must be between 0 and 4294967295"),
        ({"json": {"count": "many"}}, "`count` must be an integer"),
        ({"data": b"\x89PNG", "headers": {"Content-Type": "image/png"}}, "takes no image"),
        ({"files": {"image": ("d.png", b"x")}}, "`image` must be a form field, not a file"),
        ({"json": {"model": "cae"}}, "needs a generation model"),
    ],
)
def test_generate_refuses_bad_fields(server, send, phrase) -> None:
    response = requests.post(f"{server.url}/generate", timeout=30, **send)
    assert response.status_code == 400 and phrase in response.json()["error"], response.text


def test_served_lenet5_reads_the_generated_digits(server) -> None:
    """The issue's judge: 100 samples, ≥ 80 % classified by the served LeNet-5 with probability ≥ 0.9, and at
    least 8 of the 10 digits among those."""
    images = []
    for seed in (0, 1):
        images += requests.post(f"{server.url}/generate", json={"count": 50, "seed": seed}, timeout=60).json()["images"]
    confident, digits = 0, set()
    for image in images:
        best = requests.post(f"{server.url}/classify", json={"image": image, "model": "lenet5"}, timeout=30).json()
        top = best["predictions"][0]
        if top["score"] >= 0.9:
            confident += 1
            digits.add(top["label"])
    assert confident / len(images) >= CONFIDENT_GOAL, (confident, sorted(digits))
    assert len(digits) >= DIGITS_GOAL, sorted(digits)


# --- the demos' training records ----------------------------------------------------------------------------------


def _record(name: str) -> dict:
    return json.loads((DEMO_WEIGHTS_DIR / f"{name}.json").read_text())


def test_training_records_meet_the_goals_and_carry_no_wall_clock() -> None:
    inpaint, vae = _record("cae_inpaint"), _record("cvae")
    assert inpaint["psnr_gain_db"] >= INPAINT_GAIN_GOAL_DB and inpaint["embedding_knn_accuracy"] >= KNN_GOAL
    assert vae["judge"]["confident_share"] >= CONFIDENT_GOAL and len(vae["judge"]["digits_present"]) >= DIGITS_GOAL
    for record in (inpaint, vae):
        assert not any("seconds" in key for key in record)


def test_inpaint_record_is_what_the_shipped_weights_measure() -> None:
    from cnnserve.export.demos.inpaint_digits import embedding_knn_accuracy, evaluate_filling
    from safetensors.torch import load_file

    model = models.build_model("cae_inpaint").eval()
    model.load_state_dict(load_file(str(DEMO_WEIGHTS_DIR / "cae_inpaint.safetensors")))

    def fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        x, m = torch.from_numpy(images), torch.from_numpy(masks)
        with torch.no_grad():
            return (m * model(torch.cat([x * (1 - m), m], dim=1)) + (1 - m) * x).numpy()

    def encode(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images)
        with torch.no_grad():
            return model.encode(torch.cat([x, torch.zeros_like(x)], dim=1)).numpy()

    record = _record("cae_inpaint")
    assert evaluate_filling(fill)["psnr_gain_db"] == pytest.approx(record["psnr_gain_db"], abs=1e-3)
    assert embedding_knn_accuracy(encode) == pytest.approx(record["embedding_knn_accuracy"], abs=1e-4)
