r"""A user's own hyperspectral cube cut into tiles: tiling, and the `own_scene`
builder. The cube is read by `readers.py` (GeoTIFF, ENVI, .npy, EnMAP L2A).

Tiling (`tile_grid`): the bottom `test_fraction` of each scene's rows is the
`test` split, the rest `train`; tiles of `tile_size` step by
`tile_size - tile_overlap` inside each part (the last tile of a row or column
is shifted to end at the border), so test tiles never overlap train tiles.
Tiles with fewer than `min_valid_fraction` valid pixels are dropped; every
kept tile's values must look like reflectance (`readers.check_reflectance`).

`TiledScenes` is the builder skeleton of this module's `SceneBuilder` and of
`enmap_l2a.EnmapL2ABuilder`: scenes (readers) cut into tiles, one shard per
tile row (see dataset.py).

  python -m kgmae_jax.main --config configs/own_scene.py \
      --config.data.scene=/path/cube.tif --workdir runs/own
"""

import abc
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import sys
from typing import Callable, ClassVar

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from kgmae_jax import dataset
from kgmae_jax import readers

DATA_FIELDS = ('scene', 'wavelengths_file', 'reflectance_scale', 'nodata',
               'tile_size', 'tile_overlap', 'min_valid_fraction',
               'test_fraction', 'drop_bands', 'drop_ranges_nm')
_OPTIONAL = ('drop_bands', 'drop_ranges_nm')  # Left out of names when empty.


# --------------------------------------------------------- tiling, tiles
def _starts(lo, hi, tile, stride):
  if hi - lo < tile:
    return []
  starts = list(range(lo, hi - tile + 1, stride))
  if starts[-1] != hi - tile:
    starts.append(hi - tile)  # Cover the border.
  return starts


def tile_grid(height, width, tile, overlap, test_fraction):
  """{'train': [(row, col)], 'test': [...]} of tile origins (module doc).

  A held-out strip shorter than one tile holds no tile: then every row is
  used for training and 'test' is empty (evaluation falls back to 'train').
  """
  split = height - int(round(test_fraction * height))
  if height - split < tile:
    split = height
  stride = tile - overlap
  cols = _starts(0, width, tile, stride)
  return {'train': [(r, c) for r in _starts(0, split, tile, stride) for c in cols],
          'test': [(r, c) for r in _starts(split, height, tile, stride)
                   for c in cols]}


def window_transform(transform, row, col):
  """Affine coefficients of a window starting at (row, col)."""
  a, b, c, d, e, f = transform
  return (a, b, c + a * col + b * row, d, e, f + d * col + e * row)


def tile_features(tile_size, num_bands):
  """TFDS features of a tile of a real scene (no ground truth)."""
  raw = tfds.features.Encoding.BYTES
  return tfds.features.FeaturesDict({
      'cube': tfds.features.Tensor(shape=(tile_size, tile_size, num_bands),
                                   dtype=np.float32, encoding=raw),
      'transform': tfds.features.Tensor(shape=(6,), dtype=np.float64,
                                        encoding=raw),
      'crs': tfds.features.Text(),
      'scene': tfds.features.Text(),
      'row': tfds.features.Scalar(dtype=np.int32),
      'col': tfds.features.Scalar(dtype=np.int32),
      'tile_id': tfds.features.Scalar(dtype=np.int64),
  })


