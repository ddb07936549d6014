"""Data sets for the trainer: TFDS array_record builds read by grain pipelines.

``config.data`` (an ``ml_collections.ConfigDict``) names the data set and its
generator parameters:
  name: a key of ``BUILDERS``: 'kgmae_benchmark' (the embedded benchmark,
    ``benchmark.py``), 'enmap_l2a' (EnMAP L2A products, ``enmap_l2a.py``) or
    'own_scene' (a user's cube, ``scene.py``). Every builder implements
    ``dataset.DataSet``, the contract this module relies on.
  data_dir: where builds live; None or '' -> $KGMAE_DATA_DIR, else
    ~/tensorflow_datasets.
  tile_size, num_train, num_test, num_test_b, snr_vnir, snr_swir, seed: the
    benchmark's ``BenchmarkConfig``; each setting is its own build.
  num_workers: grain reader threads (0 = read in the calling thread).
  prefetch: batches read ahead by those threads.

Batches are dicts of numpy arrays; ``cube`` has NaNs replaced by 0 and comes
with ``valid`` (N, T, T), True where every band is finite. Nothing here imports
TensorFlow.
"""

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import time

from absl import logging
import grain
import numpy as np
import tensorflow_datasets as tfds

from kgmae_jax import benchmark
from kgmae_jax import dataset
from kgmae_jax import enmap_l2a
from kgmae_jax import progress
from kgmae_jax import scene

BUILDERS: dict[str, type[dataset.DataSet]] = {
    'kgmae_benchmark': benchmark.BenchmarkBuilder,
    'enmap_l2a': enmap_l2a.EnmapL2ABuilder,
    'own_scene': scene.SceneBuilder,
}
_STATS_FILE = 'band_stats.json'


def _builder_class(data_cfg) -> type[dataset.DataSet]:
  if data_cfg.name not in BUILDERS:
    raise ValueError(f'Unknown data set config.data.name={data_cfg.name!r}; '
                     f'known: {sorted(BUILDERS)}.')
  return BUILDERS[data_cfg.name]


def _key(data_cfg) -> tuple:
  """Hashable identity of a build: name, data_dir and generator parameters."""
  cls = _builder_class(data_cfg)
  data_dir = data_cfg.get('data_dir')
  if not data_dir:  # None or ''.
    data_dir = os.environ.get('KGMAE_DATA_DIR', '~/tensorflow_datasets')
  params = tuple((f, data_cfg[f]) for f in cls.DATA_FIELDS)
  return data_cfg.name, os.path.expanduser(data_dir), params


def _build_lock(name: str, data_dir: str, params: tuple):
  """Held while one process builds (or computes statistics of) a data set:
  concurrent first runs on one data_dir wait instead of colliding in TFDS's
  rename of the ``incomplete`` folder."""
  from kgmae_jax import workdir  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(repr(params).encode()).hexdigest()[:16]
  return workdir.file_lock(
      os.path.join(data_dir, '.kgmae_build_locks', f'{name}-{digest}.lock'),
      f'the build of {name} in {data_dir}', wait=True)


@functools.lru_cache(maxsize=None)
def _prepared_builder(key: tuple) -> dataset.DataSet:
  name, data_dir, params = key
  cls = BUILDERS[name]

  def make():
    return cls(config=cls.make_builder_config(data_dir, **dict(params)),
               data_dir=data_dir, file_format='array_record')

  builder = make()
  if not builder.is_prepared():
    with _build_lock(*key):
      builder = make()  # Another process may have built it meanwhile.
      if not builder.is_prepared():
        _build(builder, name)
        return builder
  builder.check_build()  # Never train on a stale build.
  return builder


