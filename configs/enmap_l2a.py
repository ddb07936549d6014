r"""KARMA on EnMAP L2A products from DLR: 224x224 tiles of 218 bands.

  python -m kgmae_jax.main --config configs/enmap_l2a.py \
      --config.data.manual_dir=/data/enmap_l2a --workdir runs/enmap

Put the products (extracted folders or the .ZIP files as downloaded) anywhere
under data.manual_dir; see kgmae_jax/enmap_l2a.py for the files read, the
quality masks and the dropped bands. Model and optimiser as
configs/karma_enmap.py (the paper's setting; meant for a GPU).
"""

from kgmae_jax import config_lib


def get_config(arg=None):
  config_lib.no_argument(arg, "configs/enmap_l2a.py")
  c = config_lib.base_config()
  c.data.name = "enmap_l2a"
  c.data.tile_size = 224  # 14 x 14 patches of 16 px.
  c.data.tile_overlap = 0
  c.data.min_valid_fraction = 0.5
  c.data.test_fraction = 0.25  # >= 224 of a product's ~1000-1300 rows.
  c.data.reflectance_scale = 0.0  # GainOfBand / OffsetOfBand of METADATA.XML.
  c.train.batch_size = 32
  c.evals.batch_size = 8
  c.evals.num_tiles = 64
  return c
