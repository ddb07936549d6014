"""The data-set contract: what `data.py` needs from every data set.

A data set is a TFDS `ShardBasedBuilder` that subclasses `DataSet` and is
named in `data.BUILDERS` under its `config.data.name`:

  'kgmae_benchmark'  benchmark.BenchmarkBuilder  generated, with ground truth;
  'enmap_l2a'        enmap_l2a.EnmapL2ABuilder   EnMAP L2A products (manual_dir);
  'own_scene'        scene.SceneBuilder          one user cube.

The last two share `scene.TiledScenes`: scene readers cut into tiles.

Each build is identified by the `config.data` fields in `DATA_FIELDS` (every
setting is its own build, in its own TFDS config directory). Every example
holds at least `cube` (T, T, B) float32 reflectance (NaN at nodata pixels) and
`tile_id`; `data.py` adds the `valid` mask. The benchmark's examples also hold
the truth (`abundances`, `endmembers`, `labels`, ...).

A ShardBasedBuilder, not a GeneratorBasedBuilder: the latter sends every
example through TFDS's shuffler, which holds up to 1 GB in memory and then
needs TensorFlow to spill to disk.
"""

import abc
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds


class DataSet(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Base of every builder; subclasses set `name`, VERSION, the class
  attributes below, `make_builder_config` and TFDS's `_info` and
  `_shard_iterators_per_split`."""

  DATA_FIELDS: tuple[str, ...] = ()  # config.data fields that identify a build.
  SPLITS: tuple[str, ...] = ('train', 'test')  # Splits it can have.
  # (B,) band centres in nm when fixed by the data set (then known without a
  # build); None: the build's `info.metadata['wavelengths_nm']`.
  WAVELENGTHS_NM: Optional[np.ndarray] = None
  CLASS_NAMES: tuple[str, ...] = ()  # True materials, abundance order; () if none.
  # TFDS 4.9.10 finds code_path via importlib_resources, a dependency it only
  # declares for Python < 3.9 (tensorflow/datasets#11212). It serves to look up
  # download checksums, and these builders download nothing.
  code_path = None

  @classmethod
  @abc.abstractmethod
  def make_builder_config(cls, data_dir: str,
                          **fields) -> tfds.core.BuilderConfig:
    """The TFDS config of the build given by the DATA_FIELDS values."""

  def manual_download_dir(self) -> Optional[str]:
    """Folder of user-supplied files TFDS reads; None when there are none."""
    return None

  def check_build(self) -> None:
    """Called when an existing build is reopened; raises ValueError if it is
    stale (made by other code). Default: nothing to check."""

  def empty_split_hint(self, split: str) -> str:
    """What to change when `split` came out empty (ends an error message)."""
    del split
    return ('set config.data.test_fraction > 0 or use a larger scene / '
            'smaller tile_size')
