"""Batch limits per model, from measurements: how long one run of b images takes here, and which b to allow.

Whether batching pays depends on the model and the device, by orders of magnitude. On our 2-core CPU ResNet-50
fp32 does ~26 images/s at batch 1 and ~26.5 at batch 32 — batching buys nothing there, and a batch of 32 holds
every request in it for 1.2 s — while LeNet-5 goes from ~15,000 to well over 100,000 images/s; on an H100
ResNet-50 fp16 goes from ~1,000 images/s at batch 1 to ~10,000 at batch 64. One global limit is wrong for most
of them, so the limit is chosen per model from its measured curve:

* **The rule** (:func:`choose_batch_limit`). Among the batch sizes whose single run fits the *batch budget*
  (``CNNSERVE_BATCH_BUDGET_MS``, default 100 ms: a request that arrives while a batch runs waits about that long
  before its own batch can start), take the best throughput, then the *smallest* batch that reaches
  ``CNNSERVE_BATCH_TOLERANCE`` (97 %) of it. Past that knee a bigger batch adds waiting, not throughput. If even
  one image takes longer than the budget, the limit is 1.
* **The shedding deadline** per model (:attr:`BatchLimit.shed_after_ms`): ``CNNSERVE_MAX_LATENCY_MS``, but never
  less than four runs of a full batch — a slow model (an R-CNN on a CPU runs for seconds) would otherwise shed
  requests it could still serve.
* **Where the curve comes from**, first match wins (:func:`resolve_batch_limit`): an explicit
  ``CNNSERVE_MODEL_MAX_BATCH_SIZE`` (or, with one tier, ``CNNSERVE_MAX_BATCH_SIZE``); a profile that
  ``cnnserve tune`` (or ``CNNSERVE_TUNE_AT_START=true``) measured for this very file on this machine — same
  provider, device and threads — kept in ``~/.cache/cnnserve/batching.json``; the family defaults we measured and
  ship in ``service/batching_defaults.json`` (each family's representative on a 2-core CPU and on an H100); the
  built-in 16 (CPU) / 64 (CUDA). Profiles keep the whole curve, so a different budget or tolerance is applied
  at load without measuring again.

Limits are powers of two: the curve is measured at 1, 2, 4, … and CUDA pads batches to powers of two anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .runtime import LoadedModel
    from .settings import Settings

__all__ = [
    "SIZES",
    "BatchLimit",
    "ProfileStore",
    "choose_batch_limit",
    "curve_of",
    "default_profile_path",
    "device_identity",
    "load_family_defaults",
    "measure_curve",
    "limit_for_model",
    "resolve_batch_limit",
    "tune_model",
]

logger = logging.getLogger("cnnserve.batching")

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULTS_FILE = Path(__file__).with_name("batching_defaults.json")
_BUILT_IN = {False: 16, True: 64}  # CPU, CUDA: when nothing was measured for a model or its family
_SHED_RUNS = 4  # a request is never shed before this many full batches could have run

Curve = list[tuple[int, float]]  # (batch size, median ms of one run), ascending


@dataclass
class BatchLimit:
    """A model's batch limit and where it came from (shown in ``GET /models``)."""

    max_batch_size: int
    source: str  # "setting" | "measured" | "family default" | "built-in"
    shed_after_ms: float
    budget_ms: float | None = None
    curve: Curve = field(default_factory=list)
    measured_on: str | None = None  # the device the curve was measured on
    measured_at: str | None = None
    reference: str | None = None  # family default: the model that was measured

    @property
    def batch_ms(self) -> float | None:
        """Measured ms of one run at the limit (None without a curve, or when the limit was not measured)."""
        return dict(self.curve).get(self.max_batch_size)

    @property
    def warm_sizes(self) -> tuple[int, ...]:
        """The batch shapes a padding (CUDA) batcher forms: powers of two up to the limit."""
        return tuple(1 << i for i in range(self.max_batch_size.bit_length()))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [
            {"batch": b, "ms": round(ms, 3), "images_per_s": round(b / max(ms, 1e-9) * 1000, 1)} for b, ms in self.curve
        ]
        return {k: v for k, v in d.items() if v not in (None, [])}


