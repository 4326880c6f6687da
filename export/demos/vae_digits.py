"""The generation demo: a convolutional VAE (``cvae``) on scikit-learn's digits, and the judge of its samples.

Data: every digit (0–9) of the LeNet-5 demo's fixed training split (``digits_split``), through the service's own
pre-processing (8×8 grey → bilinear 32×32, [0, 1]). Training maximises the evidence lower bound with a Bernoulli
likelihood per pixel (binary cross-entropy summed over the pixels) and the KL divergence to N(0, I), the KL weight
warmed up from 0 to 1 over the first epochs so the decoder learns to use the code before the prior pulls on it.
Then the model's mixture prior (:class:`models.vae.MixturePrior`, ``PRIOR_COMPONENTS`` Gaussians) is fitted to the
training images' codes (posterior means; scikit-learn's EM, fixed seed): samples come from where the codes are.

Judged the way a user of the service would: ``JUDGE_SAMPLES`` rows of noise drawn with the service's own function
and seed (:func:`service.tasks.generate.noise_for`), made images by ``generate``, quantised to 8-bit pixels as the
PNG answers are, and classified by the LeNet-5 demo through its export wrapper (what the served ``lenet5``
computes). Recorded: the share of samples classified with probability ≥ ``CONFIDENT``, and which digits appear —
for the fitted prior, and for the plain N(0, I) prior too, to show what the fitting buys. The HTTP tests ask the
served LeNet-5 the same question about ``/generate``'s answers.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .cae_digits import digits_batch
from .digits import SEED as SPLIT_SEED
from .digits import TEST_FRACTION, digits_split
from .records import write_record

__all__ = ["CONFIDENT", "JUDGE_SAMPLES", "JUDGE_SEED", "draw_samples", "fit_prior", "judge_samples", "train_vae_digits"]

CONFIDENT = 0.9
JUDGE_SAMPLES = 100
JUDGE_SEED = 0
EPOCHS = 60
BATCH = 64
KL_WARMUP_EPOCHS = 20


def judge_samples(samples: np.ndarray) -> dict:
    """Samples (N, 1, 32, 32) in [0, 1] → what the LeNet-5 demo says of them: the share classified with
    probability ≥ CONFIDENT, the digits that appear among those, and the count of each predicted digit."""
    import torch
    from cnnserve.export.weights import apply_state_dict, load_demo
    from cnnserve.export.wrappers import wrap_for_export
    from cnnserve.models import build_model, get_spec

    spec = get_spec("lenet5")
    lenet = build_model("lenet5").eval()
    apply_state_dict(lenet, spec, load_demo(spec)[0])
    judge, _ = wrap_for_export(lenet, spec)  # normalise → LeNet-5 → softmax, as in the served file
    pixels = np.rint(np.clip(samples, 0.0, 1.0) * 255.0) / 255.0  # what the PNG answers hold
    with torch.no_grad():
        probabilities = judge(torch.from_numpy(pixels.astype(np.float32)))[0].numpy()
    best, digits = probabilities.max(axis=1), probabilities.argmax(axis=1)
    confident = best >= CONFIDENT
    return {
        "samples": len(samples),
        "confident_share": float(confident.mean()),
        "digits_present": sorted({int(d) for d in digits[confident]}),
        "predicted_counts": {str(d): int((digits == d).sum()) for d in range(probabilities.shape[1])},
        "mean_top_probability": float(best.mean()),
    }


def draw_samples(generate, noise_dim: int, *, seed: int = JUDGE_SEED, count: int = JUDGE_SAMPLES) -> np.ndarray:
    """``generate(noise) → images`` (PyTorch at training, the ONNX file at export) on the service's noise."""
    from cnnserve.service.tasks.generate import noise_for

    return np.asarray(generate(noise_for(seed, count, noise_dim)), dtype=np.float32)


def fit_prior(model, images, *, seed: int = 0) -> dict:
    """Fit the model's mixture prior to the codes (posterior means) of ``images``; returns what was fitted."""
    import torch
    from sklearn.mixture import GaussianMixture

    model.eval()
    with torch.no_grad():
        codes = model.encode(images)[0].numpy().astype(np.float64)
    prior = model.prior
    mixture = GaussianMixture(len(prior.weights), covariance_type="full", random_state=seed).fit(codes)
    prior.weights.copy_(torch.from_numpy(mixture.weights_).float())
    prior.means.copy_(torch.from_numpy(mixture.means_).float())
    prior.scale_tril.copy_(torch.from_numpy(np.linalg.cholesky(mixture.covariances_)).float())
    return {"components": len(mixture.weights_), "codes": len(codes), "converged": bool(mixture.converged_)}


