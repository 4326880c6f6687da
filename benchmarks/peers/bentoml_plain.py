"""The second comparison point: BentoML used the plain way — one service, ``@bentoml.api`` taking a PIL image,
torchvision-style PIL preprocessing in the request path, one onnxruntime session per worker, no batching.

It runs the *same* ONNX file as cnnserve (normalisation inside the graph), so the difference measured is the
serving design, not the model. ``cnnserve bench serve`` starts it with N workers:

    PLAIN_ONNX=model.onnx PLAIN_WORKERS=4 bentoml serve benchmarks/peers/bentoml_plain.py:Plain --port 8002

``POST /classify`` (multipart field ``image``) answers ``{"predictions": [{"index", "label", "score"}]}``.
"""

from __future__ import annotations

import json
import os

import bentoml
import numpy as np
from PIL import Image

with bentoml.importing():
    import onnxruntime as ort


@bentoml.service(name="plain", workers=int(os.environ.get("PLAIN_WORKERS", "1")), traffic={"timeout": 60})
class Plain:
    def __init__(self) -> None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(os.environ["PLAIN_ONNX"], providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        spec = json.loads(meta["cnnserve.spec"])
        self.labels = spec.get("labels") or []
        self.input = self.session.get_inputs()[0]
        self.uint8 = self.input.type == "tensor(uint8)"

    @bentoml.api
    def classify(self, image: Image.Image) -> dict:
        img = image.convert("RGB")
        w, h = img.size  # torchvision Resize(256) + CenterCrop(224), the tutorial way
        scale = 256 / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        arr = np.asarray(img).transpose(2, 0, 1)[None]
        feed = arr if self.uint8 else arr.astype(np.float32) / 255.0
        (probs,) = self.session.run(["probabilities"], {self.input.name: np.ascontiguousarray(feed)})
        top = np.argsort(-probs[0])[:5]
        return {
            "predictions": [
                {"index": int(i), "label": self.labels[i] if i < len(self.labels) else str(i), "score": float(p)}
                for i, p in zip(top, probs[0, top], strict=True)
            ]
        }
