"""The LeNet-5 demo: scikit-learn's 8×8 digits, shown to the model exactly as the service would show them.

Each digit becomes an 8×8 grey PNG-able image (0–16 ink scaled to 0–255), and training runs it through the very
pre-processing the service uses (``service.imaging.preprocess``: resize to 32×32), so the demo's accuracy is
the accuracy a client gets over HTTP. Like the data set, the model expects light ink on a dark background.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .records import write_record

__all__ = ["DigitsSplit", "digits_split", "digit_image", "digit_png", "random_shift", "train_lenet5_digits"]

SEED = 0
TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DigitsSplit:
    train_images: np.ndarray  # (N, 8, 8) uint8
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def digit_image(pixels: np.ndarray) -> Image.Image:
    """One 8×8 digit (uint8) as a grey PIL image."""
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L")


def digit_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    digit_image(pixels).save(buf, format="PNG")
    return buf.getvalue()


def digits_split() -> DigitsSplit:
    """The fixed, stratified train/test split (seed 0, 25 % test) used for training, the README and the tests."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=TEST_FRACTION, random_state=SEED, stratify=data.target
    )
    return DigitsSplit(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


def _to_batch(images: np.ndarray) -> np.ndarray:
    from cnnserve.export.onnx import contract_for
    from cnnserve.models import get_spec
    from cnnserve.service.imaging import preprocess

    pre = contract_for(get_spec("lenet5")).preprocess
    return np.stack([preprocess(digit_image(img), pre) for img in images])


def random_shift(batch, shift: int, generator):
    """The digits demos' augmentation: the whole batch moved by up to ±``shift`` pixels each way (edges repeated),
    because an upload's digit is not centred the way the data set's are."""
    import torch
    import torch.nn.functional as F

    padded = F.pad(batch, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + batch.shape[-2], dx : dx + batch.shape[-1]]


def train_lenet5_digits(output_dir: Path, *, epochs: int = 30, seed: int = SEED, log=print) -> dict:
    """Train LeNet-5 reproducibly on 2 CPU cores (well under a minute); write safetensors + a JSON record."""
    import torch
    import torch.nn.functional as F
    from cnnserve.models import build_model
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    split = digits_split()
    x_train = torch.from_numpy(_to_batch(split.train_images))
    y_train = torch.from_numpy(split.train_labels)
    x_test = torch.from_numpy(_to_batch(split.test_images))
    y_test = torch.from_numpy(split.test_labels)

    model = build_model("lenet5")
    mean, std = 0.5, 0.5  # the spec's normalisation; in the ONNX graph it is the export wrapper's job
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    n = len(x_train)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, 64):
            idx = order[i : i + 64]
            x = random_shift(x_train[idx], 2, generator)
            loss = F.cross_entropy(model((x - mean) / std), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        if (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}")

    model.eval()
    with torch.no_grad():
        accuracy = float((model((x_test - mean) / std).argmax(1) == y_test).float().mean())
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / "lenet5.safetensors"))
    record = {
        "model": "lenet5",
        "dataset": "sklearn-digits",
        "split": f"stratified, test_size={TEST_FRACTION}, random_state={SEED}",
        "train_images": int(n),
        "test_images": int(len(x_test)),
        "epochs": epochs,
        "seed": seed,
        "test_accuracy": round(accuracy, 4),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    write_record(output_dir / "lenet5.json", record)
    log(f"test accuracy {accuracy:.2%} on {len(x_test)} held-out digits in {record['train_seconds']} s")
    return record
