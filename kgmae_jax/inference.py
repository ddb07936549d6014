"""Use a trained model from Python: `load(workdir)`, then numpy in, numpy out.

  loaded = inference.load('runs/quickstart')   # model, params, saved metadata
  z = inference.embed(loaded, cube)             # (ceil(H/p), ceil(W/p), D)
  a, em = inference.unmix(loaded, cube)         # (H, W, M), (B, M)
  x = inference.reconstruct(loaded, cube)       # (H, W, B) reflectance

`cube` is (H, W, B) reflectance of any size (the units the model was trained
on: `config.data.reflectance_scale` already applied), B the model's band
count; pixels with a non-finite band or `valid` False are nodata and come out
NaN. The image is cut into overlapping tiles of the training tile size and
the tiles' outputs blended with a sin^2 window (`tiled_predict`), as
`kgmae_jax.predict` does for files.

`load` needs the model definition and the checkpoint only: it restores the
parameters (never the optimiser state) and builds no optimiser and no train
step.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import config_lib
from kgmae_jax import model as model_lib
from kgmae_jax import patching
from kgmae_jax import progress

WHATS = ('abundances', 'embeddings', 'reconstruction')


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A trained model and what its checkpoint saved beside it."""
  model: model_lib.KarmaMAE
  params: Any  # Parameter pytree on one device.
  config: ml_collections.ConfigDict  # The run's config.
  band_mean: np.ndarray  # (B,) float32, training-split band means.
  band_std: np.ndarray  # (B,) float32, training-split band stds.
  wavelengths_nm: np.ndarray  # (B,) float64 band centres.
  class_names: tuple  # Material names of the data set (() if unknown).
  step: int  # Checkpoint step.
  meta: dict  # The checkpoint's JSON meta, as saved.
  workdir: str  # Where it was loaded from.


