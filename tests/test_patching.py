"""Patchify and MAE masking: exact invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kgmae_jax import patching


def test_patchify_roundtrip_and_layout():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
  t = patching.patchify(x, 4)
  assert t.shape == (2, 6, 4 * 4 * 5)
  # Token 1 is the patch at grid row 0, column 1; inside it (p, p, B) order.
  np.testing.assert_array_equal(t[0, 1].reshape(4, 4, 5), x[0, 0:4, 4:8])
  np.testing.assert_array_equal(patching.unpatchify(t, 4, (2, 3), 5), x)


def test_patchify_rejects_indivisible():
  with pytest.raises(ValueError, match="patch_size=4"):
    patching.patchify(jnp.zeros((1, 10, 8, 3)), 4)


def test_pixels_per_token_matches_patchify():
  m = jax.random.bernoulli(jax.random.key(1), 0.5, (3, 8, 8))
  a = patching.pixels_per_token(m, 4)
  b = patching.patchify(m[..., None], 4)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 0.9])
def test_random_masking_invariants(ratio):
  n, num_tokens = 16, 49
  ids_keep, ids_restore, mask = patching.random_masking(
      jax.random.key(2), n, num_tokens, ratio)
  keep = patching.num_visible(num_tokens, ratio)
  assert ids_keep.shape == (n, keep)
  # Exactly L - K masked per row.
  np.testing.assert_array_equal(mask.sum(1), num_tokens - keep)
  # Kept tokens are exactly the unmasked ones.
  for i in range(n):
    assert set(np.asarray(ids_keep[i]).tolist()) == set(
        np.nonzero(np.asarray(mask[i]) == 0)[0].tolist())
  # unshuffle o shuffle = identity.
  x = jnp.arange(n * num_tokens, dtype=jnp.float32).reshape(n, num_tokens, 1)
  shuffled = jnp.concatenate([
      patching.gather_tokens(x, ids_keep),
      jnp.zeros((n, num_tokens - keep, 1))], axis=1)
  restored = patching.gather_tokens(shuffled, ids_restore)
  np.testing.assert_array_equal(
      jnp.where(mask[..., None] == 0, restored, x), x)
  if ratio > 0:  # Masks differ across the batch.
    assert len({tuple(np.asarray(r)) for r in mask}) > 1


def test_masking_deterministic_by_key():
  a = patching.random_masking(jax.random.key(3), 4, 16, 0.75)
  b = patching.random_masking(jax.random.key(3), 4, 16, 0.75)
  c = patching.random_masking(jax.random.key(4), 4, 16, 0.75)
  np.testing.assert_array_equal(a[2], b[2])
  assert not np.array_equal(a[2], c[2])


def test_mask_ratio_one_rejected():
  with pytest.raises(ValueError, match="mask_ratio"):
    patching.num_visible(16, 1.0)
