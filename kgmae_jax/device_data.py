"""Train tiles held in device memory (`config.data.device_resident`).

The train split is read once, padded to a multiple of the device count and
uploaded sharded over the mesh's batch axes along the tile axis, so each device
holds about num_train / num_devices tiles. Each step the host computes the
global batch's tile indices, in exactly the order of `data.train_iterator`
(grain's seeded shuffle, repeat and per-process interleave), and a jitted gather
builds the batch on device with the same sharding as host batches; only the
(G,) int32 indices cross PCIe. On one device the gather is local; on several,
XLA fetches each row from the device holding its tile (about one batch of
traffic per step, over NVLink/ICI).

What fits (tile 224 x 224 x 218, float32 as stored here: 43.8 MB; the valid
mask adds 0.05 MB): the paper's ~5,000 tiles are 219 GB, so they need >= 4
H100s (80 GB) or 2 H200s (141 GB) beside the model, or a TPU v5p-16 slice and
up; the embedded benchmark's 1,024 tiles of 64 x 64 are 3.7 GB and fit anywhere.

`prefetch` serves the other case: host batches (grain) copied to device a few
steps ahead of use.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kgmae_jax import data
from kgmae_jax import sharding


def batch_indices(num_tiles, global_batch, *, seed, start_step=0,
                  process_count=1):
  """Yields (G,) int32 tile indices per step, in `data.train_iterator` order.

  With P processes, global row p * G/P + j is process p's row j, i.e. element
  (s G/P + j) P + p of the shuffled, repeated sequence (grain's slicing).
  """
  import grain  # pylint: disable=g-import-not-at-top
  if global_batch % process_count:
    raise ValueError(f"Global batch {global_batch} is not divisible by "
                     f"{process_count} processes.")
  order = grain.MapDataset.range(num_tiles).seed(seed).shuffle().repeat()
  perms = {}  # epoch -> (num_tiles,) permutation; the last two are kept.

  def perm(epoch):
    if epoch not in perms:
      perms[epoch] = np.asarray(
          [order[epoch * num_tiles + i] for i in range(num_tiles)], np.int32)
      perms.pop(epoch - 2, None)
    return perms[epoch]

  per = global_batch // process_count
  step = start_step
  while True:
    pos = np.arange(step * global_batch, (step + 1) * global_batch)
    pos = pos.reshape(per, process_count).T.reshape(-1)  # Process-major rows.
    yield np.asarray([perm(k // num_tiles)[k % num_tiles] for k in pos], np.int32)
    step += 1


def upload(arrays, batch_sharding):
  """Host arrays (n, ...) -> device arrays padded to a multiple of the device
  count and sharded along axis 0 over the batch axes (works multi-host)."""
  num = batch_sharding.mesh.size

  def put(x):
    pad = (-len(x)) % num
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    return jax.make_array_from_callback(x.shape, batch_sharding, lambda i: x[i])

  return jax.tree.map(put, arrays)


def make_gather(batch_sharding):
  """jitted (resident tree, (G,) indices) -> batch tree, batch-sharded."""
  def gather(resident, idx):
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), resident)
  return jax.jit(gather, out_shardings=batch_sharding)


def train_batches(data_cfg, batch_sharding, global_batch, *, seed,
                  start_step=0):
  """Infinite device batches {'cube', 'valid'}, the same batches as
  `data.train_iterator` (all processes together) for this seed and step."""
  src = data.prepared_builder(data_cfg).as_data_source("train")
  tiles = [data.prepare(src[i], keys=()) for i in range(len(src))]
  resident = upload({k: np.stack([t[k] for t in tiles]) for k in ("cube", "valid")},
                    batch_sharding)
  del tiles
  gather = make_gather(batch_sharding)
  replicated = NamedSharding(batch_sharding.mesh, P())
  for idx in batch_indices(len(src), global_batch, seed=seed,
                           start_step=start_step,
                           process_count=jax.process_count()):
    idx = jax.make_array_from_callback(idx.shape, replicated, lambda i, v=idx: v[i])
    yield gather(resident, idx)


def prefetch(batches, batch_sharding, size=2):
  """Host batches -> device batches, `size` transfers in flight ahead of use
  (device_put is asynchronous, so copies overlap the running step)."""
  queue = collections.deque()
  for batch in batches:
    queue.append(sharding.put_batch(batch, batch_sharding))
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
