"""Endmember selection and matching (numpy/scipy) against brute force."""

import itertools

import numpy as np

from kgmae_jax import enmap
from kgmae_jax import unmixing


def test_angle_matrix_matches_definition():
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0, 1, (3, 7)), rng.uniform(0, 1, (4, 7))
  ref = [[np.arccos(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for y in b]
         for x in a]
  np.testing.assert_allclose(unmixing.spectral_angle_matrix(a, b), ref, atol=1e-12)
  # Elementwise, broadcast; NaN spectra stay NaN.
  np.testing.assert_allclose(unmixing.spectral_angle(a[:, None], b[None]), ref,
                             atol=1e-12)
  x = np.stack([a[:2], b[:2]], axis=1)  # (2, 2, 7)
  x[1, 1, 3] = np.nan
  got = unmixing.spectral_angle(x, a[0])
  np.testing.assert_allclose(got[0], [0.0, ref[0][0]], atol=1e-7)
  assert np.isfinite(got[1, 0]) and np.isnan(got[1, 1])


def test_matching_is_optimal_and_recovers_permutation():
  rng = np.random.default_rng(1)
  true = rng.uniform(0.05, 0.6, (4, 20))
  perm = np.array([2, 0, 3, 1])
  learned = true[perm] * 1.3  # Scaled copies: angle 0 to their source.
  rows, cols, angles = unmixing.match_endmembers(learned, true)
  np.testing.assert_array_equal(cols[np.argsort(rows)], perm)
  np.testing.assert_allclose(angles, 0, atol=1e-7)
  # Against brute force on a random, unrelated set.
  learned = rng.uniform(0, 1, (4, 20))
  cost = unmixing.spectral_angle_matrix(learned, true)
  best = min(sum(cost[i, p[i]] for i in range(4))
             for p in itertools.permutations(range(4)))
  assert np.isclose(unmixing.match_endmembers(learned, true)[2].sum(), best)


def test_farthest_angle_pixels_finds_pure_pixels():
  rng = np.random.default_rng(2)
  em = rng.uniform(0.05, 0.6, (3, 30))
  a = rng.dirichlet(np.full(3, 0.5), 400)
  a[:3] = np.eye(3)  # The pure pixels are present.
  picked = unmixing.farthest_angle_pixels(a @ em, 3)
  _, _, angles = unmixing.match_endmembers(picked, em)
  assert np.degrees(angles).max() < 1.0


def test_library_endmembers_on_enmap_grid():
  em = unmixing.library_endmembers(enmap.WAVELENGTHS_NM, 8, seed=0)
  assert em.shape == (218, 8)
  assert np.isfinite(em).all() and em.min() >= 0 and em.max() < 1.5
  assert unmixing.nominal_fwhm([500.0, 510.0, 530.0]).tolist() == [10, 10, 20]
