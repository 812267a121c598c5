"""One Settings object for every tier, read from LLMK_* variables when `main` builds it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmk.domain.addresses import check_address
from llmk.errors import InvalidInput


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMK_", extra="ignore")

    home: Path = Field(Path(".llmk"), description="Embedded-mode root: SQLite file, objects, cache")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under home")
    object_dir: Path | None = Field(None, description="Content-addressed object files; default home/objects")
    objects_url: str = Field(
        "",
        description="Where the objects live: s3://bucket/prefix (an S3-compatible bucket; AWS_* settings "
        "give credentials and region) or a folder; empty means LLMK_OBJECT_DIR",
    )
    s3_endpoint: str = Field("", description="S3 endpoint URL of a MinIO-style server; empty means AWS")
    s3_part_bytes: int = Field(64 << 20, description="Objects larger than this are uploaded in parts of it")
    object_cache_bytes: int = Field(
        4 << 30,
        description="With s3:// objects: verified blocks kept on local disk (home/cache/objects) so a "
        "restart does not download again; the least recently used go first; 0 = no cache",
    )
    store_object_dir: Path | None = Field(
        None,
        description="With LLMK_STORE_ADDRESS: the store's object directory as mounted here (same host or a "
        "shared volume; read-only is enough): fetches read the files the store names, not streamed bytes",
    )
    broker_url: str = Field("memory://", description="Celery/kombu broker; memory:// is in-process")
    queue_type: str = Field(
        "classic",
        description="Type of the task queues Celery declares: classic, or quorum (replicated, with a "
        "delivery limit; the deployments declare them so, see infra/rabbitmq/definitions.json)",
    )
    auto_migrate: bool = Field(True, description="Run Alembic migrations when the store opens")

    # gRPC
    store_address: str = Field("", description="host:port of a store service; empty means in-process")
    inference_address: str = Field("", description="host:port of an inference service")
    optimizer_address: str = Field("", description="host:port of an optimizer service")
    rec_address: str = Field("", description="host:port of a recommendation worker (llmk serve rec)")
    listen: str = Field("127.0.0.1:0", description="Address a `llmk serve` tier listens on")
    auth_token: str = Field("", description="Bearer token required on mutating calls when set")
    auth_reads: bool = Field(False, description="Require the token on reads too (health checks excepted)")
    tls_cert: Path | None = Field(None, description="PEM certificate: a server's, or a client's (mutual TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_ca: Path | None = Field(
        None, description="PEM CA: clients trust it; servers then require client certificates it signed"
    )
    max_message_bytes: int = Field(8 * 1024 * 1024, description="gRPC message limit, both ends")
    chunk_bytes: int = Field(4 * 1024 * 1024, description="Tensor stream chunk size (at most 4 MiB)")

    # store
    gc_grace_seconds: float = Field(3600.0, description="Unreferenced objects younger than this survive GC")
    cache_chain_length: int = Field(8, description="Chains at least this long are cached once materialized")
    snapshot_cache_bytes: int = Field(
        2 << 30,
        description="Bytes of cached materializations kept; the least recently used go first; 0 = no cache",
    )
    scrub_interval_seconds: float = Field(
        86400.0,
        description="`llmk serve store` re-hashes every object file this often and quarantines damaged ones "
        "(as `llmk store scrub`); the first pass one interval after start; 0 = off",
    )
    max_header_bytes: int = Field(100 * 1024 * 1024, description="Largest accepted safetensors header")
    max_model_bytes: int = Field(
        16 << 30, description="Most tensor bytes one commit or import stream may declare; larger is refused"
    )
    max_import_file_bytes: int = Field(
        256 << 20, description="Largest config or tokenizer file an import reads from a model folder"
    )

    # inference
    device: str = Field("", description="cpu, cuda, cuda:N; empty picks CUDA when present")
    weight_budget: int = Field(0, description="Bytes of weights kept on the compute device; 0 = no limit")
    max_batch_size: int = Field(16, description="Largest batch the batcher forms")
    max_wait_ms: float = Field(5.0, description="How long the batcher waits to fill a batch")
    max_queue: int = Field(256, description="Requests waiting beyond this are refused")
    max_prompt_tokens: int = Field(2048, description="Longest accepted prompt")
    max_new_tokens: int = Field(1024, description="Largest max_tokens a request may ask for")
    max_labels: int = Field(128, description="Most labels a classify request may score (banking77 has 77)")
    max_texts: int = Field(64, description="Most texts one classify request may carry")
    max_sequences: int = Field(8, description="Generation sequences decoded together (KV cache slots)")
    max_context_tokens: int = Field(
        2048, description="KV cache length of one sequence (prompt + completion); capped by the model"
    )
    serve_model: str = Field(
        "", description="NAME[@REF] an inference worker loads at start; a branch is followed"
    )
    load_options: str = Field(
        "", description="Comma-separated load-time options (pruning, int8) for served models"
    )
    classify_template: str = Field(
        "{text}\nAnswer:", description="Classify prompt template when a request has none"
    )
    default_labels: str = Field(
        "positive,negative,neutral", description="Comma-separated labels when a classify request names none"
    )
    update_drain_seconds: float = Field(
        120.0, description="A hot update waits this long for running generations to finish, else fails"
    )
    version_poll_seconds: float = Field(
        30.0, description="Workers also check their branch head this often (missed events); 0 = never"
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 = none"
    )
    inference_queue: str = Field("inference", description="Celery queue of classify and generate tasks")
    inference_worker: bool = Field(False, description="`llmk serve inference` also consumes the Celery queue")
    rec_queue: str = Field("rec", description="Celery queue of recommend tasks")
    rec_worker: bool = Field(False, description="`llmk serve rec` also consumes the Celery rec queue")
    result_backend: str = Field(
        "", description="Celery result backend; empty = rpc:// on AMQP brokers, cache+memory:// otherwise"
    )

    # support
    reply_batch_size: int = Field(16, ge=1, description="Rated replies per step of a model's replies job")
    reply_holdout: int = Field(
        32, ge=1, le=225, description="Held-out Bitext conversations gating a new replies job's versions"
    )

    completion_retention_days: float = Field(
        0, ge=0, description="Completions stored longer ago are deleted (at start, then hourly); 0 = kept"
    )

    # monitor
    monitor_max_item_bytes: int = Field(4096, description="Longest item text the monitor scores (bytes)")

    # optimizer
    optimizer_queue: str = Field("optimizer", description="Celery queue the optimizer's job tasks go to")
    optimizer_state_dir: Path | None = Field(
        None,
        description="Optimizer state and job inputs (safetensors files) in this folder; unset: under "
        "optimizer/ in the LLMK_OBJECTS_URL bucket when objects are on S3 (replicas on any machine resume "
        "any job), else home/optimizer",
    )
    optimizer_lease_seconds: float = Field(
        120.0, description="A job's worker lease; a killed worker's job resumes elsewhere after this"
    )
    optimizer_task_seconds: float = Field(
        60.0, description="A job task hands over to a fresh task after running this long"
    )
    optimizer_worker: bool = Field(True, description="`llmk serve optimizer` also runs a job worker")
    optimizer_threads: int = Field(
        0,
        ge=0,
        description="Torch threads a job's training may use (0: torch's default); bounds the optimizer's "
        "share of the cores beside inference workers in one process",
    )
    optimizer_max_examples: int = Field(100_000, description="Most examples one feedback submission may hold")

    @field_validator("store_address", "inference_address", "optimizer_address", "rec_address", "listen")
    @classmethod
    def _port_in_range(cls, address: str, info: ValidationInfo) -> str:
        try:
            return check_address(address, listening=info.field_name == "listen")
        except InvalidInput as e:  # pydantic reports ValueErrors as the setting's error
            raise ValueError(str(e)) from None

    @property
    def objects_path(self) -> Path:
        return self.object_dir or self.home / "objects"

    @property
    def optimizer_state_path(self) -> Path:
        return self.optimizer_state_dir or self.home / "optimizer"

    @property
    def cache_path(self) -> Path:
        return self.home / "cache"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'llmk.db').resolve()}"
