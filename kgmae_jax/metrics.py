"""Metrics: image quality of reconstructed cubes (PSNR, SSIM, SAM, RMSE, ERGAS),
per-pixel classification (confusion matrix, Top-1, per-class accuracy, mIoU) and unmixing
(abundance RMSE per matched endmember, spectral angle distance).

Pure `jax.numpy`, jittable, accumulated in float32 (bfloat16 inputs are cast inside).

Conventions:
* `pred`, `target` are cubes `(N, H, W, B)` or `(H, W, B)` in reflectance units; every
  metric except `ssim` also accepts any `(..., B)` stack of spectra.
* `mask` (optional), shape `pred.shape[:-1]`, marks the valid pixels (bool, or numbers:
  > 0 is valid). Invalid pixels are zero-filled before any arithmetic, so NaN/inf there
  never reach a result. With no valid pixel a metric is NaN (undefined), not 0.
* Reductions are global over the valid pixels of all images: PSNR from the MSE over all
  valid pixels and bands (not a mean of per-image PSNRs).
* `data_range` (max - min of the data) is explicit: a scalar or per band `(B,)`; it may be
  a traced array.
"""

import jax
import jax.numpy as jnp
import numpy as np

from kgmae_jax import losses

Array = jax.Array

# SSIM constants of Wang et al. (2004), as in skimage with gaussian_weights=True.
_SSIM_K1, _SSIM_K2, _SSIM_SIGMA, _SSIM_RADIUS = 0.01, 0.03, 1.5, 5  # radius = int(3.5 sigma + 0.5)
_SSIM_TAPS = np.exp(-0.5 * (np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1) / _SSIM_SIGMA) ** 2)
_SSIM_TAPS = tuple(float(g) for g in _SSIM_TAPS / _SSIM_TAPS.sum())  # 11 taps, sum 1.


_as_float = losses._as_float  # pylint: disable=protected-access


def _prepare(pred, target, mask):
  """Float copies of pred/target, zero-filled at invalid pixels, and the bool validity mask."""
  p, t = _as_float(pred), _as_float(target)
  if p.shape != t.shape or p.ndim < 1:
    raise ValueError(f"pred {p.shape} and target {t.shape} must be equal (..., B) shapes.")
  if mask is None:
    return p, t, None
  mask = losses.checked_mask(mask, p.shape)
  valid = mask if mask.dtype == jnp.bool_ else mask > 0
  p = jnp.where(valid[..., None], p, 0.0)
  t = jnp.where(valid[..., None], t, 0.0)
  return p, t, valid


def _band_sums(pred, target, mask):
  """Per-band sums of squared error and of target, and the valid-pixel count."""
  p, t, valid = _prepare(pred, target, mask)
  axes = tuple(range(p.ndim - 1))
  if valid is None:
    count = jnp.float32(np.prod(p.shape[:-1]))
  else:
    count = jnp.sum(valid, dtype=jnp.float32)
  return jnp.sum((p - t) ** 2, axis=axes), jnp.sum(t, axis=axes), count


def _data_range(data_range, num_bands: int) -> Array:
  r = _as_float(data_range)
  if r.ndim > 1 or (r.ndim == 1 and r.shape[0] != num_bands):
    raise ValueError(f"data_range must be a scalar or per band ({num_bands},), got {r.shape}.")
  return jnp.broadcast_to(r, (num_bands,))


def psnr(pred, target, data_range, mask=None) -> Array:
  """Global PSNR (dB): `10 log10(R^2 / MSE)`, MSE over the valid pixels and all bands.

  With a per-band range `R_b`, the squared errors are normalised per band first:
  `-10 log10(mean over pixels and bands of ((pred - target) / R_b)^2)`.
  """
  sse, _, count = _band_sums(pred, target, mask)
  r = _data_range(data_range, sse.shape[0])
  return -10.0 * jnp.log10(jnp.sum(sse / r**2) / (count * sse.shape[0]))


def psnr_per_band(pred, target, data_range, mask=None) -> Array:
  """PSNR (dB) of each band over the valid pixels: shape `(B,)`; its mean is `psnr_band_mean`."""
  sse, _, count = _band_sums(pred, target, mask)
  return 10.0 * jnp.log10(_data_range(data_range, sse.shape[0]) ** 2 / (sse / count))


