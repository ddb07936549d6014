#!/usr/bin/env bash
# The GPU benchmark in one command, on a machine with jax[cuda], flax, optax and
# orbax but without ml_collections/einops (pure-Python wheels brought in .whl/):
#
#   # here (has PyPI):  pip download --no-deps --only-binary=:all: -d .whl "ml_collections>=0.1.1,<2" "einops>=0.7,<0.9"
#   # GPU machine:      KGMAE_GIT_REVISION=<rev> bash benchmarks/run_gpu.sh OUT_DIR [flags]
#
# Runs the reference preset (batches 64, 128, 256; KARMA and MAE) with XLA
# attention, then with cuDNN attention, into OUT_DIR/{xla,cudnn}/.
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR [flags]}; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! python -c "import ml_collections, einops" 2>/dev/null; then
  pip install --no-index --no-deps .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
for attn in ${ATTENTIONS:-xla cudnn}; do
  python benchmarks/step_benchmark.py --preset reference --attention "$attn" \
      --out "$OUT/$attn" "$@"
done
