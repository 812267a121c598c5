"""The decoder computes what transformers computes: with padding, with the KV cache, across cache slots."""

from __future__ import annotations

import pytest
import torch

from llmk.domain.deltas import Delta, Kind
from llmk.errors import InvalidInput
from services.inference.engine.model import ModelConfig, build_model
from services.inference.engine.weights import set_weight
from services.inference.usecases.patching import apply_in_place

from .conftest import VOCAB, Pair

ATOL = 1e-4


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_equal_transformers(tiny: Pair) -> None:
    ids = _ids(3, 12)
    with torch.no_grad():
        expected = tiny.hf(ids).logits
        got = tiny.ours(ids)
    assert got.shape == (3, 12, VOCAB)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_longer_pass_than_any_before_still_equals_transformers(tiny_llama: Pair) -> None:
    """The rotary table kept across passes grows when a pass reaches positions it does not cover yet."""
    short, long = _ids(1, 3, seed=4), _ids(2, 40, seed=5)
    with torch.no_grad():
        tiny_llama.ours(short)
        torch.testing.assert_close(tiny_llama.ours(long), tiny_llama.hf(long).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sequence_alone(tiny: Pair, side: str) -> None:
    lengths = [9, 4, 6]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    singles = [_ids(1, n, seed=n)[0] for n in lengths]
    for row, seq in enumerate(singles):
        span = slice(ids.shape[1] - len(seq), None) if side == "left" else slice(0, len(seq))
        ids[row, span], mask[row, span] = seq, 1
    with torch.no_grad():
        batched = tiny.ours(ids, mask)
        for row, seq in enumerate(singles):
            alone = tiny.ours(seq[None])[0]
            torch.testing.assert_close(batched[row][mask[row].bool()], alone, atol=ATOL, rtol=0)


def test_cached_decode_equals_full_forward(tiny: Pair) -> None:
    ids = _ids(1, 10)[0]
    model = tiny.ours
    model.setup_cache(n_slots=2, max_len=32)
    with torch.no_grad():
        full = model(ids[None])[0]  # [T, V]
        torch.testing.assert_close(model.prefill(1, ids[:4]), full[3], atol=ATOL, rtol=0)
        for t in range(4, 10):
            logits = model.decode_step([1], [int(ids[t])])[0]
            torch.testing.assert_close(logits, full[t], atol=ATOL, rtol=0)


def test_slots_at_different_positions_decode_in_one_batch(tiny: Pair) -> None:
    """Continuous batching at the model level: a sequence joining mid-run sees only its own tokens."""
    a, b = _ids(1, 12, seed=2)[0], _ids(1, 7, seed=3)[0]
    model = tiny.ours
    model.setup_cache(n_slots=3, max_len=32)
    with torch.no_grad():
        full_a, full_b = model(a[None])[0], model(b[None])[0]
        model.prefill(0, a[:5])
        model.decode_step([0], [int(a[5])])
        model.prefill(2, b[:3])  # joins while slot 0 is at position 6
        for i in range(4):
            logits = model.decode_step([0, 2], [int(a[6 + i]), int(b[3 + i])])
            torch.testing.assert_close(logits[0], full_a[6 + i], atol=ATOL, rtol=0)
            torch.testing.assert_close(logits[1], full_b[3 + i], atol=ATOL, rtol=0)
        model.free_slot(0)
        torch.testing.assert_close(model.prefill(0, b[:3]), full_b[2], atol=ATOL, rtol=0)


def test_forward_is_differentiable(tiny: Pair) -> None:
    ids = _ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    logits = tiny.ours(ids, mask)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grads = [p.grad for p in tiny.ours.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    tiny.ours.zero_grad(set_to_none=True)


def test_updates_by_name_reach_the_fused_projections(tiny_llama: Pair) -> None:
    """q/k/v and gate/up each run as one matmul; their named weights are views of the fused weight, so a hot
    update written in place (set_weight, a sparse entry patched in) changes what the fused pass computes."""
    model, ids = tiny_llama.ours, _ids(2, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    new = torch.randn_like(state["model.layers.0.self_attn.k_proj.weight"])
    state["model.layers.0.self_attn.k_proj.weight"] = new
    set_weight(model, "model.layers.0.self_attn.k_proj.weight", new)
    up = "model.layers.1.mlp.up_proj.weight"
    sparse = Delta(
        Kind.SPARSE, {"indices": torch.tensor([0, 77, 500]), "values": torch.tensor([1.0, -2.0, 3.0])}
    )
    state[up].view(-1)[sparse.parts["indices"]] += sparse.parts["values"]
    apply_in_place(model, up, sparse)
    rebuilt = build_model(tiny_llama.hf.config.to_dict(), state)
    assert model.layers[0].self_attn.qkv is not None
    assert model.layers[1].mlp.gate_up is not None
    with torch.no_grad():
        torch.testing.assert_close(model(ids), rebuilt(ids), atol=ATOL, rtol=0)
        assert not torch.allclose(model(ids), tiny_llama.hf(ids).logits, atol=ATOL)  # it did change


def test_parameter_names_are_hugging_face_names(tiny: Pair) -> None:
    assert set(tiny.ours.state_dict()) == set(tiny.hf.state_dict())
    assert len(tiny.ours.layers) == 2


def test_tied_head_is_built_when_missing(tiny: Pair) -> None:
    tensors = {k: v for k, v in tiny.hf.state_dict().items() if k != "lm_head.weight"}
    config = {**tiny.hf.config.to_dict(), "tie_word_embeddings": True}
    model = build_model(config, tensors)
    embed = "model.embed_tokens.weight" if model.config.family == "llama" else "transformer.wte.weight"
    assert model.lm_head.weight is model.get_parameter(embed)


def test_missing_tensor_is_refused(tiny: Pair) -> None:
    tensors = dict(tiny.hf.state_dict())
    name = next(k for k in tensors if ".layers.1." in k or ".h.1." in k)
    del tensors[name]
    with pytest.raises(InvalidInput, match="missing"):
        build_model(tiny.hf.config.to_dict(), tensors)


def test_config_reads_rope_theta_from_either_place() -> None:
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    assert ModelConfig.from_hf({**base, "rope_theta": 123.0}).rope_theta == 123.0
    assert ModelConfig.from_hf({**base, "rope_parameters": {"rope_theta": 7.0}}).rope_theta == 7.0
    assert ModelConfig.from_hf(base).n_kv_heads == 2


@pytest.mark.parametrize(
    "change",
    [{"model_type": "mistral"}, {"rope_scaling": {"rope_type": "llama3"}}, {"hidden_act": "gelu"}],
)
def test_unsupported_configs_are_refused(change: dict[str, object]) -> None:
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    with pytest.raises(InvalidInput):
        ModelConfig.from_hf({**base, **change})


def test_cache_overflow_is_refused(tiny_llama: Pair) -> None:
    model = tiny_llama.ours
    model.setup_cache(n_slots=1, max_len=4)
    with pytest.raises(InvalidInput), torch.no_grad():
        model.prefill(0, [1, 2, 3, 4, 5])