def tile_shards(scenes, split, c, *, scale_field, nodata_field,
                empty_field=None):
  """Example generators of `split`, one per (scene, tile row): the shards.

  One shard per tile row bounds what TFDS holds while writing a shard (it
  keeps that shard's examples until it has counted them) to one row of tiles.

  Args:
    scenes: callables returning an opened reader.
    split: 'train' or 'test'.
    c: the builder config (tile_size, tile_overlap, min_valid_fraction,
      test_fraction).
    scale_field / nodata_field: settings named by the reflectance check.
    empty_field: setting named when no train tile is kept (nodata_field).

  Returns:
    A list of callables, each returning an iterator of (key, tile); keys and
    `tile_id` are scene << 40 | row << 20 | col.
  """
  empty_field = empty_field or nodata_field
  kw = dict(c=c, split=split, scale_field=scale_field,
            nodata_field=nodata_field, empty_field=empty_field,
            counts={'kept': 0})
  shards = []
  for index, open_fn in enumerate(scenes):
    s = open_fn()
    h, w, _ = s.shape
    s.close()
    grid = tile_grid(h, w, c.tile_size, c.tile_overlap, c.test_fraction)[split]
    rows = sorted({r for r, _ in grid})
    for k, row in enumerate(rows):
      shards.append(functools.partial(
          _row_tiles, open_fn, index, row, [cc for r, cc in grid if r == row],
          scene_done=k == len(rows) - 1,
          last=index == len(scenes) - 1 and k == len(rows) - 1, **kw))
  if split == 'train' and not shards:
    raise ValueError(
        f'config.data.tile_size: {c.tile_size} leaves no train tile in scenes '
        f'of these sizes (test_fraction={c.test_fraction}).')
  if split == 'test' and c.test_fraction > 0 and not shards:
    logging.warning(
        'config.data.test_fraction: %g of the rows is less than one tile '
        '(tile_size=%d) in every scene, so nothing is held out: every row '
        'trains and evaluation uses the training tiles. Raise test_fraction '
        'to hold out a strip, or set 0 to silence this.', c.test_fraction,
        c.tile_size)
  return shards


def _row_tiles(open_fn, index, row, cols, *, c, split, scale_field,
               nodata_field, empty_field, counts, scene_done, last):
  """Yields the kept tiles of one tile row of one scene (see tile_shards)."""
  s = open_fn()
  stats = counts.setdefault(s.name, {'positions': 0, 'empty': 0, 'sparse': 0,
                                     'dropped_not_fill': 0})
  for col in cols:
    stats['positions'] += 1
    cube, valid = s.read(row, col, c.tile_size, c.tile_size)
    frac = valid.mean()
    if frac == 0:
      stats['empty'] += 1
      continue
    if frac < c.min_valid_fraction:
      stats['sparse'] += 1
      continue
    values = cube[valid]
    readers.check_reflectance(
        values[::max(1, values.size // 100_000)], scale_field=scale_field,
        nodata_field=nodata_field, where=f'{s.name} tile ({row}, {col})')
    tile_id = (index << 40) | (row << 20) | col
    counts['kept'] += 1
    yield tile_id, {
        'cube': cube, 'crs': s.crs, 'scene': s.name,
        'transform': np.asarray(window_transform(s.transform, row, col)),
        'row': np.int32(row), 'col': np.int32(col),
        'tile_id': np.int64(tile_id)}
  stats['dropped_not_fill'] += s.finish(warn=False)
  s.close()
  if scene_done:
    logging.info('%s %s: %d tile positions, %d entirely nodata skipped, %d '
                 'below min_valid_fraction=%g skipped.', s.name, split,
                 stats['positions'], stats['empty'], stats['sparse'],
                 c.min_valid_fraction)
    if stats['dropped_not_fill']:
      s.finish(count=stats['dropped_not_fill'])
  if last and split == 'train' and not counts['kept']:
    raise ValueError(
        f'{empty_field}: no train tile has min_valid_fraction='
        f'{c.min_valid_fraction} valid pixels (tile_size={c.tile_size}); is '
        f'every pixel nodata? Check {empty_field}, config.data.'
        'min_valid_fraction and config.data.tile_size.')


def config_name(prefix, params: dict) -> str:
  """A short, stable builder-config name from its parameters."""
  digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()
  return f'{prefix}_t{params["tile_size"]}_{digest[:12]}'


# ------------------------------------------------------------------ builders
@dataclasses.dataclass(eq=False, kw_only=True)
class TiledConfig(tfds.core.BuilderConfig):
  """Tiling of scenes; `name` is a digest of every parameter. The values are
  the `config.data` fields of the same names (no defaults here: config_lib
  holds them)."""
  name: str = dataclasses.field(default='', init=False)
  reflectance_scale: float
  tile_size: int
  tile_overlap: int
  min_valid_fraction: float
  test_fraction: float
  # Fields left out of `name` while empty, so builds made before they existed
  # keep their names.
  NAMED_IF_SET: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self):
    params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.init and not (f.name in self.NAMED_IF_SET
                                 and not len(getattr(self, f.name)))}
    self.name = config_name(self.prefix(), params)

  def prefix(self) -> str:
    """Start of the config name."""
    raise NotImplementedError


