"""One thread runs this process's model computations: decode steps, classify batches, weight writes, loading.

Why one: on the CPU, torch's OpenMP runtime (libgomp) keeps a pool of worker threads for every thread that
has run a parallel op, and once the pooled threads outnumber the cores its workers stop spinning between ops
and sleep, so every parallel op pays a wake-up. A serving worker runs torch on several threads (the loader,
the generator, the classify batcher, the version follower). Measured on 2 cores, a batch-1 SmolLM2 decode
step took 45-49 ms on a thread that alone had run torch, and 63-101 ms (about 300 sleeps per step) on the
same thread once the loading thread kept its pool. Work handed to this thread runs in that one pool.

Calls are serialized: a classify batch and a decode step no longer share the cores at the same moment,
which on a CPU only made both slower. A call made on the compute thread itself runs inline. Torch work left
on any other thread still computes the same values but starts a second pool: in one bench a softmax on the
main thread halved batch-1 decode here for the rest of the process, while a training step on a thread of
its own measured no slowdown afterwards. Why the two differ is not known: keep model work here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_tasks: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any], bool]] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start = threading.Lock()


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the compute thread, with the caller's grad mode; its result or its error."""
    if threading.current_thread() is _thread:
        return fn(*args, **kwargs)
    future: Future[T] = Future()
    _tasks.put((future, lambda: fn(*args, **kwargs), torch.is_grad_enabled()))
    _started()
    return future.result()


def waiting() -> bool:
    """Whether other work is queued for the compute thread (a classify batch, a weight write)."""
    return not _tasks.empty()


def _started() -> None:
    global _thread
    with _start:
        if _thread is None:  # daemon: a computation never keeps the process from exiting
            _thread = threading.Thread(target=_serve, name="llmk-compute", daemon=True)
            _thread.start()


def _serve() -> None:
    while True:
        future, call, grad = _tasks.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            with torch.set_grad_enabled(grad):
                result = call()
        except BaseException as error:  # handed to the caller, which raises it
            future.set_exception(error)
        else:
            future.set_result(result)
