"""onnxruntime session options, chosen on purpose, and the on-disk cache of optimised graphs.

* **Threads.** onnxruntime's default intra-op pool has one thread per *machine* core, in every session of every
  process. With W worker processes each holding its sessions on a machine (or container) that gives this process
  C cores, that is W × C threads fighting for C cores. :func:`session_threads` gives each session C / W intra-op
  threads (at least 1); C is what the process may really use — its CPU affinity (``os.sched_getaffinity``,
  which ``taskset``/cpusets set) capped by a cgroup v2 CPU quota (``cpu.max``, what ``docker --cpus`` and
  Kubernetes limits set). Inter-op threads are 1 and the execution mode sequential: a CNN graph is a chain, there
  is nothing to run side by side, and a second pool would only take cores from the first.
* **Spinning off.** onnxruntime's pool threads spin after their work for a while, burning CPU to start the next op
  sooner. That pays for a process that does nothing but run the model on dedicated cores; a serving process also
  decodes, resizes and answers HTTP on the same cores, and other processes or jobs may share them, so spinning
  would take the CPU those threads need (a measurement can turn it on with ``SessionConfig(spinning=True)``).
* **Memory.** CPU memory arena and memory-pattern planning stay on (re-used buffers across runs of the same shape:
  the batcher forms few shapes). The arena grows by what is requested, not the next power of two
  (``kSameAsRequested`` via a process-wide arena shared by every session — one pool instead of one per model).
* **Graph optimisation** ``ORT_ENABLE_ALL`` (constant folding, Conv+BN/activation fusion, and on CPU the NCHWc
  layout transformer, which matters for convolutions). The cache keeps the *portable* part: the graph optimised
  at ``ORT_ENABLE_EXTENDED`` (folding and fusions, the slow part) is written once (``optimized_model_filepath``),
  and every session — the first one included — is built from it at ``ORT_ENABLE_ALL``, which adds the layout
  transformation for this CPU at load. onnxruntime warns when asked to serialise a graph with NCHWc nodes (they
  are specific to the CPU that made them), so a cached file never has them. The key still covers the file, the
  onnxruntime version, the providers and the CPU. The 64 most recently used graphs are kept (every new export is
  a new key). A cache directory that cannot be written is skipped silently (logged at DEBUG): the model still
  loads, just slower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from ..settings import cuda_driver_present

__all__ = [
    "PROVIDER_NAMES",
    "select_providers",
    "with_provider_options",
    "SessionConfig",
    "available_cores",
    "session_threads",
    "cache_key",
    "create_session",
    "default_cache_dir",
    "file_digest",
]

logger = logging.getLogger("cnnserve.runtime")

# Files past protobuf's limit keep their weights as external data; optimised copies of those are not cached.
_MAX_CACHED_BYTES = 1_800_000_000
# Providers that compile their own engines: their sessions cannot be serialised as a plain optimised graph.
_NOT_CACHEABLE = frozenset({"TensorrtExecutionProvider", "OpenVINOExecutionProvider"})


PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def select_providers(requested: list[str], available: list[str], *, has_cuda_driver: bool | None = None) -> list[str]:
    """Short names (``cuda``, ``cpu``) or full provider names → the onnxruntime providers to ask for, in order.

    With nothing requested: CUDA when onnxruntime has it and a driver is present, then CPU. CPU is always
    appended last so a model never ends up with no provider; a requested provider onnxruntime lacks is skipped
    with a warning (the session then reports what it really got).
    """
    if not requested:
        if has_cuda_driver is None:
            has_cuda_driver = cuda_driver_present()
        requested = ["cuda", "cpu"] if has_cuda_driver else ["cpu"]
    chosen: list[str] = []
    for item in requested:
        name = PROVIDER_NAMES.get(item.strip().lower(), item.strip())
        if name not in available:
            logger.warning("provider %s is not available in this onnxruntime build (%s)", item, ", ".join(available))
            continue
        if name not in chosen:
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def with_provider_options(
    providers: list[str],
    *,
    device_id: int = 0,
    conv_algo_search: str = "HEURISTIC",
    tf32: bool = True,
    cuda_graph: bool = False,
) -> list[str | tuple[str, dict[str, str]]]:
    """Provider names → what ``InferenceSession`` takes, with CUDA's options set on purpose.

    ``device_id``: one GPU per worker. ``cudnn_conv_algo_search=HEURISTIC``: as fast as ``EXHAUSTIVE`` once warm and
    much faster than ``DEFAULT`` (benchmarks/gpu/tune/cuda_options.json); either way cuDNN builds a plan for each
    input shape, which is why a CUDA session here only ever sees one shape (:mod:`.model`'s buckets).
    ``use_tf32``: on by default like PyTorch's cuDNN convolutions; parity checks on GPU turn it off.
    ``enable_cuda_graph``: the session captures its first run as a CUDA graph and replays it; it then needs
    io-binding with buffers that never move (:class:`.model.GraphBinding`)."""
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            options = {
                "device_id": str(device_id),
                "cudnn_conv_algo_search": conv_algo_search,
                "use_tf32": "1" if tf32 else "0",
                "do_copy_in_default_stream": "1",
            }
            if cuda_graph:
                options["enable_cuda_graph"] = "1"
            out.append((name, options))
        else:
            out.append(name)
    return out


def _cgroup_cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """cgroup v2 quota in cores (``"200000 100000"`` → 2.0), or None when unlimited or unreadable."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(float(quota) / float(period), 0.0) or None
    except (ValueError, ZeroDivisionError):
        return None


def available_cores(*, affinity: set[int] | None = None, cgroup_limit: float | None = -1.0) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup CPU quota (rounded down, ≥ 1)."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # not Linux
            affinity = set(range(os.cpu_count() or 1))
    cores = max(1, len(affinity))
    limit = _cgroup_cpu_limit() if cgroup_limit == -1.0 else cgroup_limit
    if limit is not None:
        cores = min(cores, max(1, int(limit)))
    return cores


def session_threads(cores: int, processes: int = 1, *, intra: int = 0, inter: int = 0) -> tuple[int, int]:
    """(intra-op, inter-op) threads per session: explicit values win; else cores / processes (≥ 1) and 1."""
    if intra <= 0:
        intra = max(1, cores // max(1, processes))
    return intra, inter if inter > 0 else 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cnnserve" / "ort"


def _cpu_identity() -> str:
    """What NCHWc and kernel selection depend on: the architecture, the CPU model and its feature flags."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "CPU part") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.strip()
            if model and flags:
                break
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{flags}"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime): the optimised-graph cache and the batch
    profiles both key on it, and a ResNet-50 file is 100 MB."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(path: Path, providers: list, *, level: str = "extended") -> str:
    """sha256 over the file's bytes, onnxruntime's version, the providers (with their options), the CPU and the
    optimisation level: anything that changes the optimised graph changes the key."""
    parts = [file_digest(path), ort.__version__, repr(providers), _cpu_identity(), level]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionConfig:
    """How sessions are built in this process (see the module docstring for the reasons)."""

    intra_op_threads: int = 0  # 0 = cores / processes
    inter_op_threads: int = 0  # 0 = 1
    processes: int = 1  # processes on this machine holding their own sessions (one-tier API workers)
    spinning: bool = False
    cache_dir: Path | None = None  # None = no cache of optimised graphs
    cache_entries: int = 64  # optimised graphs kept, most recently used first
    shared_arena: bool = True

    @classmethod
    def from_settings(cls, settings) -> SessionConfig:  # service.settings.Settings (no import cycle at runtime)
        cache = None
        if settings.ort_cache:
            cache = Path(settings.ort_cache_dir) if settings.ort_cache_dir else default_cache_dir()
        return cls(
            intra_op_threads=settings.intra_op_threads,
            processes=settings.session_processes(),
            cache_dir=cache,
        )

    def with_threads(self, intra_op_threads: int) -> SessionConfig:
        return dataclasses.replace(self, intra_op_threads=intra_op_threads)

    def threads(self, cores: int | None = None) -> tuple[int, int]:
        cores = cores if cores is not None else available_cores()
        return session_threads(cores, self.processes, intra=self.intra_op_threads, inter=self.inter_op_threads)

    def options(self, cores: int | None = None) -> ort.SessionOptions:
        cores = cores if cores is not None else available_cores()
        intra, inter = self.threads(cores)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = inter
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = True
        spin = "1" if self.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if self.shared_arena and _shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        return options


_ARENA_REGISTERED: bool | None = None


def _shared_cpu_arena() -> bool:
    """Register one CPU arena (grow by what is asked) in onnxruntime's environment, once per process."""
    global _ARENA_REGISTERED
    if _ARENA_REGISTERED is None:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # max_mem 0 = no limit, arena_extend_strategy 1 = kSameAsRequested, the rest onnxruntime's defaults.
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _ARENA_REGISTERED = True
        except Exception as exc:  # an onnxruntime build without it: per-session arenas, as by default
            logger.debug("shared CPU arena not available: %s", exc)
            _ARENA_REGISTERED = False
    return _ARENA_REGISTERED


def _writable_dir(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def create_session(
    path: Path, providers: list, config: SessionConfig, *, cores: int | None = None
) -> tuple[ort.InferenceSession, str]:
    """An ``InferenceSession`` for ``path`` built with ``config``; returns it and what the cache did: ``"hit"``
    (loaded the optimised graph, optimisation off), ``"written"`` (optimised now and saved), or ``"off"``."""
    options = config.options(cores)
    names = {p[0] if isinstance(p, tuple) else p for p in providers}
    cacheable = (
        config.cache_dir is not None
        and not (names & _NOT_CACHEABLE)
        and path.stat().st_size < _MAX_CACHED_BYTES
        and not any(path.parent.glob(f"{path.name}.data*"))
    )
    if not cacheable or not _writable_dir(config.cache_dir):
        return ort.InferenceSession(str(path), sess_options=options, providers=providers), "off"
    cached = config.cache_dir / f"{cache_key(path, providers)}.onnx"
    if cached.is_file():
        try:
            session = ort.InferenceSession(str(cached), sess_options=options, providers=providers)
            with contextlib.suppress(OSError):
                os.utime(cached)  # recently used: kept by the pruning below
            return session, "hit"
        except Exception as exc:  # a torn or stale file: optimise again and overwrite it
            logger.warning("ignoring the cached optimised graph %s: %s", cached, exc)
            options = config.options(cores)
    partial = cached.with_name(f"{cached.stem}.{os.getpid()}.partial.onnx")
    writer = config.options(cores)
    writer.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable: no NCHWc nodes
    writer.optimized_model_filepath = str(partial)
    try:
        ort.InferenceSession(str(path), sess_options=writer, providers=providers)
        os.replace(partial, cached)  # atomic: another worker loading the same model never sees half a file
    except Exception as exc:  # e.g. the cache filled the disk: load without it (a bad model fails below again)
        partial.unlink(missing_ok=True)
        logger.debug("optimised-graph cache skipped for %s: %s", path, exc)
        return ort.InferenceSession(str(path), sess_options=options, providers=providers), "off"
    session = ort.InferenceSession(str(cached), sess_options=options, providers=providers)
    _prune(config.cache_dir, keep=config.cache_entries)
    return session, "written"


def _prune(directory: Path, *, keep: int) -> None:
    """Keep the ``keep`` most recently used optimised graphs (every export of a model is a new key)."""
    try:
        entries = sorted(
            (p for p in directory.glob("*.onnx") if not p.name.endswith(".partial.onnx")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in entries[keep:]:
            stale.unlink(missing_ok=True)
    except OSError as exc:  # another process pruning at the same time, or a read-only directory
        logger.debug("could not prune %s: %s", directory, exc)
