r"""The embedded benchmark: semi-synthetic EnMAP tiles with known unmixing.

The spectra are real (earthlib and USGS splib07 library spectra resampled to
the 218 kept EnMAP bands, see ``spectra.py``); the spatial arrangement, mixing,
illumination and noise are synthetic. No scene here was ever imaged by EnMAP.

Generator 2.0.0 (1.0.0 had six coarse classes, no illumination and additive
noise at SNR 150/80). The design was fixed before any model was trained on it.
Each tile of T x T pixels is generated with numpy from
``np.random.default_rng([seed, split_id, index])``:
  * Materials (``spectra.CLASS_NAMES``, M = 10): fine-grained classes within
    cover types, as the paper's crop types are: four crop types (PROSAIL
    canopies split by leaf area index and chlorophyll, whose spectra overlap,
    4-6 degrees apart on average), soil, npv, roof and pavement (1.8 degrees
    apart: they differ mostly in brightness), water and mineral.
  * Layout: a Voronoi partition into parcels ("fields"), drawn 4x finer than
    the pixel grid. A tile holds a town with probability 0.4: parcels seeded
    inside it are mostly roofs and pavement. Up to two straight roads
    (pavement, 0.3-1.5 px wide) cross the tile. Parcel classes elsewhere are
    mostly crops, soil and npv; water and mineral are rarer.
  * Abundances ``a`` (T, T, M): a parcel is pure (35 %) or its dominant class
    plus 3-30 % of one or two others (Dirichlet). Averaging the fine grid over
    each pixel gives area fractions, so parcel edges and roads are mixed
    pixels. Each pixel is then jittered as ``a <- Gamma(50 a)``, renormalised,
    which leaves pure pixels pure. ``labels`` is the dominant material.
  * Within-class variability (Somers et al. 2011, Remote Sens. Environ. 115,
    1603-1616: endmember variability is the main error source of unmixing):
    class k draws ``endmembers[k]`` and ``variants[k]`` (M, B) from its
    region's pool in every tile (another field, another canopy, another
    roof); ``variability`` t (T, T, M) in [0, 0.5] is a bilinear upsampling
    of a coarse uniform grid, one smooth field per class, blending the two.
  * Illumination (topographic shading, the multiplicative variability the
    spectral angle ignores): a smooth random terrain (relief up to 150 m over
    240 m, 30 m pixels) lit by a sun at zenith 20-60 degrees and a random
    azimuth gives each pixel a factor ``illumination`` s (T, T) of a
    Lambertian surface (Teillet, Guindon & Goodenough 1982, Can. J. Remote
    Sens. 8, 84-106, the cosine model) plus skylight:
    s = (1 - d) max(cos i, 0) / cos(zenith) + d, with d = 0.15 diffuse.
  * Noise at EnMAP's SNR (Guanter et al. 2015, Remote Sens. 7, 8830-8857:
    > 400 at 495 nm in the VNIR, > 180 at 2200 nm in the SWIR, for a 30 %
    albedo reference), half photon noise (grows with the signal), half
    signal-independent.
  * Model (float64, from the stored float32 arrays)::

        clean[x] = sum_k a_k[x] ((1 - t_k[x]) endmembers[k]
                                 + t_k[x] variants[k])
        cube[x] = s[x] clean[x] + sigma[x] * eps[x],  eps ~ N(0, 1)
        sigma[x, b] = noise_std[b] sqrt(0.5 + 0.5 max(s[x] clean[x, b], 0) / 0.3)
        noise_std[b] = 0.3 / snr[b]
        snr[b] = (snr_vnir if lambda_b < 1000 nm else snr_swir)
                 * prod_{c in 1400, 1900 nm} (1 - 0.5 g((lambda_b - c) / 50 nm))

    with g(z) = exp(-z^2 / 2); the product lowers the SNR next to the
    water-vapour absorptions. Nothing is clipped.

Splits: ``train`` and ``test`` (held out) draw from region A's pools, ``test_b``
from region B's. Written as array_record and read back without TensorFlow.
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from kgmae_jax import dataset
from kgmae_jax import enmap
from kgmae_jax import spectra

M_TRUE = len(spectra.CLASS_NAMES)
SPLITS = {'train': (0, 'A'), 'test': (1, 'A'), 'test_b': (2, 'B')}  # id, region
_SPLIT_SIZES = {'train': 'num_train', 'test': 'num_test', 'test_b': 'num_test_b'}
_SUPERSAMPLE = 4
_PARCEL_AREA = 150.0  # Mean parcel area in pixels.
# Class frequencies (CLASS_NAMES order: soil, four crops, npv, roof,
# pavement, water, mineral) of parcels in fields and in towns.
_FIELD_FREQ = np.array([0.22, 0.11, 0.11, 0.11, 0.11, 0.14, 0.02, 0.04, 0.07,
                        0.07])
_TOWN_FREQ = np.array([0.08, 0.03, 0.03, 0.03, 0.03, 0.05, 0.45, 0.30, 0.0,
                       0.0])
_ROAD = spectra.CLASS_NAMES.index('pavement')
_REFERENCE_REFLECTANCE = 0.3  # EnMAP's SNR is specified at 30 % albedo.
_PIXEL_M = 30.0  # EnMAP ground sampling distance.
_MAX_RELIEF_M = 150.0  # Terrain relief between coarse grid nodes (8 px).
_SUN_ZENITH_DEG = (20.0, 60.0)
_DIFFUSE = 0.15  # Skylight fraction: shaded slopes are not black.
_WATER_VAPOUR_NM = (1400.0, 1900.0)
_SHARD_BYTES = 128 * 2**20  # Tiles per shard: about this much data.


@dataclasses.dataclass(eq=False, kw_only=True)
class BenchmarkConfig(tfds.core.BuilderConfig):
  """Generator parameters; ``name`` is derived from them so builds never mix."""
  name: str = dataclasses.field(default='', init=False)
  tile_size: int = 64
  num_train: int = 1024  # Tiles, region A.
  num_test: int = 64  # Held-out tiles, region A.
  num_test_b: int = 64  # Tiles, region B.
  snr_vnir: float = 400.0  # Below 1000 nm (EnMAP: > 400 at 495 nm).
  snr_swir: float = 180.0  # From 1000 nm (EnMAP: > 180 at 2200 nm).
  seed: int = 0

  def __post_init__(self):
    self.name = (f't{self.tile_size}_n{self.num_train}_m{self.num_test}'
                 f'_b{self.num_test_b}_v{self.snr_vnir:g}_w{self.snr_swir:g}'
                 f'_s{self.seed}')
    self.description = f'Embedded EnMAP benchmark, {self.name}.'


def make_config(**params) -> BenchmarkConfig:
  """The config for these parameters (the registered instance if it exists)."""
  config = BenchmarkConfig(**params)
  return BenchmarkBuilder.builder_configs.get(config.name, config)


def band_snr(wavelengths_nm, snr_vnir: float, snr_swir: float) -> np.ndarray:
  """(B,) signal-to-noise ratio per band, as in the module docstring."""
  w = np.asarray(wavelengths_nm, dtype=np.float64)
  snr = np.where(w < 1000.0, snr_vnir, snr_swir).astype(np.float64)
  for centre in _WATER_VAPOUR_NM:
    snr *= 1.0 - 0.5 * np.exp(-0.5 * ((w - centre) / 50.0)**2)
  return snr


def clean_cube(abundances, endmembers, variants, variability) -> np.ndarray:
  """(T, T, B) float64 noise-free cube of stored arrays (module docstring)."""
  a = np.asarray(abundances, np.float64)
  t = np.asarray(variability, np.float64)
  return (np.einsum('hwk,kb->hwb', a * (1.0 - t), np.asarray(endmembers, float))
          + np.einsum('hwk,kb->hwb', a * t, np.asarray(variants, float)))


def observed_signal(tile) -> np.ndarray:
  """(T, T, B) float64 noise-free observed reflectance s * clean of a tile's
  stored arrays."""
  clean = clean_cube(tile['abundances'], tile['endmembers'], tile['variants'],
                     tile['variability'])
  return np.asarray(tile['illumination'], np.float64)[..., None] * clean


def _layout(rng, size: int) -> np.ndarray:
  """(T, T, M) area fractions of parcels and roads, before jitter."""
  fine = size * _SUPERSAMPLE
  c = (np.arange(fine) + 0.5) / _SUPERSAMPLE  # Fine-cell centres in pixels.
  yy, xx = np.meshgrid(c, c, indexing='ij')
  num = max(2, rng.poisson(size * size / _PARCEL_AREA))
  seeds = rng.uniform(0, size, (num, 2))
  town = rng.uniform(0, size, 2) if rng.random() < 0.4 else None
  radius = rng.uniform(0.15, 0.35) * size
  in_town = (np.zeros(num, bool) if town is None else
             np.hypot(*(seeds - town).T) < radius)
  parcels = np.zeros((num, M_TRUE))
  for p in range(num):
    dominant = rng.choice(M_TRUE, p=_TOWN_FREQ if in_town[p] else _FIELD_FREQ)
    parcels[p, dominant] = 1.0
    if rng.random() >= 0.35:  # Not pure: admixture of one or two others.
      others = rng.choice(np.delete(np.arange(M_TRUE), dominant),
                          rng.integers(1, 3), replace=False)
      share = rng.uniform(0.03, 0.3)
      parcels[p, dominant] -= share
      parcels[p, others] += share * rng.dirichlet(np.ones(len(others)))
  dist = ((yy[..., None] - seeds[:, 0])**2 + (xx[..., None] - seeds[:, 1])**2)
  fine_a = parcels[np.argmin(dist, axis=-1)]  # (fine, fine, M)
  for _ in range(rng.integers(0, 3)):
    point, angle = rng.uniform(0, size, 2), rng.uniform(0, np.pi)
    off = (yy - point[0]) * np.cos(angle) - (xx - point[1]) * np.sin(angle)
    road = np.abs(off) < rng.uniform(0.3, 1.5) / 2
    fine_a[road] = np.eye(M_TRUE)[_ROAD]
  return fine_a.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE,
                        M_TRUE).mean(axis=(1, 3))


def _smooth_field(rng, size: int, num: int, high: float) -> np.ndarray:
  """(T, T, num) smooth fields in [0, high]: bilinear upsampled coarse grids."""
  coarse = max(2, size // 8) + 1
  x = np.linspace(0, coarse - 1, size)
  up = np.stack([np.interp(x, np.arange(coarse), e) for e in np.eye(coarse)],
                axis=1)  # (T, coarse) interpolation matrix.
  grid = rng.uniform(0, high, (num, coarse, coarse))
  return np.einsum('ia,kab,jb->ijk', up, grid, up)


def illumination(rng, size: int) -> np.ndarray:
  """(T, T) Lambertian illumination factor of a smooth random terrain under
  a random sun (module docstring)."""
  relief = rng.uniform(0.0, _MAX_RELIEF_M)
  z = _smooth_field(rng, size, 1, relief)[..., 0]  # Elevation, m.
  dz_dy, dz_dx = np.gradient(z, _PIXEL_M)
  zenith = np.radians(rng.uniform(*_SUN_ZENITH_DEG))
  azimuth = rng.uniform(0.0, 2.0 * np.pi)
  sun = np.array([np.sin(zenith) * np.cos(azimuth),
                  np.sin(zenith) * np.sin(azimuth), np.cos(zenith)])
  normal = np.stack([-dz_dx, -dz_dy, np.ones_like(z)], axis=-1)
  cos_i = normal @ sun / np.linalg.norm(normal, axis=-1)
  return ((1.0 - _DIFFUSE) * np.maximum(cos_i, 0.0) / np.cos(zenith)
          + _DIFFUSE)


def noise_sigma(signal, noise_std) -> np.ndarray:
  """(..., B) noise standard deviation at observed reflectance `signal`
  (..., B), given the (B,) `noise_std` at the reference reflectance."""
  r = np.maximum(np.asarray(signal, np.float64), 0.0) / _REFERENCE_REFLECTANCE
  return np.asarray(noise_std, np.float64) * np.sqrt(0.5 + 0.5 * r)


def generate_tile(rng, pools: dict[str, np.ndarray], size: int,
                  snr: np.ndarray) -> dict[str, np.ndarray]:
  """One tile's arrays (all features but ``region`` and ``tile_id``).

  Args:
    rng: numpy Generator.
    pools: {class: (n_k, B) spectra} in ``spectra.CLASS_NAMES`` order.
    size: tile size T.
    snr: (B,) per-band signal-to-noise ratio.

  Returns:
    Dict of float32 ``cube`` (T, T, B), ``abundances`` (T, T, M),
    ``endmembers`` and ``variants`` (M, B), ``variability`` (T, T, M),
    ``illumination`` (T, T), ``noise_std`` (B,) (at reflectance 0.3), and
    int32 ``labels`` (T, T).
  """
  a = _layout(rng, size)
  a = rng.gamma(50.0 * a)  # Shape 0 gives 0: pure pixels stay pure.
  a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
  picks = [rng.choice(len(p), 2, replace=len(p) < 2) for p in pools.values()]
  endmembers = np.stack([p[i[0]] for p, i in zip(pools.values(), picks)])
  variants = np.stack([p[i[1]] for p, i in zip(pools.values(), picks)])
  out = {
      'abundances': a,
      'endmembers': endmembers.astype(np.float32),
      'variants': variants.astype(np.float32),
      'variability': _smooth_field(rng, size, M_TRUE, 0.5).astype(np.float32),
  }
  out['illumination'] = illumination(rng, size).astype(np.float32)
  out['noise_std'] = (_REFERENCE_REFLECTANCE / snr).astype(np.float32)
  signal = observed_signal(out)
  noise = rng.standard_normal(signal.shape, dtype=np.float32)
  out['cube'] = (signal + noise_sigma(signal, out['noise_std'])
                 * noise).astype(np.float32)
  out['labels'] = np.argmax(a, axis=-1).astype(np.int32)
  return out


class BenchmarkBuilder(dataset.DataSet):
  """TFDS builder of the embedded benchmark (see the module docstring)."""

  name = 'kgmae_benchmark'
  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release: six cover classes.',
      '2.0.0': 'Ten fine-grained materials (crop types, roof/pavement), '
               'topographic illumination, EnMAP SNR with photon noise.',
  }
  BUILDER_CONFIGS = [
      BenchmarkConfig(),
      BenchmarkConfig(tile_size=32, num_train=256, num_test=32, num_test_b=32),
  ]
  DATA_FIELDS = ('tile_size', 'num_train', 'num_test', 'num_test_b',
                 'snr_vnir', 'snr_swir', 'seed')
  SPLITS = ('train', 'test', 'test_b')
  WAVELENGTHS_NM = enmap.WAVELENGTHS_NM
  FWHM_NM = enmap.FWHM_NM
  CLASS_NAMES = spectra.CLASS_NAMES

  @classmethod
  def make_builder_config(cls, data_dir, **params) -> BenchmarkConfig:
    del data_dir  # Generated, nothing to read.
    return make_config(**params)

  def _info(self) -> tfds.core.DatasetInfo:
    t, b, m = self.builder_config.tile_size, enmap.NUM_BANDS, M_TRUE
    raw = tfds.features.Encoding.BYTES

    def tensor(shape, dtype=np.float32):
      return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=raw)

    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'cube': tensor((t, t, b)),
            'abundances': tensor((t, t, m)),
            'endmembers': tensor((m, b)),
            'variants': tensor((m, b)),
            'variability': tensor((t, t, m)),
            'illumination': tensor((t, t)),
            'noise_std': tensor((b,)),
            'labels': tensor((t, t), np.int32),
            'region': tfds.features.Scalar(dtype=np.int32),
            'tile_id': tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,  # Tiles stay in tile_id order.
    )

  def _shard_iterators_per_split(self, dl_manager):
    """Shards of consecutive tiles, ~_SHARD_BYTES each (the paper-size
    build is ~4 GB; see dataset.py on why shards)."""
    del dl_manager  # Nothing to download.
    c = self.builder_config
    tile_bytes = 4 * c.tile_size**2 * (enmap.NUM_BANDS + 2 * M_TRUE + 2)
    per_shard = max(1, _SHARD_BYTES // tile_bytes)
    counts = {s: getattr(c, f) for s, f in _SPLIT_SIZES.items()}
    return {s: [functools.partial(self._generate_examples, s, i,
                                  min(i + per_shard, n))
                for i in range(0, n, per_shard)]
            for s, n in counts.items() if n}

  def _generate_examples(self, split: str, first: int, stop: int):
    pools = spectra.region_pools(self.WAVELENGTHS_NM, self.FWHM_NM,
                                 SPLITS[split][1])
    for i in range(first, stop):
      yield i, self._tile(split, i, pools)

  def _tile(self, split: str, index: int, pools=None) -> dict:
    """Tile `index` of `split`, generated afresh (all features)."""
    c = self.builder_config
    split_id, region = SPLITS[split]
    if pools is None:
      pools = spectra.region_pools(self.WAVELENGTHS_NM, self.FWHM_NM, region)
    snr = band_snr(self.WAVELENGTHS_NM, c.snr_vnir, c.snr_swir)
    rng = np.random.default_rng([c.seed, split_id, index])
    tile = generate_tile(rng, pools, c.tile_size, snr)
    return dict(tile, region=np.int32(region == 'B'), tile_id=np.int64(index))

  def empty_split_hint(self, split: str) -> str:
    return f'set config.data.{_SPLIT_SIZES[split]} > 0'

  def check_build(self) -> None:
    """Raises ValueError if this build's first tile differs from what the
    generator (code and spectral libraries) now makes for it.

    Catches builds made by an older generator (or other library versions)
    under the same version number, so they are never mixed with new ones.
    """
    splits = [s for s in SPLITS
              if s in self.info.splits and self.info.splits[s].num_examples]
    if not splits:
      return
    split = splits[0]
    stored = self.as_data_source(split)[0]['cube']
    if not np.array_equal(stored, self._tile(split, 0)['cube']):
      raise ValueError(
          f'The data set in {self.data_dir} was built by another version of '
          'the benchmark generator (its first tile differs from a fresh one). '
          'Delete that directory to rebuild it, or set config.data.data_dir '
          'to a new location.')
