"""losses.py against independent numpy float64 implementations, plus edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kgmae_jax import losses

SHAPES = [(7,), (5, 7), (2, 3, 4, 7)]
MASK_KINDS = ["none", "bool", "float01", "weights"]

# Jitted once here: eager op-by-op dispatch (and eager grad) costs seconds per new shape on CPU.
spectral_angle = jax.jit(losses.spectral_angle)
sam_loss = jax.jit(losses.sam_loss)
huber_loss = jax.jit(losses.huber_loss)
lsmm_mix = jax.jit(losses.lsmm_mix)
lsmm_loss = jax.jit(losses.lsmm_loss, static_argnames=("sam_weight",))
karma_loss = jax.jit(losses.karma_loss,
                     static_argnames=("weights", "huber_delta", "lsmm_sam_weight"))


def value_and_grads(fn, *args):
  """Jitted value and gradients with respect to the first two arguments."""
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(*args)


# ---- numpy float64 references (different formulas from the implementation) ----------------

def np_angle(p, t):
  """Angle via the component of t orthogonal to p; pi/2 when either spectrum is zero."""
  p, t = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(t, np.float64))
  p_norm, t_norm = np.linalg.norm(p, axis=-1), np.linalg.norm(t, axis=-1)
  zero = (p_norm <= 1e-8) | (t_norm <= 1e-8)
  p_hat = p / np.where(zero, 1.0, p_norm)[..., None]
  along = np.sum(p_hat * t, axis=-1)
  across = np.linalg.norm(t - along[..., None] * p_hat, axis=-1)
  return np.where(zero, np.pi / 2, np.arctan2(across, along))


def np_huber(x, delta):
  x = np.asarray(x, np.float64)
  return np.where(np.abs(x) <= delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta))


def np_mean(values, w):
  """Weighted mean over spectra; 0 when nothing is selected."""
  if w is None:
    return float(np.mean(values))
  w = np.asarray(w, np.float64)
  return 0.0 if w.sum() == 0 else float(np.sum(w * values) / w.sum())


def make_mask(kind, shape, rng):
  if kind == "none":
    return None
  keep = rng.uniform(size=shape) < 0.6
  keep.flat[0] = True
  if kind == "bool":
    return keep
  if kind == "float01":
    return keep.astype(np.float32)
  return (keep * rng.uniform(0.2, 3.0, size=shape)).astype(np.float32)


def data(shape, rng, low=-1.0, high=1.0):
  return rng.uniform(low, high, size=shape).astype(np.float32)


def finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


# ---- spectral_angle ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_angle_matches_numpy(shape):
  rng = np.random.default_rng(0)
  p, t = data(shape, rng), data(shape, rng)
  got = spectral_angle(p, t)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_angle(p, t), atol=2e-6)


def test_spectral_angle_broadcasts_reference_spectrum():
  rng = np.random.default_rng(1)
  p, reference = data((4, 6), rng), data((6,), rng)
  np.testing.assert_allclose(spectral_angle(p, reference), np_angle(p, reference), atol=2e-6)


def _value_and_grads(p, t):
  value, grads = value_and_grads(
      losses.spectral_angle, jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32))
  assert finite(grads), (p, t, grads)
  return float(value), grads


@pytest.mark.parametrize("name,p,t,expected", [
    ("identical", [0.2, 0.5, 0.1, 0.9], [0.2, 0.5, 0.1, 0.9], 0.0),
    ("scaled_up", [0.2, 0.5, 0.1, 0.9], [0.74, 1.85, 0.37, 3.33], 0.0),
    ("scaled_down", [0.2, 0.5, 0.1, 0.9], [2e-4, 5e-4, 1e-4, 9e-4], 0.0),
    ("orthogonal", [1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.5], math.pi / 2),
    ("opposite", [0.2, -0.5, 0.1, 0.9], [-0.4, 1.0, -0.2, -1.8], math.pi),
    ("zero_pred", [0.0, 0.0, 0.0, 0.0], [0.2, 0.5, 0.1, 0.9], math.pi / 2),
    ("zero_target", [0.2, 0.5, 0.1, 0.9], [0.0, 0.0, 0.0, 0.0], math.pi / 2),
    ("both_zero", [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], math.pi / 2),
])
def test_spectral_angle_special_cases(name, p, t, expected):
  value, grads = _value_and_grads(p, t)
  assert abs(value - expected) < 1e-6, name
  if name.startswith(("zero", "both")):
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)  # Documented: no gradient.


@pytest.mark.parametrize("num_bands", [8, 224])
def test_spectral_angle_tiny_angles_vs_float64(num_bands):
  rng = np.random.default_rng(2)
  angles = np.array([0.0, 1e-7, 1e-6, 3e-6, 1e-5, 1e-4, 1e-3, 1e-2])
  p = rng.uniform(0.05, 1.0, size=(angles.size, num_bands))
  ortho = rng.normal(size=p.shape)
  ortho -= np.sum(ortho * p, -1, keepdims=True) / np.sum(p * p, -1, keepdims=True) * p
  ortho /= np.linalg.norm(ortho, axis=-1, keepdims=True)
  t = np.cos(angles)[:, None] * p / np.linalg.norm(p, axis=-1, keepdims=True)
  t = (t + np.sin(angles)[:, None] * ortho) * rng.uniform(0.1, 10.0, size=(angles.size, 1))
  p32, t32 = p.astype(np.float32), t.astype(np.float32)
  got = np.asarray(spectral_angle(p32, t32), np.float64)
  np.testing.assert_array_less(np.abs(got - np_angle(p32, t32)), 1e-6)


def test_spectral_angle_one_band():
  p = np.array([[2.0], [2.0], [-0.5], [0.0]], np.float32)
  t = np.array([[0.1], [-3.0], [-7.0], [1.0]], np.float32)
  got = spectral_angle(p, t)
  np.testing.assert_allclose(got, [0.0, math.pi, 0.0, math.pi / 2], atol=1e-6)
  assert finite(jax.jit(jax.grad(lambda x: jnp.sum(spectral_angle(x, t))))(p))


def test_spectral_angle_gradient_matches_analytic():
  rng = np.random.default_rng(3)
  p, t = data((6, 9), rng), data((6, 9), rng)
  got = jax.jit(jax.grad(lambda x: jnp.sum(spectral_angle(x, t))))(p)
  p64, t64 = p.astype(np.float64), t.astype(np.float64)
  p_norm = np.linalg.norm(p64, axis=-1, keepdims=True)
  p_hat, t_hat = p64 / p_norm, t64 / np.linalg.norm(t64, axis=-1, keepdims=True)
  cos = np.sum(p_hat * t_hat, -1, keepdims=True)
  expected = -(t_hat - cos * p_hat) / (p_norm * np.sqrt(1.0 - cos**2))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# ---- sam_loss, huber_loss ------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_sam_loss_matches_numpy(shape, kind):
  rng = np.random.default_rng(4)
  p, t = data(shape, rng, 0.0), data(shape, rng, 0.0)
  mask = make_mask(kind, shape[:-1], rng)
  got = sam_loss(p, t, mask)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_mean(np_angle(p, t), mask), atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_huber_loss_matches_numpy(shape, kind):
  rng = np.random.default_rng(5)
  p, t = data(shape, rng, -2.0, 2.0), data(shape, rng, -2.0, 2.0)  # Both branches of delta.
  mask = make_mask(kind, shape[:-1], rng)
  got = huber_loss(p, t, 0.7, mask)
  assert got.shape == () and got.dtype == jnp.float32
  expected = np_mean(np.mean(np_huber(p.astype(np.float64) - t, 0.7), axis=-1), mask)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("x,delta,expected", [
    (0.3, 1.0, 0.045), (-0.3, 1.0, 0.045), (1.0, 1.0, 0.5),
    (3.0, 1.0, 2.5), (-3.0, 0.5, 1.375), (0.0, 1.0, 0.0)])
def test_huber_branches_value_and_gradient(x, delta, expected):
  value, grad = jax.jit(jax.value_and_grad(huber_loss))(jnp.array([x]), jnp.array([0.0]), delta)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  np.testing.assert_allclose(grad, [np.clip(x, -delta, delta)], rtol=1e-6)


def test_huber_loss_divides_by_selected_spectra_times_bands():
  p = np.zeros((3, 4), np.float32)
  t = np.full((3, 4), 0.5, np.float32)
  t[2] = 100.0  # Masked out.
  # Each selected element contributes 0.125: mean over 2 spectra x 4 bands is 0.125.
  np.testing.assert_allclose(huber_loss(p, t, 1.0, [True, True, False]), 0.125)


# ---- masks: NaN in dropped spectra, all masked, shape errors --------------------------------

def _loss_fns():
  std = np.array([0.5, 2.0, 1.0, 0.25, 3.0], np.float32)
  return {
      "sam": lambda p, t, m: sam_loss(p, t, m),
      "huber": lambda p, t, m: huber_loss(p, t, 0.3, m),
      "lsmm": lambda p, t, m: lsmm_loss(p, t, m, scale=std, delta=0.3),
      "karma": lambda p, t, m: karma_loss(
          p, t, m, mixed=p * 0.9 + 0.05, mean=std * 0.1, std=std)[0],
  }


@pytest.mark.parametrize("name", ["sam", "huber", "lsmm", "karma"])
@pytest.mark.parametrize("kind", ["bool", "float01"])
def test_nan_in_masked_out_spectra_changes_nothing(name, kind):
  fn = _loss_fns()[name]
  rng = np.random.default_rng(6)
  p, t = data((2, 3, 4, 5), rng, 0.1), data((2, 3, 4, 5), rng, 0.1)
  keep = rng.uniform(size=(2, 3, 4)) < 0.5
  keep[0, 0, 0] = True
  p[~keep, 1], t[~keep, 3] = np.nan, np.inf
  t[~keep, 0] = np.nan
  mask = keep if kind == "bool" else keep.astype(np.float32)
  value, grads = value_and_grads(fn, p, t, mask)
  sub_value, sub_grads = value_and_grads(fn, p[keep], t[keep], None)
  assert np.isfinite(value) and finite(grads)
  np.testing.assert_allclose(value, sub_value, rtol=1e-5, atol=1e-7)
  for g, sub_g in zip(grads, sub_grads):
    np.testing.assert_allclose(g[keep], sub_g, rtol=1e-4, atol=1e-7)
    assert float(jnp.max(jnp.abs(g[~keep]))) == 0.0


@pytest.mark.parametrize("name", ["sam", "huber", "lsmm", "karma"])
def test_all_masked_is_zero_with_finite_gradient(name):
  fn = _loss_fns()[name]
  p = np.full((3, 5), np.nan, np.float32)
  value, grads = value_and_grads(fn, p, p, np.zeros(3, bool))
  assert float(value) == 0.0 and finite(grads)


def test_mask_shape_and_delta_errors():
  p = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match="mask shape"):
    sam_loss(p, p, np.ones((4, 3), bool))
  with pytest.raises(ValueError, match="delta"):
    losses.huber_loss(p, p, 0.0)  # Checked in Python, before tracing.


@pytest.mark.parametrize("shape", [(1, 6), (1, 1, 1, 6)])
def test_batch_of_one(shape):
  rng = np.random.default_rng(7)
  p, t = data(shape, rng), data(shape, rng)
  np.testing.assert_allclose(sam_loss(p, t), np_angle(p, t).ravel()[0], atol=2e-6)
  np.testing.assert_allclose(huber_loss(p, t), np.mean(np_huber(p - t, 1.0)), rtol=1e-6)
  np.testing.assert_allclose(sam_loss(p, t, np.ones(shape[:-1], bool)),
                             np_angle(p, t).ravel()[0], atol=2e-6)


# ---- dtypes and transformations -------------------------------------------------------------

def test_bfloat16_inputs_give_float32_outputs():
  rng = np.random.default_rng(8)
  p, t = data((4, 8, 16), rng, 0.0), data((4, 8, 16), rng, 0.0)
  p16, t16 = jnp.asarray(p, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  p_rounded, t_rounded = p16.astype(jnp.float32), t16.astype(jnp.float32)
  mask = np.arange(32).reshape(4, 8) % 3 != 0
  for fn in (sam_loss, huber_loss):
    got = fn(p16, t16, mask=mask)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(p_rounded, t_rounded, mask=mask), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, fn(p, t, mask=mask), rtol=5e-2)
  assert spectral_angle(p16, t16).dtype == jnp.float32
  total, aux = karma_loss(p16, t16, mask, mixed=p16)
  assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in aux.values())


def test_jit_vmap_grad():
  rng = np.random.default_rng(9)
  p, t = data((3, 4, 6), rng, 0.0), data((3, 4, 6), rng, 0.0)
  mask = rng.uniform(size=(3, 4)) < 0.7
  mask[:, 0] = True
  per_example = jax.jit(jax.vmap(losses.sam_loss))(p, t, mask)
  expected = [np_mean(np_angle(p[i], t[i]), mask[i]) for i in range(3)]
  np.testing.assert_allclose(per_example, expected, atol=2e-6)
  expected = np_mean(np.mean(np_huber(p.astype(np.float64) - t, 0.5), -1), mask)
  np.testing.assert_allclose(jax.jit(losses.huber_loss)(p, t, 0.5, mask), expected, rtol=1e-6)
  angles = jax.jit(jax.vmap(jax.vmap(losses.spectral_angle)))(p, t)
  np.testing.assert_allclose(angles, np_angle(p, t), atol=2e-6)
  grad = jax.jit(jax.grad(lambda x: karma_loss(x, t, mask, mixed=x)[0]))(p)
  assert grad.shape == p.shape and finite(grad)
  # Huber gradient: clip(x, -delta, delta) / (selected spectra x bands) on selected entries.
  grad = jax.jit(jax.grad(losses.huber_loss))(p, t, 0.1, mask)
  expected = np.clip(p - t, -0.1, 0.1) * mask[..., None] / (mask.sum() * 6)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8)


# ---- LSMM ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 5, 4)])
def test_lsmm_mix_matches_einsum(shape):
  rng = np.random.default_rng(10)
  abundances, endmembers = data(shape, rng, 0.0), data((9, 4), rng, 0.0)
  got = lsmm_mix(abundances, endmembers)
  assert got.shape == shape[:-1] + (9,) and got.dtype == jnp.float32
  expected = np.einsum("...m,bm->...b", abundances.astype(np.float64), endmembers)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert lsmm_mix(jnp.asarray(abundances, jnp.bfloat16), endmembers).dtype == jnp.float32
  with pytest.raises(ValueError, match="endmembers"):
    lsmm_mix(abundances, endmembers.T)


@pytest.mark.parametrize("kind", ["none", "bool", "weights"])
def test_lsmm_loss_matches_numpy(kind):
  rng = np.random.default_rng(11)
  mixed, target = data((2, 5, 6), rng, 0.0), data((2, 5, 6), rng, 0.0)
  scale = rng.uniform(0.05, 0.5, size=6).astype(np.float32)
  mask = make_mask(kind, (2, 5), rng)
  got = lsmm_loss(mixed, target, mask, scale=scale, delta=0.8, sam_weight=0.3)
  residual = (mixed.astype(np.float64) - target) / scale
  expected = (np_mean(np.mean(np_huber(residual, 0.8), -1), mask)
              + 0.3 * np_mean(np_angle(mixed, target), mask))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  huber_only = lsmm_loss(mixed, target, mask, scale=scale, delta=0.8, sam_weight=0)
  np.testing.assert_allclose(huber_only, np_mean(np.mean(np_huber(residual, 0.8), -1), mask),
                             rtol=1e-5)


# ---- karma_loss ----------------------------------------------------------------------------

def test_karma_loss_terms_and_weighted_sum():
  rng = np.random.default_rng(12)
  shape = (2, 4, 4, 6)
  pred, target = data(shape, rng, -2.0, 2.0), data(shape, rng, -2.0, 2.0)
  mixed = data(shape, rng, 0.0)
  mean = rng.uniform(0.2, 0.4, 6).astype(np.float32)
  std = rng.uniform(0.05, 0.2, 6).astype(np.float32)
  mask = make_mask("bool", shape[:-1], rng)
  weights = (0.5, 2.0, 0.25)
  total, aux = karma_loss(pred, target, mask, mixed=mixed, mean=mean, std=std, weights=weights,
                          huber_delta=0.6, lsmm_sam_weight=0.5)
  assert set(aux) == {"huber", "sam", "lsmm", "huber_raw", "sam_raw", "lsmm_raw", "total"}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in aux.values())
  p_refl, t_refl = pred * std + mean, target * std + mean
  raw = {
      "huber": np_mean(np.mean(np_huber(pred - target.astype(np.float64), 0.6), -1), mask),
      "sam": np_mean(np_angle(p_refl, t_refl), mask),
      "lsmm": (np_mean(np.mean(np_huber((mixed - t_refl.astype(np.float64)) / std, 0.6), -1), mask)
               + 0.5 * np_mean(np_angle(mixed, t_refl), mask)),
  }
  for (name, value), weight in zip(raw.items(), weights):
    np.testing.assert_allclose(aux[name + "_raw"], value, rtol=1e-5)
    np.testing.assert_allclose(aux[name], weight * value, rtol=1e-5)
  np.testing.assert_allclose(total, sum(w * v for w, v in zip(weights, raw.values())), rtol=1e-5)
  assert float(aux["total"]) == float(total)


def test_karma_loss_zero_weight_ignores_nan_mixed_and_missing_mixed():
  rng = np.random.default_rng(13)
  pred, target = data((8, 5), rng), data((8, 5), rng)
  bad_mixed = np.full((8, 5), np.nan, np.float32)
  # mixed depends on pred, so a NaN lsmm term would also poison the gradient of pred.
  fn = lambda p: karma_loss(p, target, mixed=p * bad_mixed, weights=(1.0, 0, 0))
  (total, aux), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(pred)
  expected = np.mean(np_huber(pred - target.astype(np.float64), 1.0))
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert float(aux["lsmm"]) == 0.0 and float(aux["sam"]) == 0.0 and finite(grad)
  assert np.isnan(aux["lsmm_raw"])  # Still logged, honestly.
  # A traced zero weight keeps the value clean too.
  total, _ = jax.jit(lambda w: losses.karma_loss(pred, target, mixed=bad_mixed, weights=w))(
      jnp.array([1.0, 0.0, 0.0]))
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  total, aux = karma_loss(pred, target)
  assert float(aux["lsmm"]) == 0.0 and float(aux["lsmm_raw"]) == 0.0
  np.testing.assert_allclose(total, aux["huber"] + aux["sam"], rtol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    karma_loss(pred, target, weights=(1.0, 1.0))


def test_karma_loss_separate_lsmm_target_and_mask():
  # Per-token LSMM: pred (N, L, P, B) pixels, mixed and lsmm_target (N, L, B) token spectra.
  rng = np.random.default_rng(14)
  pred, target = data((2, 3, 4, 5), rng), data((2, 3, 4, 5), rng)
  mixed, token_target = data((2, 3, 5), rng, 0.0), data((2, 3, 5), rng, 0.0)
  token_mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
  std = rng.uniform(0.5, 2.0, 5).astype(np.float32)
  _, aux = karma_loss(pred, target, mixed=mixed, std=std, lsmm_target=token_target,
                      lsmm_mask=token_mask, lsmm_sam_weight=0.5)
  residual = (mixed.astype(np.float64) - token_target) / std
  expected = (np_mean(np.mean(np_huber(residual, 1.0), -1), token_mask)
              + 0.5 * np_mean(np_angle(mixed, token_target), token_mask))
  np.testing.assert_allclose(aux["lsmm_raw"], expected, rtol=1e-5)


# ---- objective ---------------------------------------------------------------------------
def _old_karma_loss(pred, target, mask, *, mixed, mean, std, weights, huber_delta,
                    lsmm_sam_weight, lsmm_target, lsmm_mask):
  """Copy of karma_loss before the objective moved into losses.objective."""
  p, t, _ = losses._prepare(pred, target, mask)
  target_r = t * std + mean
  raw = {"huber": losses.huber_loss(p, t, huber_delta, mask),
         "sam": losses.sam_loss(p * std + mean, target_r, mask),
         "lsmm": losses.lsmm_loss(mixed, lsmm_target, lsmm_mask, scale=std, delta=huber_delta,
                                  sam_weight=lsmm_sam_weight)}
  aux = {}
  for (name, value), weight in zip(raw.items(), weights):
    aux[name] = losses._weighted_term(weight, lambda value=value: value)
    aux[name + "_raw"] = value
  aux["total"] = aux["huber"] + aux["sam"] + aux["lsmm"]
  return aux["total"], aux


def _old_loss_terms(res, token_mask, *, on_visible, weights, mean, std):
  """Copy of train.loss_terms before the objective moved into losses.objective."""
  pixel_valid = res["pixel_valid"]
  pixel_mask = token_mask[..., None] * pixel_valid
  lsmm_tokens = jnp.ones_like(token_mask) if on_visible else token_mask
  if res["mixed"].ndim == 4:
    kwargs = dict(lsmm_target=res["refl"], lsmm_mask=lsmm_tokens[..., None] * pixel_valid)
  else:
    count = pixel_valid.sum(-1)
    patch_mean = (res["refl"] * pixel_valid[..., None]).sum(-2) / jnp.maximum(
        count, 1.0)[..., None]
    kwargs = dict(lsmm_target=patch_mean, lsmm_mask=lsmm_tokens * (count > 0))
  return _old_karma_loss(res["pred"], res["target"], pixel_mask, mixed=res["mixed"],
                         mean=mean, std=std, weights=weights, huber_delta=0.7,
                         lsmm_sam_weight=0.6, **kwargs)


@pytest.mark.parametrize("per_pixel", [True, False])
@pytest.mark.parametrize("on_visible", [True, False])
def test_objective_equals_the_former_train_loss_terms(per_pixel, on_visible):
  n, l, p, b = 3, 4, 9, 5
  rng = np.random.default_rng(per_pixel + 2 * on_visible)
  mean = jnp.asarray(rng.uniform(0.1, 0.4, b), jnp.float32)
  std = jnp.asarray(rng.uniform(0.05, 0.2, b), jnp.float32)
  refl = rng.uniform(0.0, 0.8, (n, l, p, b)).astype(np.float32)
  pixel_valid = rng.random((n, l, p)) > 0.2
  pixel_valid[0, 0] = False  # A token without valid pixels.
  res = {"pred": jnp.asarray(rng.normal(size=(n, l, p, b)), jnp.float32),
         "target": jnp.asarray((refl - mean) / std * pixel_valid[..., None]),
         "refl": jnp.asarray(refl),
         "pixel_valid": jnp.asarray(pixel_valid, jnp.float32),
         "mixed": jnp.asarray(rng.uniform(0.0, 0.8, (n, l, p, b) if per_pixel else (n, l, b)),
                              jnp.float32)}
  token_mask = jnp.asarray(rng.random((n, l)) > 0.5, jnp.float32)
  weights = {"huber": 1.0, "sam": 0.8, "lsmm": 0.5}

  def new(pred, mixed):
    return losses.objective(dict(res, pred=pred, mixed=mixed), token_mask, weights,
                            mean=mean, std=std, huber_delta=0.7, lsmm_sam_weight=0.6,
                            lsmm_on_visible=on_visible)

  def old(pred, mixed):
    return _old_loss_terms(dict(res, pred=pred, mixed=mixed), token_mask,
                           on_visible=on_visible, weights=tuple(weights.values()),
                           mean=mean, std=std)

  (v_new, aux_new), g_new = jax.jit(jax.value_and_grad(new, argnums=(0, 1), has_aux=True))(
      res["pred"], res["mixed"])
  (v_old, aux_old), g_old = jax.jit(jax.value_and_grad(old, argnums=(0, 1), has_aux=True))(
      res["pred"], res["mixed"])
  assert list(aux_new) == list(aux_old)
  for k in aux_old:
    np.testing.assert_allclose(aux_new[k], aux_old[k], rtol=1e-6, atol=1e-7, err_msg=k)
  np.testing.assert_allclose(v_new, v_old, rtol=1e-6)
  for a, b_ in zip(g_new, g_old):
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-7)


def test_objective_without_lsmm_outputs_logs_a_zero_lsmm_term():
  res = {"pred": jnp.ones((1, 2, 4, 3)), "target": jnp.zeros((1, 2, 4, 3)),
         "refl": jnp.ones((1, 2, 4, 3)), "pixel_valid": jnp.ones((1, 2, 4))}
  total, aux = losses.objective(res, jnp.ones((1, 2)), {"huber": 1.0, "sam": 0.0, "lsmm": 0.0},
                                mean=None, std=None)
  assert losses.term_names(aux) == ["huber", "sam", "lsmm"]
  assert float(aux["lsmm_raw"]) == 0.0 and float(total) == float(aux["huber"]) == 0.5


def test_registered_term_is_weighted_logged_and_named():
  losses.register_term("toy", lambda x: jnp.mean(jnp.square(x.outputs["pred"])))
  try:
    res = {"pred": jnp.full((1, 2, 4, 3), 2.0), "target": jnp.zeros((1, 2, 4, 3)),
           "refl": jnp.ones((1, 2, 4, 3)), "pixel_valid": jnp.ones((1, 2, 4))}
    weights = losses.term_weights({"huber": 1.0, "sam": 0.0, "toy": 0.5, "huber_delta": 1.0})
    assert weights == {"huber": 1.0, "sam": 0.0, "toy": 0.5}
    total, aux = losses.objective(res, jnp.ones((1, 2)), weights, mean=None, std=None)
    assert losses.term_names(aux) == ["huber", "sam", "toy"]
    assert float(aux["toy_raw"]) == 4.0 and float(aux["toy"]) == 2.0
    np.testing.assert_allclose(total, aux["huber"] + 2.0)
  finally:
    losses.unregister_term("toy")
  with pytest.raises(ValueError, match="unknown loss terms"):
    losses.objective(res, jnp.ones((1, 2)), {"toy": 1.0}, mean=None, std=None)
  with pytest.raises(ValueError, match="reserved"):
    losses.register_term("loss", lambda x: 0.0)


# ---- fused_objective (the train step's path) ------------------------------------------------
@pytest.mark.parametrize("per_pixel", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_objective_equals_objective(per_pixel, dtype):
  """Values and gradients (pred, abundances, endmembers) equal `objective`'s on the
  same pixels: NaN targets at invalid pixels, a token without valid pixels."""
  n, l, p, b, m = 3, 4, 9, 7, 3
  rng = np.random.default_rng(5 + per_pixel)
  mean = jnp.asarray(rng.uniform(0.1, 0.4, b), jnp.float32)
  std = jnp.asarray(rng.uniform(0.05, 0.2, b), jnp.float32)
  refl = rng.uniform(0.0, 0.8, (n, l, p, b)).astype(np.float32)
  valid = rng.random((n, l, p)) > 0.2
  valid[0, 0] = False
  refl[~valid] = np.nan
  pred = jnp.asarray(rng.normal(size=(n, l, p, b)), dtype)
  ab_shape = (n, l, p, m) if per_pixel else (n, l, m)
  ab = jax.nn.softmax(jnp.asarray(rng.normal(size=ab_shape), jnp.float32))
  em = jnp.asarray(rng.uniform(0.05, 0.7, (b, m)), jnp.float32)
  token_mask = jnp.asarray(rng.random((n, l)) > 0.5, jnp.float32)
  pixel_mask = token_mask[..., None] * valid
  if per_pixel:
    lsmm_target, lsmm_mask = np.nan_to_num(refl), jnp.asarray(valid, jnp.float32)
  else:
    count = valid.sum(-1)
    lsmm_target = np.nan_to_num(refl).sum(-2) / np.maximum(count, 1)[..., None]
    lsmm_mask = jnp.asarray(count > 0, jnp.float32)
  weights = {"huber": 1.0, "sam": 0.8, "lsmm": 0.5}
  kw = dict(mean=mean, std=std, huber_delta=0.7, lsmm_sam_weight=0.6)

  def fused(pred, ab, em):
    return losses.fused_objective(pred, refl, pixel_mask, weights, abundances=ab,
                                  endmembers=em, lsmm_target=lsmm_target,
                                  lsmm_mask=lsmm_mask, **kw)

  def reference(pred, ab, em):
    target = jnp.where(jnp.asarray(valid)[..., None], (np.nan_to_num(refl) - mean) / std, 0.0)
    return losses.karma_loss(pred.astype(jnp.float32), target, pixel_mask,
                             mixed=losses.lsmm_mix(ab, em), weights=tuple(weights.values()),
                             lsmm_target=lsmm_target, lsmm_mask=lsmm_mask, **kw)

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
  (v_f, aux_f), g_f = grad(fused)(pred, ab, em)
  (v_r, aux_r), g_r = grad(reference)(pred, ab, em)
  assert list(aux_f) == list(aux_r)
  for k in aux_r:
    np.testing.assert_allclose(aux_f[k], aux_r[k], rtol=2e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(v_f, v_r, rtol=2e-5)
  assert g_f[0].dtype == dtype
  for a, b_ in zip(g_f, g_r):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b_, np.float32),
                               rtol=2e-3 if dtype == jnp.bfloat16 else 1e-4, atol=1e-6)


def test_fused_objective_zero_weight_computes_nothing_and_logs_zero():
  pred = jnp.ones((2, 3, 4))
  target = jnp.full((2, 3, 4), 0.5)
  mask = jnp.ones((2, 3))
  f = lambda pred: losses.fused_objective(pred, target, mask, {"huber": 1.0, "sam": 0.0,
                                                              "lsmm": 0.0}, mean=None, std=None)
  total, aux = f(pred)
  assert set(aux) == {"huber", "huber_raw", "sam", "lsmm", "total"}
  assert float(aux["sam"]) == 0.0 and float(aux["lsmm"]) == 0.0
  assert losses.term_names(aux) == ["huber", "sam", "lsmm"]
  np.testing.assert_allclose(total, 0.125)
  hlo = jax.jit(jax.grad(lambda p: f(p)[0])).lower(pred).as_text()
  assert "atan2" not in hlo  # No SAM anywhere in the step.


def test_angle_from_sums_matches_spectral_angle():
  rng = np.random.default_rng(7)
  p, t = data((50, 30), rng), data((50, 30), rng)
  got = losses.angle_from_sums(jnp.sum(p * t, -1), jnp.sum(p * p, -1), jnp.sum(t * t, -1))
  np.testing.assert_allclose(got, spectral_angle(p, t), atol=2e-6)
  zero = losses.angle_from_sums(jnp.zeros(2), jnp.zeros(2), jnp.ones(2))
  np.testing.assert_allclose(zero, [math.pi / 2] * 2)
