"""Load-time options that trade accuracy for memory or speed: magnitude pruning, 2:4 sparsity, int8 weights.

They change only the linear weights inside the decoder layers. Embeddings (tied to the head in SmolLM2), norms
and biases stay in floating point: they are a small share of the compute, and the most sensitive to error.
Each option registers a form with weights.py, so a hot update is re-pruned or re-quantized by the same rule
and the served model keeps its form across versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmk.errors import InvalidInput
from services.inference.engine.model import Conv1D, Model
from services.inference.engine.weights import Convert, register_form, weight_rules

OPTIONS = ("prune=<fraction in (0, 1), e.g. 0.5>", "prune=2:4", "int8", "int8=dynamic")


@dataclass(frozen=True)
class _Option:
    kind: str  # "prune" | "2:4" | "int8"
    sparsity: float = 0.0
    dynamic: bool = False  # int8 activations too, for torch._int_mm


def apply_options(model: Model, options: Sequence[str]) -> list[str]:
    """Apply load-time options (pruning before quantization); returns what each one did, in words.

    Every option is checked before any is applied, so a refused list leaves the model as it was."""
    parsed = _parse(options)
    rules = weight_rules(model)
    if rules.placement is not None:
        raise InvalidInput("apply load-time options before fitting the model to a memory budget")
    if rules.forms and parsed:
        raise InvalidInput("load-time options were already applied to this model")
    targets = _linear_weights(model)
    if any(o.kind == "2:4" for o in parsed):
        odd = [name for name, m in targets if _out_in(m.weight, m).shape[1] % 4]
        if odd:
            raise InvalidInput(f"2:4 sparsity needs input widths divisible by 4; not so for {odd[:3]}")
    quantized = any(o.kind == "int8" for o in parsed)
    if parsed:
        model.unfuse()  # the options replace weight tensors wholesale
    done = []
    for o in parsed:
        if o.kind == "int8":
            done.append(_quantize(model, targets, o.dynamic))
        elif o.kind == "2:4":
            done.append(_prune_two_four(model, targets, sparse_kernels=not quantized))
        else:
            done.append(_prune_magnitude(model, targets, o.sparsity))
    return done


def _parse(options: Sequence[str]) -> list[_Option]:
    parsed = []
    for text in options:
        key, _, arg = text.strip().partition("=")
        if key == "int8" and arg in ("", "dynamic"):
            parsed.append(_Option("int8", dynamic=arg == "dynamic"))
        elif key == "prune" and arg == "2:4":
            parsed.append(_Option("2:4"))
        elif key == "prune" and (fraction := _fraction(arg)) is not None:
            parsed.append(_Option("prune", sparsity=fraction))
        else:
            raise InvalidInput(f"unknown load-time option {text!r}; valid options: {', '.join(OPTIONS)}")
    kinds = [o.kind for o in parsed]
    if kinds.count("int8") > 1 or kinds.count("prune") + kinds.count("2:4") > 1:
        raise InvalidInput(f"at most one pruning option and one int8 option, got {list(options)}")
    return sorted(parsed, key=lambda o: o.kind == "int8")


def _fraction(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 < value < 1.0 else None


def _linear_weights(model: Model) -> list[tuple[str, nn.Linear | Conv1D]]:
    """The linear layers inside the decoder layers, under their weight's state-dict name."""
    inside = {id(m) for layer in model.layers for m in layer.modules()}
    return [
        (f"{name}.weight", m)
        for name, m in model.named_modules()
        if id(m) in inside and isinstance(m, nn.Linear | Conv1D)
    ]


def _out_in(weight: Tensor, module: nn.Module) -> Tensor:
    """The weight as [out, in]: GPT-2's Conv1D stores the transpose of nn.Linear's."""
    return weight.t() if isinstance(module, Conv1D) else weight


# ---- pruning


def magnitude_prune(weight: Tensor, sparsity: float) -> Tensor:
    """Zero exactly round(sparsity * numel) entries, the smallest in magnitude (ties broken by position)."""
    flat = weight.flatten()
    drop = flat.abs().argsort(stable=True)[: round(flat.numel() * sparsity)]
    return flat.index_fill(0, drop, 0).view_as(weight)


def two_four_prune(weight: Tensor) -> Tensor:
    """Keep the two largest in magnitude of every four consecutive entries of each row ([out, in])."""
    groups = weight.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    return groups.masked_fill(~keep, 0).view_as(weight)


def _prune_magnitude(model: Model, targets: list[tuple[str, nn.Linear | Conv1D]], sparsity: float) -> str:
    zeros = total = 0
    for name, module in targets:
        convert = _magnitude_form(name, sparsity)
        register_form(model, name, convert)
        module.weight.data = convert(module.weight.data)[name]
        zeros, total = zeros + int((module.weight == 0).sum()), total + module.weight.numel()
    return (
        f"prune={sparsity:g}: unstructured magnitude pruning of {len(targets)} linear weights in the decoder "
        f"layers, {zeros / max(total, 1):.1%} zeros; stored dense, so memory and speed are unchanged"
    )


def _magnitude_form(name: str, sparsity: float) -> Convert:
    return lambda value: {name: magnitude_prune(value, sparsity)}


def _prune_two_four(model: Model, targets: list[tuple[str, nn.Linear | Conv1D]], sparse_kernels: bool) -> str:
    fast = 0
    for name, module in targets:
        convert = _two_four_form(name, module, sparse_kernels and isinstance(module, nn.Linear))
        register_form(model, name, convert)
        pruned = convert(module.weight.data)[name]
        if type(pruned) is Tensor:
            module.weight.data = pruned
        else:
            module.weight = nn.Parameter(pruned, requires_grad=False)
            fast += 1
    how = (
        f"{fast} of them run on CUDA 2:4 semi-structured sparse kernels"
        if fast
        else "the mask is applied to dense weights (2:4 sparse kernels need CUDA, fp16/bf16 and no int8), "
        "so memory and speed are unchanged"
    )
    return f"prune=2:4: 2 of every 4 consecutive input weights kept in {len(targets)} linear weights; {how}"


