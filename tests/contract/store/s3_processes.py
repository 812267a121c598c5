"""Child processes for the kill test against a bucket (started by a forkserver that already imported torch,
boto3 and llmk, so a child starts in milliseconds): a committer and a collector, each killed with SIGKILL."""

from __future__ import annotations

import gc
import multiprocessing
import os
from multiprocessing.context import ForkServerContext
from typing import Any

from llmk.bootstrap import Deployment
from llmk.config import Settings
from tests.integration.store.store_processes import PRELOAD, commit_forever

S3_PRELOAD = [*PRELOAD, "boto3", "botocore.client", "services.store.adapters.objects_s3", __name__]


def context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(S3_PRELOAD)
    return ctx


def commit_to_bucket(
    env: dict[str, str], settings: Settings, model: str, names: list[str], seed: int, ready: Any
) -> None:
    """The store's every kind of write (tests.integration.store.store_processes), its objects in the bucket.
    The credentials come as an argument: a forkserver started earlier in the session lacks them."""
    os.environ.update(env)
    commit_forever(settings, model, names, seed, ready)


def collect_forever(env: dict[str, str], settings: Settings, ready: Any, sweeps: Any, removed: Any) -> None:
    """`llmk store gc` in a loop, until killed; `ready` is set once a whole sweep went through."""
    os.environ.update(env)
    gc.freeze()
    store = Deployment(settings).local_store()
    while True:
        n = len(store.gc())
        with removed.get_lock():
            removed.value += n
        with sweeps.get_lock():
            sweeps.value += 1
        ready.set()
