r"""Measures what docs/own_data.md reports: memory held while reading an EnMAP
L2A product, and predict throughput on a CPU.

  python benchmarks/own_data_benchmark.py memory --size 1000 --dir /tmp/measure
  python benchmarks/own_data_benchmark.py predict --size 512 --dir /tmp/measure \
      --config configs/own_scene.py

`memory` writes a fake 224-band int16 L2A product of size x size pixels
(block by block, so the writer holds little); then, each in a fresh process,
reads it tile by tile as the builder does (`enmap_l2a.L2AProduct.read`,
224 x 224 windows) and builds the TFDS data set from it (tile 224), reporting
tracemalloc peaks (numpy and Python allocations) and peak RSS (ru_maxrss,
including imports and GDAL's block cache).
`predict` saves a freshly initialised checkpoint of the config's model (the
weights do not change the cost) and times `predict.predict_array` on a
(size, size, B) image, after one warm-up call for compilation.
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_big_product(root, size):
  import rasterio  # pylint: disable=g-import-not-at-top
  from rasterio import windows  # pylint: disable=g-import-not-at-top
  from kgmae_jax import enmap, enmap_l2a  # pylint: disable=g-import-not-at-top
  from tests import fake_l2a  # pylint: disable=g-import-not-at-top
  name = fake_l2a.NAME
  folder = pathlib.Path(root) / 'products' / name
  folder.mkdir(parents=True, exist_ok=True)
  prefix = folder / name
  (folder / f'{name}-METADATA.XML').write_text(fake_l2a.metadata_xml())
  profile = dict(driver='GTiff', height=size, width=size, crs=fake_l2a.CRS,
                 transform=fake_l2a.TRANSFORM, tiled=True, blockxsize=256,
                 blockysize=256)
  rng = np.random.default_rng(0)
  em = rng.uniform(500, 5000, (4, 218))
  with rasterio.open(f'{prefix}-SPECTRAL_IMAGE.TIF', 'w', count=224,
                     dtype='int16', nodata=enmap_l2a.FILL, interleave='pixel',
                     **profile) as f:
    for r in range(0, size, 256):
      for c in range(0, size, 256):
        h, w = min(256, size - r), min(256, size - c)
        a = rng.dirichlet(np.ones(4), (h, w))
        block = np.full((h, w, 224), enmap_l2a.FILL, np.int16)
        block[..., enmap.BAND_INDICES] = (a @ em).astype(np.int16)
        f.write(np.moveaxis(block, -1, 0),
                window=windows.Window(c, r, w, h))
  for layer in enmap_l2a.QUALITY_LAYERS:
    with rasterio.open(f'{prefix}-{layer}.TIF', 'w', count=1, dtype='uint8',
                       **profile) as f:
      f.write(np.zeros((1, size, size), np.uint8))
  return folder


def _read_all(folder, size):
  """In a fresh process: tile-by-tile read of the product, as the builder."""
  from kgmae_jax import enmap_l2a  # pylint: disable=g-import-not-at-top
  base = _rss_mb()
  tracemalloc.start()
  product = enmap_l2a.open_product(folder)
  t0 = time.perf_counter()
  n = 0
  for r in range(0, size - 223, 224):
    for c in range(0, size - 223, 224):
      product.read(r, c, 224, 224)
      n += 1
  product.close()
  _, peak = tracemalloc.get_traced_memory()
  return {'tiles_read': n, 'read_s': time.perf_counter() - t0,
          'read_tracemalloc_peak_mb': peak / 2**20,
          'read_rss_after_imports_mb': base, 'read_rss_peak_mb': _rss_mb()}


def _build(folder, out_dir):
  """In a fresh process: the TFDS build of the product (tile 224)."""
  from kgmae_jax import config_lib, data  # pylint: disable=g-import-not-at-top
  base = _rss_mb()
  c = config_lib.base_config().data
  c.name, c.manual_dir = 'enmap_l2a', str(folder.parent)
  c.data_dir, c.tile_size, c.test_fraction = f'{out_dir}/tfds', 224, 0.25
  tracemalloc.start()
  t0 = time.perf_counter()
  builder = data.prepared_builder(c)
  _, peak = tracemalloc.get_traced_memory()
  return {'build_s': time.perf_counter() - t0,
          'build_tiles': {k: v.num_examples for k, v in
                          builder.info.splits.items()},
          'build_tracemalloc_peak_mb': peak / 2**20,
          'build_rss_after_imports_mb': base, 'build_rss_peak_mb': _rss_mb()}


def memory(args):
  folder = pathlib.Path(args.dir) / 'products' / 'product'
  if args.step == 'read':
    print(json.dumps(_read_all(next(folder.parent.glob('ENMAP*')), args.size)))
    return
  if args.step == 'build':
    print(json.dumps(_build(next(folder.parent.glob('ENMAP*')), args.dir)))
    return
  folder = write_big_product(args.dir, args.size)
  tif = next(folder.glob('*-SPECTRAL_IMAGE.TIF'))
  out = {'product_mb': tif.stat().st_size / 2**20}
  for step in ('read', 'build'):
    res = subprocess.run(
        [sys.executable, __file__, 'memory', '--step', step, '--size',
         str(args.size), '--dir', args.dir], capture_output=True, text=True,
        check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
    out.update(json.loads(res.stdout.strip().splitlines()[-1]))
  print(json.dumps(out, indent=1))


def predict_throughput(args):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from kgmae_jax import checkpoint, inference, predict, report, sharding, train  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('cfg', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  bands = args.bands
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 1}),
                            devices=jax.devices()[:1])
  mean, std = np.full(bands, 0.3, np.float32), np.full(bands, 0.1, np.float32)
  trainer = train.build_trainer(config, mesh, bands, mean, std)
  state = trainer.init(jax.random.key(0))
  work = pathlib.Path(args.dir) / 'ckpt' / pathlib.Path(args.config).stem
  shutil.rmtree(work, ignore_errors=True)  # A fresh checkpoint each run.
  meta = report.jsonable({
      'config': config.to_dict(), 'wavelengths_nm': np.linspace(420, 2400,
                                                                bands),
      'band_mean': mean, 'band_std': std, 'class_names': [],
      'num_bands': bands})
  ckpt = checkpoint.Checkpointer(work, 1, 1)
  ckpt.save(1, state, meta, force=True)
  ckpt.close()
  loaded = inference.load(work)
  rng = np.random.default_rng(0)

  class Image:  # In-memory reader: times the model and blending, not I/O.
    name, shape = 'random', (args.size, args.size, bands)
    arr = rng.uniform(0.05, 0.5, shape).astype(np.float32)

    def read(self, row, col, h, w):
      out = np.zeros((h, w, bands), np.float32)
      ok = np.zeros((h, w), bool)
      r1, c1 = min(row + h, args.size), min(col + w, args.size)
      out[:r1 - row, :c1 - col] = self.arr[row:r1, col:c1]
      ok[:r1 - row, :c1 - col] = True
      return out, ok

  img = Image()
  res = {}
  for what in ('abundances', 'reconstruction', 'embeddings'):
    predict.predict_array(loaded, img, what,
                          window=(0, 0, 64, 64), batch_size=args.batch)
    t0 = time.perf_counter()
    predict.predict_array(loaded, img, what,
                          batch_size=args.batch)
    dt = time.perf_counter() - t0
    res[what] = {'seconds': dt, 'pixels_per_s': args.size**2 / dt}
  print(json.dumps({'config': args.config, 'bands': bands,
                    'image': [args.size, args.size],
                    'tile': config.data.tile_size, 'overlap': 'tile // 4',
                    'devices': str(jax.devices()[0]), 'results': res},
                   indent=1))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('what', choices=('memory', 'predict'))
  parser.add_argument('--size', type=int, default=1000)
  parser.add_argument('--dir', default='/tmp/kgmae_measure')
  parser.add_argument('--config', default='configs/own_scene.py')
  parser.add_argument('--bands', type=int, default=218)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--step', default='', help='memory: read | build (one '
                      'step in this process; used internally).')
  args = parser.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  memory(args) if args.what == 'memory' else predict_throughput(args)


if __name__ == '__main__':
  main()
