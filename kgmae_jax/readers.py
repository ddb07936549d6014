r"""Readers of a hyperspectral cube of any sensor, in reflectance units.

Readers (`Reader`) give windowed access to:
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
`check_reflectance` refuses values that do not look like reflectance.
"""

import abc
import os
import pathlib
import re
from typing import Optional

import numpy as np
import rasterio
from rasterio import windows as rio_windows

from kgmae_jax import spectra

_ENVI_DATA_EXTS = ('', '.img', '.dat', '.raw', '.bsq', '.bil', '.bip', '.bin')
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # Pixel coordinates, no georeference.


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


# ------------------------------------------------------------ value checks
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


# ------------------------------------------------------------------ class maps
def read_class_map(path, shape) -> np.ndarray:
  """(H, W) int64 class map of a scene of `shape` (H, W, ...): a .npy (H, W)
  array or the first band of a raster (GeoTIFF, ENVI); 0 = unlabelled."""
  path = pathlib.Path(os.path.expanduser(str(path)))
  if not path.is_file():
    raise FileNotFoundError(f'config.data.labels: {path} is not a file; give '
                            'a .npy (H, W) or a one-band GeoTIFF class map.')
  if path.suffix.lower() == '.npy':
    labels = np.load(path)
  else:
    with rasterio.open(path) as src:
      labels = src.read(1)
  labels = np.squeeze(labels)
  if labels.shape != tuple(shape[:2]):
    raise ValueError(f'config.data.labels: class map {path.name} is '
                     f'{labels.shape}, the scene is {tuple(shape[:2])} pixels.')
  if not np.issubdtype(labels.dtype, np.integer):
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
      raise ValueError(f'config.data.labels: {path.name} holds non-integer '
                       'values; a class map holds class ids (0 = unlabelled).')
  labels = labels.astype(np.int64)
  if labels.min() < 0:
    raise ValueError(f'config.data.labels: {path.name} has negative class ids '
                     f'({labels.min()}); use 0 for unlabelled pixels.')
  return labels
