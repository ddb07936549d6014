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


def _mixture(rng, ems, n, pure_frac=0.3, jitter=0.03):
  """n pixels: Dirichlet mixtures of ems (k, B), a share pure, each endmember
  scaled and perturbed per pixel (variability), plus noise."""
  k, b = ems.shape
  a = rng.dirichlet(np.full(k, 0.3), n)
  pure = rng.random(n) < pure_frac
  a[pure] = np.eye(k)[rng.integers(0, k, pure.sum())]
  em_px = ems[None] * rng.uniform(0.9, 1.1, (n, k, 1)) * (
      1 + jitter * rng.standard_normal((n, k, b)))
  return np.einsum("nk,nkb->nb", a, em_px) + rng.normal(0, 0.003, (n, b)), a


def test_spherical_kmeans_finds_separated_directions():
  rng = np.random.default_rng(0)
  dirs = rng.uniform(0.05, 0.6, (3, 30))
  x = np.concatenate([d * rng.uniform(0.5, 1.5, (200, 1)) for d in dirs])
  x += rng.normal(0, 0.002, x.shape)
  centres, labels = unmixing.spherical_kmeans(x, 3, seed=1)
  assert np.bincount(labels).tolist() == [200, 200, 200]
  _, _, angles = unmixing.match_endmembers(centres, dirs)
  assert np.degrees(angles).max() < 0.5


def test_kmeans_endmembers_beat_vca_under_variability_and_outliers():
  rng = np.random.default_rng(0)
  wl = np.linspace(400, 2400, 60)
  ems = np.stack([0.1 + 0.3 / (1 + np.exp(-(wl - c) / 150)) for c in (700, 1300)]
                 + [0.4 * np.exp(-((wl - 900) / 400) ** 2) + 0.05])
  x, _ = _mixture(rng, ems, 3000)
  x[:5] *= rng.uniform(0.2, 3.0, (5, 60))  # A few corrupt pixels.
  km = unmixing.kmeans_endmembers(x, 3, seed=0)
  vca_em, _ = unmixing.vca(x, 3, seed=0)
  sad_km = unmixing.match_endmembers(km, ems)[2].mean()
  sad_vca = unmixing.match_endmembers(vca_em, ems)[2].mean()
  assert sad_km < np.radians(2)
  assert sad_km < sad_vca


def test_kmeans_endmembers_keep_a_rare_distinct_material():
  rng = np.random.default_rng(3)
  ems = rng.uniform(0.05, 0.6, (4, 40))
  ems[3] = np.linspace(0.6, 0.02, 40)  # Rare, but distinct in shape.
  x, a = _mixture(rng, ems, 4000)
  rare = a[:, 3] > 0.5
  keep = ~rare | (rng.random(len(x)) < 0.15)  # ~2 % of pixels dominated by it.
  km = unmixing.kmeans_endmembers(x[keep], 4, seed=0)
  rows, cols, angles = unmixing.match_endmembers(km, ems)
  assert np.degrees(angles[cols == 3][0]) < 3
  assert np.degrees(angles).max() < 3


def test_purify_moves_inner_points_to_the_vertices():
  rng = np.random.default_rng(4)
  ems = rng.uniform(0.05, 0.6, (3, 25))
  x, _ = _mixture(rng, ems, 3000, jitter=0.0)
  inner = 0.6 * ems + 0.4 * ems.mean(axis=0)  # Shrunk towards the centroid.
  before = unmixing.match_endmembers(inner, ems)[2].max()
  after = unmixing.match_endmembers(unmixing.purify(x, inner), ems)[2].max()
  assert after < 0.1 * before and np.degrees(after) < 1
