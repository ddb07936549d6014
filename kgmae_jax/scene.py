r"""A user's own hyperspectral cube: readers, tiling, and the `own_scene` builder.

Readers (`Reader`) give windowed access to a cube of any sensor in
reflectance units:
  * GeoTIFF (any band count; rasterio, windowed reads);
  * ENVI (`.hdr` + data file; rasterio's ENVI driver, header parsed here for
    the wavelengths);
  * `.npy` (H, W, B), memory-mapped, with a wavelengths file;
  * an EnMAP L2A product (`enmap_l2a.L2AProduct`).
A pixel is invalid where any band is non-finite or equals the nodata value
(`config.data.nodata` or the file's own nodata tag). Readers implement
`read_values` (every band of the file, NaN per missing value); `Reader.read`
gives whole pixels of the kept bands.

Bad bands: `select_bands` leaves out `config.data.drop_bands` (0-based file
indices) and `drop_ranges_nm` (nm ranges), for training and for predict
(`inference.open_image`); the own-scene build first names every kept band
with no valid value or zero variance (`check_bad_bands`).

Tiling (`tile_grid`): the bottom `test_fraction` of each scene's rows is the
`test` split, the rest `train`; tiles of `tile_size` step by
`tile_size - tile_overlap` inside each part (the last tile of a row or column
is shifted to end at the border), so test tiles never overlap train tiles.
Tiles with fewer than `min_valid_fraction` valid pixels are dropped; every
kept tile's values must look like reflectance (`check_reflectance`).

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
import re
import sys
from typing import Callable, ClassVar, Optional

from absl import logging
import numpy as np
import rasterio
from rasterio import windows as rio_windows
import tensorflow_datasets as tfds

from kgmae_jax import dataset
from kgmae_jax import spectra

_ENVI_DATA_EXTS = ('', '.img', '.dat', '.raw', '.bsq', '.bil', '.bip', '.bin')
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # Pixel coordinates, no georeference.
DATA_FIELDS = ('scene', 'wavelengths_file', 'reflectance_scale', 'nodata',
               'tile_size', 'tile_overlap', 'min_valid_fraction',
               'test_fraction', 'drop_bands', 'drop_ranges_nm')
_OPTIONAL = ('drop_bands', 'drop_ranges_nm')  # Left out of names when empty.


# --------------------------------------------------------------- wavelengths
def read_wavelengths_file(path) -> np.ndarray:
  """(B,) nm from a text/CSV file: one number per band (first column).

  Lines that do not start with a number (headers, comments) are skipped;
  values below 100 are taken as micrometres and converted to nm.
  """
  values = []
  for line in pathlib.Path(path).read_text().splitlines():
    first = re.split(r'[,;\s]+', line.strip())[0] if line.strip() else ''
    try:
      values.append(float(first))
    except ValueError:
      continue
  w = np.asarray(values, np.float64)
  if not len(w):
    raise ValueError(f'config.data.wavelengths_file: no numbers in {path}.')
  return to_nm(w)


def to_nm(w, units='') -> np.ndarray:
  """Wavelengths in nm from nm or micrometres (units, else values < 100)."""
  w = np.asarray(w, np.float64)
  units = units.lower()
  if units.startswith(('micro', 'um', 'µm')) or (not units.startswith('nano')
                                                and w.max() < 100):
    return w * 1000.0
  return w


def _floats(text: str) -> np.ndarray:
  return np.array([float(v) for v in re.split(r'[,\s]+', text.strip()) if v])


# ------------------------------------------------------------------- readers
def read_window(src, row, col, height, width, fill):
  """(B, h, w) array of a rasterio dataset window, `fill` outside the image.

  Reads only the part inside the image (rasterio's boundless reads go
  through a VRT and are much slower).
  """
  out = np.full((src.count, height, width), fill, src.dtypes[0])
  r0, c0 = max(row, 0), max(col, 0)
  r1, c1 = min(row + height, src.height), min(col + width, src.width)
  if r1 > r0 and c1 > c0:
    out[:, r0 - row:r1 - row, c0 - col:c1 - col] = src.read(
        window=rio_windows.Window(c0, r0, c1 - c0, r1 - r0))
  return out


def _invalid_to_nan(cube, valid):
  cube[~valid] = np.nan
  return cube, valid


class Reader(abc.ABC):
  """Windowed access to one cube in reflectance units.

  Subclasses give `read_values`; `read` (whole pixels) is built on it. After
  `select_bands`, `shape`, `wavelengths_nm` and `fwhm_nm` describe the kept
  bands only and `keep` holds their indices in the file.
  """
  name: str  # For messages: the file or product name.
  shape: tuple[int, int, int]  # (H, W, B).
  wavelengths_nm: np.ndarray  # (B,) band centres.
  fwhm_nm: Optional[np.ndarray] = None  # (B,) band widths, if known.
  crs: str = ''  # WKT; '' when unknown.
  transform: tuple = IDENTITY  # 6 affine coefficients a, b, c, d, e, f.
  keep: Optional[np.ndarray] = None  # File band indices read; None: all.

  @abc.abstractmethod
  def read_values(self, row, col, height, width):
    """(h, w, B_file) float32 reflectance of every band of the file (before
    `keep`), NaN for each value that is missing (non-finite, nodata, flagged,
    outside the image)."""

  def read(self, row, col, height, width):
    """(cube (h, w, B) float32 reflectance of the kept bands, NaN at invalid
    pixels; valid (h, w) bool: every kept band has a value). Windows may
    extend past the image (padding is invalid)."""
    cube = self.read_values(row, col, height, width)
    if self.keep is not None:
      cube = cube[..., self.keep]
    return _invalid_to_nan(cube, np.isfinite(cube).all(-1))

  def finish(self, warn=True, count=None) -> int:
    """After the reads of a build: how many values the reads dropped that
    should have been fill (0 unless the format has such bands); warns if
    `warn` and that (or `count`, summed over several readers) is > 0."""
    del warn, count
    return 0

  def close(self):
    pass


# ------------------------------------------------------------------ bad bands
def kept_bands(wavelengths_nm, drop_bands=(), drop_ranges_nm=()):
  """Indices of the bands left after `data.drop_bands` (0-based indices) and
  `data.drop_ranges_nm` ((lo, hi) nm, inclusive)."""
  wl = np.asarray(wavelengths_nm, np.float64)
  drop = np.zeros(len(wl), bool)
  for i in drop_bands:
    if not 0 <= int(i) < len(wl):
      raise ValueError(f'config.data.drop_bands: band {i} does not exist; the '
                       f'scene has bands 0..{len(wl) - 1}.')
    drop[int(i)] = True
  for r in drop_ranges_nm:
    if len(r) != 2 or not r[0] <= r[1]:
      raise ValueError(f'config.data.drop_ranges_nm: {r!r} is not a (lo, hi) '
                       'pair with lo <= hi, in nm.')
    drop |= (wl >= r[0]) & (wl <= r[1])
  if drop.all():
    raise ValueError('config.data.drop_bands / drop_ranges_nm drop every band.')
  return np.flatnonzero(~drop)


def select_bands(reader: Reader, drop_bands=(), drop_ranges_nm=()) -> Reader:
  """Makes `reader` return only the kept bands (shape, wavelengths, fwhm,
  read)."""
  if not len(drop_bands) and not len(drop_ranges_nm):
    return reader
  keep = kept_bands(reader.wavelengths_nm, drop_bands, drop_ranges_nm)
  reader.keep = keep
  reader.shape = tuple(reader.shape[:2]) + (len(keep),)
  reader.wavelengths_nm = reader.wavelengths_nm[keep]
  if reader.fwhm_nm is not None:
    reader.fwhm_nm = reader.fwhm_nm[keep]
  return reader


def check_bad_bands(reader: Reader, rows=64):
  """Raises ValueError naming (file index and wavelength) every kept band
  with no valid value or zero variance; reads the scene once, in strips."""
  h, w, _ = reader.shape
  keep = reader.keep
  count = lo = hi = None
  for r in range(0, h, rows):
    v = reader.read_values(r, 0, min(rows, h - r), w)
    v = (v if keep is None else v[..., keep]).reshape(-1, len(reader.wavelengths_nm))
    finite = np.isfinite(v)
    n = finite.sum(0)
    vmin = np.where(finite, v, np.inf).min(0)
    vmax = np.where(finite, v, -np.inf).max(0)
    count = n if count is None else count + n
    lo = vmin if lo is None else np.minimum(lo, vmin)
    hi = vmax if hi is None else np.maximum(hi, vmax)
  if not count.any():
    return  # No value at all: the nodata check names config.data.nodata.
  index = keep if keep is not None else np.arange(len(count))
  wl = reader.wavelengths_nm
  bad = []
  for j in np.flatnonzero((count == 0) | (lo == hi)):
    what = ('has no valid value (NaN or nodata everywhere)' if count[j] == 0
            else f'is constant ({lo[j]:.6g} everywhere: std 0, a dead detector?)')
    bad.append((int(index[j]), f'band {index[j]} ({wl[j]:.1f} nm) {what}'))
  if bad:
    more = f'; and {len(bad) - 8} more' if len(bad) > 8 else ''
    raise ValueError(
        f'config.data.drop_bands: {reader.name}: ' +
        '; '.join(m for _, m in bad[:8]) + more + '. Such bands cannot be standardised; drop them with '
        f'--config.data.drop_bands="{tuple(i for i, _ in bad)}" (0-based file '
        'band indices) or a wavelength range in config.data.drop_ranges_nm, '
        'e.g. "((1340, 1460),)".')


class RasterScene(Reader):
  """A GeoTIFF or ENVI cube through rasterio (windowed reads)."""

  def __init__(self, path, *, scale=1.0, nodata=None, wavelengths_nm=None):
    path = pathlib.Path(path)
    header = None
    if path.suffix.lower() == '.hdr':
      header = spectra.read_envi_header(path)
      stem = path.with_suffix('')
      data = [stem.with_name(stem.name + e) for e in _ENVI_DATA_EXTS]
      data = [p for p in data if p.is_file()]
      if not data:
        raise FileNotFoundError(f'No ENVI data file next to {path} (looked for '
                                f'{[stem.name + e for e in _ENVI_DATA_EXTS]}).')
      path = data[0]
    elif (path.with_suffix('.hdr').is_file()
          and path.suffix.lower() not in ('.tif', '.tiff')):
      header = spectra.read_envi_header(path.with_suffix('.hdr'))
    self.name = path.name
    self._src = rasterio.open(path)
    src = self._src
    self.shape = (src.height, src.width, src.count)
    self.crs = src.crs.to_wkt() if src.crs else ''
    self.transform = (tuple(src.transform)[:6] if src.transform
                      and not src.transform.is_identity else IDENTITY)
    self.scale = float(scale)
    self.nodata = [v for v in (nodata, src.nodata) if v is not None]
    if wavelengths_nm is None:
      wavelengths_nm = self._file_wavelengths(header)
    self.wavelengths_nm = np.asarray(wavelengths_nm, np.float64)
    if len(self.wavelengths_nm) != src.count:
      raise ValueError(
          f'config.data.wavelengths_file: {len(self.wavelengths_nm)} '
          f'wavelengths for {src.count} bands of {path}.')

  def _file_wavelengths(self, header):
    if header and 'wavelength' in header:
      return to_nm(_floats(header['wavelength']),
                   header.get('wavelength units', ''))
    tags = [self._src.tags(b) for b in range(1, self._src.count + 1)]
    if all('wavelength' in t for t in tags):  # ENVI-style band tags (GDAL).
      return to_nm([float(t['wavelength']) for t in tags],
                   tags[0].get('wavelength_units', ''))
    raise ValueError(
        f'config.data.wavelengths_file: {self.name} carries no band '
        'wavelengths; give a text file with one centre (nm) per band.')

  def read_values(self, row, col, height, width):
    """(h, w, B) reflectance of every band of the file, NaN for each value
    that is missing (non-finite, nodata, outside the image)."""
    is_float = self._src.dtypes[0].startswith('float')
    raw = read_window(self._src, row, col, height, width,
                      np.nan if is_float else 0)  # (B, h, w)
    inside = np.zeros((height, width), bool)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, self._src.height), min(col + width,
                                                     self._src.width)
    inside[r0 - row:max(r1 - row, 0), c0 - col:max(c1 - col, 0)] = True
    raw = np.moveaxis(raw, 0, -1)
    ok = inside[..., None] & np.isfinite(raw)
    for v in self.nodata:
      ok &= raw != v
    out = raw.astype(np.float32) * np.float32(self.scale)
    out[~ok] = np.nan
    return out


  def close(self):
    self._src.close()


class NpyScene(Reader):
  """A `.npy` (H, W, B) cube, memory-mapped; no georeference."""

  def __init__(self, path, *, wavelengths_nm, scale=1.0, nodata=None):
    self.name = pathlib.Path(path).name
    self._arr = np.load(path, mmap_mode='r')
    if self._arr.ndim != 3:
      raise ValueError(f'config.data.scene: {path} has shape '
                       f'{self._arr.shape}; expected (H, W, B).')
    self.shape = self._arr.shape
    self.crs, self.transform = '', IDENTITY
    self.scale = float(scale)
    self.nodata = [] if nodata is None else [nodata]
    self.wavelengths_nm = np.asarray(wavelengths_nm, np.float64)
    if len(self.wavelengths_nm) != self.shape[2]:
      hint = ('; the array looks channel-first (B, H, W): save it as (H, W, '
              'B), e.g. np.save(path, np.moveaxis(cube, 0, -1))'
              if len(self.wavelengths_nm) == self.shape[0] else '')
      raise ValueError(
          f'config.data.wavelengths_file: {len(self.wavelengths_nm)} '
          f'wavelengths for the {self.shape[2]} bands of {path} (shape '
          f'{self.shape}, read as (H, W, B)){hint}.')

  def read_values(self, row, col, height, width):
    """As RasterScene.read_values."""
    h, w, b = self._arr.shape
    raw = np.full((height, width, b), np.nan, np.float32)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, h), min(col + width, w)
    if r1 > r0 and c1 > c0:
      raw[r0 - row:r1 - row, c0 - col:c1 - col] = self._arr[r0:r1, c0:c1]
    ok = np.isfinite(raw)
    for v in self.nodata:
      ok &= raw != v
    out = raw * np.float32(self.scale)
    out[~ok] = np.nan
    return out



def open_scene(path, *, scale=1.0, nodata=None, wavelengths_file='',
               drop_bands=(), drop_ranges_nm=()):
  """The reader for `path` by its extension (.npy, .hdr/ENVI, else rasterio),
  reading only the bands kept by `drop_bands` / `drop_ranges_nm`."""
  path = pathlib.Path(os.path.expanduser(str(path)))
  if not path.exists():
    raise FileNotFoundError(f'config.data.scene: {path} does not exist.')
  w = read_wavelengths_file(wavelengths_file) if wavelengths_file else None
  if path.suffix.lower() == '.npy':
    if w is None:
      raise ValueError(f'config.data.wavelengths_file: {path.name} is a .npy '
                       'cube; give its band centres, one per line.')
    reader = NpyScene(path, wavelengths_nm=w, scale=scale, nodata=nodata)
  else:
    reader = RasterScene(path, scale=scale, nodata=nodata, wavelengths_nm=w)
  return select_bands(reader, drop_bands, drop_ranges_nm)


# ----------------------------------------------------- checks, tiling, tiles
def check_reflectance(values, *, scale_field, nodata_field, where=''):
  """Raises ValueError naming the field to set if values are not reflectance.

  Args:
    values: valid pixel values after scaling (any shape).
    scale_field / nodata_field: names of the settings to suggest.
    where: the file, for the message.
  """
  v = np.asarray(values, np.float64).ravel()
  if not len(v):
    return
  med, low = float(np.median(v)), float(np.percentile(v, 1))
  if med > 1.5:
    raise ValueError(
        f'{scale_field}: median value {med:.4g} of {where} after scaling looks '
        'like raw digital numbers, not reflectance in [0, 1] (reflectance x '
        f'10^4 needs 1e-4); set {scale_field}.')
  if low < -1.0:
    raise ValueError(
        f'{nodata_field}: 1% of the valid values of {where} are below {low:.4g}, '
        f'implausible for reflectance: is the fill value set? Set {nodata_field}.')


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
    check_reflectance(values[::max(1, values.size // 100_000)],
                      scale_field=scale_field, nodata_field=nodata_field,
                      where=f'{s.name} tile ({row}, {col})')
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
  def _scenes(self, dl_manager) -> list[tuple[str, Callable[[], Reader]]]:
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
    return open_scene(c.scene, scale=c.reflectance_scale, nodata=c.nodata,
                      wavelengths_file=c.wavelengths_file,
                      drop_bands=c.drop_bands, drop_ranges_nm=c.drop_ranges_nm)

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
      check_bad_bands(s)  # Dead or empty bands, named before any tile is cut.
    finally:
      s.close()
    return out
