"""A model fitted to a weight budget computes exactly what the in-memory model computes, holds no more than
the budget plus one layer on the device, and takes hot updates to its offloaded layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llmk.errors import InvalidDelta, InvalidInput
from services.inference.engine.compress import apply_options
from services.inference.engine.generator import Generator, Request
from services.inference.engine.model import Model, build_model
from services.inference.engine.offload import (
    OffloadPlan,
    fit_budget,
    offload_plan,
    resident_bytes,
    total_bytes,
)
from services.inference.engine.weights import set_weight, verify_weight
from tests.conftest import SmolLM2

from .conftest import EOS, VOCAB

Checkpoint = tuple[dict[str, Any], dict[str, Tensor]]


def deep_checkpoint(family: str, layers: int = 12) -> Checkpoint:
    """A tiny model with enough layers that a quarter of its bytes holds some of them, not all."""
    torch.manual_seed(0)
    if family == "llama":
        config: Any = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=256,
            bos_token_id=None,
            eos_token_id=EOS,
            pad_token_id=None,
        )
        hf: Any = LlamaForCausalLM(config)
    else:
        hf = GPT2LMHeadModel(
            GPT2Config(n_embd=64, n_layer=layers, n_head=4, vocab_size=VOCAB, n_positions=256)
        )
    return hf.config.to_dict(), {n: t.detach().clone() for n, t in hf.state_dict().items()}


def build(checkpoint: Checkpoint, replace: dict[str, Tensor] | None = None) -> Model:
    config, tensors = checkpoint
    return build_model(config, {n: t.clone() for n, t in {**tensors, **(replace or {})}.items()})


def ids(batch: int, length: int, seed: int = 1) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def greedy(model: Model, prompt: list[int], n: int) -> tuple[list[int], Tensor]:
    """Greedy tokens through the KV cache, and the logits that chose them: [n, V]."""
    model.setup_cache(n_slots=1, max_len=64)
    logits = [model.prefill(0, prompt)]
    tokens = [int(logits[-1].argmax())]
    for _ in range(n - 1):
        logits.append(model.decode_step([0], [tokens[-1]])[0])
        tokens.append(int(logits[-1].argmax()))
    return tokens, torch.stack(logits)


def quarter_budget(model: Model) -> OffloadPlan:
    return fit_budget(model, total_bytes(model) // 4, "cpu")


def biggest_layer(plan: OffloadPlan) -> int:
    return max(plan.layer_bytes)


# family -> (layer prefix, a few tensor names inside a layer)
LAYER_TENSORS = {
    "llama": ("model.layers", ["mlp.down_proj.weight", "self_attn.q_proj.weight", "input_layernorm.weight"]),
    "gpt2": ("transformer.h", ["attn.c_attn.weight", "mlp.c_fc.bias", "ln_2.weight"]),
}


def layer_tensor(family: str, layer: int, which: int = 0) -> str:
    prefix, names = LAYER_TENSORS[family]
    return f"{prefix}.{layer}.{names[which]}"


def random_like(t: Tensor, seed: int) -> Tensor:
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))


FAMILIES = pytest.mark.parametrize("family", ["llama", "gpt2"])


@FAMILIES
def test_quarter_budget_gives_the_in_memory_outputs(family: str) -> None:
    checkpoint = deep_checkpoint(family)
    reference, model = build(checkpoint), build(checkpoint)
    plan = quarter_budget(model)
    assert plan.resident
    assert plan.offloaded  # some layers stay, the rest are staged
    samples: list[int] = []
    for layer in model.layers:  # registered after the staging hooks, so it sees the staged layers
        layer.register_forward_pre_hook(lambda *_: samples.append(resident_bytes(model)))
    batch = ids(3, 10)
    with torch.no_grad():
        assert torch.equal(model(batch), reference(batch))
    prompt = ids(1, 7, seed=2)[0].tolist()
    tokens, logits = greedy(model, prompt, 12)
    expected_tokens, expected_logits = greedy(reference, prompt, 12)
    assert tokens == expected_tokens
    assert torch.equal(logits, expected_logits)
    assert resident_bytes(model) <= plan.budget_bytes  # at rest, between passes
    assert max(samples) <= plan.budget_bytes + biggest_layer(plan)
    assert plan.peak_bytes <= plan.budget_bytes + biggest_layer(plan)
    assert total_bytes(model) == resident_bytes(reference)


@FAMILIES
def test_hot_update_of_an_offloaded_layer_equals_a_fresh_build(family: str) -> None:
    checkpoint = deep_checkpoint(family)
    model = build(checkpoint)
    plan = quarter_budget(model)
    last, first = plan.offloaded[-1], plan.resident[0]
    names = [layer_tensor(family, last, 0), layer_tensor(family, last, 1), layer_tensor(family, first, 2)]
    updated = {n: random_like(checkpoint[1][n], seed) for seed, n in enumerate(names)}
    for name, value in updated.items():
        set_weight(model, name, value)
        verify_weight(model, name, value)
    with pytest.raises(InvalidDelta, match="differs"):
        verify_weight(model, names[0], checkpoint[1][names[0]])
    batch = ids(2, 9)
    with torch.no_grad():
        assert torch.equal(model(batch), build(checkpoint, updated)(batch))


@FAMILIES
def test_file_backed_offload_reads_layers_from_disk(family: str, tmp_path: Path) -> None:
    checkpoint = deep_checkpoint(family)
    path = tmp_path / "weights.safetensors"
    save_file(checkpoint[1], path)
    reference, model = build(checkpoint), build(checkpoint)
    plan = fit_budget(model, total_bytes(model) // 4, "cpu", source=path)
    batch = ids(2, 8)
    with torch.no_grad():
        assert torch.equal(model(batch), reference(batch))
    name = layer_tensor(family, plan.offloaded[0])
    value = random_like(checkpoint[1][name], 5)
    verify_weight(model, name, checkpoint[1][name])  # read back from the file
    set_weight(model, name, value)  # the file is immutable: the new value is held in memory from now on
    verify_weight(model, name, value)
    with torch.no_grad():
        assert torch.equal(model(batch), build(checkpoint, {name: value})(batch))


def test_a_source_without_the_offloaded_weights_is_refused(tmp_path: Path) -> None:
    checkpoint = deep_checkpoint("llama")
    path = tmp_path / "partial.safetensors"
    save_file({"model.norm.weight": checkpoint[1]["model.norm.weight"]}, path)
    model = build(checkpoint)
    with pytest.raises(InvalidInput, match="lacks offloaded weights"):
        fit_budget(model, total_bytes(model) // 4, "cpu", source=path)
    with pytest.raises(InvalidInput, match="cannot read"):
        fit_budget(model, total_bytes(model) // 4, "cpu", source=tmp_path / "missing.safetensors")


def test_a_budget_below_the_minimum_is_refused_and_the_model_still_serves() -> None:
    checkpoint = deep_checkpoint("llama")
    model, reference = build(checkpoint), build(checkpoint)
    before = resident_bytes(model)
    with pytest.raises(InvalidInput, match="smallest workable budget is"):
        fit_budget(model, 1000, "cpu")
    with pytest.raises(InvalidInput, match="positive"):
        fit_budget(model, 0, "cpu")
    assert resident_bytes(model) == before
    assert offload_plan(model) is None
    with torch.no_grad():
        assert torch.equal(model(ids(1, 5)), reference(ids(1, 5)))


def test_a_budget_that_holds_everything_offloads_nothing() -> None:
    model = build(deep_checkpoint("gpt2"))
    plan = fit_budget(model, 10 * total_bytes(model), "cpu")
    assert plan.offloaded == []
    assert plan.resident == list(range(12))
    assert resident_bytes(model) == plan.total_bytes == total_bytes(model)
    assert offload_plan(model) is None  # nothing changed, so a smaller budget may still be fitted
    assert quarter_budget(model).offloaded
    with pytest.raises(InvalidInput, match="already"):
        quarter_budget(model)


@pytest.mark.parametrize("options", [["int8"], ["prune=0.5", "int8=dynamic"], ["prune=2:4"]])
def test_compressed_models_offload_and_take_hot_updates(options: list[str]) -> None:
    checkpoint = deep_checkpoint("llama")
    reference, model = build(checkpoint), build(checkpoint)
    apply_options(reference, options)
    apply_options(model, options)
    plan = fit_budget(model, total_bytes(model) // 2, "cpu")  # int8 layers are small next to the embeddings
    assert plan.offloaded
    batch = ids(2, 9)
    with torch.no_grad():
        assert torch.equal(model(batch), reference(batch))
    name = layer_tensor("llama", plan.offloaded[-1])
    value = random_like(checkpoint[1][name], 4)
    set_weight(model, name, value)
    fresh = build(checkpoint, {name: value})
    apply_options(fresh, options)
    with torch.no_grad():
        assert torch.equal(model(batch), fresh(batch))
    with pytest.raises(InvalidInput, match="before fitting"):
        apply_options(model, ["int8"])


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_at_a_quarter_budget_equals_in_memory(smollm2: SmolLM2) -> None:
    model = build_model(smollm2.hf.config.to_dict(), smollm2.hf.state_dict())  # shares the fixture's tensors
    plan = quarter_budget(model)
    assert plan.offloaded
    assert resident_bytes(model) <= plan.budget_bytes
    tok = smollm2.tokenizer
    batch = torch.tensor([tok.encode("Shares of the bank fell sharply after the report")])
    with torch.no_grad():
        assert torch.equal(model(batch), smollm2.ours(batch))
    request = Request(messages=[{"role": "user", "content": "Name three stock exchanges."}], max_tokens=12)
    results = []
    for m in (model, smollm2.ours):
        with Generator(m, tok, max_active=1, max_seq_len=256) as generator:
            results.append(generator.submit(request).result())
    assert results[0].token_ids == results[1].token_ids
    assert plan.peak_bytes <= plan.budget_bytes + biggest_layer(plan)
