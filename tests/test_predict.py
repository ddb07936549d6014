"""Tiled inference: blending against a brute-force float64 sum, nodata, patch
grids, and checkpoint/model shape checks."""

import jax
import ml_collections
import numpy as np
import pytest

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import predict
from kgmae_jax import report
from kgmae_jax import sharding
from kgmae_jax import train
from tests import tiny_config


def _image(h, w, b=3, seed=0):
  rng = np.random.default_rng(seed)
  cube = rng.uniform(0, 1, (h, w, b)).astype(np.float32)
  valid = rng.uniform(size=(h, w)) > 0.2
  valid[:5, :6] = False  # A whole 4x4 block (and more) of nodata.
  return cube, valid


def _reader(cube, valid):
  h, w, _ = cube.shape

  def read(row, col, size):
    out = np.full((size, size, cube.shape[-1]), np.nan, np.float32)
    ok = np.zeros((size, size), bool)
    r1, c1 = min(row + size, h), min(col + size, w)
    out[:r1 - row, :c1 - col] = cube[row:r1, col:c1]
    ok[:r1 - row, :c1 - col] = valid[row:r1, col:c1]
    return out, ok

  return read


def test_identity_model_gives_the_input_back_and_nodata_stays():
  cube, valid = _image(37, 23)
  out = predict.tiled_predict(_reader(cube, valid), 37, 23,
                              lambda c, v: c, tile=16, stride=12,
                              batch_size=3)
  assert out.shape == (37, 23, 3)
  np.testing.assert_array_equal(np.isnan(out).any(-1), ~valid)
  np.testing.assert_allclose(out[valid], cube[valid], rtol=1e-6)


def test_blending_matches_bruteforce_weighted_mean():
  h, w, tile, stride = 30, 20, 16, 6
  cube, valid = _image(h, w, b=1)
  calls = []

  def per_tile_constant(c, v):  # Output of tile k: the constant k.
    start = len(calls)
    calls.append(len(c))
    k = start * len(c) + np.arange(len(c), dtype=np.float32)
    return np.broadcast_to(k[:, None, None, None], c.shape[:3] + (1,))

  out = predict.tiled_predict(_reader(cube, valid), h, w, per_tile_constant,
                              tile=tile, stride=stride, batch_size=4)[..., 0]
  win = predict.blend_window(tile).astype(np.float64)
  num = np.zeros((h + tile, w + tile))
  den = np.zeros_like(num)
  k = 0
  for r in range(0, h, stride):
    if r > 0 and r - stride + tile >= h:
      break
    for c in range(0, w, stride):
      if c > 0 and c - stride + tile >= w:
        break
      num[r:r + tile, c:c + tile] += k * win
      den[r:r + tile, c:c + tile] += win
      k += 1
  want = num[:h, :w] / den[:h, :w]
  np.testing.assert_allclose(out[valid], want[valid], rtol=1e-5)
  assert np.isnan(out[~valid]).all()


def test_patch_grid_outputs_are_block_means():
  p = 4
  cube, valid = _image(26, 18)

  def block_mean(c, v):
    n, t, _, b = c.shape
    return c.reshape(n, t // p, p, t // p, p, b).mean(axis=(2, 4))

  out = predict.tiled_predict(_reader(cube, valid), 26, 18, block_mean,
                              tile=16, stride=8, factor=p)
  assert out.shape == (7, 5, 3)
  padded = np.zeros((28, 20, 3), np.float32)
  padded[:26, :18] = np.where(valid[..., None], cube, 0)
  pv = np.zeros((28, 20), bool)
  pv[:26, :18] = valid
  want = padded.reshape(7, p, 5, p, 3).mean(axis=(1, 3))
  has = pv.reshape(7, p, 5, p).any(axis=(1, 3))
  assert not has[0, 0]
  np.testing.assert_array_equal(np.isnan(out).any(-1), ~has)
  np.testing.assert_allclose(out[has], want[has], rtol=1e-5)
  with pytest.raises(ValueError, match='multiples of 4'):
    predict.tiled_predict(_reader(cube, valid), 26, 18, block_mean, tile=16,
                          stride=6, factor=p)


def test_checkpoint_with_other_model_shape_names_both(tmp_path):
  config = tiny_config.get()
  bands = 6
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 1}),
                            devices=jax.devices()[:1])
  stats = np.full(bands, 0.3, np.float32), np.full(bands, 0.1, np.float32)
  trainer = train.build_trainer(config, mesh, bands, *stats)
  state = trainer.init(jax.random.key(0))
  saved = config.copy_and_resolve_references()
  saved.lsmm.num_endmembers = 5  # The stored params have M = 3.
  meta = report.jsonable({
      'config': saved.to_dict(), 'wavelengths_nm': np.arange(bands) + 500.0,
      'band_mean': stats[0], 'band_std': stats[1], 'class_names': [],
      'num_bands': bands})
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 1)
  ckpt.save(1, state, meta, force=True)
  ckpt.close()
  with pytest.raises(ValueError, match=r"endmembers_raw.* has shape \(6, 3\) "
                     r"but the model built from its config .* has \(6, 5\)"):
    predict.load_checkpoint(tmp_path)


def test_cli_refuses_bad_paths_before_loading_or_computing(tmp_path, monkeypatch):
  """--output equal to --input, a missing output folder or a mistyped
  --workdir fail before the model is loaded; nothing is created."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top

  def no_loading(*args, **kwargs):
    raise AssertionError('loaded the model before checking the paths')

  monkeypatch.setattr(predict, 'load_checkpoint', no_loading)
  work = tmp_path / 'work'
  (work / 'checkpoints').mkdir(parents=True)
  cube = tmp_path / 'cube.tif'
  cube.write_bytes(b'cube')
  (tmp_path / 'scene.hdr').write_text('ENVI\n')
  flags.FLAGS.mark_as_parsed()
  cases = [
      (dict(input=str(cube), output=str(tmp_path / 'x' / '..' / 'cube.tif')),
       r'--output .* is the input file'),
      (dict(input=str(tmp_path / 'scene.hdr'), output=str(tmp_path / 'scene.img')),
       r'--output .* is the input file'),
      (dict(input=str(cube), output=str(tmp_path / 'missing' / 'a.tif')),
       r'--output .*: folder .*missing does not exist'),
      (dict(workdir=str(tmp_path / 'wrok'), input=str(cube),
            output=str(tmp_path / 'a.tif')), r'--workdir .*wrok: no checkpoints/'),
  ]
  for what in ('abundances', 'reconstruction', 'figure'):
    for overrides, message in cases:
      with flagsaver.flagsaver(**(dict(workdir=str(work), what=what) | overrides)):
        with pytest.raises(ValueError, match=message):
          predict.main(['predict'])
  assert cube.read_bytes() == b'cube'
  assert not (tmp_path / 'wrok').exists() and not (tmp_path / 'missing').exists()
  with flagsaver.flagsaver(workdir=str(work), input=str(cube),
                           output=str(tmp_path / 'f.png'), what='figure',
                           pixels='-5,-5'):
    with pytest.raises(Exception, match=r"--pixels='-5,-5': expected non-negative"):
      predict.main(['predict'])
