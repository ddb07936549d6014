r"""The paper's tables and the ones it left out, over seeds (kgmae_jax/tables.py).

  python -m kgmae_jax.main --config configs/paper_tables.py:small --workdir runs/tables

Presets (the text after ':'): `small` (default; every ablation, tiny tiles
and budget: ~30 minutes on 2 CPU cores), `medium` (the main comparison at a
budget that means something: ViT-MAE vs KARMA vs a random encoder vs raw
spectra, 3 paired seeds, learning curves; about an hour on 2 CPU cores),
`full` (paper-like sizes, meant for a GPU), `tiny` (the end-to-end test). For each seed in `tables.seeds` it pretrains ViT-MAE, KARMA
and the ablations (Huber only / + SAM / + LSMM / full; M in {M_true - 2,
M_true, M_true + 4}; endmembers fixed to the library vs learned from random vs
learned from the library), all with the same budget, then evaluates frozen
encoders downstream, unmixing (LSMM head, FCLS with the true endmembers, VCA +
FCLS), and writes tables.json, report.md and figures/ into the workdir.
Rerunning resumes: finished runs are reused, unfinished ones resume.
Any field can be overridden, e.g. `--config.tables.seeds='(0,1)'`.
"""

from kgmae_jax import config_lib

PRESETS = ("tiny", "small", "medium", "full")


def get_config(arg=None):
  preset = arg or "small"
  if preset not in PRESETS:
    raise ValueError(f"configs/paper_tables.py:<preset>: one of {PRESETS}, "
                     f"got {preset!r}.")
  c = config_lib.base_config()
  c.tables = config_lib.tables_group()
  c.lsmm.num_endmembers = c.tables.m_true  # KARMA itself uses the true M.
  if preset == "full":  # Paper sizes (base_config), M = M_true, per token.
    return c

  c.lsmm.per_pixel = True  # Per-pixel abundances: comparable to FCLS/VCA.
  c.optim.lr = 2e-3
  c.optim.final_lr_frac = 0.05
  c.evals.num_plot = 2
  if preset == "medium":
    c.tables.runs = ("mae", "karma")
    c.tables.curve_points = 4
    c.data.tile_size = 32
    c.data.num_train = 512
    c.data.num_test = 64
    c.data.num_test_b = 64
    config_lib.model_preset(c, "tiny")  # Patch 4: 64 tokens per tile.
    c.optim.warmup_steps = 100
    c.train.batch_size = 32
    c.train.steps = 1000
    c.train.log_every = 50
    c.ckpt.keep = 1
    c.evals.num_tiles = 64
    c.evals.batch_size = 32
    c.tables.vca_pixels = 8192
    c.tables.downstream.batch_size = 16
    c.tables.downstream.conv_width = 32
  elif preset == "small":
    c.data.tile_size = 16
    c.data.num_train = 128
    c.data.num_test = 32
    c.data.num_test_b = 32
    config_lib.model_preset(c, "tiny")  # Patch 4: 16 tokens per tile.
    c.optim.warmup_steps = 30
    c.train.batch_size = 16
    c.train.steps = 300
    c.train.log_every = 25
    c.ckpt.every_steps = 300
    c.ckpt.keep = 1
    c.evals.num_tiles = 32
    c.evals.batch_size = 16
    c.tables.vca_pixels = 4096
    c.tables.downstream.batch_size = 32
    c.tables.downstream.conv_width = 32
  else:  # tiny: seconds per run, for tests/test_tables.py.
    c.data.tile_size = 16  # SSIM needs at least 11x11.
    c.data.num_train = 16
    c.data.num_test = 4
    c.data.num_test_b = 4
    config_lib.model_preset(c, "micro")
    c.optim.warmup_steps = 1
    c.train.batch_size = 8
    c.train.steps = 3
    c.train.log_every = 1
    c.ckpt.every_steps = 3
    c.ckpt.keep = 1
    c.evals.num_tiles = 4
    c.evals.batch_size = 4
    c.tables.seeds = (0,)
    c.tables.curve_points = 3  # A checkpoint at every step.
    c.tables.vca_pixels = 256
    c.tables.downstream.steps = 3
    c.tables.downstream.batch_size = 8
    c.tables.downstream.conv_width = 8
  return c