# --- measuring and choosing ---------------------------------------------------------------------------------------


def measure_curve(
    run: Callable[[np.ndarray], object],
    sample: Callable[[int], np.ndarray],
    *,
    budget_ms: float = 100.0,
    max_batch: int = SIZES[-1],
    min_seconds: float = 0.3,
    min_runs: int = 3,
    plateau: float = 0.02,
    log: Callable[[str], None] | None = None,
) -> Curve:
    """Median ms of one ``run(sample(b))`` for b = 1, 2, 4, … up to ``max_batch``.

    Stops after the first size that misses ``budget_ms`` (kept in the curve: it shows where the budget bit), and
    after two doublings in a row that gained less than ``plateau`` throughput: a flat curve stays flat, and a
    CPU model would otherwise spend seconds on batches nobody will use. Each size runs once untimed first (the
    first run of a shape allocates; on CUDA cuDNN picks its algorithms)."""
    curve: Curve = []
    best, flat = 0.0, 0
    for b in (s for s in SIZES if s <= max_batch):
        x = sample(b)
        run(x)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - started < min_seconds:
            t = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t)
            if times[-1] * 1000 > 4 * budget_ms:  # far past the budget: one timed run says enough
                break
        ms = statistics.median(times) * 1000
        curve.append((b, ms))
        if log is not None:
            log(f"    batch {b:>4}: {ms:10.3f} ms  {b / max(ms, 1e-9) * 1000:12.1f} images/s")
        if ms > budget_ms:
            break
        throughput = b / max(ms, 1e-9)
        if throughput > best * (1 + plateau):
            best, flat = throughput, 0
        else:
            flat += 1
            if flat >= 2:
                break
    return curve


def choose_batch_limit(curve: Curve, *, budget_ms: float, tolerance: float = 0.97) -> int:
    """The smallest batch within ``tolerance`` of the best throughput among the batches that fit ``budget_ms``
    (1 when none does)."""
    if not curve:
        raise ValueError("an empty curve: nothing was measured")
    fits = [(b, ms) for b, ms in curve if ms <= budget_ms]
    if not fits:
        return 1
    best = max(b / max(ms, 1e-9) for b, ms in fits)
    return min(b for b, ms in fits if b / max(ms, 1e-9) >= tolerance * best)


def _shed_after(curve: Curve, limit: int, max_latency_ms: float) -> float:
    at_limit = dict(curve).get(limit)
    return max(float(max_latency_ms), _SHED_RUNS * at_limit) if at_limit else float(max_latency_ms)


def limit_from_curve(
    curve: Curve, *, source: str, budget_ms: float, tolerance: float, max_latency_ms: float, **info: Any
) -> BatchLimit:
    limit = choose_batch_limit(curve, budget_ms=budget_ms, tolerance=tolerance)
    return BatchLimit(
        limit, source, _shed_after(curve, limit, max_latency_ms), budget_ms=budget_ms, curve=list(curve), **info
    )


# --- where this runs ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model"):
                return value.strip()
    return platform.processor() or platform.machine()


def _gpu_name(device_id: int) -> str:
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(device_id)],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            if out:
                return out
    return f"CUDA device {device_id}"


def device_identity(provider: str, *, threads: int, device_id: int = 0) -> dict[str, Any]:
    """What a measured curve depends on besides the file: the provider, the device, the threads per session."""
    if provider == "CUDAExecutionProvider":
        return {"provider": provider, "device": _gpu_name(device_id), "threads": threads}
    return {"provider": provider, "device": _cpu_model(), "threads": threads}


def _describe(identity: dict[str, Any]) -> str:
    if identity["provider"] == "CUDAExecutionProvider":
        return identity["device"]
    return f"{identity['device']}, {identity['threads']} threads"


# --- measured profiles on this machine ----------------------------------------------------------------------------


def default_profile_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cnnserve" / "batching.json"


