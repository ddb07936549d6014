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
  figure          a PNG of a window (--window, default centred, at most 256
                  px): false colour input and reconstruction, their spectral
                  angle, spectra at --pixels, abundance maps (`figure`);
                  `python -m kgmae_jax.visualize` is this command with
                  --what figure by default.
"""

import os
import pathlib

from absl import app
from absl import flags
from absl import logging
import numpy as np

from kgmae_jax import inference
from kgmae_jax import readers
from kgmae_jax import unmixing

WHATS = inference.WHATS


# ------------------------------------------------------------------ outputs
def write_geotiff(path, array, *, crs, transform, factor=1, descriptions=()):
  """(H, W, C) float32 -> GeoTIFF, NaN nodata, georeference of the input."""
  import rasterio  # pylint: disable=g-import-not-at-top
  from rasterio import transform as rio_transform  # pylint: disable=g-import-not-at-top
  h, w, c = array.shape
  affine = rio_transform.Affine(*transform) @ rio_transform.Affine.scale(factor)
  profile = dict(driver='GTiff', height=h, width=w, count=c, dtype='float32',
                 nodata=np.nan, compress='deflate')
  if crs or tuple(transform) != readers.IDENTITY:  # Else pixel coordinates.
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
  em = np.asarray(endmembers, np.float64)
  m = em.shape[1]
  csv_path = pathlib.Path(f'{stem}_endmembers.csv')
  header = 'wavelength_nm,' + ','.join(f'endmember_{j}' for j in range(m))
  np.savetxt(csv_path, np.column_stack([wavelengths_nm, em]), delimiter=',',
             header=header, comments='', fmt='%.6g')
  png_path = pathlib.Path(f'{stem}_endmembers.png')
  plots.spectra([(f'endmember {j}', em[:, j]) for j in range(m)],
                wavelengths_nm, png_path, 'Learned endmembers')
  return csv_path, png_path


def predict_array(loaded, reader, what, *, tile=None, overlap=None,
                  batch_size=8, window=None):
  """`what` over the reader's image (or `window` = (row, col, h, w) of it).

  `loaded` is `inference.load`'s. Returns (H, W, C) float32 (patch grid for
  embeddings), NaN where no input.
  """
  r0, c0, h, w = window or (0, 0) + tuple(reader.shape[:2])
  checked = []

  def read(row, col, size):
    cube, valid = reader.read(r0 + row, c0 + col, size, size)
    if not checked and valid.any():
      readers.check_reflectance(cube[valid], scale_field='--scale',
                                nodata_field='--nodata', where=reader.name)
      checked.append(True)
    return cube, valid

  return inference.apply_tiled(loaded, read, h, w, what, tile=tile,
                               overlap=overlap, batch_size=batch_size)


# ------------------------------------------------------------------- figure
_MAX_WINDOW = 256  # Edge of the figure's default (centred) window, pixels.


def _default_pixels(valid, k=3):
  """k valid (row, col) spread over the (H, W) mask, in raster order."""
  ys, xs = np.nonzero(valid)
  if not len(ys):
    return []
  idx = np.linspace(0, len(ys) - 1, k + 2)[1:-1].astype(int)
  return [(int(ys[i]), int(xs[i])) for i in idx]


def check_window(window, pixels, height, width):
  """ValueError naming --window / --pixels unless the window lies inside the
  (height, width) image and every pixel (row, col) inside the window."""
  r0, c0, wh, ww = window
  if min(window) < 0 or wh < 1 or ww < 1 or r0 + wh > height or c0 + ww > width:
    raise ValueError(
        f'--window {r0},{c0},{wh},{ww} (row,col,height,width) is not inside '
        f'the {height} x {width} image.')
  for y, x in pixels or ():
    if not (0 <= y < wh and 0 <= x < ww):
      raise ValueError(
          f'--pixels ({y}, {x}) is outside the window of {wh} x {ww} pixels '
          f'(coordinates within --window, 0..{wh - 1}, 0..{ww - 1}).')


def figure(workdir, input_path, output, *, pixels=None, window=None,
           scale=None, nodata=None, wavelengths='', tile=None):
  """Writes `plots.model_figure` of a window of the input to `output`.

  window: (row, col, height, width), default centred, at most _MAX_WINDOW
  pixels a side; pixels: (row, col) in it, default three valid ones.
  Reconstruction and abundances are `inference.reconstruct` / `unmix` of the
  window (tiled as `run` tiles the whole image). Returns the drawn arrays.
  """
  from kgmae_jax import plots  # pylint: disable=g-import-not-at-top
  loaded = inference.load(workdir)
  reader = inference.open_image(loaded, input_path, scale=scale, nodata=nodata,
                                wavelengths=wavelengths)
  h, w, _ = reader.shape
  if window is None:
    wh, ww = min(h, _MAX_WINDOW), min(w, _MAX_WINDOW)
    window = ((h - wh) // 2, (w - ww) // 2, wh, ww)
  check_window(window, pixels, h, w)
  r0, c0, wh, ww = window
  cube, valid = reader.read(r0, c0, wh, ww)
  reader.close()
  readers.check_reflectance(cube[valid], scale_field='--scale',
                            nodata_field='--nodata', where=reader.name)
  recon = inference.reconstruct(loaded, cube, valid, tile=tile)
  abund = (inference.unmix(loaded, cube, valid, tile=tile)[0]
           if loaded.model.lsmm else None)
  pixels = pixels or _default_pixels(valid)
  angle = np.degrees(unmixing.spectral_angle(cube, recon))
  plots.model_figure(cube, valid, recon, angle, abund, loaded.wavelengths_nm,
                     pixels, (r0, c0), output)
  return {'cube': cube, 'valid': valid, 'reconstruction': recon,
          'abundances': abund, 'pixels': pixels}


# ---------------------------------------------------------------------- CLI
def run(workdir, input_path, output, *, what='abundances', tile=None,
        overlap=None, batch_size=8, scale=None, nodata=None, wavelengths='',
        step=None):
  """Loads the checkpoint, predicts over the whole input, writes `output`.

  Returns a dict with the output `array` and the written `paths`.
  """
  loaded = inference.load(workdir, step)
  reader = inference.open_image(loaded, input_path, scale=scale, nodata=nodata,
                                wavelengths=wavelengths)
  out = predict_array(loaded, reader, what, tile=tile, overlap=overlap,
                      batch_size=batch_size)
  factor = loaded.model.patch_size if what == 'embeddings' else 1
  wl = loaded.wavelengths_nm
  names = {'abundances': [f'endmember {j}' for j in range(out.shape[-1])],
           'reconstruction': [f'{x:.1f} nm' for x in wl],
           'embeddings': [f'embedding {j}' for j in range(out.shape[-1])]}
  write_geotiff(output, out, crs=reader.crs, transform=reader.transform,
                factor=factor, descriptions=names[what])
  paths = [pathlib.Path(output)]
  if what == 'abundances':
    em = inference.endmembers(loaded)
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
                          'What to write (figure: a PNG, see the module doc).')
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
    inputs |= {inp.with_suffix(e) for e in readers._ENVI_DATA_EXTS}  # pylint: disable=protected-access
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
    pixels = _ints(_PIXELS.value, '--pixels')
    window = (_ints(_WINDOW.value, '--window', 4)[0] if _WINDOW.value
              else None)
    figure(_WORKDIR.value, _INPUT.value, _OUTPUT.value, pixels=pixels or None,
           window=window, scale=_SCALE.value, nodata=_NODATA.value,
           wavelengths=_WAVELENGTHS.value, tile=_TILE.value)
    return
  run(_WORKDIR.value, _INPUT.value, _OUTPUT.value, what=_WHAT.value,
      tile=_TILE.value, overlap=_OVERLAP.value, batch_size=_BATCH.value,
      scale=_SCALE.value, nodata=_NODATA.value, wavelengths=_WAVELENGTHS.value,
      step=_STEP.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'input', 'output'])
  app.run(main)
