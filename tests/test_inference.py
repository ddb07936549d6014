"""inference.py: load without the trainer, numpy cubes of any size, tiled
blending against brute force, the checkpoint's shape check, and the README's
"Use a trained model from Python" example run against a tiny trained workdir."""

import contextlib
import io
import pathlib
import re

import jax
import numpy as np
import optax
import pytest

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import inference
from kgmae_jax import model as model_lib
from kgmae_jax import patching
from kgmae_jax import report
from kgmae_jax import train
from tests import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def workdir(tiny_run):
  """A tiny KARMA (pixel abundance head) trained for 8 steps on the tiny
  benchmark: conftest's shared run."""
  return tiny_run[0]


def _refuse(*args, **kwargs):
  raise AssertionError('inference.load must not build an optimiser or a '
                       'train step.')


def test_load_builds_no_optimiser_and_no_train_step(workdir, monkeypatch):
  for name in ('build_trainer', 'make_optimizer', 'make_train_step',
               'init_state'):
    monkeypatch.setattr(train, name, _refuse)
  for name in ('adamw', 'adam', 'chain', 'apply_if_finite', 'multi_transform'):
    monkeypatch.setattr(optax, name, _refuse)
  loaded = inference.load(workdir)
  monkeypatch.undo()
  assert loaded.step == 8 and loaded.model.num_bands == 218
  assert loaded.band_mean.shape == loaded.band_std.shape == (218,)
  assert loaded.wavelengths_nm.shape == (218,) and loaded.class_names
  assert loaded.config.train.steps == 8  # The run's config, not defaults.
  # The same parameters as the trainer's full restore of the same step.
  c = loaded.config
  trainer = train.build_trainer(
      c, jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                           ('data', 'fsdp')),
      218, loaded.band_mean, loaded.band_std)
  ckpt = ckpt_lib.Checkpointer(workdir, 1, None, create=False)
  state, _ = ckpt.restore(loaded.step, trainer.abstract_state)
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, loaded.params,
               jax.device_get(state.params))


def test_inference_does_not_depend_on_the_trainer():
  from tests import test_imports  # pylint: disable=g-import-not-at-top
  graph = test_imports.import_graph()
  seen, todo = set(), ['inference']
  while todo:
    for dep in graph[todo.pop()] - seen:
      seen.add(dep)
      todo.append(dep)
  assert {'model', 'checkpoint'} <= seen
  assert not seen & {'train', 'sharding', 'data', 'evaluate'}, seen