def load(workdir, step=None) -> Loaded:
  """The model of `workdir`'s checkpoint `step` (default latest).

  Raises FileNotFoundError without a checkpoint, and
  checkpoint.ShapeMismatchError (listing every parameter) when the stored
  parameters do not fit the model built from the stored config.
  """
  ckpt = ckpt_lib.Checkpointer(workdir, 1, None, create=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {ckpt.directory}.')
    meta = ckpt.restore_meta(step)
    config = config_lib.from_saved(meta['config'])
    model = model_lib.build(config.model, config.lsmm, int(meta['num_bands']))
    params = ckpt.restore_params(step, _abstract_params(model))
  finally:
    ckpt.close()
  return Loaded(model=model, params=params, config=config,
                band_mean=np.asarray(meta['band_mean'], np.float32),
                band_std=np.asarray(meta['band_std'], np.float32),
                wavelengths_nm=np.asarray(meta['wavelengths_nm'], np.float64),
                class_names=tuple(meta.get('class_names', ())), step=int(step),
                meta=meta, workdir=str(workdir))


# --------------------------------------------------------- the model's calls
# The only places that know the model's call signature and outputs.
def init_params(model, rng):
  """Fresh parameters of `model` from `rng`, jitted as training's init (so
  equal to the bit): what training starts from, less any endmember
  initialisation from spectra (lsmm.init library | data)."""
  def init(rng):
    p = model.patch_size
    ids, _, _ = patching.no_masking(1, 1)
    cube = jnp.zeros((1, p, p, model.num_bands), jnp.float32)
    return model.init(rng, cube, ids, ids)['params']
  return jax.jit(init)(rng)


def _abstract_params(model):
  """ShapeDtypeStructs of the parameters, on the first local device."""
  shapes = jax.eval_shape(functools.partial(init_params, model),
                          jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


def _outputs(model, params, cube, valid, mean, std, what):
  """Reflectance tiles (N, T, T, B) + valid (N, T, T) -> `what`, no masking:
  abundances (N, T, T, M), reconstruction (N, T, T, B) reflectance, or
  embeddings (N, T/p, T/p, D)."""
  n, h, w, b = cube.shape
  p = model.patch_size
  grid = model_lib.token_grid(h, w, p)
  if what == 'embeddings':
    x = model_lib.standardise(cube, valid, mean, std)
    return model_lib.encode(params, x, model=model).reshape(n, *grid, -1)
  ids, _, _ = patching.no_masking(n, grid[0] * grid[1])
  res = model_lib.forward(model, params, cube, valid, ids, ids, mean, std)
  if what == 'reconstruction':
    tokens = (res['pred'] * std + mean).reshape(n, -1, p * p * b)
    return patching.unpatchify(tokens, p, grid, b)
  a = model_lib.per_pixel(res['abundances'], p)
  m = a.shape[-1]
  return patching.unpatchify(a.reshape(n, -1, p * p * m), p, grid, m)


def endmembers(loaded) -> np.ndarray:
  """(B, M) float32 learned endmembers, reflectance."""
  _need_lsmm(loaded, 'endmembers')
  return np.asarray(jax.device_get(loaded.model.apply(
      {'params': loaded.params}, method=model_lib.KarmaMAE.endmembers)))


# ------------------------------------------------------------ tiled inference
def blend_window(size: int) -> np.ndarray:
  """(size, size) float32 weights: outer product of sin^2, floored at 1e-3."""
  w = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
  w = np.maximum(w, 1e-3)
  return np.outer(w, w).astype(np.float32)


def tile_origins(length, tile, stride):
  """Starts 0, stride, ... covering [0, length) with tiles of `tile`."""
  n = max(0, -(-(length - tile) // stride)) + 1
  return [i * stride for i in range(n)]


def tiled_predict(read, height, width, apply_fn, *, tile, stride, factor=1,
                  batch_size=8):
  """Runs `apply_fn` over overlapping tiles and blends the results.

  Args:
    read: (row, col, size) -> (cube (size, size, B), valid (size, size));
      windows may pass the image border (padding must be invalid).
    height, width: image size in pixels.
    apply_fn: (cube (N, T, T, B), valid (N, T, T)) -> (N, T/f, T/f, C).
    tile: T, a multiple of `factor`; stride: a multiple of `factor`.
    factor: f, output pixels per input pixel edge (1, or the patch size).
    batch_size: tiles per `apply_fn` call (the last batch is padded).

  Returns:
    (ceil(H/f), ceil(W/f), C) float32; NaN where no input pixel is valid
    (with f > 1: no valid pixel in the f x f block).
  """
  if tile % factor or stride % factor or stride <= 0:
    raise ValueError(f'tile={tile} and stride={stride} must be positive '
                     f'multiples of {factor}.')
  t = tile // factor
  win = blend_window(t)
  origins = [(r, c) for r in tile_origins(height, tile, stride)
             for c in tile_origins(width, tile, stride)]
  hp = max(r for r, _ in origins) + tile
  wp = max(c for _, c in origins) + tile
  total = wsum = None
  valid_out = np.zeros((hp // factor, wp // factor), bool)
  with progress.bar(len(origins), 'predict', unit='tile') as bar:
    for i in range(0, len(origins), batch_size):
      chunk = origins[i:i + batch_size]
      cubes, valids = zip(*(read(r, c, tile) for r, c in chunk))
      cube, valid = np.stack(cubes), np.stack(valids)
      pad = batch_size - len(chunk)
      if pad:
        cube = np.concatenate([cube, np.zeros((pad,) + cube.shape[1:],
                                              cube.dtype)])
        valid = np.concatenate([valid,
                                np.zeros((pad,) + valid.shape[1:], bool)])
      cube = np.where(valid[..., None], cube, 0).astype(np.float32)
      out = np.asarray(apply_fn(cube, valid))[:len(chunk)]
      if total is None:
        total = np.zeros((hp // factor, wp // factor, out.shape[-1]),
                         np.float32)
        wsum = np.zeros((hp // factor, wp // factor), np.float32)
      for (r, c), o, v in zip(chunk, out, valid):
        rs, cs = slice(r // factor, r // factor + t), slice(c // factor,
                                                            c // factor + t)
        total[rs, cs] += o * win[..., None]
        wsum[rs, cs] += win
        v = v.reshape(t, factor, t, factor).any(axis=(1, 3))
        valid_out[rs, cs] |= v
      bar.update(len(chunk))
  out = total / wsum[..., None]
  out[~valid_out] = np.nan
  return out[:-(-height // factor), :-(-width // factor)]


def _need_lsmm(loaded, what):
  if not loaded.model.lsmm:
    raise ValueError(f'{what} needs a model with the LSMM branch '
                     '(lsmm.enabled); this checkpoint has none.')


def make_apply_fn(loaded, what):
  """Jitted (cube (N, T, T, B), valid (N, T, T)) -> `what` per tile."""
  if what not in WHATS:
    raise ValueError(f'`what` must be one of {WHATS}, got {what!r}.')
  if what == 'abundances':
    _need_lsmm(loaded, 'abundances')
  mean = jnp.asarray(loaded.band_mean, jnp.float32)
  std = jnp.asarray(loaded.band_std, jnp.float32)
  apply = jax.jit(lambda params, cube, valid: _outputs(
      loaded.model, params, cube, valid, mean, std, what))
  return lambda cube, valid: apply(loaded.params, cube, valid)


def apply_tiled(loaded, read, height, width, what, *, tile=None, overlap=None,
                batch_size=8):
  """`what` over a (height, width) image given by `read` (see tiled_predict).

  tile: pixels per tile edge, a multiple of the patch size (default the
  training tile size); overlap: pixels shared by neighbours (default tile/4).
  Returns (H, W, C) float32, or the patch grid for embeddings; NaN where no
  input pixel is valid.
  """
  p = loaded.model.patch_size
  tile = tile or loaded.config.data.tile_size
  overlap = tile // 4 if overlap is None else overlap
  if tile % p:
    raise ValueError(f'tile={tile} must be a multiple of the patch size {p}.')
  stride = max(p, (tile - overlap) // p * p)
  return tiled_predict(read, height, width, make_apply_fn(loaded, what),
                       tile=tile, stride=stride,
                       factor=p if what == 'embeddings' else 1,
                       batch_size=batch_size)


# ------------------------------------------------------------- numpy cubes
def array_reader(cube, valid=None):
  """`read(row, col, size)` over an in-memory (H, W, B) cube; pixels outside
  it, non-finite or with `valid` False are invalid (NaN)."""
  cube = np.asarray(cube, np.float32)
  ok = np.isfinite(cube).all(axis=-1)
  if valid is not None:
    ok &= np.asarray(valid, bool)
  h, w, b = cube.shape

  def read(row, col, size):
    out = np.full((size, size, b), np.nan, np.float32)
    v = np.zeros((size, size), bool)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + size, h), min(col + size, w)
    if r1 > r0 and c1 > c0:
      out[r0 - row:r1 - row, c0 - col:c1 - col] = cube[r0:r1, c0:c1]
      v[r0 - row:r1 - row, c0 - col:c1 - col] = ok[r0:r1, c0:c1]
    return out, v

  return read


def _on_cube(loaded, cube, valid, what, **tiling):
  shape = np.shape(cube)
  want = loaded.model.num_bands
  if len(shape) != 3 or shape[-1] != want:
    raise ValueError(f'cube has shape {shape}; the model takes (H, W, {want}) '
                     f'reflectance ({want} bands).')
  if valid is not None and np.shape(valid) != shape[:2]:
    raise ValueError(f'valid has shape {np.shape(valid)}; expected '
                     f'{shape[:2]}.')
  return apply_tiled(loaded, array_reader(cube, valid), shape[0], shape[1],
                     what, **tiling)


def embed(loaded, cube, valid=None, **tiling) -> np.ndarray:
  """Encoder tokens (ceil(H/p), ceil(W/p), D) of an (H, W, B) cube.

  tiling: tile, overlap, batch_size (see apply_tiled).
  """
  return _on_cube(loaded, cube, valid, 'embeddings', **tiling)


def unmix(loaded, cube, valid=None, **tiling):
  """(abundances (H, W, M), endmembers (B, M)) of an (H, W, B) cube; the
  abundances of a valid pixel sum to one."""
  return (_on_cube(loaded, cube, valid, 'abundances', **tiling),
          endmembers(loaded))


def reconstruct(loaded, cube, valid=None, **tiling) -> np.ndarray:
  """The decoder's reflectance (H, W, B) of an (H, W, B) cube, no masking."""
  return _on_cube(loaded, cube, valid, 'reconstruction', **tiling)


# ------------------------------------------------------------- image files
def open_image(loaded, path, *, scale=None, nodata=None, wavelengths=''):
  """A reader of a GeoTIFF, ENVI `.hdr`, `.npy` (with `wavelengths`, a file
  of band centres) or EnMAP L2A product, scaled and masked as the model's
  training data (`config.data.reflectance_scale`, `nodata`, unless given).
  A file (not an L2A product) gives the bands the model was trained on: those
  left after `config.data.drop_bands` / `drop_ranges_nm`.

  The reader is a `readers.Reader`: `shape` (H, W, B), `read(row, col, h, w)`
  -> (cube, valid), `name`, `crs`, `transform` and `close()`. Raises
  ValueError naming both shapes when B is not the model's band count.
  """
  from kgmae_jax import enmap_l2a  # pylint: disable=g-import-not-at-top
  from kgmae_jax import readers  # pylint: disable=g-import-not-at-top
  d = loaded.config.data
  scale = d.reflectance_scale if scale is None else scale
  if enmap_l2a.is_product(path):
    reader = enmap_l2a.open_product(path, scale)
  else:
    reader = readers.open_scene(path, scale=scale or 1.0,
                                nodata=d.nodata if nodata is None else nodata,
                                wavelengths_file=wavelengths,
                                drop_bands=d.drop_bands,
                                drop_ranges_nm=d.drop_ranges_nm)
  h, w, b = reader.shape
  want, t = loaded.model.num_bands, d.tile_size
  if b != want:
    reader.close()
    raise ValueError(
        f'Input {reader.name} has shape (H, W, B) = {(h, w, b)} but the model '
        f'in {loaded.workdir} takes (N, {t}, {t}, {want}) cubes: {b} != {want} '
        'bands. Use a checkpoint trained on this sensor, or resample the input.')
  return reader
