"""Classical unmixing tools in numpy/scipy: endmember selection and matching.

Used to initialise the LSMM endmembers (`lsmm.init = library | data`) and to
score learned endmembers against the benchmark's true materials (spectral
angle distance after Hungarian matching). Spectra are rows: (n, B).
"""

import numpy as np
from scipy import optimize

from kgmae_jax import enmap
from kgmae_jax import spectra


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def spectral_angle(a, b):
  """Angles (radians, float64) between spectra a (..., B) and b (..., B),
  broadcast: shape (...); NaN in a spectrum gives NaN. (The JAX version,
  with finite gradients at 0, is `losses.spectral_angle`.)"""
  return np.arccos(np.clip((_unit(a) * _unit(b)).sum(-1), -1.0, 1.0))


def spectral_angle_matrix(a, b):
  """Angles (radians) between rows of a (m, B) and b (k, B): (m, k), float64."""
  return np.arccos(np.clip(_unit(a) @ _unit(b).T, -1.0, 1.0))


def match_endmembers(learned, true):
  """Hungarian matching of learned (m, B) to true (k, B) spectra by angle.

  Returns (learned_idx, true_idx, angles): min(m, k) pairs minimising the
  total spectral angle distance (SAD), angles in radians.
  """
  cost = spectral_angle_matrix(learned, true)
  rows, cols = optimize.linear_sum_assignment(cost)
  return rows, cols, cost[rows, cols]


def farthest_angle_pixels(pixels, m):
  """m pixels (m, B) picked greedily for spectral diversity (ATGP-like).

  Starts from the brightest pixel, then repeatedly adds the pixel with the
  largest angle to its nearest already-chosen spectrum.
  """
  x = np.asarray(pixels, np.float64)
  if x.ndim != 2 or len(x) < m:
    raise ValueError(f"Need at least {m} pixels of shape (n, B), got {x.shape}.")
  chosen = [int(np.argmax(np.linalg.norm(x, axis=1)))]
  nearest = spectral_angle_matrix(x, x[chosen])[:, 0]
  for _ in range(m - 1):
    i = int(np.argmax(nearest))
    chosen.append(i)
    nearest = np.minimum(nearest, spectral_angle_matrix(x, x[i:i + 1])[:, 0])
  return x[chosen].astype(np.float32)


def nominal_fwhm(wavelengths_nm):
  """Band widths (B,) for a band grid: EnMAP's when it is the EnMAP grid, else
  the spacing to the nearest neighbouring band (a Nyquist-sampled sensor)."""
  w = np.asarray(wavelengths_nm, np.float64)
  if w.shape == enmap.WAVELENGTHS_NM.shape and np.allclose(w, enmap.WAVELENGTHS_NM):
    return enmap.FWHM_NM.copy()
  if len(w) == 1:
    return np.full(1, 10.0)
  d = np.abs(w[:, None] - w[None, :])
  np.fill_diagonal(d, np.inf)
  return np.maximum(d.min(axis=1), 1.0)


def library_endmembers(wavelengths_nm, m, seed=0):
  """(B, m) endmembers from the spectral libraries, on the given band grid.

  The first min(m, C) columns are the mean spectra of the C material classes
  (`spectra.CLASS_NAMES`, both regions pooled); further columns are single
  library spectra drawn at random (seeded) from the classes in turn.
  """
  pools = spectra.material_pools(wavelengths_nm, nominal_fwhm(wavelengths_nm))
  names = list(spectra.CLASS_NAMES)
  cols = [pools[name].spectra.mean(axis=0) for name in names[:m]]
  rng = np.random.default_rng(seed)
  for j in range(m - len(cols)):
    pool = pools[names[j % len(names)]].spectra
    cols.append(pool[rng.integers(len(pool))])
  return np.stack(cols, axis=1).astype(np.float32)


