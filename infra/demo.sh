#!/usr/bin/env bash
# `make demo`: a walkthrough of the parameter store on the embedded default (SQLite + local files).
# Imports the real SmolLM2-135M-Instruct, commits a sparse update, diffs, rolls back, exports.
set -euo pipefail
LLMK=${LLMK:-.venv/bin/llmk}
PY=${PY:-.venv/bin/python}
export LLMK_HOME=${LLMK_HOME:-$(mktemp -d /tmp/llmk-demo.XXXX)}
work=$LLMK_HOME/work
mkdir -p "$work"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Import SmolLM2-135M-Instruct (GGUF, dequantized) as model 'smol'  [LLMK_HOME=$LLMK_HOME]"
$LLMK store import smollm2 --model smol

step "Export the MLP of layer 29, change 1% of its values, commit the full file back"
$LLMK store export smol --prefix model.layers.29.mlp --out "$work/mlp.safetensors"
$PY - "$work/mlp.safetensors" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
path = sys.argv[1]
tensors = load_file(path)
g = torch.Generator().manual_seed(0)
for t in tensors.values():
    idx = torch.randperm(t.numel(), generator=g)[: t.numel() // 100]
    t.view(-1)[idx] += 0.01 * torch.randn(idx.numel(), generator=g)
save_file(tensors, path)
print(f"changed 1% of {len(tensors)} tensors")
PY
$LLMK store commit smol --from "$work/mlp.safetensors" --message "nudge layer 29 MLP"

step "History, and what changed between version 1 and main"
$LLMK store log smol
$LLMK store diff smol@1 smol@main

step "Storage: each version against a full copy"
$LLMK store stats smol

step "Freeze the embeddings: a commit touching them is rejected whole"
$LLMK store freeze smol model.embed_tokens
$LLMK store export smol --prefix model.embed_tokens --out "$work/emb.safetensors" >/dev/null
$PY -c "import sys, torch; from safetensors.torch import load_file, save_file; t = load_file(sys.argv[1]); \
t['model.embed_tokens.weight'][0] += 1; save_file(t, sys.argv[1])" "$work/emb.safetensors"
if $LLMK store commit smol --from "$work/emb.safetensors" --message "should fail"; then
  echo "unexpected: frozen commit accepted"; exit 1
fi

step "Roll main back to version 1 (a new history entry; nothing is deleted)"
$LLMK store rollback smol --to 1
$LLMK store log smol --limit 5

step "Export main and check it equals the imported weights bit for bit"
$LLMK store export smol@main --out "$work/main.safetensors" --json
$LLMK store export smol@1 --out "$work/v1.safetensors" --json
$PY - "$work/main.safetensors" "$work/v1.safetensors" <<'PY'
import sys, torch
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "rollback is not bit-exact"
print(f"bit-identical: {len(a)} tensors, {sum(t.numel() for t in a.values()):,} parameters")
PY

step "Garbage collection (nothing is unreferenced yet)"
$LLMK store gc
echo; echo "demo state kept in $LLMK_HOME"
