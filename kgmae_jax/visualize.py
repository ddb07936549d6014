r"""A figure of a trained model on an image: truth vs reconstruction, spectra,
abundance maps, all in reflectance (de-normalised).

  python -m kgmae_jax.visualize --workdir runs/own --input scene.tif \
      --output runs/own/figure.png [--pixels 10,20;40,8] [--window 0,0,256,256]

(the same as `python -m kgmae_jax.predict ... --what figure`). Row 1: false
colour (bands nearest 650/550/470 nm, 2-98 % stretch of the input) of the
input and of the reconstruction without masking, and the per-pixel spectral
angle between them. Row 2: spectra at the chosen pixels (default: three valid
pixels spread over the window). Row 3: abundance maps (LSMM models).
Reconstruction and abundances are `inference.reconstruct` / `unmix` of the
window (tiled as predict tiles the whole image).
"""

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from kgmae_jax import enmap  # pylint: disable=g-import-not-at-top
from kgmae_jax import inference  # pylint: disable=g-import-not-at-top
from kgmae_jax import plots  # pylint: disable=g-import-not-at-top
from kgmae_jax import readers  # pylint: disable=g-import-not-at-top
from kgmae_jax import unmixing  # pylint: disable=g-import-not-at-top

_MAX_WINDOW = 256


def _default_pixels(valid, k=3):
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
  """Writes the figure (module doc) to `output`; returns the drawn arrays."""
  loaded = inference.load(workdir)
  reader = inference.open_image(loaded, input_path, scale=scale, nodata=nodata,
                                wavelengths=wavelengths)
  h, w, _ = reader.shape
  if window is None:  # A centred crop of at most _MAX_WINDOW pixels.
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
  wl = loaded.wavelengths_nm
  pixels = pixels or _default_pixels(valid)
  idx = enmap.rgb_band_indices(wl)
  lo_hi = (np.nanpercentile(cube[..., idx], [2, 98]) if valid.any()
           else (0.0, 1.0))

  m = 0 if abund is None else abund.shape[-1]
  cols = max(3, len(pixels), m)
  rows = 3 if m else 2
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows),
                           squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for j, (img, title) in enumerate(((cube, 'input'),
                                    (recon, 'reconstruction'))):
    axes[0, j].imshow(np.nan_to_num(plots.rgb(img, idx, lo_hi)))
    axes[0, j].set_title(f'{title} (false colour)', fontsize=9)
    for k, (y, x) in enumerate(pixels):
      axes[0, j].plot(x, y, 'o', mfc='none', mec=f'C{k}')
  im = axes[0, 2].imshow(np.degrees(unmixing.spectral_angle(cube, recon)),
                         cmap='magma')
  axes[0, 2].set_title('spectral angle (deg)', fontsize=9)
  fig.colorbar(im, ax=axes[0, 2], fraction=0.046)
  for k, (y, x) in enumerate(pixels):
    ax = axes[1, k]
    ax.set_axis_on()
    ax.plot(*plots.spectrum_xy(wl, cube[y, x]), 'k-', label='input')
    ax.plot(*plots.spectrum_xy(wl, recon[y, x]), f'C{k}--',
            label='reconstruction')
    ax.set(xlabel='wavelength (nm)', ylabel='reflectance',
           title=f'pixel ({r0 + y}, {c0 + x})')
    ax.legend(fontsize=7)
  for j in range(m):
    axes[2, j].imshow(abund[..., j], vmin=0, vmax=1, cmap='viridis')
    axes[2, j].set_title(f'abundance, endmember {j}', fontsize=9)
  plots.save(fig, output)
  return {'cube': cube, 'valid': valid, 'reconstruction': recon,
          'abundances': abund, 'pixels': pixels}


if __name__ == '__main__':
  # The flags are predict.py's; this entry point only defaults --what=figure.
  # (Imported here only: the module itself does not depend on predict.)
  from kgmae_jax import predict  # pylint: disable=g-import-not-at-top
  flags.FLAGS.set_default('what', 'figure')
  flags.mark_flags_as_required(['workdir', 'input', 'output'])
  app.run(predict.main)