class TiledScenes(dataset.DataSet, skip_registration=True):
  """Scenes cut into tiles (module doc): features `tile_features`, metadata
  `wavelengths_nm` (`fwhm_nm` if known) and `scenes`, splits train and test.
  Subclasses give `_scenes` and `_num_bands`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  NODATA_FIELD = 'config.data.nodata'  # Named when values look like fill.
  EMPTY_FIELD = None  # Named when no train tile is kept; None: NODATA_FIELD.

  @abc.abstractmethod
  def _scenes(self, dl_manager) -> list[tuple[str, Callable[[], readers.Reader]]]:
    """(name, open) of every scene of the build, in order."""

  @abc.abstractmethod
  def _num_bands(self) -> int:
    """B of every scene."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=sys.modules[type(self).__module__].__doc__,
        features=tile_features(self.builder_config.tile_size,
                               self._num_bands()),
        metadata=tfds.core.MetadataDict())

  def _shard_iterators_per_split(self, dl_manager):
    scenes = self._scenes(dl_manager)
    first = scenes[0][1]()
    self.info.metadata['wavelengths_nm'] = first.wavelengths_nm.tolist()
    if first.fwhm_nm is not None:
      self.info.metadata['fwhm_nm'] = first.fwhm_nm.tolist()
    first.close()
    self.info.metadata['scenes'] = [name for name, _ in scenes]
    opens = [open_fn for _, open_fn in scenes]
    kw = dict(scale_field='config.data.reflectance_scale',
              nodata_field=self.NODATA_FIELD, empty_field=self.EMPTY_FIELD)
    out = {'train': tile_shards(opens, 'train', self.builder_config, **kw)}
    test = tile_shards(opens, 'test', self.builder_config, **kw)
    if test:
      out['test'] = test
    return out


@dataclasses.dataclass(eq=False, kw_only=True)
class SceneConfig(TiledConfig):
  """One user cube and its tiling."""
  scene: str
  wavelengths_file: str
  nodata: float
  drop_bands: tuple  # 0-based file band indices left out.
  drop_ranges_nm: tuple  # ((lo, hi), ...) nm ranges whose bands are left out.
  stamp: str  # File size and mtime: a changed file is a new build.
  NAMED_IF_SET: ClassVar[tuple[str, ...]] = _OPTIONAL

  def __post_init__(self):
    super().__post_init__()
    self.description = f'Tiles of {self.scene}.'

  def prefix(self):
    return 'scene'


class SceneBuilder(TiledScenes):
  """TFDS builder of one user cube (`config.data.name = 'own_scene'`)."""

  name = 'own_scene'
  DATA_FIELDS = DATA_FIELDS

  @classmethod
  def make_builder_config(cls, data_dir, **params):
    del data_dir
    path = pathlib.Path(os.path.expanduser(params['scene'] or ''))
    if not params['scene'] or not path.is_file():
      raise FileNotFoundError(
          f'config.data.scene: {params["scene"]!r} is not a file; give a '
          'GeoTIFF (.tif), an ENVI header (.hdr) or a .npy (H, W, B) cube.')
    st = path.stat()
    scale = params['reflectance_scale'] or 1.0
    drops = {k: tuple(tuple(x) if isinstance(x, (list, tuple)) else int(x)
                      for x in params.get(k) or ()) for k in _OPTIONAL}
    return SceneConfig(**dict(params, scene=str(path.resolve()),
                              reflectance_scale=scale, **drops),
                       stamp=f'{st.st_size}_{st.st_mtime_ns}')

  def _open(self):
    c = self.builder_config
    return readers.open_scene(
        c.scene, scale=c.reflectance_scale, nodata=c.nodata,
        wavelengths_file=c.wavelengths_file, drop_bands=c.drop_bands,
        drop_ranges_nm=c.drop_ranges_nm)

  def _num_bands(self):
    s = self._open()
    s.close()
    return s.shape[2]

  def _scenes(self, dl_manager):
    del dl_manager
    s = self._open()
    s.close()
    return [(s.name, self._open)]

  def _shard_iterators_per_split(self, dl_manager):
    out = super()._shard_iterators_per_split(dl_manager)
    s = self._open()
    try:
      # Dead or empty bands, named before any tile is cut.
      readers.check_bad_bands(s)
    finally:
      s.close()
    return out
