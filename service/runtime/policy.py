"""Batch policy per model, from measurements: how large one run may be, which batch shapes the sessions run, and
when a queued request is shed.

Whether batching pays depends on the model and the device by orders of magnitude (``benchmarks/`` and
``service/runtime/batching_defaults.json`` have the curves): a large CNN on a small CPU gains almost nothing from
batching while each extra image holds the whole batch back; a small one, or any CNN on a GPU, gains many times.
One global limit is wrong for most of them, so each model's policy is resolved once, when it loads
(:func:`policy_for_model`), from its measured batch-cost curve:

* **The limit** (:func:`choose_batch_limit`). Among the batch sizes whose single run fits the *batch budget*
  (``CNNSERVE_BATCH_BUDGET_MS``: a request that arrives while a batch runs waits about that long before its own
  can start), take the best throughput, then the *smallest* batch that reaches ``CNNSERVE_BATCH_TOLERANCE`` of
  it. Past that knee a bigger batch adds waiting, not throughput. If even one image misses the budget, it is 1.
* **The buckets** (:func:`choose_buckets`, CUDA only): the few batch shapes the sessions run (see
  :mod:`.model`). Going down from the limit, a smaller power of two becomes a bucket when padding it up to the
  bucket above would cost more than ``_PAD_COST`` times its own run; without a curve, every fourth power of two.
  ``CNNSERVE_BATCH_BUCKETS`` names them instead (``1,8,32,128``), or ``none`` for one session of any shape.
* **The shedding deadline** (:attr:`BatchPolicy.shed_after_ms`): ``CNNSERVE_MAX_LATENCY_MS``, but never less than
  four runs of a full batch — a slow model (an R-CNN on a CPU runs for seconds) would otherwise shed requests it
  could still serve.
* **Where the curve comes from**, first match wins (:func:`resolve_batch_policy`): an explicit
  ``CNNSERVE_MODEL_MAX_BATCH_SIZE`` (or, with one tier, ``CNNSERVE_MAX_BATCH_SIZE``); a profile that
  ``cnnserve tune`` (or ``CNNSERVE_TUNE_AT_START=true``) measured for this very file on this machine — same
  provider, device and threads — kept in ``~/.cache/cnnserve/batching.json``; the family defaults shipped in
  ``batching_defaults.json`` (each family's representative, on a CPU and on a GPU); the built-in 16 (CPU) / 64
  (CUDA). Profiles keep the whole curve, so a different budget or tolerance applies without measuring again.

Limits are powers of two: the curve is measured at 1, 2, 4, … .
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

__all__ = [
    "SIZES",
    "BatchPolicy",
    "choose_buckets",
    "ProfileStore",
    "choose_batch_limit",
    "curve_of",
    "default_profile_path",
    "device_identity",
    "load_family_defaults",
    "measure_curve",
    "resolve_batch_policy",
    "with_buckets",
]

logger = logging.getLogger("cnnserve.batching")

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULTS_FILE = Path(__file__).with_name("batching_defaults.json")
_BUILT_IN = {False: 16, True: 64}  # CPU, CUDA: when nothing was measured for a model or its family
_SHED_RUNS = 4  # a request is never shed before this many full batches could have run

Curve = list[tuple[int, float]]  # (batch size, median ms of one run), ascending


class BatchPolicy(BaseModel):
    """A model's batch policy and where it came from (``GET /models`` shows it as ``batching``)."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(description="largest batch of one onnxruntime run")
    source: str = Field(description="measured (here, by `cnnserve tune`) | family default | setting | built-in")
    shed_after_ms: float = Field(description="a request still queued after this long gets a 503")
    budget_ms: float | None = Field(None, description="the longest one run may take when choosing the limit")
    curve: list[tuple[int, float]] = Field(
        default_factory=list, description="(batch, median ms of one run) as measured; shown with images/s"
    )
    measured_on: str | None = None
    measured_at: str | None = None
    reference: str | None = Field(None, description="family default: the model and precision measured")
    buckets: list[int] | None = Field(
        None, description="the batch shapes the sessions run (CUDA); null: one session takes any batch (CPU)"
    )
    sessions: int = Field(1, description="onnxruntime sessions holding this model (one per bucket and run in flight)")

    @field_validator("curve", mode="before")
    @classmethod
    def _points(cls, value: Any) -> Any:
        """Read back the JSON form (``{"batch", "ms", ...}`` points) as well as pairs."""
        if isinstance(value, list):
            return [(p["batch"], p["ms"]) if isinstance(p, dict) else p for p in value]
        return value

    @field_serializer("curve")
    def _show(self, curve: list[tuple[int, float]]) -> list[dict[str, float]]:
        return [{"batch": b, "ms": round(ms, 3), "images_per_s": round(b / max(ms, 1e-9) * 1000, 1)} for b, ms in curve]

    @property
    def batch_ms(self) -> float | None:
        """Measured ms of one run at the limit (None without a curve, or when the limit was not measured)."""
        return dict(self.curve).get(self.max_batch_size)


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
) -> BatchPolicy:
    limit = choose_batch_limit(curve, budget_ms=budget_ms, tolerance=tolerance)
    return BatchPolicy(
        max_batch_size=limit,
        source=source,
        shed_after_ms=_shed_after(curve, limit, max_latency_ms),
        budget_ms=budget_ms,
        curve=list(curve),
        **info,
    )


