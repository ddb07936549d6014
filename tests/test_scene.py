"""A user's own cube (198 bands, library spectra): readers, tiling, checks,
pretraining with configs/own_scene.py and abundance maps from predict."""

import importlib.util
import json
import logging
import pathlib
import re
import types

import numpy as np
import pytest
import rasterio
from rasterio import transform as rio_transform

from kgmae_jax import config_lib
from kgmae_jax import data
from kgmae_jax import inference
from kgmae_jax import predict
from kgmae_jax import report
from kgmae_jax import readers
from kgmae_jax import scene
from kgmae_jax import train
from kgmae_jax import unmixing

SIZE = 48
# 198 bands avoiding the libraries' water-vapour gaps.
WAVELENGTHS = np.concatenate([np.linspace(420, 1340, 108),
                              np.linspace(1460, 1790, 39),
                              np.linspace(1960, 2400, 51)])
NODATA = -32768.0
TRANSFORM = rio_transform.from_origin(500000.0, 4200000.0, 10.0, 10.0)


def make_cube(seed=0, m=4):
  """(H, W, 198) float32 reflectance x 10^4 mixed from library spectra, with
  a nodata block and NaN pixels; returns (cube, valid, abundances)."""
  rng = np.random.default_rng(seed)
  em = unmixing.library_endmembers(WAVELENGTHS, m).T.astype(np.float64)
  a = rng.dirichlet(np.ones(m), (SIZE // 8, SIZE // 8))
  a = np.repeat(np.repeat(a, 8, 0), 8, 1)
  refl = a @ em + rng.normal(0, 0.002, (SIZE, SIZE, len(WAVELENGTHS)))
  cube = (refl * 1e4).astype(np.float32)
  valid = np.ones((SIZE, SIZE), bool)
  cube[4:10, 30:44] = NODATA
  valid[4:10, 30:44] = False
  cube[20, 5, 17] = np.nan
  valid[20, 5] = False
  return cube, valid, a


def own_scene_config(path, wavelengths_file, data_dir):
  spec = importlib.util.spec_from_file_location(
      'own_scene', pathlib.Path(__file__).parents[1] / 'configs/own_scene.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.scene = str(path)
  c.data.wavelengths_file = str(wavelengths_file)
  c.data.data_dir = str(data_dir)
  c.data.reflectance_scale = 1e-4
  c.data.nodata = NODATA
  c.data.tile_size = 16
  c.data.tile_overlap = 8
  c.data.test_fraction = 1 / 3
  c.model.width = c.model.dec_width = 32
  c.model.depth = 1
  c.model.num_heads = c.model.dec_num_heads = 2
  c.lsmm.num_endmembers = 4
  c.train.batch_size = 8
  c.train.steps = 2
  c.train.log_every = 1
  c.evals.num_tiles = 4
  c.evals.batch_size = 4
  c.evals.num_plot = 2
  return c


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('scene')
  cube, valid, a = make_cube()
  np.save(root / 'cube.npy', cube)
  (root / 'wl.csv').write_text('wavelength_nm\n' + '\n'.join(
      f'{w:.3f}' for w in WAVELENGTHS))
  with rasterio.open(root / 'cube.tif', 'w', driver='GTiff', height=SIZE,
                     width=SIZE, count=len(WAVELENGTHS), dtype='float32',
                     crs='EPSG:32632', transform=TRANSFORM) as f:
    f.write(np.moveaxis(cube, -1, 0))
    for b, w in enumerate(WAVELENGTHS):
      f.update_tags(b + 1, wavelength=f'{w / 1000:.6f}',
                    wavelength_units='Micrometers')
  np.moveaxis(cube, -1, 0).astype('<f4').tofile(root / 'cube.img')
  (root / 'cube.hdr').write_text(
      f'ENVI\nsamples = {SIZE}\nlines = {SIZE}\nbands = {len(WAVELENGTHS)}\n'
      'header offset = 0\nfile type = ENVI Standard\ndata type = 4\n'
      'interleave = bsq\nbyte order = 0\nwavelength units = Nanometers\n'
      'wavelength = {' + ', '.join(f'{w:.3f}' for w in WAVELENGTHS) + '}\n')
  return dict(root=root, cube=cube, valid=valid, abundances=a)


@pytest.fixture(scope='module')
def run(files):
  c = own_scene_config(files['root'] / 'cube.npy', files['root'] / 'wl.csv',
                       files['root'] / 'data')
  summary = train.train_and_evaluate(c, files['root'] / 'work')
  return dict(config=c, summary=summary, workdir=files['root'] / 'work')


def test_readers_agree(files):
  root = files['root']
  opened = [readers.open_scene(root / 'cube.npy', scale=1e-4, nodata=NODATA,
                               wavelengths_file=root / 'wl.csv'),
            readers.open_scene(root / 'cube.tif', scale=1e-4, nodata=NODATA),
            readers.open_scene(root / 'cube.hdr', scale=1e-4, nodata=NODATA)]
  want = files['cube'] * np.float32(1e-4)
  for r in opened:
    np.testing.assert_allclose(r.wavelengths_nm, WAVELENGTHS, atol=1e-3)
    cube, valid = r.read(-2, 40, 16, 16)  # Past the top and right borders.
    np.testing.assert_array_equal(valid[2:, :8], files['valid'][:14, 40:])
    assert not valid[:2].any() and not valid[:, 8:].any()
    np.testing.assert_allclose(cube[2:, :8][valid[2:, :8]],
                               want[:14, 40:][files['valid'][:14, 40:]])
    assert np.isnan(cube[~valid]).all()
  assert opened[1].crs and opened[1].transform == tuple(TRANSFORM)[:6]
  assert opened[0].transform == readers.IDENTITY


def test_tile_grid_covers_and_keeps_test_apart():
  grid = scene.tile_grid(50, 37, 16, 8, 0.4)
  split = 50 - 20
  assert sorted({r for r, _ in grid['test']}) == [30, 34]
  assert all(r + 16 <= split for r, _ in grid['train'])
  assert all(r >= split and r + 16 <= 50 for r, _ in grid['test'])
  covered = np.zeros((split, 37), bool)
  for r, c in grid['train']:
    covered[r:r + 16, c:c + 16] = True
  assert covered.all()
  assert sorted({c for _, c in grid['train']}) == [0, 8, 16, 21]
  assert scene.tile_grid(10, 10, 16, 0, 0.0) == {'train': [], 'test': []}
  # A held-out strip under one tile (15 rows): every row trains, none held out.
  short = scene.tile_grid(50, 37, 16, 8, 0.3)
  assert short['test'] == [] and max(r for r, _ in short['train']) == 34


def test_pretrain_and_predict_abundances(run, files, tmp_path):
  c = run['config'].data
  assert len(data.wavelengths(c)) == 198 and data.class_names(c) == ()
  assert data.prepared_builder(c).info.splits['test'].num_examples == 5
  out = tmp_path / 'a.tif'
  result = predict.run(run['workdir'], files['root'] / 'cube.tif', out,
                       tile=16, overlap=8)
  with rasterio.open(out) as f:
    a = f.read()
    assert f.count == 4 and f.transform == TRANSFORM
    assert f.crs == rasterio.crs.CRS.from_epsg(32632)
  valid = files['valid']
  np.testing.assert_array_equal(np.isnan(a).any(0), ~valid)
  np.testing.assert_allclose(a.sum(0)[valid], 1.0, atol=1e-5)
  # The .npy input (no georeference) gives the same maps.
  npy = predict.run(run['workdir'], files['root'] / 'cube.npy',
                    tmp_path / 'b.tif', tile=16, overlap=8,
                    wavelengths=str(files['root'] / 'wl.csv'))
  np.testing.assert_allclose(npy['array'], result['array'], atol=1e-6)
  rec = predict.run(run['workdir'], files['root'] / 'cube.hdr',
                    tmp_path / 'r.tif', what='reconstruction')['array']
  assert rec.shape == (SIZE, SIZE, 198)
  np.testing.assert_array_equal(np.isnan(rec).any(-1), ~valid)


def test_implausible_values_name_the_field(files, tmp_path):
  root = files['root']
  c = own_scene_config(root / 'cube.npy', root / 'wl.csv', tmp_path)
  c.data.reflectance_scale = 1.0
  with pytest.raises(ValueError, match=r'config.data.reflectance_scale: '
                     'median value .* raw digital numbers'):
    data.prepared_builder(c.data)
  c.data.reflectance_scale, c.data.nodata = 1e-4, -1.0
  with pytest.raises(ValueError, match=r'config.data.nodata: .* below'):
    data.prepared_builder(c.data)
  np.save(tmp_path / 'empty.npy', np.full((48, 48, 198), NODATA, np.float32))
  c.data.scene, c.data.nodata = str(tmp_path / 'empty.npy'), NODATA
  with pytest.raises(ValueError, match=r'config.data.nodata: no train tile'):
    data.prepared_builder(c.data)
  np.save(tmp_path / 'small.npy', np.full((12, 12, 198), 0.1, np.float32))
  c.data.scene = str(tmp_path / 'small.npy')
  with pytest.raises(ValueError, match=r'config.data.tile_size: 16 leaves no '
                     'train tile'):
    data.prepared_builder(c.data)
  c.data.scene = str(tmp_path / 'missing.tif')
  with pytest.raises(FileNotFoundError, match=r'config.data.scene'):
    data.prepared_builder(c.data)
  c.data.scene, c.data.wavelengths_file = str(root / 'cube.npy'), ''
  with pytest.raises(ValueError, match=r'config.data.wavelengths_file'):
    readers.open_scene(c.data.scene)
  (tmp_path / 'short.txt').write_text('500\n600\n')
  with pytest.raises(ValueError, match=r'wavelengths_file: 2 wavelengths for '
                     'the 198 bands'):
    readers.open_scene(c.data.scene, wavelengths_file=tmp_path / 'short.txt')


def test_predict_on_raw_values_names_the_flag(run, files, tmp_path):
  with pytest.raises(ValueError, match=r'--scale: median value'):
    predict.run(run['workdir'], files['root'] / 'cube.tif', tmp_path / 'o.tif',
                scale=1.0)


def test_figure(run, files, tmp_path):
  out = predict.figure(run['workdir'], files['root'] / 'cube.tif',
                       tmp_path / 'fig.png', pixels=[(30, 3), (20, 40)],
                       window=(8, 0, 40, 44), tile=16)
  assert (tmp_path / 'fig.png').stat().st_size > 10_000
  assert out['reconstruction'].shape == (40, 44, 198)
  np.testing.assert_array_equal(out['valid'], files['valid'][8:48, :44])
  # De-normalised: reflectance of the same order as the input.
  v = out['valid']
  assert 0.2 < np.median(out['reconstruction'][v]) / np.median(
      out['cube'][v]) < 5
  np.testing.assert_allclose(out['abundances'][v].sum(-1), 1.0, atol=1e-5)


def test_too_small_test_fraction_trains_on_every_row(files, tmp_path, caplog):
  root = files['root']
  c = own_scene_config(root / 'cube.npy', root / 'wl.csv', tmp_path)
  c.data.test_fraction = 0.2  # 10 of 48 rows < one 16-pixel tile.
  caplog.set_level(logging.WARNING)
  builder = data.benchmark_builder(c.data)
  assert 'test_fraction: 0.2 of the rows is less than one tile' in caplog.text
  splits = builder.info.splits
  assert 'test' not in splits or splits['test'].num_examples == 0
  full = own_scene_config(root / 'cube.npy', root / 'wl.csv', tmp_path / 'f')
  full.data.test_fraction = 0.0
  assert (builder.info.splits['train'].num_examples
          == data.benchmark_builder(full.data).info.splits['train'].num_examples)
  assert data.evaluation_split(c.data, 'test') == 'train'


def test_entirely_nodata_tiles_are_skipped_and_counted(files, tmp_path, caplog):
  cube = np.load(files['root'] / 'cube.npy')
  cube[:16, :16] = NODATA  # Exactly the train tile at (0, 0).
  np.save(tmp_path / 'holey.npy', cube)
  c = own_scene_config(tmp_path / 'holey.npy', files['root'] / 'wl.csv', tmp_path / 'd')
  c.data.min_valid_fraction = 0.01  # Only entirely empty tiles are dropped.
  caplog.set_level(logging.INFO)
  builder = data.prepared_builder(c.data)
  ref = own_scene_config(files['root'] / 'cube.npy', files['root'] / 'wl.csv',
                         tmp_path / 'r')
  ref.data.min_valid_fraction = 0.01
  n_ref = data.prepared_builder(ref.data).info.splits['train'].num_examples
  assert builder.info.splits['train'].num_examples == n_ref - 1
  assert re.search(r'holey\S* train: \d+ tile positions, 1 entirely nodata skipped',
                   caplog.text)


def test_existing_build_is_reopened_as_by_a_new_process(run):
  c = run['config'].data
  n = data.prepared_builder(c).info.splits['train'].num_examples
  data._prepared_builder.cache_clear()  # What a rerun (resume, predict) sees.
  assert data.prepared_builder(c).info.splits['train'].num_examples == n


def test_bad_bands_are_named_and_dropped_by_index_or_range(files, tmp_path):
  cube = np.load(files['root'] / 'cube.npy')
  cube[..., 5] = 1234.0  # A dead detector: constant.
  cube[..., 40] = np.nan  # A band with no valid value.
  np.save(tmp_path / 'bad.npy', cube)
  c = own_scene_config(tmp_path / 'bad.npy', files['root'] / 'wl.csv',
                       tmp_path / 'd')
  with pytest.raises(ValueError) as e:
    data.prepared_builder(c.data)
  msg = str(e.value)
  assert msg.startswith('config.data.drop_bands: bad.npy: ')
  assert f'band 5 ({WAVELENGTHS[5]:.1f} nm) is constant (0.1234' in msg
  assert f'band 40 ({WAVELENGTHS[40]:.1f} nm) has no valid value' in msg
  assert 'drop_bands="(5, 40)"' in msg
  c.data.drop_bands = (5,)
  c.data.drop_ranges_nm = ((WAVELENGTHS[40] - 1, WAVELENGTHS[40] + 1),)
  wl = data.wavelengths(c.data)
  np.testing.assert_allclose(wl, np.delete(WAVELENGTHS, [5, 40]), atol=1e-3)
  assert data.band_stats(c.data)['std'].min() > 0
  # predict reads the same bands, by the rule in the checkpoint's config.
  loaded = types.SimpleNamespace(  # What open_image reads of inference.load's.
      config=config_lib.from_saved(json.loads(json.dumps(
          report.jsonable(c.to_dict())))),
      model=types.SimpleNamespace(num_bands=196), workdir=str(tmp_path))
  reader = inference.open_image(loaded, tmp_path / 'bad.npy',
                                wavelengths=str(files['root'] / 'wl.csv'))
  assert reader.shape == (SIZE, SIZE, 196)
  tile, valid = reader.read(0, 0, 16, 16)
  assert valid[:4].all() and np.isfinite(tile[valid]).all()
  with pytest.raises(ValueError, match=r'config.data.drop_bands: band 500 '):
    readers.open_scene(tmp_path / 'bad.npy', drop_bands=(500,),
                       wavelengths_file=files['root'] / 'wl.csv')


@pytest.mark.parametrize('kwargs, message', [
    (dict(pixels=[(100, 100)]), r'--pixels \(100, 100\) is outside the window '
     r'of 48 x 48 pixels'),
    (dict(pixels=[(-5, -5)]), r'--pixels \(-5, -5\) is outside'),
    (dict(window=(60, 0, 10, 10)), r'--window 60,0,10,10 .* not inside the 48 '
     r'x 48 image'),
    (dict(window=(40, 40, 16, 16)), r'--window 40,40,16,16'),
])
def test_figure_arguments_outside_the_image_are_refused(run, files, tmp_path,
                                                        kwargs, message):
  with pytest.raises(ValueError, match=message):
    predict.figure(run['workdir'], files['root'] / 'cube.tif',
                   tmp_path / 'fig.png', tile=16, **kwargs)
  assert not (tmp_path / 'fig.png').exists()


def test_channel_first_npy_gets_a_hint(files, tmp_path):
  np.save(tmp_path / 'bhw.npy', np.moveaxis(files['cube'][:, :40], -1, 0))
  with pytest.raises(ValueError, match=r'198 wavelengths for the 40 bands .* '
                     r'channel-first \(B, H, W\)'):
    readers.open_scene(tmp_path / 'bhw.npy',
                       wavelengths_file=files['root'] / 'wl.csv')
