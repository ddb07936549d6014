r"""Quickstart: a tiny KARMA on the embedded benchmark, minutes on 2 CPU cores.

  python -m kgmae_jax.main --config configs/quickstart.py --workdir runs/quickstart

Builds the benchmark (256 + 32 + 32 tiles of 32x32x218) on first use, pretrains
a 2-block ViT-MAE of width 64 with the LSMM branch (M = 6, per-pixel
abundances), evaluates reconstruction of masked patches on 32 held-out tiles
and writes metrics.jsonl, summary.json and PNG figures into the workdir.
Expected: KARMA beats the mean-spectrum baselines on every metric in
summary.json (see README for the measured numbers and time).
"""

from kgmae_jax import config_lib


def get_config(arg=None):
  config_lib.no_argument(arg, "configs/quickstart.py")
  c = config_lib.base_config()
  c.data.tile_size = 32
  c.data.num_train = 256
  c.data.num_test = 32
  c.data.num_test_b = 32

  config_lib.model_preset(c, "tiny")  # Patch 4: 64 tokens per 32x32 tile.

  c.lsmm.num_endmembers = 10  # The benchmark's true number of materials.
  c.lsmm.per_pixel = True  # Per-pixel abundance maps for the figures.

  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.train.batch_size = 32
  c.train.steps = 450
  c.train.log_every = 25

  c.ckpt.every_steps = 200
  c.evals.num_tiles = 32
  return c