class ProfileStore:
    """``cnnserve tune``'s measured curves, one per (file sha256, provider, device, threads), in one JSON file.

    Written atomically (temp file + rename): two processes tuning at once lose at most one's entry, never the
    file. An unreadable file is treated as empty (and logged): tuning is an optimisation, not a dependency."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_profile_path()

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
            return list(data.get("profiles", []))
        except FileNotFoundError:
            return []
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("ignoring the batch profiles in %s: %s", self.path, exc)
            return []

    @staticmethod
    def _key(entry: dict[str, Any]) -> tuple:
        return (entry.get("sha256"), entry.get("provider"), entry.get("device"), entry.get("threads"))

    def lookup(self, sha256: str, identity: dict[str, Any]) -> dict[str, Any] | None:
        wanted = self._key({"sha256": sha256, **identity})
        return next((e for e in self._read() if self._key(e) == wanted), None)

    def save(self, entry: dict[str, Any]) -> None:
        entries = [e for e in self._read() if self._key(e) != self._key(entry)] + [entry]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        partial.write_text(dump_entries({"version": 1}, "profiles", entries))
        os.replace(partial, self.path)


def dump_entries(header: dict[str, Any], key: str, entries: list[dict[str, Any]]) -> str:
    """JSON with one entry per line: readable, and a committed defaults file diffs by entry."""
    head = json.dumps(header, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(e) for e in entries)
    return f'{head},\n "{key}": [\n{body}\n ]\n}}\n'


def profile_entry(
    *, sha256: str, model: str, identity: dict[str, Any], curve: Curve, budget_ms: float
) -> dict[str, Any]:
    """One measured curve as stored (by ``cnnserve tune``, and by the service with ``CNNSERVE_TUNE_AT_START``)."""
    return {
        "sha256": sha256,
        "model": model,
        **identity,
        "budget_ms": budget_ms,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "curve": [[b, round(ms, 4)] for b, ms in curve],
    }


# --- family defaults we measured ----------------------------------------------------------------------------------


def load_family_defaults(path: Path = DEFAULTS_FILE) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()).get("entries", []))
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("no family batch defaults (%s): %s", path, exc)
        return []


def _family_match(
    entries: Iterable[dict[str, Any]], *, name: str, family: str, precision: str, provider: str
) -> dict[str, Any] | None:
    """The best shipped measurement for a model: the same registered model and precision, else the same family
    and precision, else the same family at fp32 — always on the same provider (a CPU curve says nothing about
    a GPU)."""
    same = [e for e in entries if e.get("provider") == provider]
    for test in (
        lambda e: e.get("model") == name and e.get("precision") == precision,
        lambda e: e.get("family") == family and e.get("precision") == precision,
        lambda e: e.get("family") == family and e.get("precision") == "fp32",
    ):
        found = next((e for e in same if test(e)), None)
        if found is not None:
            return found
    return None


def curve_of(entry: dict[str, Any]) -> Curve:
    """A stored entry's curve (JSON pairs) as ``(batch, ms)`` tuples."""
    return [(int(b), float(ms)) for b, ms in entry["curve"]]


def resolve_batch_limit(
    *,
    spec: dict[str, Any],
    precision: str,
    sha256: str | None,
    identity: dict[str, Any],
    setting: int | None,
    budget_ms: float,
    tolerance: float,
    max_latency_ms: float,
    profiles: ProfileStore | None,
    family_defaults: list[dict[str, Any]],
) -> BatchLimit:
    """A model's limit: explicit setting, else its measured profile here, else its family's, else built-in."""
    on_cuda = identity["provider"] == "CUDAExecutionProvider"
    if setting:
        return BatchLimit(setting, "setting", float(max_latency_ms))
    choose = {"budget_ms": budget_ms, "tolerance": tolerance, "max_latency_ms": max_latency_ms}
    if profiles is not None and sha256:
        entry = profiles.lookup(sha256, identity)
        if entry is not None:
            return limit_from_curve(
                curve_of(entry),
                source="measured",
                measured_on=_describe(identity),
                measured_at=entry.get("measured_at"),
                **choose,
            )
    entry = _family_match(
        family_defaults,
        name=str(spec.get("name", "")),
        family=str(spec.get("family", "")),
        precision=precision,
        provider=identity["provider"],
    )
    if entry is not None:
        return limit_from_curve(
            curve_of(entry),
            source="family default",
            measured_on=_describe(entry),
            measured_at=entry.get("measured_at"),
            reference=f"{entry['model']} {entry['precision']}",
            **choose,
        )
    return BatchLimit(_BUILT_IN[on_cuda], "built-in", float(max_latency_ms))


