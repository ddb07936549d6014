r"""The paper's tables and the ones it left out, over seeds (kgmae_jax/tables.py).

  python -m kgmae_jax.main --config configs/paper_tables.py:small --workdir runs/tables

Presets (the text after ':'): `small` (default; every ablation, tiny tiles
and budget: ~30 minutes on 2 CPU cores), `medium` (the main comparison at a
budget that means something: ViT-MAE vs KARMA vs a random encoder vs raw
spectra, 3 paired seeds, learning curves; about an hour on 2 CPU cores),
`full` (paper-like sizes, meant for a GPU), `tiny` (the end-to-end test),
`real_scenes` (a labelled cube of your own: pretraining on its pixels, then
k-shot per-pixel classification, see `real_scenes` below). For each seed in `tables.seeds` it pretrains ViT-MAE, KARMA
and the ablations (Huber only / + SAM / + LSMM / full; M in {M_true - 2,
M_true, M_true + 4}; endmembers fixed to the library vs learned from random vs
learned from the library), all with the same budget, then evaluates frozen
encoders downstream, unmixing (LSMM head, FCLS with the true endmembers, VCA +
FCLS), and writes tables.json, report.md and figures/ into the workdir.
Rerunning resumes: finished runs are reused, unfinished ones resume.
Any field can be overridden, e.g. `--config.tables.seeds='(0,1)'`.
"""

from kgmae_jax import config_lib

PRESETS = ("tiny", "small", "medium", "full", "real_scenes")

# Sizes of the CPU presets, one row each (`full` keeps base_config's).
_FIELDS = ("data.tile_size", "data.num_train", "data.num_test",
           "data.num_test_b", "model", "optim.warmup_steps",
           "train.batch_size", "train.steps", "train.log_every",
           "ckpt.every_steps", "evals.num_tiles", "evals.batch_size",
           "tables.vca_pixels", "tables.downstream.batch_size",
           "tables.downstream.conv_width")
_SIZES = {
    # 64 tokens per tile (patch 4); about an hour for the main comparison.
    "medium": (32, 512, 64, 64, "tiny", 100, 32, 1000, 50, 1000, 64, 32,
               8192, 16, 32),
    # 16 tokens per tile; every ablation.
    "small": (16, 128, 32, 32, "tiny", 30, 16, 300, 25, 300, 32, 16, 4096,
              32, 32),
    # Seconds per run, for tests/test_tables.py (SSIM needs >= 11x11 tiles).
    "tiny": (16, 16, 4, 4, "micro", 1, 8, 3, 1, 3, 4, 4, 256, 8, 8),
}


def _set(c, field, value):
  *groups, key = field.split(".")
  for group in groups:
    c = c[group]
  c[key] = value


def get_config(arg=None):
  preset = arg or "small"
  if preset not in PRESETS:
    raise ValueError(f"configs/paper_tables.py:<preset>: one of {PRESETS}, "
                     f"got {preset!r}.")
  if preset == "real_scenes":
    return real_scenes()
  c = config_lib.base_config()
  c.tables = config_lib.tables_group()
  c.lsmm.num_endmembers = c.tables.m_true  # KARMA itself uses the true M.
  if preset == "full":  # Paper sizes (base_config), M = M_true, per token.
    return c

  c.lsmm.per_pixel = True  # Per-pixel abundances: comparable to FCLS/VCA.
  c.optim.lr = 2e-3
  c.optim.final_lr_frac = 0.05
  c.evals.num_plot = 2
  c.ckpt.keep = 1
  for field, value in zip(_FIELDS, _SIZES[preset]):
    if field == "model":
      config_lib.model_preset(c, value)
    else:
      _set(c, field, value)
  if preset == "medium":  # The main comparison, with learning curves.
    c.tables.runs = ("mae", "karma")
    c.tables.curve_points = 4
  elif preset == "tiny":
    c.tables.seeds = (0,)
    c.tables.curve_points = 3  # A checkpoint at every step.
    c.tables.downstream.steps = 3
    c.tables.downstream.finetune_steps = 3
    c.tables.downstream.max_pixels = 500
  return c


def real_scenes():
  """A labelled real scene: pretrain ViT-MAE and KARMA on its pixels (labels
  unused), then classify every labelled pixel from k = 5, 10, 50 labels per
  class (5 draws per seed): frozen probes, fine-tuning, from scratch, raw
  spectra (linear head, logistic regression, RBF SVM). SalinasA:

    python -m kgmae_jax.main --config configs/paper_tables.py:real_scenes \\
        --config.data.scene=cube.npy --config.data.labels=labels.npy \\
        --config.data.wavelengths_file=wl.txt \\
        --config.data.reflectance_scale=1e-4 --workdir runs/salinas_a

  (scene_classification.py; docs/own_data.md). About 15 minutes per seed on
  2 CPU cores for an 83 x 86 scene.
  """
  c = config_lib.base_config()
  c.tables = config_lib.tables_group()
  c.tables.runs = ("mae", "karma")
  c.data.name = "own_scene"
  c.data.nodata = -9999.0
  c.data.reflectance_scale = 1.0
  c.data.tile_size = 16
  c.data.tile_overlap = 8  # One small scene: overlapping tiles for more samples.
  c.data.test_fraction = 0.0  # Every row pretrains; labels are never read.
  config_lib.model_preset(c, "tiny")
  c.lsmm.num_endmembers = 6
  c.tables.m_true = c.lsmm.num_endmembers
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.final_lr_frac = 0.05
  c.train.batch_size = 32
  c.train.steps = 600
  c.train.log_every = 50
  c.ckpt.every_steps = 600
  c.ckpt.keep = 1
  c.evals.num_tiles = 32
  c.evals.num_plot = 2
  c.tables.downstream.batch_size = 16
  c.tables.downstream.conv_width = 32
  return c