def _two_four_form(name: str, module: nn.Linear | Conv1D, kernels: bool) -> Convert:
    def convert(value: Tensor) -> dict[str, Tensor]:
        dense = _out_in(two_four_prune(_out_in(value, module)), module).contiguous()
        weight = module.weight
        sparse = _semi_structured(dense.to(weight.device, weight.dtype)) if kernels else None
        return {name: dense if sparse is None else sparse}

    return convert


def _semi_structured(dense: Tensor) -> Tensor | None:
    """The 2:4 compressed form CUDA kernels multiply with, or None where they cannot be used."""
    if dense.device.type != "cuda" or dense.dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        from torch.sparse import to_sparse_semi_structured

        sparse = to_sparse_semi_structured(dense)
        F.linear(torch.zeros(64, dense.shape[1], device=dense.device, dtype=dense.dtype), sparse)
    except Exception:  # unsupported GPU, shape or build: the dense mask computes the same numbers
        return None
    return sparse


# ---- int8 weights


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: weight [out, in] ~= qweight * scale[:, None]."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


PACKED_ROWS = 16  # up to this many rows, torch's int8 weight kernel (see Int8Linear)


class Int8Linear(nn.Module):
    """A linear layer whose weight is held as int8 [out, in] plus one floating-point scale per output.

    Weight-only by default. On a CPU, a few rows (decode steps: one per sequence) go through torch's int8
    weight kernel with bfloat16 activations, which reads a quarter of the float weight's bytes: measured on
    SmolLM2's projections, 2 cores, 2.1x faster than float32 at 1 row, about even at 16, slower beyond. More
    rows (prefill, classify) widen the int8 weight to the activations' dtype, so their result is the float
    layer's with its weight rounded. `dynamic` also rounds each row of activations to int8 and multiplies in
    integers (torch._int_mm)."""

    qweight: Tensor
    scale: Tensor
    bias: nn.Parameter | None

    def __init__(self, qweight: Tensor, scale: Tensor, bias: nn.Parameter | None, dynamic: bool):
        super().__init__()
        self.register_buffer("qweight", qweight)  # [out, in] int8
        self.register_buffer("scale", scale)  # [out]
        self.register_parameter("bias", bias)
        self.dynamic = dynamic

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., in] -> [..., out]
        flat = x.flatten(0, -2)
        if self.dynamic:
            y = self._integer_matmul(flat) * self.scale
        elif flat.shape[0] <= PACKED_ROWS and self._packable(flat):
            y = torch.ops.aten._weight_int8pack_mm(
                flat.to(torch.bfloat16), self.qweight, self.scale.to(torch.bfloat16)
            ).to(x.dtype)
        else:
            y = (flat @ self.qweight.t().to(x.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], -1)

    def _packable(self, x: Tensor) -> bool:
        # the CPU kernel crashes the process (segfault, torch 2.13) unless `in` is a multiple of 16
        return not x.is_cuda and x.shape[1] % 16 == 0 and self.qweight.is_contiguous()

    def _integer_matmul(self, x: Tensor) -> Tensor:
        # x: [M, in] ~= xq * row_scale, with xq int8 and one scale per row
        row_scale = (x.float().abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)  # [M, 1]
        xq = (x.float() / row_scale).round().clamp(-127, 127).to(torch.int8)
        rows = xq.shape[0]
        if xq.is_cuda and rows <= 16:  # CUDA's int8 matmul needs more than 16 rows
            xq = torch.cat([xq, xq.new_zeros(17 - rows, xq.shape[1])])
        acc = torch._int_mm(xq, self.qweight.t())[:rows]  # [M, out] int32
        return (acc.float() * row_scale).to(x.dtype)


def _quantize(model: Model, targets: list[tuple[str, nn.Linear | Conv1D]], dynamic: bool) -> str:
    before = after = 0
    for name, module in targets:
        prefix = name.removesuffix(".weight")
        convert = _int8_form(prefix, module)
        register_form(model, name, convert)
        held = convert(module.weight.data)
        bias = module.bias if isinstance(module.bias, nn.Parameter) else None
        replacement = Int8Linear(held[f"{prefix}.qweight"], held[f"{prefix}.scale"], bias, dynamic)
        owner, _, attr = prefix.rpartition(".")
        setattr(model.get_submodule(owner), attr, replacement.to(module.weight.device))
        before += module.weight.numel() * module.weight.element_size()
        after += sum(t.numel() * t.element_size() for t in held.values())
    kernel = "int8 activations per row, multiplied by torch._int_mm" if dynamic else "widened in each forward"
    return (
        f"int8{'=dynamic' if dynamic else ''}: {len(targets)} linear weights held as int8 with one scale per "
        f"output channel ({before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB), {kernel}; embeddings, norms "
        f"and biases kept in {str(model.lm_head.weight.dtype).removeprefix('torch.')}"
    )


def _int8_form(prefix: str, module: nn.Linear | Conv1D) -> Convert:
    dtype = module.weight.dtype

    def convert(value: Tensor) -> dict[str, Tensor]:
        q, scale = quantize_int8(_out_in(value, module))
        return {f"{prefix}.qweight": q, f"{prefix}.scale": scale.to(dtype)}

    return convert
