r"""Pretrain KARMA on your own hyperspectral cube, any sensor and band count.

  python -m kgmae_jax.main --config configs/own_scene.py \
      --config.data.scene=/path/to/cube.tif --workdir runs/own

  # A .npy (H, W, B) needs its band centres (nm, one per line):
  python -m kgmae_jax.main --config configs/own_scene.py \
      --config.data.scene=cube.npy --config.data.wavelengths_file=wl.txt \
      --config.data.reflectance_scale=1e-4 --config.data.nodata=-9999 \
      --workdir runs/own

The cube may be a GeoTIFF, an ENVI file (give the .hdr) or a .npy; band count
and wavelengths come from the file (GeoTIFF band tags / ENVI header) or from
data.wavelengths_file. Set data.reflectance_scale so that value * scale is
reflectance in [0, 1] (1e-4 for reflectance x 10^4) and data.nodata to the
fill value; the build stops with an error naming the field if they look wrong.
The scene is cut into 32x32 tiles overlapping by 16 pixels; its bottom 10 %
of rows are held out for evaluation. The model is quickstart-sized (CPU
minutes); see configs/karma_enmap.py for the paper's size. Then:

  python -m kgmae_jax.predict --workdir runs/own --input /path/to/cube.tif \
      --output runs/own/abundances.tif
"""

from kgmae_jax import config_lib


def get_config(arg=None):
  config_lib.no_argument(arg, "configs/own_scene.py")
  c = config_lib.base_config()
  c.data.name = "own_scene"
  c.data.scene = ""  # Set on the command line: --config.data.scene=...
  c.data.reflectance_scale = 1.0
  c.data.nodata = -9999.0
  c.data.tile_size = 32
  c.data.tile_overlap = 16  # One scene: overlapping tiles for more samples.
  c.data.min_valid_fraction = 0.5
  c.data.test_fraction = 0.1

  config_lib.model_preset(c, "tiny")  # Quickstart-sized.

  c.lsmm.num_endmembers = 6  # M: materials you expect in the scene.
  c.lsmm.per_pixel = True  # Per-pixel abundance maps.

  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.train.batch_size = 32
  c.train.steps = 600
  c.train.log_every = 25
  c.ckpt.every_steps = 200
  c.evals.num_tiles = 32
  return c
