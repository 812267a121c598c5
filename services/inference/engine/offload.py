"""Fitting a model's weights into a device memory budget, layer by layer.

The embeddings, final norm and head stay on the compute device, then the first decoder layers while they fit;
the other layers are held in host memory (pinned, with CUDA) or read from a safetensors file, and are staged
onto the device for each pass: a layer is attached to its module just before it runs and released right
after, while the next offloaded layer is fetched on a side CUDA stream (a worker thread without CUDA).

The staging hangs on forward hooks (one on the input embedding starts the first prefetch, two around each
offloaded layer), so `Model.run_layers` stays the only loop over the layers. Between passes the offloaded
layers' module tensors are empty, so `resident_bytes` reports what the device holds even on a CPU-only
machine, where host and device share memory; there a file-backed source frees the offloaded layers' memory.
Offloaded models serve inference only: a released tensor cannot take part in a backward pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from llmk.errors import InvalidInput
from services.inference.engine.model import Model
from services.inference.engine.weights import weight_rules

# A fetched layer: its tensors on the compute device, and the event that says the copy finished (CUDA).
_Fetched = tuple[dict[str, Tensor], "torch.cuda.Event | None"]


@dataclass
class OffloadPlan:
    device: torch.device
    budget_bytes: int
    fixed_bytes: int  # embeddings, final norm and head: always on the device
    layer_bytes: list[int]
    resident: list[int]  # decoder layers kept on the device
    offloaded: list[int]  # decoder layers staged onto the device for each pass
    peak_bytes: int = 0  # the most weight bytes a pass has held on the device (prefetched layers included)

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + sum(self.layer_bytes)


def fit_budget(
    model: Model, budget_bytes: int, device: torch.device | str, source: str | Path | None = None
) -> OffloadPlan:
    """Place the model for a weight budget on `device`; layers that do not fit are offloaded.

    One layer's worth of the budget is kept free for the layer being computed, so at most the budget plus
    one layer (the prefetched one) is ever on the device. `source`, a safetensors file holding the model's
    weights under their Hugging Face names, lets offloaded layers be read from disk instead of memory."""
    device = torch.device(device)
    if budget_bytes <= 0:
        raise InvalidInput(f"the weight budget must be a positive number of bytes, got {budget_bytes}")
    rules = weight_rules(model)
    if rules.placement is not None:
        raise InvalidInput("this model already has a memory budget")
    plan = _plan(model, budget_bytes, device)
    model.unfuse()  # layers are moved and released tensor by tensor
    if plan.offloaded:
        stager = _Stager(model, plan, Path(source) if source is not None else None)
        rules.placement = stager
    for name, tensor in _named_tensors(model):
        if _layer_of(model, name) not in plan.offloaded:
            tensor.data = tensor.data.to(device)
    return plan


def offload_plan(model: nn.Module) -> OffloadPlan | None:
    stager = weight_rules(model).placement
    return stager.plan if isinstance(stager, _Stager) else None


def resident_bytes(model: nn.Module) -> int:
    """Weight bytes the model's modules hold right now: offloaded layers count only while they run."""
    return sum(_nbytes(t) for _, t in _named_tensors(model))