def fcls(pixels, endmembers, delta=None):
  """Fully constrained least squares: abundances (n, M), a >= 0, sum(a) = 1.

  pixels (n, B), endmembers (M, B). Solves, per pixel, the non-negative least
  squares problem on the endmember matrix augmented with a row `delta * 1`
  (target `delta`), which enforces sum-to-one as delta grows (Heinz & Chang
  2001); delta defaults to 1e3 x the largest endmember norm. The augmented
  system is reduced by one QR so each pixel solves an (M, M) NNLS.
  """
  x = np.asarray(pixels, np.float64)
  e = np.asarray(endmembers, np.float64).T  # (B, M)
  if x.ndim != 2 or e.shape[0] != x.shape[1]:
    raise ValueError(f"pixels (n, B) and endmembers (M, B) disagree: {x.shape}, "
                     f"{e.T.shape}.")
  if delta is None:
    delta = 1e3 * np.linalg.norm(e, axis=0).max()
  m = e.shape[1]
  aug = np.vstack([e, np.full((1, m), delta)])  # (B + 1, M)
  q, r = np.linalg.qr(aug)  # ||aug a - y|| = ||r a - q^T y|| + const.
  rhs = np.hstack([x, np.full((len(x), 1), delta)]) @ q  # (n, M)
  out = np.empty((len(x), m))
  for i, b in enumerate(rhs):
    out[i] = optimize.nnls(r, b)[0]
  return out


def _estimate_snr(y, mean, proj):
  """VCA's SNR estimate (dB) of data y (B, n) from its projection proj (d, n)."""
  b, n = y.shape
  p_y = np.sum(y**2) / n
  p_x = np.sum(proj**2) / n + mean @ mean
  return 10 * np.log10(max(p_x - proj.shape[0] / b * p_y, 1e-12)
                       / max(p_y - p_x, 1e-12))


def vca(pixels, m, seed=0):
  """Vertex component analysis (Nascimento & Dias 2005): (endmembers (m, B),
  pixel indices (m,)).

  Projects the pixels (n, B) onto an m-dimensional subspace (SVD; projective
  projection at high SNR, mean-centred plus a constant dimension at low SNR),
  then repeatedly takes the pixel with the largest projection onto a random
  direction orthogonal to the endmembers found so far. Endmembers are the
  projected (denoised) spectra of those pixels.
  """
  y = np.asarray(pixels, np.float64).T  # (B, n)
  b, n = y.shape
  if n < m:
    raise ValueError(f"VCA needs at least m={m} pixels, got {n}.")
  rng = np.random.default_rng(seed)
  mean = y.mean(axis=1)
  yo = y - mean[:, None]
  u = np.linalg.svd(yo @ yo.T / n)[0][:, :m]
  snr = _estimate_snr(y, mean, u.T @ yo)
  if snr < 15 + 10 * np.log10(m):  # Low SNR: subspace of dimension m - 1.
    d = m - 1
    x = u[:, :d].T @ yo
    yp = u[:, :d] @ x + mean[:, None]
    c = np.sqrt(np.max(np.sum(x**2, axis=0)))
    proj = np.vstack([x, np.full((1, n), c)])
  else:  # High SNR: projective projection onto the data's m-dim subspace.
    u = np.linalg.svd(y @ y.T / n)[0][:, :m]
    x = u.T @ y
    yp = u @ x
    proj = x / (x.mean(axis=1) @ x)
  a = np.zeros((m, m))
  a[-1, 0] = 1.0
  idx = np.zeros(m, int)
  for i in range(m):
    w = rng.standard_normal(m)
    f = w - a @ np.linalg.pinv(a) @ w
    f /= np.linalg.norm(f)
    idx[i] = int(np.argmax(np.abs(f @ proj)))
    a[:, i] = proj[:, idx[i]]
  return yp[:, idx].T, idx


def _kmeans_pp(unit, m, rng):
  """k-means++ seeding on angular distance: m row indices of unit (n, B)."""
  idx = [int(rng.integers(len(unit)))]
  dist = 1.0 - unit @ unit[idx[0]]
  for _ in range(m - 1):
    d = np.clip(dist, 0.0, None)
    i = int(rng.choice(len(unit), p=d / d.sum())) if d.sum() > 0 else int(
        rng.integers(len(unit)))
    idx.append(i)
    dist = np.minimum(dist, 1.0 - unit @ unit[i])
  return np.array(idx)


