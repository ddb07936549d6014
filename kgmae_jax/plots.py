"""Figures written after training (loss curves, reconstructions, endmembers,
abundance maps) and of a trained model on an image (`model_figure`).
Everything in physical units (reflectance, nm)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from etils import epath

from kgmae_jax import enmap
from kgmae_jax import losses
from kgmae_jax import report


def spectrum_xy(wavelengths, values):
  """Sorted by wavelength, with NaN breaks across gaps (dropped bands)."""
  order = np.argsort(wavelengths)
  x, y = np.asarray(wavelengths)[order], np.asarray(values)[..., order]
  gaps = np.where(np.diff(x) > 30)[0] + 1
  x = np.insert(x.astype(float), gaps, np.nan)
  y = np.insert(y.astype(float), gaps, np.nan, axis=-1)
  return x, y


def save(fig, path, dpi=100):
  """Lays out, writes and closes `fig`."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def rgb(cube, idx, lo_hi):
  """(..., 3) false colour in [0, 1] of bands `idx`, stretched over lo_hi."""
  lo, hi = lo_hi
  return np.clip((cube[..., idx] - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def loss_curves(metrics_path, out_path):
  """Total loss and each weighted term against step (log scale)."""
  rows = [r for r in report.read_jsonl(metrics_path) if "loss" in r]  # Not eval/.
  if not rows:
    return
  steps = [r["step"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  terms = dict.fromkeys(k for r in rows for k in losses.term_names(r))
  for key in ["loss", *terms]:
    vals = [r.get(key) for r in rows]
    if any(v for v in vals):
      axes[0].plot(steps, vals, label=key)
  axes[0].set(xlabel="step", ylabel="loss (weighted terms)", yscale="log",
              title="Training loss")
  axes[0].legend()
  axes[1].plot(steps, [r.get("lr", np.nan) for r in rows])
  axes[1].set(xlabel="step", ylabel="learning rate", title="Schedule")
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def reconstructions(plot, wavelengths, out_path):
  """Per tile: truth, masked input, reconstruction (and A.a); spectra below."""
  cube, recon, masked = plot["cube"], plot["recon"], plot["masked"]
  idx = enmap.rgb_band_indices(wavelengths)
  lo_hi = np.percentile(cube[..., idx], [2, 98])
  cols = ["truth", "masked input", "reconstruction"]
  if "mixed" in plot:
    cols.append("LSMM  A·a")
  n = len(cube)
  fig, axes = plt.subplots(n + 1, len(cols), figsize=(3 * len(cols), 3 * n + 3),
                           squeeze=False)
  for i in range(n):
    shown = rgb(cube[i], idx, lo_hi)
    images = [shown, np.where(masked[i][..., None], 0.5, shown),
              rgb(recon[i], idx, lo_hi)]
    if "mixed" in plot:
      images.append(rgb(plot["mixed"][i], idx, lo_hi))
    for j, img in enumerate(images):
      axes[i, j].imshow(img)
      axes[i, j].set_axis_off()
      if i == 0:
        axes[i, j].set_title(cols[j])
  # Spectra at three masked pixels of the first tile.
  ys, xs = np.nonzero(masked[0])
  for j, ax in enumerate(axes[n]):
    if j >= 3 or not len(ys):
      ax.set_axis_off()
      continue
    k = (len(ys) - 1) * j // 2
    y, x = ys[k], xs[k]
    for arr, label, style in ((cube, "truth", "k-"), (recon, "reconstruction",
                                                       "C0-"),
                              (plot.get("mixed"), "A·a", "C1--")):
      if arr is not None:
        ax.plot(*spectrum_xy(wavelengths, arr[0, y, x]), style, label=label)
    ax.set(xlabel="wavelength (nm)", ylabel="reflectance",
           title=f"masked pixel ({y}, {x})")
    ax.legend(fontsize=7)
  save(fig, out_path)


def endmembers(plot, wavelengths, class_names, sad_deg, out_path):
  """Learned endmembers, each beside the true material it was matched to."""
  learned = plot["endmembers"]  # (B, M)
  m = learned.shape[1]
  cols = min(m, 4)
  rows = -(-m // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows),
                           squeeze=False)
  matched = {}
  if "matching" in plot:
    matched = dict(zip(*plot["matching"]))
  for j in range(rows * cols):
    ax = axes.flat[j]
    if j >= m:
      ax.set_axis_off()
      continue
    ax.plot(*spectrum_xy(wavelengths, learned[:, j]), "C0-", label="learned")
    title = f"endmember {j}"
    if j in matched:
      c = matched[j]
      name = class_names[c] if c < len(class_names) else str(c)
      ax.plot(*spectrum_xy(wavelengths, plot["true_endmembers"][c]), "k--",
              label=f"true {name}")
      title += f" ~ {name} (SAD {sad_deg.get(name, np.nan):.1f}°)"
    ax.set_title(title, fontsize=8)
    ax.set(xlabel="nm", ylabel="reflectance")
    ax.legend(fontsize=6)
  save(fig, out_path)


def spectra(curves, wavelengths, out_path, title):
  """One line per (label, (B,) reflectance) in `curves`, against nm."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, values in curves:
    ax.plot(*spectrum_xy(wavelengths, values), label=label)
  ax.set(xlabel="wavelength (nm)", ylabel="reflectance", title=title)
  ax.legend(fontsize=7)
  save(fig, out_path)


def abundance_maps(plot, class_names, out_path):
  """First tile: true abundance per material above the matched prediction."""
  true_a, pred_a = plot["true_abundances"][0], plot["abundances"][0]
  rows_idx, cols_idx = plot["matching"]
  k = len(cols_idx)
  fig, axes = plt.subplots(2, k, figsize=(2.2 * k, 4.6), squeeze=False)
  for j, (r, c) in enumerate(zip(rows_idx, cols_idx)):
    name = class_names[c] if c < len(class_names) else str(c)
    axes[0, j].imshow(true_a[..., c], vmin=0, vmax=1, cmap="viridis")
    axes[0, j].set_title(f"true {name}", fontsize=8)
    axes[1, j].imshow(pred_a[..., r], vmin=0, vmax=1, cmap="viridis")
    axes[1, j].set_title(f"pred. endmember {r}", fontsize=8)
    for ax in axes[:, j]:
      ax.set_axis_off()
  save(fig, out_path)


def model_figure(cube, valid, recon, angle_deg, abund, wavelengths, pixels,
                 origin, out_path):
  """A trained model on one window of an image, in reflectance.

  cube, recon: (H, W, B) input and reconstruction; valid: (H, W) input mask;
  angle_deg: (H, W) spectral angle between them; abund: (H, W, M) or None;
  pixels: [(row, col)] in the window, whose spectra are drawn; origin: the
  window's (row, col) in the image (for the titles). Row 1: false colour
  (bands nearest 650/550/470 nm, 2-98 % stretch of the input) of input and
  reconstruction, and the angle; row 2: spectra at `pixels`; row 3 (with
  abundances): the abundance maps.
  """
  r0, c0 = origin
  idx = enmap.rgb_band_indices(wavelengths)
  lo_hi = (np.nanpercentile(cube[..., idx], [2, 98]) if valid.any()
           else (0.0, 1.0))
  m = 0 if abund is None else abund.shape[-1]
  cols = max(3, len(pixels), m)
  rows = 3 if m else 2
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows),
                           squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for j, (img, title) in enumerate(((cube, "input"),
                                    (recon, "reconstruction"))):
    axes[0, j].imshow(np.nan_to_num(rgb(img, idx, lo_hi)))
    axes[0, j].set_title(f"{title} (false colour)", fontsize=9)
    for k, (y, x) in enumerate(pixels):
      axes[0, j].plot(x, y, "o", mfc="none", mec=f"C{k}")
  im = axes[0, 2].imshow(angle_deg, cmap="magma")
  axes[0, 2].set_title("spectral angle (deg)", fontsize=9)
  fig.colorbar(im, ax=axes[0, 2], fraction=0.046)
  for k, (y, x) in enumerate(pixels):
    ax = axes[1, k]
    ax.set_axis_on()
    ax.plot(*spectrum_xy(wavelengths, cube[y, x]), "k-", label="input")
    ax.plot(*spectrum_xy(wavelengths, recon[y, x]), f"C{k}--",
            label="reconstruction")
    ax.set(xlabel="wavelength (nm)", ylabel="reflectance",
           title=f"pixel ({r0 + y}, {c0 + x})")
    ax.legend(fontsize=7)
  for j in range(m):
    axes[2, j].imshow(abund[..., j], vmin=0, vmax=1, cmap="viridis")
    axes[2, j].set_title(f"abundance, endmember {j}", fontsize=9)
  save(fig, out_path)


def write_all(workdir, summary, wavelengths, class_names):
  """Writes every figure the run can make into `workdir`; returns paths."""
  workdir = epath.Path(workdir)
  plot, results = summary["plot"], summary["metrics"]
  paths = [workdir / "loss_curves.png", workdir / "reconstructions.png"]
  loss_curves(workdir / "metrics.jsonl", paths[0])
  reconstructions(plot, wavelengths, paths[1])
  if "endmembers" in plot:
    paths.append(workdir / "endmembers.png")
    sad = results.get("unmixing", {}).get("sad_deg", {})
    endmembers(plot, wavelengths, class_names, sad, paths[-1])
  if "matching" in plot and "true_abundances" in plot:
    paths.append(workdir / "abundances.png")
    abundance_maps(plot, class_names, paths[-1])
  return paths
