"""Continuous-batching text generation: one thread interleaves admissions with batched decode steps.

The loop admits waiting requests into free cache slots, runs one batched prefill pass over the prompts not
yet in the cache (at most `prefill_chunk` tokens of each, so a long prompt does not stall the others), then
one decode step over every slot whose prompt is in, streams the new text, and frees finished slots, so no
request waits for a whole batch to end.

Weight versions. Each result carries the generator's `version` as it was when the sequence was admitted.
Weights may only change while no sequence is active, which keeps every sequence on one version: either in
`between_steps` (called by the loop thread only when no sequence is active) or inside
`with generator.paused():` from another thread. `pause()` stops admissions so the active sequences drain;
sequences of the old version therefore always finish before any sequence of the new version starts.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from llmk.errors import InvalidInput, ResourceExhausted, Unavailable
from services.inference.engine import compute
from services.inference.engine.model import Model
from services.inference.engine.sampling import SamplingParams, make_rng, sample_batch

_log = logging.getLogger(__name__)


@dataclass
class Request:
    prompt: str = ""
    messages: list[dict[str, str]] | None = None  # implies chat
    chat: bool = False  # apply the tokenizer's chat template (to `messages`, or to `prompt` as one user turn)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()


@dataclass(frozen=True)
class Result:
    text: str  # the whole completion, cut before the stop string if one was met
    token_ids: list[int]  # every generated token, the end-of-sequence token included
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "eos" | "cancelled"
    version: int  # the weight version the whole sequence was computed with


class Stream:
    """What submit() returns: iterating yields text pieces (str) as they are produced, then the Result."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[str | Result | BaseException] = queue.SimpleQueue()
        self.cancelled = False

    def put(self, item: str | Result | BaseException) -> None:
        self._items.put(item)

    def __iter__(self) -> Iterator[str | Result]:
        while True:
            item = self._items.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Result):
                return

    def result(self) -> Result:
        """Wait for the end, for callers that do not stream."""
        for item in self:
            if isinstance(item, Result):
                return item
        raise RuntimeError("stream ended without a result")


