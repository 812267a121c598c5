"""Token selection: greedy is argmax, a seed reproduces the draw, top-k and top-p narrow the choice."""

from __future__ import annotations

import pytest
import torch

from llmk.errors import InvalidInput
from services.inference.engine.sampling import SamplingParams, filter_logits, make_rng, sample, sample_batch

LOGITS = torch.randn(50, generator=torch.Generator().manual_seed(0))


def _draws(params: SamplingParams, n: int = 30) -> list[int]:
    rng = make_rng(params, "cpu")
    return [sample(LOGITS, params, rng) for _ in range(n)]


def test_temperature_zero_is_greedy() -> None:
    assert _draws(SamplingParams(temperature=0), 3) == [int(LOGITS.argmax())] * 3


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    params = SamplingParams(temperature=2.0, seed=42)
    assert _draws(params) == _draws(params)
    assert _draws(params) != _draws(SamplingParams(temperature=2.0, seed=43))


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    best = int(LOGITS.argmax())
    assert set(_draws(SamplingParams(temperature=5.0, top_k=1, seed=1))) == {best}
    assert set(_draws(SamplingParams(temperature=5.0, top_p=1e-6, seed=1))) == {best}


def test_top_k_keeps_exactly_k_tokens() -> None:
    kept = torch.isfinite(filter_logits(LOGITS, SamplingParams(temperature=1.0, top_k=5)))
    assert kept.sum() == 5
    assert set(kept.nonzero().flatten().tolist()) == set(LOGITS.topk(5).indices.tolist())


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = LOGITS.softmax(-1)
    kept = torch.isfinite(filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.5)))
    ranked = probs.sort(descending=True).values
    need = int((ranked.cumsum(-1) < 0.5).sum()) + 1
    assert kept.sum() == need
    assert probs[kept].min() >= probs[~kept].max()


def test_batch_rows_use_their_own_streams() -> None:
    params = [SamplingParams(), SamplingParams(temperature=1.5, seed=7)]
    rows = torch.stack([LOGITS, LOGITS])
    first = sample_batch(rows, params, [make_rng(p, "cpu") for p in params])
    assert first[0] == int(LOGITS.argmax())
    assert first[1] == _draws(params[1], 1)[0]


@pytest.mark.parametrize("bad", [{"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        SamplingParams(**bad)  # type: ignore[arg-type]
