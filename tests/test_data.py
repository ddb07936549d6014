"""Tests of data.py on a tiny benchmark build in a temporary directory."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from kgmae_jax import data
from kgmae_jax import enmap


def _config(data_dir, **overrides):
  return ml_collections.ConfigDict(dict(dict(
      name='kgmae_benchmark', data_dir=str(data_dir), tile_size=8,
      num_train=6, num_test=3, num_test_b=0, snr_vnir=150.0, snr_swir=80.0,
      seed=0, num_workers=0, prefetch=2), **overrides))


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  return _config(tmp_path_factory.mktemp('data'))


def _train_tiles(cfg):
  src = data.prepared_builder(cfg).as_data_source('train')
  return np.stack([src[i]['cube'] for i in range(len(src))])  # (n, T, T, B)


def test_builder_is_built_once_and_reused(cfg):
  builder = data.prepared_builder(cfg)
  assert builder.is_prepared()
  assert data.prepared_builder(_config(cfg.data_dir)) is builder
  assert builder.info.splits['train'].num_examples == 6


def test_band_stats_match_numpy(cfg):
  cubes = _train_tiles(cfg).reshape(-1, enmap.NUM_BANDS).astype(np.float64)
  stats = data.band_stats(cfg)
  assert stats['mean'].dtype == stats['std'].dtype == np.float32
  np.testing.assert_allclose(stats['mean'], cubes.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['std'], cubes.std(0), rtol=1e-4)
  path = pathlib.Path(data.prepared_builder(cfg).data_dir) / 'band_stats.json'
  assert json.loads(path.read_text())['num_pixels'] == cubes.shape[0]


def test_metadata(cfg):
  np.testing.assert_array_equal(data.wavelengths(cfg), enmap.WAVELENGTHS_NM)
  assert data.class_names(cfg)[0] == 'soil' and len(data.class_names(cfg)) == 10
  with pytest.raises(ValueError, match='Unknown data set'):
    data.wavelengths(_config(cfg.data_dir, name='nope'))


def test_prepare_masks_non_finite_pixels():
  cube = np.ones((2, 3, 4), np.float32)
  cube[0, 1, 2] = np.nan
  cube[1, 2, 0] = np.inf
  out = data.prepare({'cube': cube, 'labels': np.zeros((2, 3))}, keys=())
  assert set(out) == {'cube', 'valid'}
  expected = np.ones((2, 3), bool)
  expected[0, 1] = expected[1, 2] = False
  np.testing.assert_array_equal(out['valid'], expected)
  assert np.isfinite(out['cube']).all()
  np.testing.assert_array_equal(out['cube'][0, 1], 0)
  np.testing.assert_array_equal(out['cube'][0, 0], 1)
  assert 'labels' in data.prepare({'cube': cube, 'labels': 0})


def test_train_iterator_is_deterministic_by_step(cfg):
  fresh = data.train_iterator(cfg, 2, seed=7)
  batches = [next(fresh) for _ in range(5)]
  assert batches[0]['cube'].shape == (2, 8, 8, enmap.NUM_BANDS)
  assert batches[0]['valid'].dtype == bool and batches[0]['valid'].all()
  resumed = data.train_iterator(cfg, 2, seed=7, start_step=3)
  for want in batches[3:]:
    np.testing.assert_array_equal(next(resumed)['cube'], want['cube'])
  # The first 3 batches are one epoch: each train tile exactly once.
  tiles = _train_tiles(cfg)
  epoch = np.concatenate([b['cube'] for b in batches[:3]])
  order = [int(np.flatnonzero((tiles == c).all(axis=(1, 2, 3)))[0])
           for c in epoch]
  assert sorted(order) == list(range(6)) and order != list(range(6))
  other = data.train_iterator(cfg, 2, seed=8)
  assert not np.array_equal(next(other)['cube'], batches[0]['cube'])


def test_train_iterator_splits_global_batches_across_processes(cfg):
  whole = data.train_iterator(cfg, 4, seed=3)
  parts = [data.train_iterator(cfg, 2, seed=3, process_index=p,
                               process_count=2) for p in range(2)]
  for _ in range(3):
    want = next(whole)['cube']
    got = np.concatenate([next(it)['cube'] for it in parts])
    np.testing.assert_array_equal(np.sort(got.reshape(4, -1), 0),
                                  np.sort(want.reshape(4, -1), 0))


def test_eval_batches_cover_each_tile_once(cfg):
  batches = list(data.eval_batches(cfg, 'train', 4))
  assert [len(b['tile_id']) for b in batches] == [4, 2]
  ids = np.concatenate([b['tile_id'] for b in batches])
  np.testing.assert_array_equal(ids, np.arange(6))
  np.testing.assert_array_equal(
      np.concatenate([b['cube'] for b in batches]), _train_tiles(cfg))
  first = batches[0]
  assert first['abundances'].shape == (4, 8, 8, 10)
  assert first['endmembers'].shape == (4, 10, enmap.NUM_BANDS)
  assert first['labels'].shape == first['valid'].shape == (4, 8, 8)
  assert first['region'].shape == (4,) and not first['region'].any()
  assert first['region'].dtype == np.int32 and first['labels'].dtype == np.int32
  short = list(data.eval_batches(cfg, 'test', 2, max_tiles=1))
  assert len(short) == 1 and list(short[0]['tile_id']) == [0]


def test_bad_splits_fail_clearly(cfg):
  with pytest.raises(ValueError, match='Unknown split'):
    next(data.eval_batches(cfg, 'validation', 2))
  with pytest.raises(ValueError, match='num_test_b'):
    next(data.eval_batches(cfg, 'test_b', 2))
