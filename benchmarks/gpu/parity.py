"""GPU parity of a served variant: its ONNX file on the CUDA provider (TF32 off) vs the PyTorch model it was
exported from, in fp32 on the CPU, on real photos through the service's own pre-processing.

    python benchmarks/gpu/parity.py --tag resnet50-fp16-u8 --output parity.json

Weights are the seeded random ones ``cnnserve export`` uses by default (seed 0), rebuilt here the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="resnet50-fp16-u8")
    parser.add_argument("--output", type=Path, default=Path("parity.json"))
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from cnnserve.service.contract import ModelContract
    from cnnserve.service.imaging import preprocess_uint8, to_unit_float
    from cnnserve.service.runtime.model import read_metadata
    from cnnserve.service.runtime.sessions import with_provider_options
    from cnnserve.service.store import find_entry
    from skimage import data

    from cnnserve import models

    entry = find_entry(args.tag)
    providers = with_provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], tf32=False)
    session = ort.InferenceSession(str(entry.path), providers=providers)
    spec = json.loads(read_metadata(session)["cnnserve.spec"])
    pre = ModelContract.from_metadata(read_metadata(session)).preprocess
    from PIL import Image

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    pixels = np.stack([preprocess_uint8(Image.fromarray(p), pre) for p in photos])
    feed = pixels if session.get_inputs()[0].type == "tensor(uint8)" else to_unit_float(pixels)
    (onnx_probs,) = session.run(None, {session.get_inputs()[0].name: feed})

    torch.manual_seed(0)  # export_model's seed for random weights
    model = models.build_model(spec["name"]).eval()
    mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
    with torch.inference_mode():
        x = (torch.from_numpy(to_unit_float(pixels)) - mean) / std
        torch_probs = torch.softmax(model(x), dim=1).numpy()

    cos = (onnx_probs * torch_probs).sum(1) / (np.linalg.norm(onnx_probs, axis=1) * np.linalg.norm(torch_probs, axis=1))
    pairs = zip(onnx_probs, torch_probs, strict=True)
    top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in pairs]
    result = {
        "tag": args.tag,
        "providers": session.get_providers(),
        "tf32": False,
        "images": len(photos),
        "max_abs_prob_diff": float(np.abs(onnx_probs - torch_probs).max()),
        "top1_agreement": float(np.mean(onnx_probs.argmax(1) == torch_probs.argmax(1))),
        "top5_overlap": float(np.mean(top5)),
        "min_cosine": float(cos.min()),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
