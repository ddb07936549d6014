"""The data-set contract: every builder implements dataset.DataSet, every
reader readers.Reader, and data.py relies on nothing else."""

import ast
import inspect
import pathlib

from kgmae_jax import config_lib
from kgmae_jax import data
from kgmae_jax import dataset
from kgmae_jax import enmap_l2a
from kgmae_jax import readers
from kgmae_jax import scene


def test_every_builder_implements_the_contract():
  fields = set(config_lib.base_config().data)
  for name, cls in data.BUILDERS.items():
    assert issubclass(cls, dataset.DataSet) and not inspect.isabstract(cls)
    assert cls.name == name
    assert cls.DATA_FIELDS and set(cls.DATA_FIELDS) <= fields, name
    assert 'train' in cls.SPLITS
  assert issubclass(data.BUILDERS['own_scene'], scene.TiledScenes)
  assert issubclass(data.BUILDERS['enmap_l2a'], scene.TiledScenes)
  assert data.benchmark_builder is data.prepared_builder  # The old name.


def test_every_reader_implements_the_reader_interface():
  for cls in (readers.RasterScene, readers.NpyScene, enmap_l2a.L2AProduct):
    assert issubclass(cls, readers.Reader) and not inspect.isabstract(cls)


def test_data_py_does_not_probe_builders():
  tree = ast.parse(pathlib.Path(data.__file__).read_text())
  calls = {n.func.id for n in ast.walk(tree)
           if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
  assert not calls & {'hasattr', 'getattr'}
