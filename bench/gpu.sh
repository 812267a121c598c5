#!/usr/bin/env bash
# llmk's inference engine on one CUDA GPU (made for an H200), in one call: bf16 decode tokens/s against the
# bandwidth bound of the weights (batches 1, 16, 64), classify items/s, hot-apply latency, for SmolLM2-135M's
# shapes and a Llama 1B's; results in bench/results/gpu.json. Nothing in tests depends on it.
#
# The GPU machine's python3 already holds a CUDA build of torch and transformers, and the engine needs nothing
# else (no store, no database, no network), so nothing is installed: the repository is put on PYTHONPATH.
# For SmolLM2's own tokenizer and config instead of a byte tokenizer, export them first where SmolLM2 is
# installed and carry the folder:  .venv/bin/python -m bench.bench_gpu --export bench/gpu-model
# The same Python part runs on the CPU as a smoke test:
#   python -m bench.bench_gpu --device cpu --preset tiny --batches 1,4 --classify-items 32 --out /tmp/gpu.json
#
# bash bench/gpu.sh [extra bench_gpu arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/shared:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "on", torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
model=()
if [ -f bench/gpu-model/config.json ]; then model=(--model bench/gpu-model); fi
"$PY" -m bench.bench_gpu --device cuda "${model[@]}" "$@"