def train_vae_digits(output_dir: Path, *, seed: int = 0, log=print, epochs: int = EPOCHS, lr: float = 2e-3) -> dict:
    """Train ``cvae`` reproducibly on 2 CPU cores; write ``cvae.safetensors`` + ``cvae.json``."""
    import torch
    import torch.nn.functional as F
    from cnnserve.models import build_model, get_spec
    from cnnserve.models.vae import kl_divergence
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    split = digits_split()
    x_train = torch.from_numpy(digits_batch(split.train_images))
    x_test = torch.from_numpy(digits_batch(split.test_images))
    spec = get_spec("cvae")
    model = build_model("cvae")
    n = len(x_train)
    steps = (n + BATCH - 1) // BATCH
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.1)

    def elbo_terms(x: torch.Tensor, reconstruction, mean, log_var) -> tuple[torch.Tensor, torch.Tensor]:
        likelihood = F.binary_cross_entropy(reconstruction, x, reduction="none").sum(dim=(1, 2, 3))  # (N,)
        return likelihood.mean(), kl_divergence(mean, log_var).mean()

    for epoch in range(epochs):
        model.train()
        beta = min(1.0, (epoch + 1) / KL_WARMUP_EPOCHS)
        order = torch.randperm(n, generator=generator)
        totals = [0.0, 0.0]
        for i in range(0, n, BATCH):
            x = x_train[order[i : i + BATCH]]
            nll, kl = elbo_terms(x, *model(x, generator))
            loss = nll + beta * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals[0] += nll.item() * len(x)
            totals[1] += kl.item() * len(x)
        if (epoch + 1) % 10 == 0:
            log(
                f"epoch {epoch + 1}/{epochs}: reconstruction {totals[0] / n:.2f}, KL {totals[1] / n:.2f} nats "
                f"(β {beta:.2f}; {time.perf_counter() - start:.0f} s)"
            )

    model.eval()
    with torch.no_grad():
        test_nll, test_kl = elbo_terms(x_test, *model(x_test))

    def standard_normal(noise: np.ndarray) -> np.ndarray:  # the plain VAE: codes from N(0, I)
        with torch.no_grad():
            return model.decode(torch.from_numpy(noise[:, 1:])).numpy()

    def generate(noise: np.ndarray) -> np.ndarray:  # what the exported graph computes
        with torch.no_grad():
            return model.generate(torch.from_numpy(noise)).numpy()

    plain = judge_samples(draw_samples(standard_normal, int(spec.noise_dim)))
    fitted = fit_prior(model, x_train, seed=seed)
    judged = judge_samples(draw_samples(generate, int(spec.noise_dim)))
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / "cvae.safetensors"))
    record = {
        "model": "cvae",
        "dataset": "sklearn-digits",
        "split": f"digits_split(): stratified, test_size={TEST_FRACTION}, random_state={SPLIT_SEED}; all ten digits",
        "train_images": int(n),
        "test_images": int(len(x_test)),
        "objective": "ELBO: Bernoulli log-likelihood (BCE summed over pixels) - KL(q(z|x) || N(0, I)); "
        f"KL weight warmed up linearly over {KL_WARMUP_EPOCHS} epochs",
        "latent_dim": int(model.latent_dim),
        "prior": f"Gaussian mixture, {fitted['components']} components (full covariance), fitted by EM to the "
        f"{fitted['codes']} training codes (posterior means), seed {seed}; sampled from {spec.noise_dim} numbers of "
        "N(0, I) noise (the first picks the component)",
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": seed,
        "test_negative_elbo_nats": round(float(test_nll + test_kl), 2),
        "test_kl_nats": round(float(test_kl), 2),
        "judge": {
            "model": "lenet5 (demo weights, its export wrapper: what the service serves)",
            "samples": judged["samples"],
            "noise": f"service.tasks.generate.noise_for(seed={JUDGE_SEED}, count={JUDGE_SAMPLES}, "
            f"dim={spec.noise_dim}); samples quantised to 8 bits as the PNG answers are",
            "confident_threshold": CONFIDENT,
            "confident_share": round(judged["confident_share"], 4),
            "digits_present": judged["digits_present"],
            "predicted_counts": judged["predicted_counts"],
            "mean_top_probability": round(judged["mean_top_probability"], 4),
            "standard_normal_prior": {
                "confident_share": round(plain["confident_share"], 4),
                "digits_present": plain["digits_present"],
            },
        },
        "train_seconds": round(time.perf_counter() - start, 1),  # the report's, not the sidecar's
        "torch": torch.__version__,
    }
    write_record(output_dir / "cvae.json", record)
    log(
        f"judge: {judged['confident_share']:.0%} of {judged['samples']} samples classified with p ≥ {CONFIDENT} "
        f"(N(0, I) prior: {plain['confident_share']:.0%}), digits {judged['digits_present']}; "
        f"test -ELBO {float(test_nll + test_kl):.1f} nats; trained in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return record
