"""metrics.py against numpy float64 and scikit-image, with masks and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal
from skimage.metrics import structural_similarity

from kgmae_jax import metrics

# Jitted once here: eager op-by-op dispatch costs seconds per new shape on CPU.
psnr = jax.jit(metrics.psnr)
psnr_per_band = jax.jit(metrics.psnr_per_band)
ssim = jax.jit(metrics.ssim)
sam_degrees = jax.jit(metrics.sam_degrees)
rmse = jax.jit(metrics.rmse)
ergas = jax.jit(metrics.ergas)
reconstruction_metrics = jax.jit(metrics.reconstruction_metrics)


def cubes(shape, seed=0, noise=0.05):
  """A reflectance-like target in [0.05, 0.95] and a noisy prediction of it."""
  rng = np.random.default_rng(seed)
  target = rng.uniform(0.05, 0.95, size=shape)
  pred = np.clip(target + noise * rng.normal(size=shape), 0.0, 1.0)
  return pred.astype(np.float32), target.astype(np.float32)


def structured(shape, seed=0):
  """Smooth ramps, a bright square and a checkerboard, differing per band, plus a blurred copy."""
  n, h, w, b = shape
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  bands = []
  for k in range(b):
    image = 0.2 + 0.5 * (xx * (k + 1) % 1.0) * yy
    image[h // 4:h // 2, w // 3:2 * w // 3] = 0.9 - 0.05 * k
    image += 0.1 * ((np.arange(h)[:, None] // 3 + np.arange(w)[None] // 3) % 2)
    bands.append(image)
  target = np.stack([np.stack(bands, -1) * (1.0 - 0.2 * i) for i in range(n)])
  rng = np.random.default_rng(seed)
  pred = 0.5 * target + 0.25 * (np.roll(target, 1, axis=1) + np.roll(target, -1, axis=2))
  pred = pred + 0.01 * rng.normal(size=target.shape)
  return pred.astype(np.float32), target.astype(np.float32)


def np_angle(p, t):
  p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
  p_hat = p / np.linalg.norm(p, axis=-1, keepdims=True)
  along = np.sum(p_hat * t, -1)
  return np.arctan2(np.linalg.norm(t - along[..., None] * p_hat, axis=-1), along)


def np_metrics(pred, target, data_range, valid=None):
  """psnr, per-band psnr, rmse, ergas, sam_deg from the valid pixels, in float64."""
  p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  if valid is not None:
    p, t = p[valid], t[valid]
  p, t = p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1])
  r = np.broadcast_to(np.asarray(data_range, np.float64), (p.shape[-1],))
  mse_b = np.mean((p - t) ** 2, axis=0)
  return {
      "psnr": -10 * np.log10(np.mean(mse_b / r**2)),
      "psnr_per_band": 10 * np.log10(r**2 / mse_b),
      "rmse": np.sqrt(np.mean(mse_b)),
      "ergas": 100 * np.sqrt(np.mean(mse_b / np.mean(t, axis=0) ** 2)),
      "sam_deg": np.degrees(np.mean(np_angle(p, t))),
  }


@pytest.mark.parametrize("shape", [(12, 12, 5), (2, 12, 13, 5), (40, 5)])
def test_psnr_rmse_ergas_sam_match_numpy(shape):
  pred, target = cubes(shape)
  expected = np_metrics(pred, target, 1.0)
  np.testing.assert_allclose(psnr(pred, target, 1.0), expected["psnr"], rtol=1e-5)
  np.testing.assert_allclose(psnr_per_band(pred, target, 1.0), expected["psnr_per_band"],
                             rtol=1e-5)
  np.testing.assert_allclose(rmse(pred, target), expected["rmse"], rtol=1e-5)
  np.testing.assert_allclose(ergas(pred, target), expected["ergas"], rtol=1e-5)
  np.testing.assert_allclose(ergas(pred, target, 0.25), 0.25 * expected["ergas"], rtol=1e-5)
  np.testing.assert_allclose(sam_degrees(pred, target), expected["sam_deg"], rtol=1e-5)


def test_psnr_scalar_and_per_band_data_range():
  pred, target = cubes((2, 6, 6, 4), seed=1)
  np.testing.assert_allclose(psnr(pred, target, 2.0),
                             10 * np.log10(4.0 / np.mean((pred - target.astype(np.float64)) ** 2)),
                             rtol=1e-5)
  data_range = np.array([1.0, 0.5, 2.0, 4.0], np.float32)
  expected = np_metrics(pred, target, data_range)
  np.testing.assert_allclose(psnr(pred, target, data_range), expected["psnr"], rtol=1e-5)
  np.testing.assert_allclose(psnr_per_band(pred, target, data_range), expected["psnr_per_band"],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="data_range"):
    metrics.psnr(pred, target, np.ones(3))


@pytest.mark.parametrize("num_bands", [1, 3, 8])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(num_bands, kind):
  shape = (2, 16, 21, num_bands)
  pred, target = cubes(shape, seed=num_bands, noise=0.1) if kind == "random" else structured(shape)
  pred64, target64 = pred.astype(np.float64), target.astype(np.float64)  # skimage in float64.
  expected = np.mean([
      structural_similarity(pred64[i], target64[i], gaussian_weights=True, sigma=1.5,
                            use_sample_covariance=False, data_range=1.0, channel_axis=-1)
      for i in range(shape[0])])
  np.testing.assert_allclose(ssim(pred, target, 1.0), expected, atol=1e-4)
  # One (H, W, B) image, and with a per-band data range.
  data_range = np.linspace(0.5, 2.0, num_bands).astype(np.float32)
  expected = np.mean([
      structural_similarity(pred64[0, ..., b], target64[0, ..., b], gaussian_weights=True,
                            sigma=1.5, use_sample_covariance=False,
                            data_range=float(data_range[b]))
      for b in range(num_bands)])
  np.testing.assert_allclose(ssim(pred[0], target[0], data_range), expected, atol=1e-4)


def test_ssim_float32_precision_on_bright_narrow_range_bands():
  # Values 0.8 +- 0.01 with a per-band range of 0.02: uncentred float32 moments lose ~3e-4.
  rng = np.random.default_rng(4)
  target = 0.8 + 0.004 * rng.normal(size=(24, 24, 3))
  pred = target + 0.002 * rng.normal(size=target.shape)
  expected = structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=0.02, channel_axis=-1)
  got = ssim(pred.astype(np.float32), target.astype(np.float32), 0.02)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def np_masked_ssim(pred, target, data_range, valid):
  """Documented masked SSIM: Gaussian weights renormalised over valid pixels, valid centres."""
  taps = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
  kernel = np.outer(taps, taps) / taps.sum() ** 2
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  scores = []
  for i in range(pred.shape[0]):
    m = valid[i].astype(np.float64)
    filt = lambda a: signal.correlate2d(a * m, kernel, mode="valid")
    weight = filt(np.ones_like(m))
    centres = valid[i, 5:-5, 5:-5]
    for b in range(pred.shape[-1]):
      x = np.where(valid[i], pred[i, ..., b], 0.0).astype(np.float64)
      y = np.where(valid[i], target[i, ..., b], 0.0).astype(np.float64)
      ux, uy = filt(x)[centres] / weight[centres], filt(y)[centres] / weight[centres]
      vx = filt(x * x)[centres] / weight[centres] - ux**2
      vy = filt(y * y)[centres] / weight[centres] - uy**2
      cov = filt(x * y)[centres] / weight[centres] - ux * uy
      scores.append(((2 * ux * uy + c1) * (2 * cov + c2))
                    / ((ux**2 + uy**2 + c1) * (vx + vy + c2)))
  return np.mean(np.concatenate(scores))


def test_masks_exclude_nan_pixels():
  pred, target = structured((2, 16, 18, 4))
  rng = np.random.default_rng(3)
  valid = rng.uniform(size=pred.shape[:-1]) < 0.8
  pred_bad, target_bad = pred.copy(), target.copy()
  pred_bad[~valid, 1], target_bad[~valid] = np.nan, np.inf
  expected = np_metrics(pred, target, 1.0, valid)
  np.testing.assert_allclose(psnr(pred_bad, target_bad, 1.0, valid), expected["psnr"], rtol=1e-5)
  np.testing.assert_allclose(psnr_per_band(pred_bad, target_bad, 1.0, valid),
                             expected["psnr_per_band"], rtol=1e-5)
  np.testing.assert_allclose(rmse(pred_bad, target_bad, valid), expected["rmse"], rtol=1e-5)
  np.testing.assert_allclose(ergas(pred_bad, target_bad, 1.0, valid), expected["ergas"], rtol=1e-5)
  np.testing.assert_allclose(sam_degrees(pred_bad, target_bad, valid.astype(np.float32)),
                             expected["sam_deg"], rtol=1e-5)
  np.testing.assert_allclose(ssim(pred_bad, target_bad, 1.0, valid),
                             np_masked_ssim(pred, target, 1.0, valid), atol=1e-4)
  # A fully valid mask is the unmasked metric.
  np.testing.assert_allclose(ssim(pred, target, 1.0, np.ones(pred.shape[:-1], bool)),
                             ssim(pred, target, 1.0), atol=1e-6)


def test_no_valid_pixel_is_nan():
  pred, target = cubes((12, 12, 3))
  out = reconstruction_metrics(pred, target, 1.0, np.zeros((12, 12), bool))
  assert all(np.isnan(v) for v in out.values())


def test_reconstruction_metrics_jit_traced_range_and_dtypes():
  pred, target = structured((2, 14, 15, 6))
  valid = np.ones(pred.shape[:-1], bool)
  valid[0, :3] = False
  out = reconstruction_metrics(pred, target, jnp.float32(1.0), valid)
  assert set(out) == {"psnr", "psnr_band_mean", "ssim", "sam_deg", "rmse", "ergas"}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in out.values())
  expected = np_metrics(pred, target, 1.0, valid)
  np.testing.assert_allclose(out["psnr"], expected["psnr"], rtol=1e-5)
  np.testing.assert_allclose(out["psnr_band_mean"], np.mean(expected["psnr_per_band"]), rtol=1e-5)
  np.testing.assert_allclose(out["ssim"], np_masked_ssim(pred, target, 1.0, valid), atol=1e-4)
  for name in ("sam_deg", "rmse", "ergas"):
    np.testing.assert_allclose(out[name], expected[name], rtol=1e-5)
  out16 = reconstruction_metrics(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target, jnp.bfloat16),
                                 1.0)
  assert all(v.dtype == jnp.float32 and np.isfinite(v) for v in out16.values())


def test_ssim_rejects_small_images():
  pred, target = cubes((10, 30, 2))
  with pytest.raises(ValueError, match="H, W >= 11"):
    metrics.ssim(pred, target, 1.0)
