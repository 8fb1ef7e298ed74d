#!/usr/bin/env bash
# GPU benchmark of BLIP-large (random weights, no network): caption latency at batch 1 and 8 (20 tokens,
# fp16, on the core Captioner: static KV cache + CUDA graphs, tokens checked against generate()), LoRA training samples/s at batch 8 (bf16 autocast) and peak GPU memory, each against peft and the
# plain transformers path. Writes bench/results/gpu-<device>.md. Needs torch, transformers and peft in the
# active Python; the project itself is used from this checkout (PYTHONPATH), not installed.
#
#   bash bench/gpu.sh                          # on the GPU machine (never run there yet; 460 s limit)
#   bash bench/gpu.sh --device cpu --tiny      # dry run of every code path on a CPU
#   GPU_BENCH_TIMEOUT=300 bash bench/gpu.sh --only caption
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
"$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
exec timeout --signal=INT --kill-after=20 "${GPU_BENCH_TIMEOUT:-460}" "$PYTHON" -m bench.gpu_bench "$@"
