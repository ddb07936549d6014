"""EnMAP L2A: a fake product through build -> pretrain -> predict -> GeoTIFF."""

import logging

import numpy as np
import pytest
import rasterio

from kgmae_jax import data
from kgmae_jax import enmap
from kgmae_jax import enmap_l2a
from kgmae_jax import predict
from kgmae_jax import train
from tests import fake_l2a
from tests import tiny_config

SIZE = 48
OTHER = fake_l2a.NAME.replace('DT0000001867', 'DT0000001868')


def _config(manual_dir, data_dir):
  c = tiny_config.get()
  c.data.name = 'enmap_l2a'
  c.data.manual_dir = str(manual_dir)
  c.data.data_dir = str(data_dir)
  c.data.tile_size = 16  # SSIM in the evaluation needs >= 11 pixels.
  c.data.test_fraction = 1 / 3  # Bottom 16 rows of each 48-row product.
  c.train.steps = 2
  c.train.log_every = 1
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """Two products (a folder and a .ZIP), built and pretrained 2 steps."""
  root = tmp_path_factory.mktemp('l2a')
  folder = fake_l2a.write_product(root / 'products', SIZE, SIZE)
  fake_l2a.write_product(root / 'products', SIZE, SIZE, seed=1, name=OTHER,
                         as_zip=True, cloud=False)
  config = _config(root / 'products', root / 'data')
  summary = train.train_and_evaluate(config, root / 'work')
  return dict(root=root, folder=folder, config=config, summary=summary,
              workdir=root / 'work')


def test_metadata_and_reader_masks(run):
  xml = next(run['folder'].glob('*-METADATA.XML'))
  meta = enmap_l2a.parse_metadata(xml.read_bytes())
  np.testing.assert_allclose(meta['wavelengths_nm'],
                             enmap.NOMINAL_WAVELENGTHS_NM, atol=1e-3)
  np.testing.assert_allclose(meta['gain'], 1e-4)
  product = enmap_l2a.open_product(xml)
  cube, valid = product.read(0, 0, SIZE, SIZE)
  assert cube.shape == (SIZE, SIZE, 218)
  np.testing.assert_array_equal(valid, fake_l2a.expected_valid(SIZE, SIZE))
  want = fake_l2a.reflectance(SIZE, SIZE)  # Quantised to 1e-4 on disk.
  np.testing.assert_allclose(cube[valid], want[valid], atol=5.1e-5)
  assert np.isnan(cube[~valid]).all()
  assert product.finish() == 0  # Water-vapour bands are all fill.
  product.close()


def test_build_splits_metadata_and_stats(run):
  c = run['config'].data
  builder = data.prepared_builder(c)
  # 2 products x (2 train rows x 3 cols); each top-left tile is 136/256
  # fill (the triangle) and dropped.
  assert builder.info.splits['train'].num_examples == 10
  assert builder.info.splits['test'].num_examples == 6
  np.testing.assert_allclose(data.wavelengths(c), enmap.WAVELENGTHS_NM,
                             atol=1e-3)
  assert data.class_names(c) == ()
  batch = next(data.eval_batches(c, 'test', 8))
  assert batch['cube'].shape == (6, 16, 16, 218)
  assert b'UTM zone 33N' in batch['crs'][0]
  np.testing.assert_allclose(  # Origin of the tile at row 32, col 0.
      batch['transform'][0], (30, 0, 400000, 0, -30, 5800000 - 32 * 30))
  # Stats over the valid train pixels, against numpy float64.
  src = builder.as_data_source('train')
  pixels = np.concatenate([
      (lambda t: t[np.isfinite(t).all(-1)])(np.asarray(src[i]['cube']))
      for i in range(len(src))]).astype(np.float64)
  stats = data.band_stats(c)
  np.testing.assert_allclose(stats['mean'], pixels.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['std'], pixels.std(0), rtol=1e-3)


def test_pretrain_and_predict_geotiff(run, tmp_path):
  assert 'unmixing' not in run['summary']['metrics']  # No truth on L2A.
  assert np.isfinite(run['summary']['metrics']['reconstruction']['model'][
      'psnr'])
  out = tmp_path / 'abund.tif'
  xml = next(run['folder'].glob('*-METADATA.XML'))
  result = predict.run(run['workdir'], xml, out, tile=16, overlap=8)
  with rasterio.open(out) as f:
    assert f.count == tiny_config.get().lsmm.num_endmembers
    assert f.crs == rasterio.crs.CRS.from_string(fake_l2a.CRS)
    assert f.transform == fake_l2a.TRANSFORM
    assert np.isnan(f.nodata)
    a = f.read()  # (M, H, W)
  valid = fake_l2a.expected_valid(SIZE, SIZE)
  np.testing.assert_array_equal(np.isnan(a).any(0), ~valid)
  np.testing.assert_array_equal(np.isnan(a).all(0), ~valid)
  np.testing.assert_allclose(a.sum(0)[valid], 1.0, atol=1e-5)
  assert (a[:, valid] >= 0).all()
  np.testing.assert_array_equal(np.moveaxis(a, 0, -1), result['array'])
  table = np.loadtxt(tmp_path / 'abund_endmembers.csv', delimiter=',',
                     skiprows=1)
  assert table.shape == (218, 1 + a.shape[0])
  np.testing.assert_allclose(table[:, 0], enmap.WAVELENGTHS_NM, atol=1e-3)
  assert (tmp_path / 'abund_endmembers.png').stat().st_size > 0


def test_dropped_bands_with_data_warn(tmp_path, caplog):
  folder = fake_l2a.write_product(tmp_path, 16, 16, dropped_data=True)
  product = enmap_l2a.open_product(folder)
  product.read(0, 0, 16, 16)
  with caplog.at_level(logging.WARNING):
    assert product.finish() == 16 * 16 - 15 - 64  # Less triangle, corner.
  assert 'expected to be all fill' in caplog.text


def test_missing_or_empty_manual_dir_names_the_pattern(tmp_path):
  c = _config(tmp_path / 'nowhere', tmp_path / 'data').data
  with pytest.raises(FileNotFoundError, match=r'config.data.manual_dir.*'
                     r'nowhere.*\*-METADATA.XML.*\*-SPECTRAL_IMAGE.TIF'):
    data.prepared_builder(c)
  (tmp_path / 'empty').mkdir()
  c.manual_dir = str(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match=r'no EnMAP L2A product in .*empty'):
    data.prepared_builder(c)


def test_raw_dn_scale_is_refused_at_build_time(tmp_path):
  fake_l2a.write_product(tmp_path / 'p', 16, 16, gain=1.0)
  c = _config(tmp_path / 'p', tmp_path / 'data').data
  c.tile_size, c.test_fraction = 8, 0.5
  with pytest.raises(ValueError, match=r'config.data.reflectance_scale: '
                     r'median value .* raw digital numbers'):
    data.prepared_builder(c)


def test_predict_refuses_other_band_count(run, tmp_path):
  cube = np.zeros((16, 16, 30), np.float32) + 0.2
  np.save(tmp_path / 'c.npy', cube)
  (tmp_path / 'wl.txt').write_text('\n'.join(map(str, range(400, 430))))
  with pytest.raises(ValueError, match=r'\(16, 16, 30\).*\(N, 16, 16, 218\)'):
    predict.run(run['workdir'], tmp_path / 'c.npy', tmp_path / 'o.tif',
                wavelengths=str(tmp_path / 'wl.txt'))