def _build(builder: dataset.DataSet, name: str) -> None:
  c = builder.builder_config
  logging.info('Building %s/%s (tiles of %dx%d) into %s.', name, c.name,
               c.tile_size, c.tile_size, builder.data_dir)
  start = time.perf_counter()
  with progress.bar(None, f'build {name}', unit='tile') as bar, _counting(
      builder, bar):
    builder.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(
            manual_dir=builder.manual_download_dir(),
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  logging.info('Built %s/%s in %.1f s.', name, c.name,
               time.perf_counter() - start)


@contextlib.contextmanager
def _counting(builder: dataset.DataSet, bar):
  """While open, each example `builder` writes is counted on `bar`.

  Every builder's tiles come from its TFDS shard generators; this wraps them,
  for this build only, by an instance attribute over the class's method.
  """
  # pylint: disable=protected-access
  shards = builder._shard_iterators_per_split

  def counted(fn):
    def examples():
      for example in fn():
        yield example
        bar.update()
    return examples

  builder._shard_iterators_per_split = lambda dl: {
      split: [counted(fn) for fn in fns] for split, fns in shards(dl).items()}
  try:
    yield
  finally:
    del builder._shard_iterators_per_split


def prepared_builder(data_cfg) -> dataset.DataSet:
  """The TFDS builder of ``config.data``'s data set (any of ``BUILDERS``),
  built on first use and reused after."""
  return _prepared_builder(_key(data_cfg))


benchmark_builder = prepared_builder  # Its former name.


def wavelengths(data_cfg) -> np.ndarray:
  """(B,) band centres in nm of the data set.

  The benchmark's are constants (builds nothing); other data sets' come from
  the build's metadata (builds on first use).
  """
  cls = _builder_class(data_cfg)
  if cls.WAVELENGTHS_NM is not None:
    return np.asarray(cls.WAVELENGTHS_NM, np.float64)
  return np.asarray(prepared_builder(data_cfg).info.metadata['wavelengths_nm'],
                    np.float64)


def class_names(data_cfg) -> tuple[str, ...]:
  """Names of the true material classes, in abundance order; () if unknown."""
  return tuple(_builder_class(data_cfg).CLASS_NAMES)


def _source(data_cfg, split: str):
  """Random-access source of one split, with clear errors for bad splits."""
  splits = _builder_class(data_cfg).SPLITS
  if split not in splits:
    raise ValueError(f'Unknown split {split!r} of {data_cfg.name}; expected '
                     f'one of {sorted(splits)}.')
  builder = prepared_builder(data_cfg)
  if split not in builder.info.splits or not builder.info.splits[
      split].num_examples:
    raise ValueError(f'Split {split!r} of {builder.builder_config.name} is '
                     f'empty: {builder.empty_split_hint(split)}.')
  return builder.as_data_source(split)


def prepare(example: dict, keys=None) -> dict:
  """Adds ``valid`` (T, T) and zeroes non-finite ``cube`` pixels.

  Args:
    example: a tile or batch with ``cube`` (..., T, T, B).
    keys: the keys to keep besides ``cube`` and ``valid``; None keeps all.

  Returns:
    The dict with ``cube`` float32, 0 wherever ``valid`` is False.
  """
  cube = np.asarray(example['cube'], np.float32)
  valid = np.isfinite(cube).all(axis=-1)
  out = {k: example[k] for k in (example if keys is None else keys)}
  out['cube'] = np.where(valid[..., None], cube, np.float32(0))
  out['valid'] = valid
  return out


def band_stats(data_cfg) -> dict[str, np.ndarray]:
  """Per-band mean and std (B,) float32 over the valid train pixels.

  Computed once and kept as ``band_stats.json`` in the build's directory.
  """
  return _band_stats(_key(data_cfg))


@functools.lru_cache(maxsize=None)
def _band_stats(key: tuple) -> dict[str, np.ndarray]:
  builder = _prepared_builder(key)
  path = pathlib.Path(builder.data_dir) / _STATS_FILE
  if not path.exists():
    with _build_lock(*key):
      if not path.exists():
        _write_band_stats(builder, path, key)
  stats = json.loads(path.read_text())
  return {k: np.asarray(stats[k], np.float32) for k in ('mean', 'std')}


def _write_band_stats(builder, path, key) -> None:
  src = builder.as_data_source('train')
  total = total_sq = count = 0.0
  for i in range(len(src)):
    tile = prepare(src[i], keys=())
    pixels = tile['cube'][tile['valid']].astype(np.float64)  # (P, B)
    total = total + pixels.sum(0)
    total_sq = total_sq + (pixels**2).sum(0)
    count += len(pixels)
  if not count:
    raise ValueError(f'No valid pixels in the train split of {key}.')
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps({'mean': mean.tolist(), 'std': std.tolist(),
                             'num_pixels': int(count)}))
  tmp.replace(path)  # Atomic: readers never see half a file.


