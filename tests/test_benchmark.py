"""Tests of the embedded benchmark: a tiny build read without TensorFlow."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kgmae_jax import benchmark
from kgmae_jax import enmap
from kgmae_jax import spectra

_PARAMS = dict(tile_size=16, num_train=4, num_test=2, num_test_b=3)


def _build(data_dir, **params):
  builder = benchmark.BenchmarkBuilder(
      config=benchmark.make_config(**{**_PARAMS, **params}),
      data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return {split: [src[i] for i in range(len(src))]
          for split in ('train', 'test', 'test_b')
          for src in [builder.as_data_source(split)]}


@pytest.fixture(scope='module')
def tiles(tmp_path_factory):
  return _build(tmp_path_factory.mktemp('a'))


def test_build_and_read_without_tensorflow(tiles):
  assert 'tensorflow' not in sys.modules
  assert [len(tiles[s]) for s in ('train', 'test', 'test_b')] == [4, 2, 3]
  t, b, m = 16, enmap.NUM_BANDS, benchmark.M_TRUE
  assert m == 10
  shapes = {'cube': (t, t, b), 'abundances': (t, t, m), 'endmembers': (m, b),
            'variants': (m, b), 'variability': (t, t, m),
            'illumination': (t, t), 'noise_std': (b,), 'labels': (t, t)}
  tile = tiles['train'][1]
  for key, shape in shapes.items():
    assert tile[key].shape == shape, key
    assert tile[key].dtype == (np.int32 if key == 'labels' else np.float32)
  assert [x['tile_id'] for x in tiles['test_b']] == [0, 1, 2]


def test_a_generator_1_build_is_never_read_as_2(tmp_path, monkeypatch):
  """A data dir holding a 1.0.0 build (another generator) gets a fresh 2.0.0
  build beside it; the old tiles are never served."""
  assert str(benchmark.BenchmarkBuilder.VERSION) == '2.0.0'
  params = dict(tile_size=8, num_train=2, num_test=1, num_test_b=1)
  real = benchmark.generate_tile
  with monkeypatch.context() as m:
    m.setattr(benchmark.BenchmarkBuilder, 'VERSION', tfds.core.Version('1.0.0'))
    m.setattr(benchmark, 'generate_tile', lambda *a, **k: dict(
        real(*a, **k), cube=np.zeros((8, 8, enmap.NUM_BANDS), np.float32)))
    old = _build(tmp_path, **params)
  assert not old['train'][0]['cube'].any()
  new = _build(tmp_path, **params)
  fresh = benchmark.BenchmarkBuilder(
      config=benchmark.make_config(**params))._tile('train', 0)
  np.testing.assert_array_equal(new['train'][0]['cube'], fresh['cube'])
  versions = sorted(p.name for p in tmp_path.glob('kgmae_benchmark/*/*.0.0'))
  assert versions == ['1.0.0', '2.0.0']


def test_config_names_encode_parameters():
  names = {benchmark.BenchmarkConfig(**p).name for p in (
      {}, {'seed': 1}, {'snr_swir': 60.0}, {'tile_size': 32}, {'num_test': 7})}
  assert len(names) == 5
  registered = benchmark.BenchmarkBuilder.BUILDER_CONFIGS[1]
  assert benchmark.make_config(tile_size=32, num_train=256, num_test=32,
                               num_test_b=32) is registered


def test_abundances_and_labels(tiles):
  a = np.stack([x['abundances'] for s in tiles.values() for x in s])
  assert a.min() >= 0
  np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
  labels = np.stack([x['labels'] for s in tiles.values() for x in s])
  np.testing.assert_array_equal(labels, a.argmax(-1))
  top = a.max(-1)
  assert (top < 0.9).mean() > 0.02  # Mixed pixels at edges and roads.
  assert (top > 0.999).mean() > 0.1  # Pure pixels inside pure parcels.
  var = np.stack([x['variability'] for s in tiles.values() for x in s])
  assert var.min() >= 0 and var.max() <= 0.5 and var.std() > 0.05


def test_illumination_is_lambertian_shading():
  s = np.stack([benchmark.illumination(np.random.default_rng(i), 32)
                for i in range(64)])
  assert s.min() >= benchmark._DIFFUSE - 1e-12
  # A flat pixel under any sun gets exactly 1; slopes spread around it.
  assert 0.9 < np.median(s) < 1.1
  assert s.std() > 0.05 and (s < 0.8).mean() > 0.01 and (s > 1.2).mean() > 0.01
  # Smooth: neighbouring pixels differ far less than distant ones.
  near = np.abs(np.diff(s, axis=1)).mean()
  far = np.abs(s[:, :, :16] - s[:, :, 16:]).mean()
  assert near < 0.5 * far


def test_cube_is_shaded_clean_model_plus_photon_noise(tiles):
  snr = benchmark.band_snr(enmap.WAVELENGTHS_NM, 400.0, 180.0)
  assert snr[0] == pytest.approx(400.0) and snr[-1] == pytest.approx(180.0)
  for tile in tiles['train'] + tiles['test_b']:
    np.testing.assert_allclose(tile['noise_std'], 0.3 / snr, rtol=1e-6)
    signal = benchmark.observed_signal(tile)
    clean = benchmark.clean_cube(tile['abundances'], tile['endmembers'],
                                 tile['variants'], tile['variability'])
    np.testing.assert_allclose(
        signal, tile['illumination'][..., None] * clean, rtol=1e-6)
    sigma = benchmark.noise_sigma(signal, tile['noise_std'])
    # Photon noise: brighter pixels are noisier, sqrt(0.5 + 0.5 r / 0.3).
    np.testing.assert_allclose(
        sigma, tile['noise_std'] * np.sqrt(0.5 + 0.5 * signal / 0.3),
        rtol=1e-6)
    z = (tile['cube'] - signal) / sigma
    assert abs(z.mean()) < 0.05
    assert z.std() == pytest.approx(1.0, rel=0.05)
    # Per band too, so a swapped VNIR/SWIR sigma would show.
    assert np.abs(z.std(axis=(0, 1)) - 1).max() < 0.3


def test_labels_are_fine_grained_materials(tiles):
  labels = np.concatenate([x['labels'].ravel() for s in tiles.values()
                           for x in s])
  crops = [k for k, n in enumerate(spectra.CLASS_NAMES) if n.startswith('crop')]
  assert len(crops) == 4
  assert set(spectra.COVER_TYPES) == set(spectra.CLASS_NAMES)
  assert np.isin(labels, crops).mean() > 0.1  # Crop types are common.


def test_endmembers_come_from_the_region_pools(tiles):
  pools = {r: spectra.region_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM, r)
           for r in 'AB'}
  for split, region in (('train', 'A'), ('test', 'A'), ('test_b', 'B')):
    for tile in tiles[split]:
      assert tile['region'] == (region == 'B')
      for k, name in enumerate(spectra.CLASS_NAMES):
        for spectrum in (tile['endmembers'][k], tile['variants'][k]):
          own = np.abs(pools[region][name] - spectrum).max(1).min()
          other = np.abs(pools['AB'.replace(region, '')][name]
                         - spectrum).max(1).min()
          assert own < 1e-6 and other > 1e-6, (split, name)


def test_deterministic_by_seed(tiles, tmp_path):
  again = _build(tmp_path / 'same')
  other = _build(tmp_path / 'other', seed=1)
  for split in tiles:
    for x, y, z in zip(tiles[split], again[split], other[split]):
      for key in ('cube', 'abundances', 'endmembers', 'labels'):
        np.testing.assert_array_equal(x[key], y[key])
      assert not np.array_equal(x['cube'], z['cube'])
  # Tiles of one build differ from each other too.
  assert not np.array_equal(tiles['train'][0]['abundances'],
                            tiles['train'][1]['abundances'])


def test_build_from_another_generator_is_refused(tmp_path, monkeypatch):
  config = benchmark.make_config(tile_size=8, num_train=2, num_test=1, num_test_b=0)
  builder = benchmark.BenchmarkBuilder(config=config, data_dir=str(tmp_path),
                                       file_format='array_record')
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  builder.check_build()  # Same generator: fine.
  real = benchmark.generate_tile

  def changed(*args, **kwargs):  # A generator whose noise changed.
    tile = real(*args, **kwargs)
    return dict(tile, cube=tile['cube'] + np.float32(1e-3))

  monkeypatch.setattr(benchmark, 'generate_tile', changed)
  with pytest.raises(ValueError, match='another version of the benchmark generator'):
    builder.check_build()


def test_many_shards_keep_tile_order(tiles, tmp_path, monkeypatch):
  monkeypatch.setattr(benchmark, '_SHARD_BYTES', 1)  # One tile per shard.
  sharded = _build(str(tmp_path))
  for split, ref in tiles.items():
    assert [t['tile_id'] for t in sharded[split]] == list(range(len(ref)))
    for a, b in zip(sharded[split], ref):
      np.testing.assert_array_equal(a['cube'], b['cube'])
