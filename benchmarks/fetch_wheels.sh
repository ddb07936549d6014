#!/usr/bin/env bash
# Fetches the pure-Python wheels the GPU benchmark needs beyond jax, flax, optax
# and orbax into the git-ignored .whl/ (run on a machine with PyPI access, in
# the repository root; benchmarks/run_gpu.sh installs them offline):
#
#   bash benchmarks/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pip download --no-deps --only-binary=:all: -d .whl \
    "ml_collections>=0.1.1,<2" "einops>=0.7,<0.9"
ls -l .whl
