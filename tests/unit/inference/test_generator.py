"""Continuous-batching generation on a tiny random Llama with a byte-level tokenizer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from llmk.errors import InvalidInput, ResourceExhausted, Unavailable
from services.inference.engine.generator import Generator, Request, Result, Stream, TextDecoder
from services.inference.engine.model import Model

from .conftest import Pair


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _collect(stream: Stream) -> tuple[list[str], Result]:
    items = list(stream)
    assert isinstance(items[-1], Result)
    pieces = [p for p in items[:-1] if isinstance(p, str)]
    return pieces, items[-1]


def greedy_reference(model: Model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens from full forward passes, no cache: what the generator must reproduce."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.fixture
def make_generator(tiny_llama: Pair, byte_tokenizer: Any) -> Iterator[Callable[..., Generator]]:
    made: list[Generator] = []

    def make(**options: Any) -> Generator:
        options = {"max_seq_len": 128, "eos_token_ids": [], **options}
        made.append(Generator(tiny_llama.ours, byte_tokenizer, **options))
        return made[-1]

    yield make
    for generator in made:
        generator.close()


def test_greedy_generation_equals_full_forward(
    make_generator: Any, tiny_llama: Pair, byte_tokenizer: Any
) -> None:
    generator = make_generator()
    pieces, result = _collect(generator.submit(Request("hello", max_tokens=12)))
    assert result.token_ids == greedy_reference(tiny_llama.ours, byte_tokenizer.encode("hello"), 12)
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (5, 12, "length")
    assert "".join(pieces) == result.text


def test_sequences_joining_mid_run_get_their_solo_tokens(make_generator: Any) -> None:
    generator = make_generator(max_active=4)
    requests = [
        Request("hello", max_tokens=90),
        Request("abc", max_tokens=20),
        Request("The fox", max_tokens=25),
    ]
    alone = [generator.submit(r).result().token_ids for r in requests]
    first = generator.submit(requests[0])
    _wait_until(lambda: generator.active_count == 1)
    later = [generator.submit(r) for r in requests[1:]]
    together = [s.result().token_ids for s in [first, *later]]
    assert together == alone


def test_prompts_prefilled_together_and_in_chunks_get_their_solo_tokens(
    make_generator: Any, tiny_llama: Pair, byte_tokenizer: Any
) -> None:
    generator = make_generator(max_active=4, prefill_chunk=4)  # a prompt takes several steps to be read
    prompts = ["hi", "a prompt much longer than one chunk", "middle one", "x"]
    with generator.paused():  # all admitted at once: one padded prefill pass, rows of different lengths
        streams = [generator.submit(Request(p, max_tokens=10)) for p in prompts]
    for prompt, stream in zip(prompts, streams, strict=True):
        expected = greedy_reference(tiny_llama.ours, byte_tokenizer.encode(prompt), 10)
        assert stream.result().token_ids == expected


def test_seeded_sampling_is_reproducible(make_generator: Any) -> None:
    generator = make_generator()
    request = Request("hello", max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=5)
    sequential = generator.submit(request).result().token_ids
    concurrent = [generator.submit(request) for _ in range(3)]
    assert all(s.result().token_ids == sequential for s in concurrent)
    other_seed = Request("hello", max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=6)
    assert generator.submit(other_seed).result().token_ids != sequential


def test_stop_string_truncates_the_output(make_generator: Any) -> None:
    generator = make_generator()
    reference = generator.submit(Request("hello", max_tokens=30)).result().text
    start = next(
        i for i in range(1, len(reference) - 1) if reference[i : i + 2].isascii() and reference[i].isalpha()
    )
    stop = reference[start : start + 2]
    pieces, result = _collect(generator.submit(Request("hello", max_tokens=30, stop=["zzz", stop])))
    assert result.finish_reason == "stop"
    assert result.text == reference[: reference.index(stop)]
    assert "".join(pieces) == result.text


def test_cancel_frees_the_slot(make_generator: Any) -> None:
    generator = make_generator(max_active=1)
    long = generator.submit(Request("hello", max_tokens=100))
    short = generator.submit(Request("abc", max_tokens=3))
    waiting = generator.submit(Request("xyz", max_tokens=3))
    _wait_until(lambda: generator.active_count == 1 and generator.waiting_count == 2)
    generator.cancel(waiting)
    assert waiting.result().finish_reason == "cancelled"
    assert generator.waiting_count == 1
    generator.cancel(long)
    assert long.result().finish_reason == "cancelled"
    assert short.result().completion_tokens == 3
    _wait_until(lambda: generator.active_count == 0)


def test_waiting_limit_raises_resource_exhausted(make_generator: Any) -> None:
    generator = make_generator(max_active=1, max_waiting=2)
    with generator.paused(timeout=5):
        streams = [generator.submit(Request("hi", max_tokens=2)) for _ in range(2)]
        with pytest.raises(ResourceExhausted):
            generator.submit(Request("hi", max_tokens=2))
    assert [s.result().completion_tokens for s in streams] == [2, 2]


def test_versions_never_mix_within_a_sequence(make_generator: Any) -> None:
    generator = make_generator(version=1)
    old = generator.submit(Request("hello", max_tokens=60))
    _wait_until(lambda: generator.active_count == 1)
    assert generator.pause(timeout=10)  # returns once the old sequence has finished
    assert generator.active_count == 0
    new = generator.submit(Request("hello", max_tokens=5))
    time.sleep(0.05)
    assert generator.waiting_count == 1  # not admitted while paused
    generator.version = 2
    generator.resume()
    assert (old.result().version, new.result().version) == (1, 2)


def test_between_steps_runs_only_while_no_sequence_is_active(make_generator: Any) -> None:
    seen: list[int] = []
    generator = make_generator(idle_poll_s=0.005)
    generator.between_steps = lambda: seen.append(generator.active_count)
    streams = [generator.submit(Request("hello", max_tokens=20)) for _ in range(3)]
    for stream in streams:
        stream.result()
    _wait_until(lambda: len(seen) > 2)
    assert set(seen) == {0}


def test_a_failing_between_steps_hook_does_not_stop_generation(make_generator: Any) -> None:
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        raise RuntimeError("swap failed")

    generator = make_generator(idle_poll_s=0.005, between_steps=hook)
    _wait_until(lambda: len(calls) > 1)
    assert generator.submit(Request("hello", max_tokens=3)).result().completion_tokens == 3


def test_chat_requests_use_the_chat_template(make_generator: Any) -> None:
    generator = make_generator()
    by_messages = generator.submit(
        Request(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    ).result()
    by_prompt = generator.submit(Request("hi", chat=True, max_tokens=1)).result()
    assert by_messages.prompt_tokens == by_prompt.prompt_tokens == len("<user>hi\n<assistant>")


@pytest.mark.parametrize(
    "request_",
    [
        Request("hi", max_tokens=0),
        Request(""),
        Request("x" * 200),
        Request("hi", temperature=-1.0),
        Request("hi", top_p=0.0),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_queued(make_generator: Any, request_: Request) -> None:
    generator = make_generator()
    with pytest.raises(InvalidInput):
        generator.submit(request_)
    assert generator.waiting_count == generator.active_count == 0


def test_closing_fails_waiting_streams(make_generator: Any) -> None:
    generator = make_generator()
    generator.pause()
    stream = generator.submit(Request("hi", max_tokens=2))
    generator.close()
    with pytest.raises(Unavailable):
        stream.result()
    with pytest.raises(Unavailable):
        generator.submit(Request("hi"))


def _feed(decoder: TextDecoder, ids: list[int]) -> list[str]:
    pieces = [decoder.push(i) for i in ids]
    return [p for p in [*pieces, decoder.flush()] if p]


def test_text_pieces_never_split_a_character(byte_tokenizer: Any) -> None:
    text = "héllo wörld ✓ 日本語"
    pieces = _feed(TextDecoder(byte_tokenizer, []), byte_tokenizer.encode(text))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_text_pieces_never_show_part_of_a_stop_string(byte_tokenizer: Any) -> None:
    decoder = TextDecoder(byte_tokenizer, ["STOP", "END"])
    pieces = _feed(decoder, byte_tokenizer.encode("a STEP, STO, then STOP and END"))
    assert "".join(pieces) == decoder.text == "a STEP, STO, then "
    assert decoder.stopped
    assert len(pieces) > 5  # streamed as it went; pieces once sent are never taken back


def test_other_model_work_runs_between_the_steps_of_a_long_generation(make_generator) -> None:
    """Steps run back to back on the compute thread, but a classify batch or a weight write queued there
    meanwhile is not held until the generation ends."""
    from services.inference.engine import compute

    g = make_generator(max_seq_len=512)
    stream = g.submit(Request("hello", max_tokens=400))
    pieces = iter(stream)
    next(pieces)  # decoding has started
    compute.run(lambda: None)
    assert g.active_count == 1, "the other work waited for the whole generation"
    assert isinstance(list(pieces)[-1], Result)