def total_bytes(model: nn.Module) -> int:
    """Weight bytes of the whole model, wherever they are held."""
    plan = offload_plan(model)
    return plan.total_bytes if plan is not None else resident_bytes(model)


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Parameters and buffers, each shared tensor once (tied embeddings)."""
    seen: set[int] = set()
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if id(t) not in seen and not t.is_meta:
            seen.add(id(t))
            yield name, t


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _layer_prefix(model: Model) -> str:
    return f"{model.body_name}.{'layers' if model.config.family == 'llama' else 'h'}."


def _layer_of(model: Model, name: str) -> int | None:
    prefix = _layer_prefix(model)
    return int(name[len(prefix) :].split(".", 1)[0]) if name.startswith(prefix) else None


def _plan(model: Model, budget: int, device: torch.device) -> OffloadPlan:
    sizes = [sum(_nbytes(t) for _, t in _named_tensors(layer)) for layer in model.layers]
    fixed = resident_bytes(model) - sum(sizes)
    if fixed + sum(sizes) <= budget:
        return OffloadPlan(device, budget, fixed, sizes, list(range(len(sizes))), [])
    staging = max(sizes)
    if fixed + staging > budget:
        raise InvalidInput(
            f"a weight budget of {budget} bytes cannot hold the embeddings, norm and head ({fixed} bytes) "
            f"plus the layer being computed ({staging} bytes): the smallest workable budget is "
            f"{fixed + staging} bytes"
        )
    used = fixed + staging
    n = 0
    while used + sizes[n] <= budget:
        used += sizes[n]
        n += 1
    return OffloadPlan(device, budget, fixed, sizes, list(range(n)), list(range(n, len(sizes))))


@dataclass
class _Slot:
    """One tensor of an offloaded layer, and where on its module it goes."""

    key: str  # state-dict name
    module: nn.Module
    attr: str
    is_param: bool
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def __post_init__(self) -> None:
        # One empty placeholder per tensor, reused: fewer allocations per pass, less heap fragmentation.
        self.empty = torch.empty(0, dtype=self.dtype, device=self.device)

    def attach(self, tensor: Tensor) -> None:
        if self.is_param:
            getattr(self.module, self.attr).data = tensor
        else:
            self.module._buffers[self.attr] = tensor

    def release(self) -> None:
        self.attach(self.empty)


class _Stager:
    """Holds the offloaded layers' tensors and moves them onto the device around each layer's pass.

    Also the model's weight placement: a hot update of an offloaded tensor is written to the held copy."""

    def __init__(self, model: Model, plan: OffloadPlan, source: Path | None):
        self.plan, self.device, self.source = plan, plan.device, source
        self.slots = {i: self._slots(model, i) for i in plan.offloaded}
        self.held = {s.key: s for slots in self.slots.values() for s in slots}
        self._check(source)
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.executor = ThreadPoolExecutor(1, "llmk-offload") if cuda or source is not None else None
        self.host: dict[str, Tensor] = {}  # all offloaded tensors, or the hot-updated ones when file-backed
        for slots in self.slots.values():
            for s in slots:
                live = getattr(s.module, s.attr)
                if source is None:
                    self.host[s.key] = self._to_host(live.detach())
                s.release()
        self.pending: dict[int, Future[_Fetched]] = {}
        self.attached: set[int] = set()
        self._install(model)

    def _slots(self, model: Model, i: int) -> list[_Slot]:
        layer, prefix = model.layers[i], f"{_layer_prefix(model)}{i}."
        params = {id(p) for p in layer.parameters()}
        slots = []
        for name, t in _named_tensors(layer):
            owner_name, _, attr = name.rpartition(".")
            if type(t.data) is not Tensor or t.layout != torch.strided:
                raise InvalidInput(f"{prefix}{name} is held in a form that cannot be offloaded ({type(t)})")
            owner = layer.get_submodule(owner_name)
            slots.append(
                _Slot(prefix + name, owner, attr, id(t) in params, tuple(t.shape), t.dtype, self.device)
            )
        return slots

    def _check(self, source: Path | None) -> None:
        """A file source must hold every offloaded tensor, shaped as served."""
        if source is None:
            return
        try:
            with safe_open(str(source), framework="pt") as f:
                found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k in self.held}
        except Exception as e:  # safetensors raises its own error types, and OSError for a missing file
            raise InvalidInput(f"cannot read offloaded weights from {source}: {e}") from None
        wrong = [k for k, s in self.held.items() if found.get(k) != s.shape]
        if wrong:
            raise InvalidInput(f"{source} lacks offloaded weights (or holds other shapes): {wrong[:5]}")

    def _to_host(self, t: Tensor) -> Tensor:
        t = t.to("cpu")
        return t.pin_memory() if self.device.type == "cuda" else t

    def _install(self, model: Model) -> None:
        embed = "embed_tokens" if model.config.family == "llama" else "wte"
        model.body.get_submodule(embed).register_forward_pre_hook(lambda *_: self.begin_pass())
        for i in self.plan.offloaded:
            model.layers[i].register_forward_pre_hook(partial(self._before, i))
            model.layers[i].register_forward_hook(partial(self._after, i))

    # ---- the staging, run by the thread that runs the model

    def begin_pass(self) -> None:
        """Start fetching the first offloaded layer; drop what a failed pass may have left staged."""
        for i in list(self.attached):
            self._release(i)
        for future in self.pending.values():
            future.result()
        self.pending.clear()
        self._prefetch(self.plan.offloaded[0])

    def _before(self, i: int, *_: Any) -> None:
        self._acquire(i)
        later = [j for j in self.plan.offloaded if j > i]
        if later:
            self._prefetch(later[0])

    def _after(self, i: int, *_: Any) -> None:
        self._release(i)

    def _prefetch(self, i: int) -> None:
        if i not in self.pending and i not in self.attached:
            self.pending[i] = self._submit(i)
            self._note_peak()

    def _submit(self, i: int) -> Future[_Fetched]:
        if self.executor is not None:
            return self.executor.submit(self._fetch, i)
        done: Future[_Fetched] = Future()
        done.set_result(self._fetch(i))
        return done

    def _acquire(self, i: int) -> None:
        future = self.pending.pop(i, None) or self._submit(i)
        tensors, event = future.result()
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in tensors.values():
                t.record_stream(stream)  # the allocator must not reuse it before this pass is done with it
        for s in self.slots[i]:
            s.attach(tensors[s.key])
        self.attached.add(i)
        self._note_peak()

    def _release(self, i: int) -> None:
        for s in self.slots[i]:
            s.release()
        self.attached.discard(i)

    def _note_peak(self) -> None:
        staged = sum(self.plan.layer_bytes[i] for i in self.attached | self.pending.keys())
        resident = sum(self.plan.layer_bytes[i] for i in self.plan.resident)
        self.plan.peak_bytes = max(self.plan.peak_bytes, self.plan.fixed_bytes + resident + staged)

    def _fetch(self, i: int) -> _Fetched:
        """The layer's tensors on the device; runs on the worker thread when there is one."""
        slots = self.slots[i]
        tensors = {s.key: self.host[s.key] for s in slots if s.key in self.host}
        missing = [s for s in slots if s.key not in tensors]
        if missing:
            assert self.source is not None
            with safe_open(str(self.source), framework="pt") as f:
                tensors.update({s.key: f.get_tensor(s.key).to(s.dtype) for s in missing})
        if self.stream is None:
            return tensors, None
        with torch.cuda.stream(self.stream):
            moved = {k: t.to(self.device, non_blocking=True) for k, t in tensors.items()}
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, event

    # ---- the weight placement, used by weights.set_weight while the model is idle

    def shape_of(self, key: str) -> tuple[int, ...] | None:
        slot = self.held.get(key)
        return slot.shape if slot is not None else None

    def read(self, key: str) -> Tensor:
        if key in self.host:
            return self.host[key]
        assert self.source is not None
        with safe_open(str(self.source), framework="pt") as f:
            return f.get_tensor(key).to(self.held[key].dtype)

    def write(self, key: str, value: Tensor) -> None:
        held = self.host.get(key)
        if held is not None:
            held.copy_(value)
        else:  # file-backed: the file is immutable, so the new value is held in memory from now on
            self.host[key] = self._to_host(value.detach().to(self.held[key].dtype).clone())
