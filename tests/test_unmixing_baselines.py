"""FCLS and VCA (unmixing.py): exact recovery, constraints, pure-pixel finding."""

import numpy as np

from kgmae_jax import unmixing


def test_fcls_recovers_noiseless_abundances():
  rng = np.random.default_rng(0)
  em = rng.uniform(0.05, 0.6, (5, 40))
  a = rng.dirichlet(np.full(5, 0.7), 200)
  a[:5] = np.eye(5)  # Vertices (zeros in the solution) too.
  got = unmixing.fcls(a @ em, em)
  np.testing.assert_allclose(got, a, atol=1e-6)


def test_fcls_constraints_on_noisy_and_outside_pixels():
  rng = np.random.default_rng(1)
  em = rng.uniform(0.05, 0.6, (4, 40))
  # Pixels off the simplex: unconstrained LS would give negative abundances.
  x = rng.dirichlet(np.ones(4), 100) @ em * 1.3 + rng.normal(0, 0.05, (100, 40))
  got = unmixing.fcls(x, em)
  assert got.min() >= 0
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
  # Optimal among feasible points: no random simplex point is better.
  res = np.linalg.norm(got @ em - x, axis=1)
  for _ in range(50):
    other = rng.dirichlet(np.ones(4), 100)
    assert np.all(res <= np.linalg.norm(other @ em - x, axis=1) + 1e-4)


def test_vca_finds_pure_pixels():
  rng = np.random.default_rng(2)
  em = rng.uniform(0.05, 0.6, (4, 50))
  a = rng.dirichlet(np.full(4, 0.6), 500)
  pure = np.array([10, 120, 300, 444])
  a[pure] = np.eye(4)
  for noise in (0.0, 0.002):
    x = a @ em + noise * rng.standard_normal((500, 50))
    found, idx = unmixing.vca(x, 4, seed=0)
    assert sorted(idx.tolist()) == sorted(pure.tolist()), (noise, idx)
    _, _, angles = unmixing.match_endmembers(found, em)
    assert np.degrees(angles).max() < 1.0