def rmse(pred, target, mask=None) -> Array:
  """Root mean squared error over the valid pixels and all bands."""
  sse, _, count = _band_sums(pred, target, mask)
  return jnp.sqrt(jnp.sum(sse) / (count * sse.shape[0]))


def ergas(pred, target, ratio=1.0, mask=None) -> Array:
  """ERGAS `100 ratio sqrt(mean_b (RMSE_b / mean_b(target))^2)`; lower is better.

  `ratio` is the ratio of pixel sizes high / low resolution of the fusion problem (e.g. 1/4
  for 4x pansharpening); use 1 for reconstruction at the same resolution. The band means of
  the target are over the valid pixels.
  """
  sse, target_sum, count = _band_sums(pred, target, mask)
  relative = jnp.sqrt(sse / count) / (target_sum / count)
  return 100.0 * ratio * jnp.sqrt(jnp.mean(relative**2))


def sam_degrees(pred, target, mask=None) -> Array:
  """Mean spectral angle in degrees over the valid pixels (`losses.spectral_angle`)."""
  p, t, valid = _prepare(pred, target, mask)
  angle = jnp.degrees(losses.spectral_angle(p, t))
  if valid is None:
    return jnp.mean(angle)
  return jnp.sum(jnp.where(valid, angle, 0.0)) / jnp.sum(valid, dtype=jnp.float32)


def _filter_valid(x: Array) -> Array:
  """Separable 11x11 Gaussian correlation of `(N, H, W, C)` over H, W without padding."""
  h, w = x.shape[1] - 2 * _SSIM_RADIUS, x.shape[2] - 2 * _SSIM_RADIUS
  x = sum(g * x[:, i:i + h] for i, g in enumerate(_SSIM_TAPS))
  return sum(g * x[:, :, i:i + w] for i, g in enumerate(_SSIM_TAPS))


def ssim(pred, target, data_range, mask=None) -> Array:
  """Mean SSIM: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population moments.

  Computed per band on each `(H, W)` image with no padding (only windows that fit in the
  image), as `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R, channel_axis=-1)`, and averaged over bands,
  images and window centres. With a mask, a window counts when its centre pixel is valid,
  and its local means/variances use only its valid pixels (Gaussian weights renormalised);
  for a fully valid image this is the standard SSIM. Needs H, W >= 11. Memory: ~5 float32
  copies of the cube.
  """
  p, t, valid = _prepare(pred, target, mask)
  if p.ndim == 3:
    p, t = p[None], t[None]
    valid = None if valid is None else valid[None]
  if p.ndim != 4 or min(p.shape[1:3]) < 2 * _SSIM_RADIUS + 1:
    raise ValueError(f"ssim needs (N, H, W, B) or (H, W, B) with H, W >= 11; got {p.shape}.")
  num_bands = p.shape[-1]
  r = _data_range(data_range, num_bands)
  c1, c2 = (_SSIM_K1 * r) ** 2, (_SSIM_K2 * r) ** 2
  if valid is None:
    weight = jnp.ones(p.shape[:-1] + (1,), jnp.float32)
  else:
    weight = valid[..., None].astype(jnp.float32)
  # Centre each image-band on its valid mean: E[x^2] - E[x]^2 then cancels far less in float32.
  count = jnp.maximum(jnp.sum(weight, axis=(1, 2), keepdims=True), 1.0)
  p_mean = jnp.sum(p * weight, axis=(1, 2), keepdims=True) / count
  t_mean = jnp.sum(t * weight, axis=(1, 2), keepdims=True) / count
  x, y = (p - p_mean) * weight, (t - t_mean) * weight
  moments = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1))
  if valid is not None:
    window_weight = _filter_valid(weight)
    moments = moments / jnp.where(window_weight > 0, window_weight, 1.0)
  mx, my, mxx, myy, mxy = jnp.split(moments, 5, axis=-1)
  var_x, var_y, cov = mxx - mx * mx, myy - my * my, mxy - mx * my
  ux, uy = mx + p_mean, my + t_mean
  s = ((2 * ux * uy + c1) * (2 * cov + c2)) / ((ux * ux + uy * uy + c1) * (var_x + var_y + c2))
  if valid is None:
    return jnp.mean(s)
  centres = valid[:, _SSIM_RADIUS:-_SSIM_RADIUS, _SSIM_RADIUS:-_SSIM_RADIUS, None]
  return jnp.sum(jnp.where(centres, s, 0.0)) / (jnp.sum(centres, dtype=jnp.float32) * num_bands)


