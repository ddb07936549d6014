r"""Apply a trained model to a whole image, tile by tile, and write GeoTIFFs.

  python -m kgmae_jax.predict --workdir runs/own --input scene.tif \
      --output abundances.tif [--what abundances|embeddings|reconstruction]

The input is a GeoTIFF, an ENVI `.hdr`, a `.npy` (H, W, B) (with
--wavelengths) or an EnMAP L2A product (its METADATA.XML, folder or .ZIP).
Values are scaled and masked as the model's training data were
(`config.data.reflectance_scale`, `config.data.nodata`; --scale/--nodata
override). The image is read in windows of `tile` pixels overlapping by
`overlap`; each output pixel is the average of the tiles covering it, weighted
by a separable sin^2 window (small at tile edges, so seams blend). Invalid
input pixels are NaN (the GeoTIFF nodata) in the output.

  abundances      (H, W, M) per-pixel abundances (sum to one); also writes
                  `<output>_endmembers.csv` (wavelength_nm, one column per
                  endmember, reflectance) and `<output>_endmembers.png`;
  embeddings      (H/p, W/p, D) encoder tokens, on the patch grid (the
                  GeoTIFF's pixels are p x p input pixels);
  reconstruction  (H, W, B) the decoder's reflectance, no masking;
  figure          a PNG, see `kgmae_jax/visualize.py` (--pixels, --window).
"""

import os
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import enmap_l2a
from kgmae_jax import model as model_lib
from kgmae_jax import patching
from kgmae_jax import scene as scene_lib
from kgmae_jax import sharding

