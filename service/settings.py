"""Every ``CNNSERVE_*`` setting, read once into one typed object.

Nothing else in the service reads the environment: the service, the batch scorer and the CLI take a
:class:`Settings` (``get_settings()`` for the process-wide one).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


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
    max_pixels: int = Field(50_000_000, gt=0)
    # Adaptive batching (BentoML's dispatcher, one per model): the largest batch, and the latency after which a
    # queued request is shed with a 503 rather than served late.
    max_batch_size: int = Field(16, ge=1)
    max_latency_ms: int = Field(10_000, ge=1)
    # onnxruntime threads per session; 0 = onnxruntime's default (all cores).
    intra_op_threads: int = Field(0, ge=0)

    @field_validator("models", "providers", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
