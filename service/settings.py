"""Every ``CNNSERVE_*`` setting, read once into one typed object.

Nothing else in the service reads the environment: the service, the batch scorer and the CLI take a
:class:`Settings` (``get_settings()`` for the process-wide one).
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "cuda_driver_present", "get_settings"]


def cuda_driver_present() -> bool:
    """onnxruntime-gpu lists CUDA as available even on a machine with no GPU; the driver library says the truth."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNNSERVE_", extra="ignore")

    # Store tags to serve (``lenet5``, ``resnet50-int8:abc123``). Empty = every cnnserve model in the store.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # onnxruntime providers in order of preference, short names (``cuda``, ``cpu``). Empty = CUDA if usable, else CPU.
    providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_upload_mb: float = Field(20.0, gt=0)
    # Decoded pixels of one upload, checked from its header before decoding. With the memory budgets below it bounds
    # a worker's memory (service/app/work.py: a request's peak is a few tens of bytes per pixel at worst).
    max_pixels: int = Field(16_000_000, gt=0)
    # /v2 infer: the body limit; 0 = per model, a full batch of its own input in binary FP32 plus 1 MB of JSON.
    v2_max_body_mb: float = Field(0.0, ge=0)
    # JSON bodies (image routes and /v2): how deeply arrays and objects may nest.
    max_json_depth: int = Field(32, ge=2)
    # Per API worker: bytes of request bodies held at once (reserved from Content-Length before reading), and bytes
    # of image and tensor work (reserved from the image's header before decoding); requests past them wait in line.
    body_memory_mb: float = Field(128.0, gt=0)
    work_memory_mb: float = Field(512.0, gt=0)
    # Threads per API worker that decode, resize, render and encode images (0 = the usable cores, at most 8).
    image_threads: int = Field(0, ge=0)
    # Seconds a client has to send a request's headers (on a new connection, or the next request on a kept-alive
    # one) before the connection is closed with a 408; slow-header clients otherwise hold connections forever.
    header_timeout_s: float = Field(10.0, gt=0)
    # Batching (service.batching, one batcher per model): the largest batch (with two tiers: per API-worker call),
    # and the latency after which a queued request is shed with a 503 rather than served late.
    max_batch_size: int = Field(16, ge=1)
    max_latency_ms: int = Field(10_000, ge=1)
    # Each model's own batch limit comes from its measured batch-cost curve (service/batch_tuning.py): the
    # smallest batch within batch_tolerance of the best throughput among batches whose one run fits
    # batch_budget_ms. Curves: `cnnserve tune` → batch_profiles (empty = ~/.cache/cnnserve/batching.json), else
    # the family defaults we measured; tune_at_start measures a model that has neither while the service loads.
    batch_budget_ms: float = Field(100.0, gt=0)
    batch_tolerance: float = Field(0.97, gt=0, le=1)
    batch_profiles: str = ""
    tune_at_start: bool = False
    # onnxruntime threads per session (service/runtime/sessions.py). 0 = the cores this process may use (CPU
    # affinity, cgroup quota) divided by the processes holding sessions (session_processes()). One inter-op thread
    # and no spinning are fixed choices there (measurements can set them on a SessionConfig), not settings.
    intra_op_threads: int = Field(0, ge=0)
    # Cache of optimised graphs (keyed by file hash, onnxruntime version, providers, CPU), so a restart does not
    # optimise again; ort_cache_dir empty = $XDG_CACHE_HOME/cnnserve/ort (~/.cache/cnnserve/ort).
    ort_cache: bool = True
    ort_cache_dir: str = ""

    # --- the two-tier service (service/app/service.py) ---
    # "two": API workers (decode, validate, resize, answer) in front of one model-tier process that owns the
    # onnxruntime sessions and batches across all API workers; "one": one process does both (no hop between
    # processes: the better choice on a small CPU-only machine). "auto": two when a CUDA driver is present.
    tiers: Literal["auto", "one", "two"] = "auto"
    # API worker processes; 0 = auto: two tiers → one per core, leaving one for the model tier (at most 16);
    # one tier → 1 (each worker of a one-tier service holds its own sessions).
    api_workers: int = Field(0, ge=0)
    # The batch limit of one onnxruntime run, for every model; 0 = each model's measured limit (batch_budget_ms).
    model_max_batch_size: int = Field(0, ge=0)
    # Batches of one model running at once in the model tier (0 = 2 on CUDA, so the next batch's copy and launch
    # overlap the current one's compute; 1 on CPU, where one run already uses every core), and calls to the model
    # tier in flight per API worker (its requests queue behind them and ride together in the next call).
    model_inflight: int = Field(0, ge=0)
    api_inflight: int = Field(2, ge=1)
    # CUDA: run through io-binding (inputs copied to the device once, outputs allocated there).
    io_binding: bool = True
    # The batch shapes a model's sessions run (service/runtime/model.py): "" = auto (CUDA: buckets chosen from the
    # model's curve; CPU: one session, any batch), "none" = one session of any shape, "1,8,32,128" = these (the
    # model's batch limit is always the largest).
    batch_buckets: str = ""
    # CUDA: capture each bucket session's run as a CUDA graph and replay it (classifiers: models with no scalar
    # graph inputs).
    cuda_graph: bool = False
    # CUDA device of the model tier's sessions.
    device_id: int = Field(0, ge=0)
    # How long an API worker waits at start-up for the model tier to have loaded its models.
    tier_start_timeout_s: float = Field(600.0, gt=0)
    # JPEG decoding at reduced size for classification (imaging.draft_request): the decoded image's shorter side
    # must stay ≥ this fraction of the resize target. 1.0 = never below what the resize needs; 0 = off.
    jpeg_draft: float = Field(1.0, ge=0, le=1)
    # One JSON line per request on the ``cnnserve.access`` logger (never the image bytes).
    access_log: bool = True
    # The KServe v2 / Triton gRPC service (service/app/grpc_server.py), served by the API workers next to HTTP:
    # port (Triton's 8001; 0 = no gRPC) and address to listen on.
    grpc_port: int = Field(8001, ge=0, le=65535)
    grpc_host: str = "0.0.0.0"

    @field_validator("models", "providers", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    def two_tier(self, has_cuda_driver: bool | None = None) -> bool:
        if self.tiers != "auto":
            return self.tiers == "two"
        if has_cuda_driver is None:
            has_cuda_driver = cuda_driver_present()
        return has_cuda_driver

    def api_worker_count(self, two_tier: bool, cores: int | None = None) -> int:
        if self.api_workers:
            return self.api_workers
        if not two_tier:
            return 1
        cores = cores if cores is not None else len(os.sched_getaffinity(0))
        return max(1, min(16, cores - 1))

    def model_inflight_limit(self, on_cuda: bool) -> int:
        return self.model_inflight or (2 if on_cuda else 1)

    def batch_limit_setting(self) -> int | None:
        """A batch limit set by hand for every onnxruntime run, which then wins over the measured ones:
        ``model_max_batch_size``, or with one tier an explicitly set ``max_batch_size``."""
        if self.model_max_batch_size:
            return self.model_max_batch_size
        if "max_batch_size" in self.model_fields_set and not self.two_tier():
            return self.max_batch_size
        return None

    def session_processes(self) -> int:
        """Processes on this machine that each hold their own onnxruntime sessions: the model tier alone with two
        tiers, every API worker with one."""
        return 1 if self.two_tier() else self.api_worker_count(False)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)  # MB = 10⁶ bytes, as every size the service reports


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
