"""One Settings object for every tier, read from LLMK_* variables when `main` builds it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMK_", extra="ignore")

    home: Path = Field(Path(".llmk"), description="Embedded-mode root: SQLite file, objects, cache")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under home")
    object_dir: Path | None = Field(None, description="Content-addressed object files; default home/objects")
    broker_url: str = Field("memory://", description="Celery/kombu broker; memory:// is in-process")
    auto_migrate: bool = Field(True, description="Run Alembic migrations when the store opens")

    # gRPC
    store_address: str = Field("", description="host:port of a store service; empty means in-process")
    inference_address: str = Field("", description="host:port of an inference service")
    optimizer_address: str = Field("", description="host:port of an optimizer service")
    listen: str = Field("127.0.0.1:0", description="Address a `llmk serve` tier listens on")
    auth_token: str = Field("", description="Bearer token required on mutating calls when set")
    max_message_bytes: int = Field(8 * 1024 * 1024, description="gRPC message limit, both ends")
    chunk_bytes: int = Field(4 * 1024 * 1024, description="Tensor stream chunk size (at most 4 MiB)")

    # store
    gc_grace_seconds: float = Field(3600.0, description="Unreferenced objects younger than this survive GC")
    cache_chain_length: int = Field(8, description="Chains at least this long are cached once materialized")
    max_header_bytes: int = Field(100 * 1024 * 1024, description="Largest accepted safetensors header")

    # inference
    device: str = Field("", description="cpu, cuda, cuda:N; empty picks CUDA when present")
    weight_budget: int = Field(0, description="Bytes of weights kept on the compute device; 0 = no limit")
    max_batch_size: int = Field(16, description="Largest batch the batcher forms")
    max_wait_ms: float = Field(5.0, description="How long the batcher waits to fill a batch")
    max_queue: int = Field(256, description="Requests waiting beyond this are refused")
    max_prompt_tokens: int = Field(2048, description="Longest accepted prompt")
    max_new_tokens: int = Field(1024, description="Largest max_tokens a request may ask for")
    max_labels: int = Field(32, description="Most labels a classify request may score")

    @property
    def objects_path(self) -> Path:
        return self.object_dir or self.home / "objects"

    @property
    def cache_path(self) -> Path:
        return self.home / "cache"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'llmk.db').resolve()}"
