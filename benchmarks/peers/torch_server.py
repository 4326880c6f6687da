"""The comparison point: what a user would otherwise run — a plain FastAPI server around a PyTorch-eager model.

One image per request (no batching), torchvision's own model builder and its standard transforms (resize 256,
centre crop 224, ToTensor, Normalize), ``torch.inference_mode``. It answers ``POST /classify`` (multipart field
``image``) with the same JSON shape as cnnserve (``{"predictions": [{"index", "label", "score"}]}``), so the same
load generator (``cnnserve.loadtest.run_load``) drives both. ``cnnserve bench`` starts it itself; the GPU
benchmark reuses it with ``--device cuda [--fp16]``.

    python benchmarks/peers/torch_server.py --model resnet50 --port 8001 [--device cpu|cuda] [--fp16]
        [--weights random|torchvision] [--threads N]

Deliberately *not* tuned beyond what a typical tutorial server does: that is the point of the comparison.
"""

from __future__ import annotations

import argparse
import io
import logging

import torch
import torchvision
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

logger = logging.getLogger("torch_server")


def build_app(model_name: str, *, device: str, fp16: bool, weights: str, top_k: int = 5) -> FastAPI:
    builder = torchvision.models.get_model_builder(model_name)
    weights_enum = torchvision.models.get_model_weights(model_name).DEFAULT
    labels = list(weights_enum.meta["categories"])  # shipped inside torchvision, no download
    if weights == "torchvision":
        model = builder(weights=weights_enum)  # torch hub cache; downloads when online
    else:
        torch.manual_seed(0)
        model = builder(weights=None)
    model = model.eval().to(device)
    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        model = model.half()
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    with torch.inference_mode():  # warm-up (cuDNN picks its algorithms on the first call)
        model(torch.zeros(1, 3, 224, 224, device=device, dtype=dtype))

    app = FastAPI(title=f"torch eager {model_name} ({device}{', fp16' if fp16 else ''})")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name, "device": device}

    @app.post("/classify")
    def classify(image: UploadFile = File(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
        # A sync endpoint: FastAPI runs it in its thread pool, as most tutorial servers do.
        try:
            img = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise HTTPException(status_code=400, detail=f"cannot decode the image: {exc}") from None
        batch = preprocess(img).unsqueeze(0).to(device=device, dtype=dtype)
        with torch.inference_mode():
            probs = torch.softmax(model(batch).float(), dim=1)[0]
        scores, indices = probs.topk(top_k)
        return {
            "model": model_name,
            "predictions": [
                {"index": int(i), "label": labels[int(i)], "score": float(s)}
                for s, i in zip(scores.cpu(), indices.cpu(), strict=True)
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision classification model name")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--fp16", action="store_true", help="model and inputs in half precision (CUDA)")
    parser.add_argument("--weights", choices=("random", "torchvision"), default="random")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import uvicorn

    app = build_app(args.model, device=args.device, fp16=args.fp16, weights=args.weights)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
