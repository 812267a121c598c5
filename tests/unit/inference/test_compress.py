"""Load-time options: pruning hits its target exactly, int8 stays close to float, bad options are refused
whole, and a hot update through set_weight keeps the model's form (re-pruned, re-quantized)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from llmk.errors import InvalidDelta, InvalidInput
from services.inference.engine.compress import PACKED_ROWS, Int8Linear, apply_options, quantize_int8
from services.inference.engine.model import Conv1D, Model, build_model
from services.inference.engine.offload import resident_bytes
from services.inference.engine.weights import set_weight, verify_weight

from .conftest import VOCAB, tiny_gpt2_pair, tiny_llama_pair

Checkpoint = tuple[dict, dict[str, Tensor]]
FAMILIES = pytest.mark.parametrize("family", ["llama", "gpt2"])
# family -> a decoder weight, and a bias or norm next to it
UPDATED = {
    "llama": ["model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.o_proj.weight"],
    "gpt2": ["transformer.h.1.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.bias"],
}


def checkpoint(family: str) -> Checkpoint:
    hf = (tiny_llama_pair() if family == "llama" else tiny_gpt2_pair()).hf
    return hf.config.to_dict(), {n: t.detach().clone() for n, t in hf.state_dict().items()}


def build(ckpt: Checkpoint, options: list[str], replace: dict[str, Tensor] | None = None) -> Model:
    model = build_model(ckpt[0], {n: t.clone() for n, t in {**ckpt[1], **(replace or {})}.items()})
    apply_options(model, options)
    return model


def ids(batch: int = 2, length: int = 9) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def decoder_weights(model: Model) -> dict[str, Tensor]:
    """Linear weights inside the decoder layers, as [out, in]."""
    return {
        name: m.weight.t() if isinstance(m, Conv1D) else m.weight
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | Conv1D) and name.startswith(("model.layers", "transformer.h"))
    }


@FAMILIES
def test_magnitude_pruning_zeroes_the_smallest_half_of_each_weight(family: str) -> None:
    ckpt = checkpoint(family)
    plain, model = build(ckpt, []), build(ckpt, [])
    [description] = apply_options(model, ["prune=0.5"])
    assert description.startswith("prune=0.5")
    assert "50.0% zeros" in description
    before = decoder_weights(plain)
    for name, w in decoder_weights(model).items():
        assert int((w == 0).sum()) == w.numel() // 2
        kept, dropped = before[name][w != 0].abs(), before[name][w == 0].abs()
        assert kept.min() >= dropped.max()
        assert torch.equal(w[w != 0], before[name][w != 0])
    for name, t in plain.state_dict().items():
        if "layers" not in name and ".h." not in name:  # embeddings, final norm and head are untouched
            assert torch.equal(model.state_dict()[name], t)


@FAMILIES
def test_two_four_pruning_keeps_two_of_every_four_inputs(family: str) -> None:
    ckpt = checkpoint(family)
    plain, model = build(ckpt, []), build(ckpt, ["prune=2:4"])
    before = decoder_weights(plain)
    for name, w in decoder_weights(model).items():
        groups, original = w.reshape(-1, 4), before[name].reshape(-1, 4)
        assert ((groups != 0).sum(-1) <= 2).all()
        top2 = original.abs().topk(2, dim=-1).values.min(-1).values
        dropped = original.abs().masked_fill(groups != 0, -1).max(-1).values
        assert (dropped <= top2).all()
    [description] = apply_options(build(ckpt, []), ["prune=2:4"])
    assert "applied to dense weights" in description  # no CUDA kernels here: says so


def test_int8_rounds_each_weight_within_half_a_step() -> None:
    w = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8
    assert scale.shape == (48,)
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("rows", [1, PACKED_ROWS, PACKED_ROWS + 1])
@pytest.mark.parametrize("features", [64, 50, 8])  # the int8 kernel takes multiples of 16 only
def test_int8_layer_gives_the_rounded_weights_answer_for_few_rows_and_many(rows: int, features: int) -> None:
    """Decode steps (few rows) take the int8 kernel with bfloat16 activations, prefill widens the weight:
    both answer the float layer with the rounded weight, within bfloat16's rounding of the activations."""
    g = torch.Generator().manual_seed(1)
    q, scale = quantize_int8(torch.randn(96, features, generator=g))
    layer = Int8Linear(q, scale, None, dynamic=False)
    x = torch.randn(rows, features, generator=g)
    expected = x @ (q.float() * scale[:, None]).t()
    got = layer(x)
    assert got.dtype == torch.float32
    packed = rows <= PACKED_ROWS and features % 16 == 0
    assert ((got - expected).norm() / expected.norm()).item() < (1e-2 if packed else 1e-6)


@FAMILIES
@pytest.mark.parametrize("option", ["int8", "int8=dynamic"])
def test_int8_model_stays_close_to_float_and_smaller(family: str, option: str) -> None:
    ckpt = checkpoint(family)
    plain, model = build(ckpt, []), build(ckpt, [option])
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 2 * (7 if family == "llama" else 4)
    assert all(m.qweight.dtype == torch.int8 for m in int8)
    assert resident_bytes(model) < resident_bytes(plain)
    with torch.no_grad():
        expected, got = plain(ids()), model(ids())
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@FAMILIES
@pytest.mark.parametrize(
    "options", [["prune=0.5"], ["prune=2:4"], ["int8"], ["int8=dynamic"], ["int8", "prune=0.3"]]
)
def test_hot_update_keeps_the_form_and_equals_a_fresh_build(family: str, options: list[str]) -> None:
    ckpt = checkpoint(family)
    model = build(ckpt, options)
    updated = {
        n: torch.randn(ckpt[1][n].shape, generator=torch.Generator().manual_seed(i))
        for i, n in enumerate(UPDATED[family])
    }
    for name, value in updated.items():
        set_weight(model, name, value)
        verify_weight(model, name, value)  # compares the held form with the value converted the same way
    with torch.no_grad():
        assert torch.equal(model(ids()), build(ckpt, options, updated)(ids()))
    name = UPDATED[family][0]
    with pytest.raises(InvalidDelta, match="differs from the stored value"):
        verify_weight(model, name, ckpt[1][name])


def test_a_refused_update_changes_nothing() -> None:
    ckpt = checkpoint("llama")
    model = build(ckpt, ["prune=0.5", "int8"])
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(InvalidDelta, match="does not match"):
        set_weight(model, "model.layers.0.mlp.up_proj.weight", torch.zeros(3, 3))
    with pytest.raises(InvalidDelta, match="no parameter"):
        set_weight(model, "model.layers.0.mlp.up_proj.qweight", torch.zeros(3, 3))
    assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["int4"], "valid options: prune=<fraction"),
        (["prune=1.5"], "unknown load-time option 'prune=1.5'"),
        (["prune=abc"], "unknown"),
        (["prune=0"], "unknown"),
        (["prune=3:4"], "unknown"),
        (["prune=0.5", "prune=2:4"], "at most one pruning option"),
        (["int8", "int8=dynamic"], "one int8 option"),
        (["prune=0.5", "bogus"], "'bogus'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_applied(options: list[str], message: str) -> None:
    model = build(checkpoint("llama"), [])
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(InvalidInput, match=message):
        apply_options(model, options)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())


def test_options_apply_once() -> None:
    model = build(checkpoint("gpt2"), ["prune=0.5"])
    with pytest.raises(InvalidInput, match="already applied"):
        apply_options(model, ["int8"])
