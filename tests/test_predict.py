"""predict.py's command-line path. Tiled inference itself (blending, nodata,
patch grids) is tested in test_inference.py; whole runs in test_scene.py and
test_enmap_l2a.py."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import inference
from kgmae_jax import predict
from tests import test_inference


def test_checkpoint_with_other_model_shape_names_both(tmp_path):
  bands = 6
  test_inference.write_checkpoint_of_another_shape(tmp_path, bands)
  np.save(tmp_path / 'cube.npy', np.full((8, 8, bands), 0.2, np.float32))
  with pytest.raises(ckpt_lib.ShapeMismatchError,
                     match=r'endmembers_raw: checkpoint \(6, 3\) vs model '
                     r'\(6, 5\)'):
    predict.run(tmp_path, tmp_path / 'cube.npy', tmp_path / 'out.tif')


def test_cli_refuses_bad_paths_before_loading_or_computing(tmp_path, monkeypatch):
  """--output equal to --input, a missing output folder or a mistyped
  --workdir fail before the model is loaded; nothing is created."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top

  def no_loading(*args, **kwargs):
    raise AssertionError('loaded the model before checking the paths')

  monkeypatch.setattr(inference, 'load', no_loading)  # predict's and visualize's.
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


def test_visualize_is_predict_with_what_figure(tmp_path):
  """`python -m kgmae_jax.visualize` runs predict's figure path by default:
  only that path reads --pixels, and it refuses this one before loading."""
  (tmp_path / 'checkpoints').mkdir()
  out = subprocess.run(
      [sys.executable, '-m', 'kgmae_jax.visualize', f'--workdir={tmp_path}',
       f'--input={tmp_path / "cube.tif"}', f'--output={tmp_path / "f.png"}',
       '--pixels=-5,-5'], cwd=pathlib.Path(__file__).resolve().parents[1],
      capture_output=True, text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "--pixels='-5,-5': expected non-negative" in out.stderr
