"""predict.py's command-line path. Tiled inference itself (blending, nodata,
patch grids) is tested in test_inference.py; whole runs in test_scene.py and
test_enmap_l2a.py."""

import jax
import numpy as np
import pytest

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import inference
from kgmae_jax import model as model_lib
from kgmae_jax import predict
from kgmae_jax import report
from tests import tiny_config


def test_checkpoint_with_other_model_shape_names_both(tmp_path):
  config = tiny_config.get()
  bands = 6
  model = model_lib.build(config.model, config.lsmm, bands)
  params = inference.init_params(model, jax.random.key(0))
  saved = config.copy_and_resolve_references()
  saved.lsmm.num_endmembers = 5  # The stored params have M = 3.
  meta = report.jsonable({
      'config': saved.to_dict(), 'wavelengths_nm': np.arange(bands) + 500.0,
      'band_mean': np.full(bands, 0.3), 'band_std': np.full(bands, 0.1),
      'class_names': [], 'num_bands': bands})
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 1)
  ckpt.save(1, {'step': 1, 'params': params, 'opt_state': {}}, meta,
            force=True)
  ckpt.close()
  np.save(tmp_path / 'cube.npy', np.full((8, 8, bands), 0.2, np.float32))
  with pytest.raises(ckpt_lib.ShapeMismatchError,
                     match=r'endmembers_raw: checkpoint \(6, 3\) vs model '
                     r'\(6, 5\)'):
    predict.run(tmp_path, tmp_path / 'cube.npy', tmp_path / 'out.tif')