class TextDecoder:
    """Turns tokens into text pieces, holding back an unfinished UTF-8 character and any tail that may be the
    start of a stop string, so a client never sees broken characters or part of a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self.text += self._new_text(final=False)
        return self._release(final=False)

    def flush(self) -> str:
        """Everything still held back, at the end of the sequence."""
        if self.stopped:
            return ""
        self.text += self._new_text(final=True)
        return self._release(final=True)

    def _new_text(self, final: bool) -> str:
        # Decode a short window that starts a few tokens back, so merges and leading spaces come out right.
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return after[len(before) :]

    def _release(self, final: bool) -> str:
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_tail()
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        return piece

    def _held_tail(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        return max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)


@dataclass
class _Sequence:
    stream: Stream
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    text: TextDecoder
    rng: torch.Generator | None = None
    version: int = 0  # the weight version that computed every token (0: unlabelled)
    slot: int = -1
    fed: int = 0  # prompt tokens already in the cache
    token_ids: list[int] = field(default_factory=list)

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt_ids)


class Generator:
    """Owns the model (and its KV cache) and the tokenizer; safe to call from any number of threads."""

    def __init__(
        self,
        model: Model,
        tokenizer: Any,
        *,
        max_active: int = 8,
        max_waiting: int = 64,
        max_seq_len: int = 2048,
        eos_token_ids: Sequence[int] | None = None,
        version: int = 0,
        between_steps: Callable[[], None] | None = None,
        idle_poll_s: float = 0.05,
        prefill_chunk: int = 256,
    ):
        self.model, self.tokenizer, self.version = model, tokenizer, version
        self.between_steps = between_steps
        self.max_active, self.max_waiting, self.idle_poll_s = max_active, max_waiting, idle_poll_s
        self.prefill_chunk = prefill_chunk
        self.max_seq_len = min(max_seq_len, model.config.max_positions)
        eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
        self.eos_token_ids = {t for t in eos if t is not None}
        model.setup_cache(max_active, self.max_seq_len)
        self._waiting: deque[_Sequence] = deque()
        self._active: dict[int, _Sequence] = {}
        self._free_slots = list(range(max_active - 1, -1, -1))  # pop() takes the lowest: slots stay in a run
        self._cond = threading.Condition()
        self._pauses, self._busy, self._closed = 0, False, False
        self._thread = threading.Thread(target=self._loop, name="llmk-generator", daemon=True)
        self._thread.start()

    # ---- the public face, called from any thread

    def submit(self, request: Request) -> Stream:
        seq = self._prepare(request)
        with self._cond:
            if self._closed:
                raise Unavailable("the generator is closed")
            if len(self._waiting) >= self.max_waiting:
                raise ResourceExhausted(f"{len(self._waiting)} requests already waiting; retry later")
            self._waiting.append(seq)
            self._cond.notify_all()
        return seq.stream

    def cancel(self, stream: Stream) -> None:
        """The client went away: a waiting request is dropped now, an active one frees its slot next step."""
        with self._cond:
            stream.cancelled = True
            for seq in [s for s in self._waiting if s.stream is stream]:
                self._waiting.remove(seq)
                self._result(seq, "cancelled")
            self._cond.notify_all()

    def pause(self, timeout: float | None = None) -> bool:
        """Stop admitting sequences and wait until the active ones have finished and the model is idle.

        Returns False when that took longer than `timeout`. Admission stays stopped until `resume()`.
        From inside `between_steps` it returns at once: the model is idle there already."""
        with self._cond:
            self._pauses += 1
            self._cond.notify_all()
            if threading.current_thread() is self._thread:
                return True
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def resume(self) -> None:
        with self._cond:
            self._pauses = max(0, self._pauses - 1)
            self._cond.notify_all()

    @contextmanager
    def paused(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the model idle (no sequence active, none admitted) to swap weights and set `version`."""
        try:
            if not self.pause(timeout):
                raise TimeoutError("active sequences did not finish in time")
            yield
        finally:
            self.resume()

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, r: Request) -> _Sequence:
        if r.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be >= 1, got {r.max_tokens}")
        params = SamplingParams(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed)
        prompt_ids = self._prompt_ids(r)
        if not prompt_ids:
            raise InvalidInput("the prompt is empty")
        if len(prompt_ids) >= self.max_seq_len:
            raise InvalidInput(
                f"the prompt has {len(prompt_ids)} tokens; the limit is {self.max_seq_len - 1}"
            )
        device = self.model.lm_head.weight.device
        return _Sequence(
            Stream(),
            prompt_ids,
            r.max_tokens,
            params,
            TextDecoder(self.tokenizer, r.stop),
            make_rng(params, device),
        )

    def _prompt_ids(self, r: Request) -> list[int]:
        if r.chat or r.messages is not None:
            messages = r.messages if r.messages is not None else [{"role": "user", "content": r.prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(r.prompt))

    # ---- the loop, run by its own thread only

    def _loop(self) -> None:
        with torch.no_grad():
            while self._take_work():
                if self._active:
                    compute.run(self._run_step)
                    continue
                self._call_between_steps()
                with self._cond:
                    if not self._closed and not self._can_admit():
                        self._cond.wait(self.idle_poll_s)
        self._fail_all(Unavailable("the generator was closed"))

    def _call_between_steps(self) -> None:
        if self.between_steps is None:
            return
        try:
            self.between_steps()
        except Exception:  # a failing hook must not stop generation; it is retried at the next idle moment
            _log.exception("between_steps hook failed")

    def _can_admit(self) -> bool:
        return bool(self._waiting) and bool(self._free_slots) and self._pauses == 0

    def _take_work(self) -> bool:
        """Under the lock: admit what fits in free slots (False once closed); mark the model busy or idle."""
        with self._cond:
            if self._closed:
                return False
            while self._can_admit():
                seq = self._waiting.popleft()
                seq.slot, seq.version = self._free_slots.pop(), self.version
                self._active[seq.slot] = seq
            self._busy = bool(self._active)
            self._cond.notify_all()
            return True

    def _run_step(self) -> None:
        try:
            for seq in [s for s in self._active.values() if s.stream.cancelled]:
                self._finish(seq, "cancelled")
            self._prefill([s for s in self._active.values() if s.prefilling])
            decoding = sorted((s for s in self._active.values() if not s.prefilling), key=lambda s: s.slot)
            if decoding:
                self._decode(decoding)
        except Exception as error:  # a failed step fails its sequences, never the loop
            self._fail_all(error)

    def _prefill(self, seqs: list[_Sequence]) -> None:
        """The next chunk of each prompt in one padded pass; a prompt fully in gets its first token."""
        if not seqs:
            return
        chunks = [s.prompt_ids[s.fed : s.fed + self.prefill_chunk] for s in seqs]
        logits = self.model.prefill_batch([s.slot for s in seqs], chunks)  # [B, V]
        for seq, chunk in zip(seqs, chunks, strict=True):
            seq.fed += len(chunk)
        done = [i for i, s in enumerate(seqs) if not s.prefilling]
        if done:
            for seq, token in self._sample([seqs[i] for i in done], logits[done]):
                self._deliver(seq, token)

    def _decode(self, seqs: list[_Sequence]) -> None:
        logits = self.model.decode_step([s.slot for s in seqs], [s.token_ids[-1] for s in seqs])  # [B, V]
        for seq, token in self._sample(seqs, logits):
            self._deliver(seq, token)

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[tuple[_Sequence, int]]:
        """A token for each sequence (logits [B, V]). When sampling fails, each row is drawn again alone and
        a sequence that still fails fails alone: one request never ends the others' generations."""
        try:
            tokens = sample_batch(logits, [s.params for s in seqs], [s.rng for s in seqs])
            return list(zip(seqs, tokens, strict=True))
        except Exception:
            _log.exception("sampling failed; drawing each sequence's token alone")
        chosen = []
        for row, seq in enumerate(seqs):
            try:
                chosen.append((seq, sample_batch(logits[row : row + 1], [seq.params], [seq.rng])[0]))
            except Exception as error:
                self._release(seq)
                seq.stream.put(error)
        return chosen

    def _deliver(self, seq: _Sequence, token: int) -> None:
        seq.token_ids.append(token)
        if token in self.eos_token_ids:
            return self._finish(seq, "eos")
        piece = seq.text.push(token)
        if piece:
            seq.stream.put(piece)
        if seq.text.stopped:
            return self._finish(seq, "stop")
        n = len(seq.token_ids)
        if n >= seq.max_tokens or len(seq.prompt_ids) + n >= self.max_seq_len:
            self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str) -> None:
        piece = seq.text.flush()
        if piece:
            seq.stream.put(piece)
        self._release(seq)
        self._result(seq, "stop" if seq.text.stopped else reason)

    def _release(self, seq: _Sequence) -> None:
        if self._active.pop(seq.slot, None) is not None:
            self.model.free_slot(seq.slot)
            self._free_slots.append(seq.slot)
            self._free_slots.sort(reverse=True)

    @staticmethod
    def _result(seq: _Sequence, reason: str) -> None:
        n = len(seq.token_ids)
        seq.stream.put(
            Result(seq.text.text, list(seq.token_ids), len(seq.prompt_ids), n, reason, seq.version)
        )

    def _fail_all(self, error: Exception) -> None:
        with self._cond:
            failed = list(self._active.values()) + (list(self._waiting) if self._closed else [])
            if self._closed:
                self._waiting.clear()
        for seq in failed:
            self._release(seq)
            seq.stream.put(error)
