#!/usr/bin/env bash
# The GPU benchmark in one command (about 4 minutes on one H100), on a machine
# with jax[cuda], flax, optax and orbax but without ml_collections/einops (the
# pure-Python wheels benchmarks/fetch_wheels.sh put in .whl/):
#
#   KGMAE_GIT_REVISION=<rev> bash benchmarks/run_gpu.sh OUT_DIR [flags]
#
# Reference preset, batches 64 and 128, KARMA and MAE, bfloat16, synthetic
# device-resident data; XLA attention, then cuDNN flash attention, into
# OUT_DIR/{xla,cudnn}/. Then the compiled step's cost (--cost) on the GPU.
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR [flags]}; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! python -c "import ml_collections, einops" 2>/dev/null; then
  pip install --no-index --no-deps .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
for attn in ${ATTENTIONS:-xla cudnn}; do
  python benchmarks/step_benchmark.py --preset reference --attention "$attn" \
      --batch_sizes "${BATCH_SIZES:-64,128}" --steps 10 --warmup 2 \
      --pipeline off --out "$OUT/$attn" "$@"
done
python benchmarks/step_benchmark.py --preset reference --cost --out "$OUT"