def train_iterator(data_cfg, batch_size: int, *, seed: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1):
  """Infinite, shuffled train batches, deterministic by step.

  The train tiles are shuffled afresh each epoch (from ``seed``) and repeated
  forever; global batch s holds elements [s G, (s + 1) G) of that sequence,
  G = batch_size * process_count. Process p takes elements p, p + P, ... of
  each global batch, so ``batch_size`` is per process. Starting at
  ``start_step`` yields exactly the batches a fresh iterator yields from there.

  Args:
    data_cfg: ``config.data``.
    batch_size: tiles per batch and process.
    seed: shuffle seed.
    start_step: index of the first batch.
    process_index: this process, in [0, process_count).
    process_count: number of processes sharing each global batch.

  Returns:
    A grain iterator of {'cube': (N, T, T, B) float32, 'valid': (N, T, T)
    bool}; its ``get_state``/``set_state`` checkpoint the position.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in '
                     f'[0, {process_count}).')
  ds = (grain.MapDataset.source(_source(data_cfg, 'train'))
        .seed(seed).shuffle().repeat()
        .slice(slice(process_index, None, process_count))
        .map(functools.partial(prepare, keys=()))
        .batch(batch_size, drop_remainder=True)
        .slice(slice(start_step, None)))
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_cfg.num_workers,
      prefetch_buffer_size=data_cfg.prefetch)))


def evaluation_split(data_cfg, split: str) -> str:
  """`split`, or 'train' (logged) when `split` holds no tile (a scene too
  small to hold out a strip; see scene.tile_grid)."""
  info = prepared_builder(data_cfg).info
  if split != 'train' and (split not in info.splits
                           or not info.splits[split].num_examples):
    logging.warning("Split '%s' of %s holds no tile: evaluating on 'train'.",
                    split, data_cfg.name)
    return 'train'
  return split


def eval_batches(data_cfg, split: str, batch_size: int, max_tiles=None):
  """Batches of a split in tile order, unshuffled, last partial batch kept.

  Args:
    data_cfg: ``config.data``.
    split: 'train', 'test' or 'test_b'.
    batch_size: tiles per batch.
    max_tiles: read only the first this many tiles (None: all).

  Yields:
    Dicts with ``cube`` (N, T, T, B) (NaN -> 0), ``valid`` (N, T, T) and every
    stored feature: ``abundances`` (N, T, T, M), ``endmembers`` (N, M, B),
    ``labels`` (N, T, T), ``region`` (N,), ... as numpy arrays.
  """
  src = _source(data_cfg, split)
  num = len(src) if max_tiles is None else min(max_tiles, len(src))
  features = prepared_builder(data_cfg).info.features
  dtypes = {k: features[k].np_dtype for k in features}

  def decode(example):  # Scalars come back as Python ints: restore dtypes.
    return prepare({k: np.asarray(v, dtypes[k]) for k, v in example.items()})

  ds = (grain.MapDataset.source(src).slice(slice(0, num)).map(decode)
        .batch(batch_size))
  for i in range(len(ds)):
    yield ds[i]
