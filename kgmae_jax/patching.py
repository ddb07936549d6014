"""Patch tokens and MAE masking for hyperspectral cubes, in pure jax.numpy.

A cube `(N, H, W, B)` becomes `(N, L, p*p*B)` tokens with `L = (H/p)*(W/p)`,
row-major over the patch grid; inside a token the order is `(p, p, B)`, so
`tokens.reshape(N, L, p*p, B)` gives per-pixel spectra. Band count is free.

Masking follows the MAE recipe (per-sample argsort of uniform noise): each row
keeps exactly `num_visible(L, mask_ratio)` tokens, chosen independently per
sample; `ids_restore` undoes the shuffle.
"""

import einops
import jax
import jax.numpy as jnp


def patchify(cube, patch_size):
  """(N, H, W, B) -> (N, L, p*p*B). H and W must be multiples of p."""
  n, h, w, _ = cube.shape
  if h % patch_size or w % patch_size:
    raise ValueError(
        f"Cube of {h}x{w} pixels is not divisible by patch_size={patch_size}.")
  return einops.rearrange(
      cube, "n (gh p) (gw q) b -> n (gh gw) (p q b)", p=patch_size, q=patch_size)


def unpatchify(tokens, patch_size, grid_hw, num_bands):
  """(N, L, p*p*B) -> (N, H, W, B) for a patch grid `grid_hw = (H/p, W/p)`."""
  gh, gw = grid_hw
  return einops.rearrange(
      tokens, "n (gh gw) (p q b) -> n (gh p) (gw q) b",
      gh=gh, gw=gw, p=patch_size, q=patch_size, b=num_bands)


def pixels_per_token(mask_hw, patch_size):
  """(N, H, W) pixel map -> (N, L, p*p) in token order (for validity masks)."""
  return einops.rearrange(
      mask_hw, "n (gh p) (gw q) -> n (gh gw) (p q)", p=patch_size, q=patch_size)


def num_visible(num_tokens, mask_ratio):
  """Tokens kept by the encoder: round(L * (1 - ratio)), at least 1."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
  return max(1, int(round(num_tokens * (1.0 - mask_ratio))))


def random_masking(rng, batch_size, num_tokens, mask_ratio):
  """Per-sample random masking.

  Returns:
    ids_keep: (N, K) int32 indices of visible tokens (K = num_visible).
    ids_restore: (N, L) int32, position of each original token in the
      shuffled order [visible..., masked...].
    mask: (N, L) float32, 1 where the token is masked (hidden from the encoder).
  """
  keep = num_visible(num_tokens, mask_ratio)
  ids_shuffle, ids_restore = random_shuffle(rng, batch_size, num_tokens)
  ids_keep = ids_shuffle[:, :keep]
  mask = (ids_restore >= keep).astype(jnp.float32)
  return ids_keep, ids_restore, mask


def random_shuffle(rng, batch_size, num_tokens):
  """Per-sample random token order (argsort of uniform noise), as in
  `random_masking`: (ids_shuffle, ids_restore), both (N, L) int32, inverse
  permutations; the first `num_visible` of `ids_shuffle` are the visible
  tokens."""
  noise = jax.random.uniform(rng, (batch_size, num_tokens))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  return ids_shuffle, jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)


def no_masking(batch_size, num_tokens):
  """Identity 'masking' (every token visible), as random_masking's outputs."""
  ids = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32),
                         (batch_size, num_tokens))
  return ids, ids, jnp.zeros((batch_size, num_tokens), jnp.float32)


def gather_tokens(x, ids):
  """x (N, L, ...), ids (N, K) -> (N, K, ...): per-sample token gather."""
  return jnp.take_along_axis(x, ids.reshape(ids.shape + (1,) * (x.ndim - 2)),
                             axis=1)