def random_batch(in_channels: int, input_size: tuple[int, int]) -> Callable[[int], np.ndarray]:
    """``sample(b)`` for :func:`measure_curve`: b random images as the batcher feeds them (uint8 pixels)."""
    rng = np.random.default_rng(0)

    def sample(b: int) -> np.ndarray:
        return rng.integers(0, 256, size=(b, in_channels, *input_size), dtype=np.uint8)

    return sample


# --- a loaded model -----------------------------------------------------------------------------------------------


def model_identity(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    from .session_options import SessionConfig

    provider = model.providers[0] if model.providers else "CPUExecutionProvider"
    threads = SessionConfig.from_settings(settings).threads()[0]
    return device_identity(provider, threads=threads, device_id=model.device_id)


def tune_model(
    model: LoadedModel,
    settings: Settings,
    *,
    profiles: ProfileStore | None = None,
    budget_ms: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure a loaded model's curve the way the service runs it (``model.run``: same session, same feed
    conversion, io-binding on CUDA) and store it for this file on this machine; returns the stored entry."""
    from .session_options import file_digest

    model.require_ready()
    budget_ms = budget_ms or settings.batch_budget_ms
    pre = model.preprocess
    curve = measure_curve(model.run, random_batch(pre.in_channels, pre.input_size), budget_ms=budget_ms, log=log)
    entry = profile_entry(
        sha256=file_digest(model.path),
        model=model.name,
        identity=model_identity(model, settings),
        curve=curve,
        budget_ms=budget_ms,
    )
    entry.update(family=model.spec.get("family"), registered=model.spec.get("name"), precision=model.precision)
    (profiles or ProfileStore(_profile_path(settings))).save(entry)
    return entry


def _profile_path(settings: Settings) -> Path:
    return Path(settings.batch_profiles) if settings.batch_profiles else default_profile_path()


def limit_for_model(
    model: LoadedModel,
    settings: Settings,
    *,
    profiles: ProfileStore | None = None,
    family_defaults: list[dict[str, Any]] | None = None,
) -> BatchLimit:
    """The batch limit the service uses for a loaded model (see :func:`resolve_batch_limit`); with
    ``tune_at_start`` a model with no curve of its own here is measured first."""
    from .session_options import file_digest

    profiles = profiles or ProfileStore(_profile_path(settings))
    family_defaults = load_family_defaults() if family_defaults is None else family_defaults
    identity = model_identity(model, settings)
    sha256 = file_digest(model.path) if model.path is not None and model.path.is_file() else None

    def resolve() -> BatchLimit:
        return resolve_batch_limit(
            spec=model.spec,
            precision=model.precision,
            sha256=sha256,
            identity=identity,
            setting=settings.batch_limit_setting(),
            budget_ms=settings.batch_budget_ms,
            tolerance=settings.batch_tolerance,
            max_latency_ms=settings.max_latency_ms,
            profiles=profiles,
            family_defaults=family_defaults,
        )

    limit = resolve()
    if settings.tune_at_start and limit.source in ("family default", "built-in") and model.ready:
        logger.info("model %s: measuring its batch curve (CNNSERVE_TUNE_AT_START)", model.name)
        tune_model(model, settings, profiles=profiles)
        limit = resolve()
    logger.info(
        "model %s: batch limit %d (%s%s), shed after %.0f ms",
        model.name,
        limit.max_batch_size,
        limit.source,
        f", measured on {limit.measured_on}" if limit.measured_on else "",
        limit.shed_after_ms,
    )
    return limit
