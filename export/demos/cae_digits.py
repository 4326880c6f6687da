"""The autoencoder demo: a denoising CAE on scikit-learn's digits 0–7, with 8 and 9 held out as the anomalies.

The digits go through the service's own pre-processing (``service.imaging.preprocess``: 8×8 grey → bilinear
32×32, [0, 1]) and the LeNet-5 demo's fixed split (``digits_split``); only the 0–7 images of its training part
are ever shown to the model, shifted by up to a pixel. Inputs get Gaussian noise (σ drawn per image from
[0, ``MAX_SIGMA``], clipped to [0, 1]) and the target is the clean digit, so the one network serves ``/denoise``
and, through the per-image reconstruction error of the *clean* upload, ``/anomaly``.

Measured on data the model never saw: the AUROC of that error separating every 8 and 9 of the data set (train
and test parts alike — none was used for training) from the test split's 0–7, and the PSNR of noisy and of
denoised test digits (0–7) against the clean ones at σ = 0.2. The anomaly threshold stored in the ONNX file is
the 99th percentile of the training digits' clean reconstruction errors.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .digits import SEED as SPLIT_SEED
from .digits import TEST_FRACTION, digit_image, digits_split, random_shift
from .records import write_record

__all__ = [
    "NORMAL_DIGITS",
    "ANOMALY_DIGITS",
    "EVAL_SIGMA",
    "THRESHOLD_PERCENTILE",
    "digits_batch",
    "add_noise",
    "reconstruction_errors",
    "psnr_db",
    "evaluate",
    "train_cae_digits",
]

NORMAL_DIGITS = tuple(range(8))
ANOMALY_DIGITS = (8, 9)
EVAL_SIGMA = 0.2
MAX_SIGMA = 0.3
THRESHOLD_PERCENTILE = 99.0
NOISE_SEED = 2024  # the evaluation noise: the same noisy test digits on every run
EPOCHS = 60
SHIFT = 1
BATCH = 64


def _spec():
    import cnnserve.models.cae  # noqa: F401  (registers "cae" whether or not the registry lists the family yet)
    from cnnserve.models import get_spec

    return get_spec("cae")


def digits_batch(images: np.ndarray) -> np.ndarray:
    """8×8 uint8 digits → float32 (N, 1, 32, 32) in [0, 1], exactly as the service pre-processes an upload."""
    from cnnserve.export.onnx import contract_for
    from cnnserve.service.imaging import preprocess

    pre = contract_for(_spec()).preprocess
    return np.stack([preprocess(digit_image(img), pre) for img in images])


def add_noise(x, sigma, generator):
    """Gaussian noise on [0, 1] pixels, clipped back to [0, 1]; ``sigma`` a float or a per-image tensor (N,)."""
    import torch

    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)


def reconstruction_errors(model, x) -> np.ndarray:
    """Per-image mean squared reconstruction error (what the ONNX graph's ``error`` output computes)."""
    import torch

    model.eval()
    with torch.no_grad():
        return ((model(x) - x) ** 2).mean(dim=(1, 2, 3)).numpy()


def psnr_db(estimate, clean) -> float:
    """Mean over images of 10·log10(1 / MSE) for pixels in [0, 1]."""
    import torch

    mse = ((estimate - clean) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _split_tensors() -> dict:
    import torch

    split = digits_split()
    normal_train = np.isin(split.train_labels, NORMAL_DIGITS)
    normal_test = np.isin(split.test_labels, NORMAL_DIGITS)
    anomalies = np.concatenate(
        [split.train_images[~normal_train], split.test_images[~np.isin(split.test_labels, NORMAL_DIGITS)]]
    )
    return {
        "train": torch.from_numpy(digits_batch(split.train_images[normal_train])),
        "test": torch.from_numpy(digits_batch(split.test_images[normal_test])),
        "anomalies": torch.from_numpy(digits_batch(anomalies)),
    }


def evaluate(model, data: dict | None = None) -> dict:
    """AUROC (8/9 vs test 0–7), PSNR noisy/denoised at σ = 0.2 on test 0–7, the calibrated threshold."""
    import torch
    from sklearn.metrics import roc_auc_score

    data = data if data is not None else _split_tensors()
    normal = reconstruction_errors(model, data["test"])
    anomalous = reconstruction_errors(model, data["anomalies"])
    scores = np.concatenate([normal, anomalous])
    truth = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    auroc = float(roc_auc_score(truth, scores))

    clean = data["test"]
    noisy = add_noise(clean, EVAL_SIGMA, torch.Generator().manual_seed(NOISE_SEED))
    model.eval()
    with torch.no_grad():
        denoised = model(noisy)
    psnr_noisy, psnr_denoised = psnr_db(noisy, clean), psnr_db(denoised, clean)
    threshold = float(np.percentile(reconstruction_errors(model, data["train"]), THRESHOLD_PERCENTILE))
    return {
        "auroc_8_9": auroc,
        "psnr_noisy_db": psnr_noisy,
        "psnr_denoised_db": psnr_denoised,
        "psnr_gain_db": psnr_denoised - psnr_noisy,
        "threshold": threshold,
        "test_normal_images": len(normal),
        "anomaly_images": len(anomalous),
        "flagged_anomalies": float((anomalous > threshold).mean()),
        "flagged_normal": float((normal > threshold).mean()),
    }


def train_cae_digits(
    output_dir: Path,
    *,
    seed: int = 0,
    log=print,
    epochs: int = EPOCHS,
    lr: float = 2e-3,
) -> dict:
    """Train the ``cae`` demo reproducibly on 2 CPU cores; write ``cae.safetensors`` + ``cae.json``."""
    import torch
    import torch.nn.functional as F
    from cnnserve.models import build_model
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = _split_tensors()
    x_train = data["train"]
    model = build_model("cae")  # mean 0, std 1: the graph's normalisation is the identity
    n = len(x_train)
    steps_per_epoch = (n + BATCH - 1) // BATCH
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, BATCH):
            clean = x_train[order[i : i + BATCH]]
            # Shift the batch by up to ±SHIFT pixels: uploads are not centred like the data set, and without it the
            # network fits the training digits' exact positions, so the 99th-percentile threshold of their errors
            # flags ~16 % of unseen normal digits (~4 % with it; the AUROC hardly moves).
            clean = random_shift(clean, SHIFT, generator)
            sigma = torch.rand(len(clean), generator=generator) * MAX_SIGMA
            loss = F.mse_loss(model(add_noise(clean, sigma, generator)), clean)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(clean)
        if (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / n:.5f} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start

    metrics = evaluate(model, data)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / "cae.safetensors"))
    record = {
        "model": "cae",
        "dataset": "sklearn-digits-0to7",
        "split": f"digits_split(): stratified, test_size={TEST_FRACTION}, random_state={SPLIT_SEED}; "
        f"training on the train part's digits {NORMAL_DIGITS[0]}-{NORMAL_DIGITS[-1]} only",
        "train_images": int(n),
        "test_images": metrics["test_normal_images"],
        "anomaly_images": metrics["anomaly_images"],
        "anomalies": "every 8 and 9 of the data set (train and test parts; none used in training)",
        "noise": f"Gaussian, sigma ~ U(0, {MAX_SIGMA}) per image, clipped to [0, 1]; target = clean",
        "augmentation": f"random shift of up to {SHIFT} pixel per batch (replicate padding)",
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": seed,
        "auroc_8_9": round(metrics["auroc_8_9"], 4),
        "psnr_sigma": EVAL_SIGMA,
        "psnr_noisy_db": round(metrics["psnr_noisy_db"], 3),
        "psnr_denoised_db": round(metrics["psnr_denoised_db"], 3),
        "psnr_gain_db": round(metrics["psnr_gain_db"], 3),
        "threshold_percentile": THRESHOLD_PERCENTILE,
        "flagged_at_threshold": {
            "anomalies": round(metrics["flagged_anomalies"], 4),
            "test_normal": round(metrics["flagged_normal"], 4),
        },
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "onnx_metadata": {"threshold": float(f"{metrics['threshold']:.6g}")},
    }
    write_record(output_dir / "cae.json", record)
    log(
        f"AUROC(8/9 vs 0–7) {metrics['auroc_8_9']:.4f}; PSNR at σ={EVAL_SIGMA}: noisy {metrics['psnr_noisy_db']:.2f} dB"
        f" → denoised {metrics['psnr_denoised_db']:.2f} dB; trained in {seconds:.0f} s"
    )
    return record
