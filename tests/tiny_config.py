"""A tiny config for tests: 8x8 tiles, patch 4, width 32, one block each."""

from kgmae_jax import config_lib


def get(per_pixel=False):
  c = config_lib.base_config()
  c.data.tile_size = 8
  c.data.num_train = 16
  c.data.num_test = 4
  c.data.num_test_b = 4
  c.model.patch_size = 4
  c.model.width = 32
  c.model.depth = 1
  c.model.num_heads = 2
  c.model.dec_width = 32
  c.model.dec_depth = 1
  c.model.dec_num_heads = 2
  c.model.mlp_ratio = 2.0
  c.model.mask_ratio = 0.5
  c.lsmm.num_endmembers = 3
  c.lsmm.per_pixel = per_pixel
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 2
  c.train.batch_size = 8
  c.train.steps = 10
  c.train.log_every = 2
  c.ckpt.every_steps = 4
  c.ckpt.keep = 2
  c.evals.num_tiles = 4
  c.evals.batch_size = 4
  c.evals.num_plot = 2
  return c


def get_config(arg=None):
  """`--config tests/tiny_config.py` for subprocess tests: 16x16 tiles (SSIM
  needs >= 11 pixels), 16 training tiles; set --config.data.data_dir."""
  del arg
  c = get()
  c.data.tile_size = 16
  c.train.steps = 8
  c.ckpt.every_steps = 4
  return c
