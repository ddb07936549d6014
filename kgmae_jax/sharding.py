"""Device mesh and shardings: batch over ('data', 'fsdp'), parameters replicated
or sharded over 'fsdp'.

The mesh has two axes, `data` and `fsdp`. Every batch is split over all devices
(both axes). Parameters and optimiser state are replicated when `fsdp == 1`;
otherwise each array is split over `fsdp` along its largest dimension that the
axis size divides (small arrays stay replicated), as in big_vision's FSDP rule.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
_MIN_FSDP_SIZE = 2**14  # Arrays smaller than this stay replicated.


def make_mesh(mesh_cfg, devices=None):
  """Mesh of shape (data, fsdp) over `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  fsdp = mesh_cfg.fsdp
  data = mesh_cfg.data if mesh_cfg.data > 0 else n // fsdp
  if data * fsdp != n:
    raise ValueError(f"config.mesh: data={data} x fsdp={fsdp} does not match "
                     f"the {n} devices.")
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh):
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, fsdp_size):
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < _MIN_FSDP_SIZE:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_sharding(mesh, abstract_tree):
  """NamedSharding per leaf of a tree of ShapeDtypeStructs (FSDP rule)."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, fsdp_size)),
      abstract_tree)


def put_batch(batch, sharding):
  """Host numpy batch (this process's rows) -> global jax arrays.

  Arrays already on device (`data.device_resident` batches) pass through.
  """
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else
      jax.make_array_from_process_local_data(sharding, x), batch)


def check_process_count(expected):
  """Raises RuntimeError unless `expected` (int or str; '' or None: any)
  equals jax.process_count(); call after jax.distributed.initialize()."""
  if expected is None or str(expected).strip() == "":
    return
  expected, got = int(expected), jax.process_count()
  if got != expected:
    raise RuntimeError(
        f"Expected {expected} JAX processes (KGMAE_EXPECTED_PROCESSES) but "
        f"jax.distributed.initialize() joined {got} (process "
        f"{jax.process_index()}, {jax.device_count()} global devices). Check "
        "that every host ran the command (--worker=all / srun --ntasks) and "
        "the coordinator address.")