_PAD_COST = 1.5  # a smaller bucket earns its sessions when padding it up would cost 1.5× its own run


def choose_buckets(limit: int, curve: Curve) -> tuple[int, ...]:
    """The batch shapes a CUDA model's sessions run: always 1 and the limit; in between, going down from the limit,
    a power of two whose own run costs less than 1/``_PAD_COST`` of the bucket above it (so padding a batch of it
    up would waste more than that). Without a measurement at a size, every fourth power of two."""
    measured = dict(curve)
    buckets = [limit]
    size = limit // 2
    while size >= 1:
        above = buckets[-1]
        if size in measured and above in measured:
            keep = measured[above] > _PAD_COST * measured[size]
        else:
            keep = above >= 4 * size
        if keep or size == 1:
            buckets.append(size)
        size //= 2
    return tuple(sorted(set(buckets)))


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


def resolve_batch_policy(
    *,
    family: str,
    name: str,
    precision: str,
    sha256: str | None,
    identity: dict[str, Any],
    setting: int | None,
    budget_ms: float,
    tolerance: float,
    max_latency_ms: float,
    profiles: ProfileStore | None,
    family_defaults: list[dict[str, Any]],
) -> BatchPolicy:
    """A model's limit: explicit setting, else its measured profile here, else its family's, else built-in."""
    on_cuda = identity["provider"] == "CUDAExecutionProvider"
    if setting:
        return BatchPolicy(max_batch_size=setting, source="setting", shed_after_ms=float(max_latency_ms))
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
    entry = _family_match(family_defaults, name=name, family=family, precision=precision, provider=identity["provider"])
    if entry is not None:
        return limit_from_curve(
            curve_of(entry),
            source="family default",
            measured_on=_describe(entry),
            measured_at=entry.get("measured_at"),
            reference=f"{entry['model']} {entry['precision']}",
            **choose,
        )
    return BatchPolicy(max_batch_size=_BUILT_IN[on_cuda], source="built-in", shed_after_ms=float(max_latency_ms))


def with_buckets(policy: BatchPolicy, *, on_cuda: bool, setting: str, inflight: int) -> BatchPolicy:
    """The policy with its execution shapes: CUDA gets buckets (from ``setting`` — ``1,8,32`` or ``none`` — else
    from the curve), the CPU one session of any shape unless ``setting`` names buckets."""
    setting = setting.strip().lower()
    if setting == "none" or (not setting and not on_cuda):
        return policy.model_copy(update={"buckets": None, "sessions": 1})
    if setting:
        sizes = sorted({int(v) for v in setting.split(",") if v.strip()})
        buckets = tuple(b for b in sizes if b < policy.max_batch_size) + (policy.max_batch_size,)
    else:
        buckets = choose_buckets(policy.max_batch_size, policy.curve)
    return policy.model_copy(update={"buckets": list(buckets), "sessions": len(buckets) * max(1, inflight)})


def random_batch(shape: tuple[int, ...]) -> Callable[[int], np.ndarray]:
    """``sample(b)`` for :func:`measure_curve`: b random rows of ``shape`` as the batcher feeds them (uint8)."""
    rng = np.random.default_rng(0)

    def sample(b: int) -> np.ndarray:
        return rng.integers(0, 256, size=(b, *shape), dtype=np.uint8)

    return sample