WHATS = ('abundances', 'embeddings', 'reconstruction')


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
  for i in range(0, len(origins), batch_size):
    chunk = origins[i:i + batch_size]
    cubes, valids = zip(*(read(r, c, tile) for r, c in chunk))
    cube, valid = np.stack(cubes), np.stack(valids)
    pad = batch_size - len(chunk)
    if pad:
      cube = np.concatenate([cube, np.zeros((pad,) + cube.shape[1:],
                                            cube.dtype)])
      valid = np.concatenate([valid, np.zeros((pad,) + valid.shape[1:], bool)])
    cube = np.where(valid[..., None], cube, 0).astype(np.float32)
    out = np.asarray(apply_fn(cube, valid))[:len(chunk)]
    if total is None:
      total = np.zeros((hp // factor, wp // factor, out.shape[-1]), np.float32)
      wsum = np.zeros((hp // factor, wp // factor), np.float32)
    for (r, c), o, v in zip(chunk, out, valid):
      rs, cs = slice(r // factor, r // factor + t), slice(c // factor,
                                                          c // factor + t)
      total[rs, cs] += o * win[..., None]
      wsum[rs, cs] += win
      v = v.reshape(t, factor, t, factor).any(axis=(1, 3))
      valid_out[rs, cs] |= v
  out = total / wsum[..., None]
  out[~valid_out] = np.nan
  return out[:-(-height // factor), :-(-width // factor)]


def make_apply_fn(model, params, mean, std, what):
  """Jitted (cube, valid) -> per-pixel (N, T, T, C) or per-token outputs."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  p = model.patch_size
  if what not in WHATS:
    raise ValueError(f'--what must be one of {WHATS}, got {what!r}.')
  if what == 'abundances' and not model.lsmm:
    raise ValueError('--what=abundances needs a model with the LSMM branch '
                     '(lsmm.enabled); this checkpoint has none.')

  @jax.jit
  def apply(cube, valid):
    n, h, w, b = cube.shape
    grid = (h // p, w // p)
    if what == 'embeddings':
      x = model_lib.standardise(cube, valid, mean, std)
      z = model_lib.encode(params, x, model=model)  # (N, L, D)
      return z.reshape(n, grid[0], grid[1], -1)
    ids, _, _ = patching.no_masking(n, grid[0] * grid[1])
    res = model_lib.forward(model, params, cube, valid, ids, ids, mean, std)
    if what == 'reconstruction':
      tokens = (res['pred'] * std + mean).reshape(n, -1, p * p * b)
      return patching.unpatchify(tokens, p, grid, b)
    a = res['abundances']
    if a.ndim == 3:  # Per token: every pixel of the patch shares it.
      a = jnp.repeat(a[:, :, None], p * p, axis=2)
    m = a.shape[-1]
    return patching.unpatchify(a.reshape(n, -1, p * p * m), p, grid, m)

  return apply


# ------------------------------------------------------------- checkpoints
def load_checkpoint(workdir, step=None):
  """(model, params, meta) from the checkpoint in `workdir` (default latest).

  Raises ValueError naming both shapes if a stored parameter does not match
  the model its config builds.
  """
  from kgmae_jax import train  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(workdir, 1, 10**6)  # Never prunes.
  step = ckpt.latest_step() if step is None else step
  meta = ckpt.restore_meta(step)
  config = ml_collections.ConfigDict(meta['config'])
  num_bands = int(meta['num_bands'])
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 1}),
                            devices=jax.devices()[:1])
  trainer = train.build_trainer(config, mesh, num_bands,
                                np.asarray(meta['band_mean'], np.float32),
                                np.asarray(meta['band_std'], np.float32))
  stored = ocp.StandardCheckpointer().metadata(
      ckpt.directory / str(step) / 'state').item_metadata
  want = jax.tree_util.tree_flatten_with_path(trainer.abstract_state.params)[0]
  have = dict(jax.tree_util.tree_flatten_with_path(stored['params'])[0])
  for path, leaf in want:
    got = have.get(path)
    if got is None or tuple(got.shape) != tuple(leaf.shape):
      raise ValueError(
          f'Checkpoint {ckpt.directory} step {step}: parameter '
          f'{jax.tree_util.keystr(path)} has shape '
          f'{None if got is None else tuple(got.shape)} but the model built '
          f'from its config ({num_bands} bands) has {tuple(leaf.shape)}.')
  state, _ = ckpt.restore(step, ckpt_lib.abstract_with_shardings(
      trainer.abstract_state, trainer.state_shardings))
  ckpt.close()
  return trainer.model, state.params, meta


# ------------------------------------------------------------------- inputs
def open_input(path, config, *, scale=None, nodata=None, wavelengths=''):
  """A `scene.py`-style reader for `path` with the model's data settings."""
  d = config.data
  scale = d.reflectance_scale if scale is None else scale
  if enmap_l2a.is_product(path):
    return enmap_l2a.open_product(path, scale)
  nodata = d.nodata if nodata is None else nodata
  return scene_lib.open_scene(  # The bands the model was trained on.
      path, scale=scale or 1.0, nodata=nodata, wavelengths_file=wavelengths,
      drop_bands=d.get('drop_bands', ()),
      drop_ranges_nm=d.get('drop_ranges_nm', ()))


def check_bands(reader, meta, workdir):
  """Raises ValueError naming both shapes if the band counts differ."""
  h, w, b = reader.shape
  want = int(meta['num_bands'])
  if b != want:
    t = meta['config']['data']['tile_size']
    raise ValueError(
        f'Input {reader.name} has shape (H, W, B) = {(h, w, b)} but the model '
        f'in {workdir} takes (N, {t}, {t}, {want}) cubes: {b} != {want} bands. '
        'Use a checkpoint trained on this sensor, or resample the input.')


# ------------------------------------------------------------------ outputs
def write_geotiff(path, array, *, crs, transform, factor=1, descriptions=()):
  """(H, W, C) float32 -> GeoTIFF, NaN nodata, georeference of the input."""
  import rasterio  # pylint: disable=g-import-not-at-top
  from rasterio import transform as rio_transform  # pylint: disable=g-import-not-at-top
  h, w, c = array.shape
  affine = rio_transform.Affine(*transform) @ rio_transform.Affine.scale(factor)
  profile = dict(driver='GTiff', height=h, width=w, count=c, dtype='float32',
                 nodata=np.nan, compress='deflate')
  if crs or tuple(transform) != scene_lib.IDENTITY:  # Else pixel coordinates.
    profile.update(transform=affine, crs=crs or None)
  if h >= 16 and w >= 16:
    profile.update(tiled=True, blockxsize=min(256, w // 16 * 16),
                   blockysize=min(256, h // 16 * 16))
  with rasterio.open(path, 'w', **profile) as f:
    f.write(np.moveaxis(array.astype(np.float32), -1, 0))
    for i, d in enumerate(descriptions):
      f.set_band_description(i + 1, d)


def write_endmembers(stem, endmembers, wavelengths_nm):
  """`<stem>_endmembers.csv` and `.png` of (B, M) endmembers; returns paths."""
  from kgmae_jax import plots  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  em = np.asarray(endmembers, np.float64)
  m = em.shape[1]
  csv_path = pathlib.Path(f'{stem}_endmembers.csv')
  header = 'wavelength_nm,' + ','.join(f'endmember_{j}' for j in range(m))
  np.savetxt(csv_path, np.column_stack([wavelengths_nm, em]), delimiter=',',
             header=header, comments='', fmt='%.6g')
  png_path = pathlib.Path(f'{stem}_endmembers.png')
  fig, ax = plt.subplots(figsize=(7, 4))
  for j in range(m):
    ax.plot(*plots._spectrum_xy(wavelengths_nm, em[:, j]),  # pylint: disable=protected-access
            label=f'endmember {j}')
  ax.set(xlabel='wavelength (nm)', ylabel='reflectance',
         title='Learned endmembers')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
  return csv_path, png_path


def predict_array(model, params, meta, reader, what, *, tile=None,
                  overlap=None, batch_size=8, window=None):
  """`what` over the reader's image (or `window` = (row, col, h, w) of it).

  Returns (H, W, C) float32 (patch grid for embeddings), NaN where no input.
  """
  p = model.patch_size
  tile = tile or meta['config']['data']['tile_size']
  overlap = tile // 4 if overlap is None else overlap
  if tile % p:
    raise ValueError(f'--tile={tile} must be a multiple of the patch size {p}.')
  stride = max(p, (tile - overlap) // p * p)
  r0, c0, h, w = window or (0, 0) + tuple(reader.shape[:2])
  apply_fn = make_apply_fn(model, params, meta['band_mean'], meta['band_std'],
                           what)
  checked = []

  def read(row, col, size):
    cube, valid = reader.read(r0 + row, c0 + col, size, size)
    if not checked and valid.any():
      scene_lib.check_reflectance(cube[valid], scale_field='--scale',
                                  nodata_field='--nodata', where=reader.name)
      checked.append(True)
    return cube, valid

  return tiled_predict(read, h, w, apply_fn, tile=tile, stride=stride,
                       factor=p if what == 'embeddings' else 1,
                       batch_size=batch_size)


def run(workdir, input_path, output, *, what='abundances', tile=None,
        overlap=None, batch_size=8, scale=None, nodata=None, wavelengths='',
        step=None):
  """Loads the checkpoint, predicts over the whole input, writes `output`.

  Returns a dict with the output `array` and the written `paths`.
  """
  model, params, meta = load_checkpoint(workdir, step)
  config = ml_collections.ConfigDict(meta['config'])
  reader = open_input(input_path, config, scale=scale, nodata=nodata,
                      wavelengths=wavelengths)
  check_bands(reader, meta, workdir)
  out = predict_array(model, params, meta, reader, what, tile=tile,
                      overlap=overlap, batch_size=batch_size)
  factor = model.patch_size if what == 'embeddings' else 1
  wl = np.asarray(meta['wavelengths_nm'], np.float64)
  names = {'abundances': [f'endmember {j}' for j in range(out.shape[-1])],
           'reconstruction': [f'{x:.1f} nm' for x in wl],
           'embeddings': [f'embedding {j}' for j in range(out.shape[-1])]}
  write_geotiff(output, out, crs=reader.crs, transform=reader.transform,
                factor=factor, descriptions=names[what])
  paths = [pathlib.Path(output)]
  if what == 'abundances':
    em = jax.device_get(model.apply({'params': params},
                                    method=model_lib.KarmaMAE.endmembers))
    stem = str(output)[:-len(pathlib.Path(output).suffix) or None]
    paths += write_endmembers(stem, em, wl)
  reader.close()
  logging.info('Wrote %s', ', '.join(map(str, paths)))
  return {'array': out, 'paths': paths}


_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (checkpoints).')
_INPUT = flags.DEFINE_string('input', None, 'GeoTIFF, ENVI .hdr, .npy or L2A '
                             'product (METADATA.XML, folder or .ZIP).')
_OUTPUT = flags.DEFINE_string('output', None, 'Output GeoTIFF path.')
_WHAT = flags.DEFINE_enum('what', 'abundances', WHATS + ('figure',),
                          'What to write (figure: see kgmae_jax.visualize).')
_TILE = flags.DEFINE_integer('tile', None, 'Tile size; default the training '
                             'tile size.')
_OVERLAP = flags.DEFINE_integer('overlap', None, 'Tile overlap in pixels; '
                                'default tile // 4.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Tiles per model call.')
_SCALE = flags.DEFINE_float('scale', None, 'Reflectance = value * scale; '
                            'default the training config\'s.')
_NODATA = flags.DEFINE_float('nodata', None, 'Input nodata value; default the '
                             'training config\'s.')
_WAVELENGTHS = flags.DEFINE_string('wavelengths', '', 'Band centres file '
                                   '(one per line) for .npy inputs.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; default latest.')
_PIXELS = flags.DEFINE_string('pixels', '', 'figure: row,col;row,col;... in '
                              'the window (default: three valid pixels).')
_WINDOW = flags.DEFINE_string('window', '', 'figure: row,col,height,width '
                              '(default: centred, at most 256 px).')


def check_paths(workdir, input_path, output):
  """Before anything is loaded or computed: `workdir` is a training workdir
  (nothing is created in it), `output` is not the input (or one of its files)
  and its folder exists and is writable."""
  ckpts = pathlib.Path(workdir) / 'checkpoints'
  if not ckpts.is_dir():
    raise ValueError(f'--workdir {workdir}: no checkpoints/ folder there; give '
                     'the --workdir of a training run.')
  inp, out = pathlib.Path(input_path), pathlib.Path(output)
  inputs = {inp, inp.with_suffix('.hdr')}
  if inp.suffix.lower() == '.hdr':  # ENVI: the data file next to the header.
    inputs |= {inp.with_suffix(e) for e in scene_lib._ENVI_DATA_EXTS}  # pylint: disable=protected-access
  if out.resolve() in {p.resolve() for p in inputs}:
    raise ValueError(f'--output {output} is the input file {input_path} (or '
                     'part of it): it would be overwritten; write elsewhere.')
  folder = out.resolve().parent
  if not folder.is_dir():
    raise ValueError(f'--output {output}: folder {folder} does not exist; '
                     'create it first.')
  if not os.access(folder, os.W_OK):
    raise ValueError(f'--output {output}: folder {folder} is not writable.')


def _ints(text, flag, count=None):
  """'a,b;c,d' -> [(a, b), (c, d)] of non-negative ints, else UsageError."""
  try:
    out = [tuple(int(v) for v in p.split(',')) for p in text.split(';')
           if p.strip()]
  except ValueError:
    out = None
  if out is None or any(len(t) != (count or 2) or min(t) < 0 for t in out):
    raise app.UsageError(
        f'{flag}={text!r}: expected non-negative integers '
        f'{"row,col,height,width" if count == 4 else "row,col;row,col;..."}.')
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  check_paths(_WORKDIR.value, _INPUT.value, _OUTPUT.value)
  if _WHAT.value == 'figure':
    from kgmae_jax import visualize  # pylint: disable=g-import-not-at-top
    pixels = _ints(_PIXELS.value, '--pixels')
    window = (_ints(_WINDOW.value, '--window', 4)[0] if _WINDOW.value
              else None)
    visualize.figure(_WORKDIR.value, _INPUT.value, _OUTPUT.value,
                     pixels=pixels or None, window=window, scale=_SCALE.value,
                     nodata=_NODATA.value, wavelengths=_WAVELENGTHS.value,
                     tile=_TILE.value)
    return
  run(_WORKDIR.value, _INPUT.value, _OUTPUT.value, what=_WHAT.value,
      tile=_TILE.value, overlap=_OVERLAP.value, batch_size=_BATCH.value,
      scale=_SCALE.value, nodata=_NODATA.value, wavelengths=_WAVELENGTHS.value,
      step=_STEP.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'input', 'output'])
  app.run(main)