def reconstruction_metrics(pred, target, data_range, mask=None) -> dict[str, Array]:
  """All reconstruction metrics as float32 scalars: psnr, psnr_band_mean, ssim, sam_deg,
  rmse, ergas (ratio 1). Jittable; `data_range` may be traced."""
  return {
      "psnr": psnr(pred, target, data_range, mask),
      "psnr_band_mean": jnp.mean(psnr_per_band(pred, target, data_range, mask)),
      "ssim": ssim(pred, target, data_range, mask),
      "sam_deg": sam_degrees(pred, target, mask),
      "rmse": rmse(pred, target, mask),
      "ergas": ergas(pred, target, 1.0, mask),
  }


# ------------------------------------------------------------ classification
def confusion_matrix(labels, pred, num_classes: int, mask=None) -> Array:
  """(C, C) float32 counts, rows = true class, columns = predicted class.

  `labels`, `pred`: integer arrays of one shape; `mask` (same shape, optional) marks the
  pixels that count (e.g. valid and labelled); labels outside [0, C) never count.
  """
  labels = jnp.asarray(labels).astype(jnp.int32).reshape(-1)
  pred = jnp.asarray(pred).astype(jnp.int32).reshape(-1)
  weight = (labels >= 0) & (labels < num_classes)
  if mask is not None:
    m = jnp.asarray(mask).reshape(-1)
    weight = weight & (m if m.dtype == jnp.bool_ else m > 0)
  idx = jnp.clip(labels, 0, num_classes - 1) * num_classes + jnp.clip(pred, 0, num_classes - 1)
  counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[idx].add(
      weight.astype(jnp.float32))
  return counts.reshape(num_classes, num_classes)


def classification_metrics(confusion) -> dict[str, Array]:
  """Top-1 (overall accuracy), Cohen's kappa, per-class accuracy (recall) and IoU, mean
  accuracy (average accuracy) and mIoU of a confusion
  matrix (rows true). Classes without true pixels get NaN accuracy and are left out of
  the means; a class with an empty union (never true, never predicted) is left out of
  mIoU. Top-1 is NaN when nothing counts."""
  cm = _as_float(confusion)
  tp = jnp.diag(cm)
  true_n, pred_n = cm.sum(1), cm.sum(0)
  union = true_n + pred_n - tp
  acc = jnp.where(true_n > 0, tp / jnp.where(true_n > 0, true_n, 1.0), jnp.nan)
  iou = jnp.where(union > 0, tp / jnp.where(union > 0, union, 1.0), jnp.nan)
  total = jnp.sum(cm)
  chance = jnp.sum(true_n * pred_n) / jnp.maximum(total, 1.0) ** 2
  top1 = jnp.sum(tp) / total
  return {
      "top1": top1,
      "kappa": (top1 - chance) / (1.0 - chance),  # Cohen's kappa.
      "per_class_acc": acc,
      "mean_class_acc": jnp.nanmean(acc),
      "per_class_iou": iou,
      "miou": jnp.nanmean(iou),
  }


# ------------------------------------------------------------------ unmixing
def abundance_rmse(pred, true, pred_idx, true_idx, mask=None) -> Array:
  """RMSE per matched endmember pair: (k,) for `pred[..., pred_idx[j]]` vs
  `true[..., true_idx[j]]` over the valid pixels.

  pred (..., M), true (..., K) abundances; the index pairs come from
  `unmixing.match_endmembers` (Hungarian, by spectral angle).
  """
  p = _as_float(pred)[..., jnp.asarray(pred_idx)]
  t = _as_float(true)[..., jnp.asarray(true_idx)]
  if mask is None:
    return jnp.sqrt(jnp.mean((p - t) ** 2, axis=tuple(range(p.ndim - 1))))
  m = jnp.asarray(mask)
  valid = (m if m.dtype == jnp.bool_ else m > 0)[..., None]
  se = jnp.where(valid, (p - t) ** 2, 0.0)
  axes = tuple(range(p.ndim - 1))
  return jnp.sqrt(se.sum(axes) / jnp.sum(valid, dtype=jnp.float32))


def spectral_angle_distance(pred_em, true_em) -> Array:
  """SAD in degrees between paired rows of pred_em and true_em, (k, B) each: (k,).
  Pair them first with `unmixing.match_endmembers`."""
  return jnp.degrees(losses.spectral_angle(_as_float(pred_em), _as_float(true_em)))