def test_one_tile_matches_the_model(workdir):
  """A cube of exactly one tile: the blend is that tile's output."""
  loaded = inference.load(workdir)
  t, p = loaded.config.data.tile_size, loaded.model.patch_size
  rng = np.random.default_rng(0)
  cube = rng.uniform(0.05, 0.5, (t, t, 218)).astype(np.float32)
  ids, _, _ = patching.no_masking(1, (t // p) ** 2)
  res = model_lib.forward(loaded.model, loaded.params, cube[None],
                          np.ones((1, t, t), bool), ids, ids,
                          loaded.band_mean, loaded.band_std)
  recon = inference.reconstruct(loaded, cube, overlap=0)
  want = res['pred'][0] * loaded.band_std + loaded.band_mean  # (L, p*p, B)
  np.testing.assert_allclose(
      recon, patching.unpatchify(want.reshape(1, -1, p * p * 218), p,
                                 (t // p, t // p), 218)[0], atol=1e-5)
  abund, em = inference.unmix(loaded, cube, overlap=0)
  np.testing.assert_allclose(abund.reshape(t // p, p, t // p, p, -1).transpose(
      0, 2, 1, 3, 4).reshape(-1, p * p, 3), res['abundances'][0], atol=1e-6)
  np.testing.assert_allclose(em, res['endmembers'], atol=1e-7)


def test_any_size_with_nodata(workdir):
  loaded = inference.load(workdir)
  rng = np.random.default_rng(1)
  cube = rng.uniform(0.05, 0.5, (13, 21, 218)).astype(np.float32)
  cube[:4, :4] = np.nan  # A whole 4x4 patch of nodata.
  valid = np.ones((13, 21), bool)
  valid[10, 20] = False
  bad = ~valid
  bad[:4, :4] = True
  z = inference.embed(loaded, cube, valid)
  assert z.shape == (4, 6, 32)
  assert np.isnan(z[0, 0]).all() and np.isfinite(z[1:]).all()
  a, em = inference.unmix(loaded, cube, valid, tile=8, overlap=4,
                          batch_size=3)
  assert a.shape == (13, 21, 3) and em.shape == (218, 3)
  np.testing.assert_array_equal(np.isnan(a).any(-1), bad)
  np.testing.assert_allclose(a[~bad].sum(-1), 1.0, atol=1e-5)
  x = inference.reconstruct(loaded, cube, valid)
  assert x.shape == (13, 21, 218)
  np.testing.assert_array_equal(np.isnan(x).any(-1), bad)
  with pytest.raises(ValueError, match=r'cube has shape \(13, 21, 5\); the '
                     r'model takes \(H, W, 218\)'):
    inference.embed(loaded, cube[..., :5])
  with pytest.raises(ValueError, match='tile=6 must be a multiple of the '
                     'patch size 4'):
    inference.reconstruct(loaded, cube, tile=6)


def write_checkpoint_of_another_shape(path, bands=6):
  """A checkpoint in `path` whose params have M = 3 but whose config says 5."""
  config = tiny_config.get()
  model = model_lib.build(config.model, config.lsmm, bands)
  params = inference.init_params(model, jax.random.key(0))
  saved = config.copy_and_resolve_references()
  saved.lsmm.num_endmembers = 5  # The stored params have M = 3.
  meta = report.jsonable({
      'config': saved.to_dict(), 'wavelengths_nm': np.arange(bands) + 500.0,
      'band_mean': np.full(bands, 0.3), 'band_std': np.full(bands, 0.1),
      'class_names': [], 'num_bands': bands})
  ckpt = ckpt_lib.Checkpointer(path, 1, 1)
  ckpt.save(1, {'step': 1, 'params': params, 'opt_state': {}}, meta,
            force=True)
  ckpt.close()


def test_checkpoint_of_another_shape_raises_shape_mismatch(tmp_path):
  write_checkpoint_of_another_shape(tmp_path)
  with pytest.raises(ckpt_lib.ShapeMismatchError,
                     match=r'endmembers_raw: checkpoint \(6, 3\) vs model '
                     r'\(6, 5\)'):
    inference.load(tmp_path)
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    inference.load(tmp_path / 'nothing')
  assert not (tmp_path / 'nothing').exists()


def test_readme_example_runs(workdir):
  readme = (ROOT / 'README.md').read_text()
  section = readme.split('## Use a trained model from Python', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  assert 'runs/quickstart' in code
  code = code.replace('runs/quickstart', str(workdir))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  assert out.getvalue().strip()


# ------------------------------------------------------------ tiled blending
def _image(h, w, b=3, seed=0):
  rng = np.random.default_rng(seed)
  cube = rng.uniform(0, 1, (h, w, b)).astype(np.float32)
  valid = rng.uniform(size=(h, w)) > 0.2
  valid[:5, :6] = False  # A whole 4x4 block (and more) of nodata.
  return cube, valid


def test_identity_model_gives_the_input_back_and_nodata_stays():
  cube, valid = _image(37, 23)
  out = inference.tiled_predict(inference.array_reader(cube, valid), 37, 23,
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

  out = inference.tiled_predict(inference.array_reader(cube, valid), h, w,
                                per_tile_constant, tile=tile, stride=stride,
                                batch_size=4)[..., 0]
  win = inference.blend_window(tile).astype(np.float64)
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

  read = inference.array_reader(cube, valid)
  out = inference.tiled_predict(read, 26, 18, block_mean, tile=16, stride=8,
                                factor=p)
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
    inference.tiled_predict(read, 26, 18, block_mean, tile=16, stride=6,
                            factor=p)
