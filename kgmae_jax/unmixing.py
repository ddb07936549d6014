"""Classical unmixing tools in numpy/scipy: endmember selection and matching.

Used to initialise the LSMM endmembers (`lsmm.init = library | data`) and to
score learned endmembers against the benchmark's true materials (spectral
angle distance after Hungarian matching). Spectra are rows: (n, B).
"""

import numpy as np
from scipy import optimize

from kgmae_jax import enmap
from kgmae_jax import spectra


def spectral_angle_matrix(a, b):
  """Angles (radians) between rows of a (m, B) and b (k, B): (m, k), float64."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return np.arccos(np.clip(an @ bn.T, -1.0, 1.0))


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
