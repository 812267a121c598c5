"""The one place a deployment is decided: Settings in, every client, adapter and worker out.

For each tier, `Deployment` decides once whether it runs in this process or is reached over gRPC (its
LLMK_<TIER>_ADDRESS), and for the kernel whether the metadata is SQLite or PostgreSQL and the broker
in-process or RabbitMQ. No other module looks at an address or a URL scheme to choose a mode; the CLI and
every service's `main` take what they need from here. Tiers are imported inside the methods, so a command
loads only the tiers it uses (`llmk --help` and the listing commands start without torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmk.config import Settings
from llmk.errors import InvalidInput, Unavailable

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Engine

    from llmk.platform.version_events import AmqpEvents, LocalEvents
    from services.inference.interface import InferenceClient
    from services.monitor.adapters.news_queue import AlertPublisher
    from services.monitor.adapters.tables import MonitorDb
    from services.optimizer.interface import JobsClient
    from services.optimizer.main import Runtime
    from services.rec.interface import RecClient
    from services.store.interface import HistoryClient, StoreClient
    from services.store.usecases.ports import Objects
    from services.store.usecases.store import Store

AMQP = ("amqp", "pyamqp")
# one in-process bus per broker URL: a store and its workers in one process share it
_local_events: dict[str, LocalEvents] = {}


class Deployment:
    """Which tiers run here and which are reached over gRPC; SQLite or PostgreSQL; which broker."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.broker_is_amqp = settings.broker_url.startswith(AMQP)
        self.broker_in_process = settings.broker_url.startswith("memory")
        self.database_is_shared = settings.sqlalchemy_url.startswith("postgresql")  # several processes
        self.store_is_remote = bool(settings.store_address)
        self.inference_is_remote = bool(settings.inference_address)
        self.optimizer_is_remote = bool(settings.optimizer_address)
        self.rec_is_remote = bool(settings.rec_address)

    # the kernel: metadata database, version events, queues

    @cached_property
    def engine(self) -> Engine:
        """The metadata database, migrated once per deployment when auto_migrate is on. A URL SQLAlchemy
        cannot use is InvalidInput and a database that does not answer Unavailable, each naming the
        setting, never a driver's traceback."""
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

        from llmk.platform.database import make_engine
        from llmk.platform.migrate import upgrade

        where = self.settings.sqlalchemy_url.rpartition("@")[2]  # never the password
        try:
            self.settings.home.mkdir(parents=True, exist_ok=True)
            engine = make_engine(self.settings.sqlalchemy_url)
            if self.settings.auto_migrate:
                upgrade(engine)
        except (ArgumentError, NoSuchModuleError) as e:
            raise InvalidInput(f"LLMK_DATABASE_URL is not a URL llmk can use ({where}): {e}") from None
        except OperationalError as e:
            reason = str(e.orig or e).strip().splitlines()[0]
            raise Unavailable(
                f"the database at {where} does not answer (LLMK_DATABASE_URL): {reason}"
            ) from None
        return engine

    def events(self) -> LocalEvents | AmqpEvents:
        from llmk.platform.version_events import AmqpEvents, LocalEvents

        if self.broker_is_amqp:
            return AmqpEvents(self.settings.broker_url)
        return _local_events.setdefault(self.settings.broker_url, LocalEvents())

    def celery(self, name: str, queue: str, results: bool = False) -> Celery:
        """A Celery app on this deployment's broker; `results` sends answers back to the caller."""
        from llmk.platform.celery_app import make_celery

        backend = None
        if results:
            s = self.settings
            backend = s.result_backend or ("rpc://" if self.broker_is_amqp else "cache+memory://")
        s = self.settings
        return make_celery(name, s.broker_url, queue, s.queue_type, backend, poll_fast=self.broker_in_process)

    # the store

    def objects(self, readonly: bool = False) -> Objects:
        """The object store LLMK_OBJECTS_URL names: a bucket (checked now, so a wrong setting fails at
        start with its name), else a folder."""
        s = self.settings
        if s.objects_url.startswith("s3://"):
            from services.store.adapters.objects_s3 import open_bucket_objects

            return open_bucket_objects(s, readonly)
        from services.store.adapters.objects import ObjectStore

        folder = Path(s.objects_url) if s.objects_url else s.objects_path
        try:
            return ObjectStore(folder, s.max_header_bytes, readonly=readonly)
        except OSError as e:
            what = "LLMK_OBJECTS_URL" if s.objects_url else "LLMK_OBJECT_DIR or LLMK_HOME"
            raise InvalidInput(f"the object folder {folder} cannot be used ({what}): {e.strerror}") from None

    def reader_objects(self) -> Objects | None:
        """What a client of a remote store reads objects from itself: the bucket, or the store's folder as
        mounted here (LLMK_STORE_OBJECT_DIR); None when tensors must be streamed over gRPC."""
        s = self.settings
        if s.objects_url.startswith("s3://"):
            return self.objects(readonly=True)
        if s.store_object_dir:
            from services.store.adapters.objects import ObjectStore

            return ObjectStore(s.store_object_dir, s.max_header_bytes, readonly=True)
        return None

    def local_store(self) -> Store:
        from services.store.adapters.catalog import Catalog
        from services.store.usecases.store import Store

        s = self.settings
        return Store(
            Catalog(self.engine),
            self.objects(),
            self.events(),
            s.cache_chain_length,
            s.gc_grace_seconds,
            s.snapshot_cache_bytes,
        )

    def store(self) -> StoreClient:
        if not self.store_is_remote:
            return self.local_store()
        from llmk.platform.security import Tls
        from services.store.rpc.client import GrpcStoreClient

        s = self.settings
        return GrpcStoreClient(
            s.store_address,
            s.auth_token,
            s.max_message_bytes,
            s.chunk_bytes,
            Tls.of(s),
            self.reader_objects(),
        )

    def history(self) -> HistoryClient:
        """The store's metadata alone: loads neither torch nor the object files."""
        if not self.store_is_remote:
            from services.store.adapters.catalog import Catalog
            from services.store.usecases.history import History

            return History(Catalog(self.engine))
        from llmk.platform.security import Tls
        from services.store.rpc.history_client import GrpcHistoryClient

        s = self.settings
        return GrpcHistoryClient(s.store_address, s.auth_token, s.max_message_bytes, Tls.of(s))

    # inference

    def inference(self, model: str, ref: str | None, shared: bool = False) -> InferenceClient:
        """`model` at `ref`: the worker at LLMK_INFERENCE_ADDRESS, else a Host in this process (`shared`:
        one for many callers, such as a gateway, that follows the branch; else one for one command)."""
        s = self.settings
        if not self.inference_is_remote:
            from services.inference.usecases.local_client import LocalInferenceClient

            return LocalInferenceClient(s, self.store(), model, ref, self.events() if shared else None)
        from llmk.platform.security import Tls
        from services.inference.rpc.client import GrpcInferenceClient

        return GrpcInferenceClient(
            s.inference_address, model, ref, s.auth_token, s.max_message_bytes, Tls.of(s)
        )

    def inference_queue(self) -> Celery:
        """The inference queue as producers see it (workers register their tasks on it)."""
        return self.celery("llmk.inference", self.settings.inference_queue, results=True)

    def inference_workers(self, app: Celery, model: str, ref: str | None) -> AbstractContextManager[Any]:
        """With an in-process broker, a worker on this process's threads; otherwise the deployment's."""
        if not self.broker_in_process:
            return nullcontext()
        from services.inference.main import embedded_worker

        return embedded_worker(self, app, model, ref)

    # optimizer

    def optimizer_state(self) -> Objects:
        """Where optimizer jobs keep their state and examples: content-addressed files of their own, in
        LLMK_OPTIMIZER_STATE_DIR when set, else beside the objects: under optimizer/ in their bucket
        (so optimizer replicas on any machine resume any job), or the folder home/optimizer."""
        from services.store.adapters.objects import ObjectStore

        s = self.settings
        if s.objects_url.startswith("s3://") and s.optimizer_state_dir is None:
            from services.store.adapters.objects_s3 import open_bucket_objects

            return open_bucket_objects(s, subfolder="optimizer")
        return ObjectStore(s.optimizer_state_path, s.max_header_bytes)

    def optimizer(self) -> Runtime:
        from services.optimizer.main import wire

        return wire(self)

    @contextmanager
    def jobs(self, worker: bool = True) -> Iterator[JobsClient]:
        """The optimizer at LLMK_OPTIMIZER_ADDRESS, else in this process (with a job worker on a thread
        when `worker`: jobs then run only while the command does); closed at the end either way."""
        if not self.optimizer_is_remote:
            from services.optimizer.main import embedded

            with embedded(self, worker) as found:
                yield found
            return
        from llmk.platform.security import Tls
        from services.optimizer.rpc.client import GrpcOptimizerClient

        s = self.settings
        client = GrpcOptimizerClient(
            s.optimizer_address, s.auth_token, s.max_message_bytes, s.chunk_bytes, Tls.of(s)
        )
        try:
            yield client
        finally:
            client.close()

    @property
    def trains_in_process(self) -> bool:
        """Jobs run only while the command runs: no optimizer service, no broker that outlives us."""
        return not self.optimizer_is_remote and self.broker_in_process

    # monitor

    def monitor_repo(self) -> MonitorDb:
        from services.monitor.adapters.tables import MonitorDb

        return MonitorDb(self.engine)

    def alert_publisher(self) -> AlertPublisher | None:
        """Alerts also go to the broker's `alerts` queue when the broker is RabbitMQ."""
        if not self.broker_is_amqp:
            return None
        from services.monitor.adapters.news_queue import AlertPublisher

        return AlertPublisher(self.settings.broker_url)

    # recommendation

    def rec(self, model: str, ref: str | None = None, queued: bool = False) -> RecClient:
        """`model`'s recommendations: through the rec queue (`queued`: any worker consuming it answers), the
        worker at LLMK_REC_ADDRESS (serving its branch head; `ref` must then be empty), else the version at
        `ref` loaded in this process."""
        s = self.settings
        if queued:
            if ref:
                raise InvalidInput("a queued rec worker serves its own branch: drop --ref")
            from services.rec.queue.client import QueuedRecClient

            return QueuedRecClient(self.rec_queue(), model)
        if not self.rec_is_remote:
            from services.rec.usecases.local_client import LocalRecClient

            return LocalRecClient(self.store(), model, ref)
        if ref:
            raise InvalidInput("a rec worker serves its own branch: drop --ref, or unset LLMK_REC_ADDRESS")
        from llmk.platform.security import Tls
        from services.rec.rpc.client import GrpcRecClient

        return GrpcRecClient(s.rec_address, model, s.auth_token, s.max_message_bytes, Tls.of(s))

    def rec_queue(self) -> Celery:
        """The rec queue as producers see it (workers register the recommend task on it)."""
        return self.celery("llmk.rec", self.settings.rec_queue, results=True)

    def rec_workers(self, app: Celery, model: str, ref: str | None) -> AbstractContextManager[Any]:
        """With an in-process broker, a rec worker consuming `app`'s queue on this process's threads;
        otherwise the deployment's (`llmk serve rec --worker`)."""
        if not self.broker_in_process:
            return nullcontext()
        from services.rec.main import embedded_worker

        return embedded_worker(self, app, model, ref)

    # services

    def serve(self, tier: str, worker: bool | None = None, queue_only: bool = False) -> None:
        """Run `tier` as a service until SIGTERM. `worker`: the inference or rec service also consumes its
        queue (default LLMK_INFERENCE_WORKER, LLMK_REC_WORKER); `queue_only`: the optimizer runs only its
        queue worker."""
        if tier == "store":
            from services.store import main as store

            store.main(self)
        elif tier == "api":
            from services.support import main as support

            support.main(self)
        elif tier == "rec":
            from services.rec import main as rec

            rec.main(self, worker)
        elif tier == "inference":
            from services.inference import main as inference

            inference.main(self, worker)
        elif queue_only:
            from services.optimizer import main as optimizer

            optimizer.run_worker(self)
        else:
            from services.optimizer import main as optimizer

            optimizer.main(self)


def embedded(settings: Settings, home: Path) -> Settings:
    """`settings` with every tier in this process: SQLite and objects under `home`, the in-process broker.
    The optimizer's training gets one torch thread unless told otherwise: it shares the cores with the
    inference worker, whose batches would otherwise wait behind a training step."""
    update: dict[str, Any] = {"home": home, "database_url": "", "object_dir": None, "broker_url": "memory://"}
    update["optimizer_threads"] = settings.optimizer_threads or 1
    return settings.model_copy(update={**update, **_addresses()})


def reached_over_grpc(settings: Settings, **tiers: str) -> Settings:
    """`settings` with the named tiers (store=, inference=, optimizer=, rec=) reached at those addresses."""
    return settings.model_copy(update=_addresses(**tiers))


def _addresses(store: str = "", inference: str = "", optimizer: str = "", rec: str = "") -> dict[str, str]:
    return {
        "store_address": store,
        "inference_address": inference,
        "optimizer_address": optimizer,
        "rec_address": rec,
    }


def is_queue_url(source: str) -> bool:
    """A monitor source that names a RabbitMQ queue rather than a file."""
    return source.startswith(("amqp://", "amqps://"))