def spherical_kmeans(pixels, m, seed=0, iters=50):
  """Spherical k-means of pixels (n, B): (centres (m, B), labels (n,)).

  Clusters by spectral angle (cosine on unit-norm spectra, k-means++ seeding);
  a centre is the mean reflectance spectrum of its pixels. An empty cluster
  is re-seeded with the pixel worst explained by its centre.
  """
  x = np.asarray(pixels, np.float64)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  x = x[norm[:, 0] > 0]
  if x.ndim != 2 or len(x) < m:
    raise ValueError(f"Need at least {m} non-zero pixels (n, B), got {x.shape}.")
  unit = _unit(x)
  rng = np.random.default_rng(seed)
  centres = unit[_kmeans_pp(unit, m, rng)]
  labels = None
  for _ in range(iters):
    sim = unit @ centres.T
    new = np.argmax(sim, axis=1)
    if labels is not None and np.array_equal(new, labels):
      break
    labels = new
    for k in range(m):
      members = unit[labels == k]
      if len(members) == 0:  # Re-seed with the worst-explained pixel.
        worst = int(np.argmin(sim.max(axis=1)))
        labels[worst] = k
        members = unit[worst:worst + 1]
      centres[k] = _unit(members.sum(axis=0))
  labels = np.argmax(unit @ centres.T, axis=1)
  means = np.stack([x[labels == k].mean(axis=0) if np.any(labels == k)
                    else centres[k] for k in range(m)])
  return means, labels


def kmeans_endmembers(pixels, m, seed=0, restarts=8, score_pixels=1024,
                      purify_frac=0.02, purify_iters=10):
  """Blind endmembers (m, B): spherical k-means, then purified.

  1. The best of `restarts` spherical k-means runs: cluster means find every
     material's group of spectra, robust to within-class variability and to
     outlier pixels. Runs are compared by the 99th percentile of the spectral
     angle between `score_pixels` pixels and their FCLS reconstruction: a set
     that misses a material leaves that material's pixels badly explained.
  2. Cluster means lie inside the data simplex when pixels are mixed, so each
     is moved out to the mean of the `purify_frac` share of pixels with the
     largest sum-to-one least-squares abundance of it (`purify`): an average
     of the purest pixels, not VCA's single extreme pixel.
  """
  x = np.asarray(pixels, np.float64)
  rng = np.random.default_rng(seed)
  probe = x[rng.choice(len(x), min(len(x), score_pixels), replace=False)]
  best, best_score = None, np.inf
  for r in range(restarts):
    centres, _ = spherical_kmeans(x, m, seed=seed * 1000 + r)
    recon = fcls(probe, centres) @ centres
    score = np.percentile(spectral_angle(recon, probe), 99)
    if score < best_score:
      best, best_score = centres, score
  if purify_frac > 0:
    best = purify(x, best, purify_frac, purify_iters)
  return best


def purify(pixels, endmembers, frac=0.02, iters=10):
  """Moves endmembers (m, B) towards the purest pixels (n, B): each becomes
  the mean of the max(10, frac * n) pixels with the largest sum-to-one
  least-squares abundance of it; repeated `iters` times."""
  x = np.asarray(pixels, np.float64)
  e = np.asarray(endmembers, np.float64)
  n, m = len(x), len(e)
  top = min(n, max(10, int(frac * n)))
  for _ in range(iters):
    weight = 1e3 * np.linalg.norm(e, axis=1).max()  # Enforces sum(a) = 1.
    aug = np.vstack([e.T, np.full((1, m), weight)])  # (B + 1, m)
    rhs = np.hstack([x, np.full((n, 1), weight)])  # (n, B + 1)
    a = np.linalg.lstsq(aug, rhs.T, rcond=None)[0].T  # (n, m)
    new = np.stack([x[np.argpartition(-a[:, k], top - 1)[:top]].mean(axis=0)
                    for k in range(m)])
    if np.allclose(new, e):
      break
    e = new
  return e
