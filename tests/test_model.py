"""KarmaMAE: shapes for any band count, LSMM outputs, encode without masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kgmae_jax import model as model_lib
from kgmae_jax import patching


def tiny(num_bands, **kw):
  args = dict(num_bands=num_bands, patch_size=4, width=32, depth=1,
              num_heads=2, dec_width=32, dec_depth=1, dec_num_heads=2,
              mlp_ratio=2.0, num_endmembers=3)
  args.update(kw)
  return model_lib.KarmaMAE(**args)


def run(model, x, ratio=0.75, seed=0):
  n, h, w, _ = x.shape
  num_tokens = (h // model.patch_size) * (w // model.patch_size)
  ids_keep, ids_restore, mask = patching.random_masking(
      jax.random.key(seed), n, num_tokens, ratio)
  params = model.init(jax.random.key(1), x, ids_keep, ids_restore)["params"]
  return params, model.apply({"params": params}, x, ids_keep, ids_restore), mask


@pytest.mark.parametrize("bands", [1, 7, 218])
def test_shapes_any_band_count(bands):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, bands))
  params, out, _ = run(tiny(bands), x)
  assert out["pred"].shape == (2, 4, 4 * 4 * bands)
  assert out["abundances"].shape == (2, 4, 3)
  assert out["endmembers"].shape == (bands, 3)
  assert params["endmembers_raw"].shape == (bands, 3)


def test_abundances_simplex_and_endmembers_nonnegative():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  _, out, _ = run(tiny(5, per_pixel_abundances=True), x)
  a = out["abundances"]
  assert a.shape == (2, 4, 16, 3)
  assert float(a.min()) >= 0
  np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
  assert float(out["endmembers"].min()) >= 0


def test_baseline_has_no_lsmm_parameters():
  x = jnp.zeros((1, 8, 8, 5))
  params, out, _ = run(tiny(5, lsmm=False), x)
  assert "abundances" not in out
  assert not any("lsmm" in k or "endmember" in k for k in params)


def test_encode_without_masking_and_any_tile_size():
  model = tiny(5)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  params, _, _ = run(model, x)
  emb = model_lib.encode(params, x, model=model)
  assert emb.shape == (2, 4, 32)
  # Sin-cos positions: the same weights serve a larger tile.
  big = model_lib.encode(params, jnp.zeros((1, 16, 12, 5)), model=model)
  assert big.shape == (1, 12, 32)
  # mask_ratio 0 through the full model also works.
  _, out, mask = run(model, x, ratio=0.0)
  assert float(mask.sum()) == 0 and out["pred"].shape == (2, 4, 80)


def test_wrong_band_count_names_both():
  model = tiny(5)
  params, _, _ = run(model, jnp.zeros((1, 8, 8, 5)))
  with pytest.raises(ValueError, match="6 bands.*5"):
    model_lib.encode(params, jnp.zeros((1, 8, 8, 6)), model=model)


def test_masked_tokens_do_not_reach_encoder():
  """Changing a masked patch leaves the encoder's output unchanged."""
  model = tiny(3)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
  ids_keep, ids_restore, mask = patching.random_masking(
      jax.random.key(5), 1, 4, 0.5)
  params = model.init(jax.random.key(1), x, ids_keep, ids_restore)["params"]
  masked_tok = int(np.nonzero(np.asarray(mask[0]))[0][0])
  r, c = divmod(masked_tok, 2)
  x2 = x.at[0, 4 * r:4 * r + 4, 4 * c:4 * c + 4].add(10.0)
  enc = lambda v: model.apply({"params": params}, v, ids_keep,
                              method=model_lib.KarmaMAE.encode)
  np.testing.assert_allclose(enc(x), enc(x2), atol=1e-6)


def test_softplus_inverse():
  y = jnp.array([1e-3, 0.1, 0.5, 2.0])
  np.testing.assert_allclose(jax.nn.softplus(model_lib.softplus_inverse(y)), y,
                             rtol=1e-5)


def test_forward_masks_invalid_pixels_to_zero():
  model = tiny(4, per_pixel_abundances=True)
  cube = jnp.full((1, 8, 8, 4), 0.3).at[0, 0, 0].set(jnp.nan)
  valid = jnp.isfinite(cube).all(-1)
  cube = jnp.where(valid[..., None], cube, 0.0)
  ids, _, _ = patching.no_masking(1, 4)
  params = model.init(jax.random.key(0), cube, ids, ids)["params"]
  res = model_lib.forward(model, params, cube, valid, ids, ids,
                          jnp.full(4, 0.2), jnp.full(4, 0.1))
  assert float(res["pixel_valid"][0, 0, 0]) == 0.0
  assert float(res["target"][0, 0, 0].sum()) == 0.0
  assert res["mixed"].shape == (1, 4, 16, 4)
  assert np.isfinite(np.asarray(res["pred"])).all()


def test_pixel_head_sees_each_pixel():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  _, out, _ = run(tiny(5, abundance_head="pixel"), x)
  a = out["abundances"]
  assert a.shape == (2, 4, 16, 3)
  np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
  # Pixels of one token get different abundances (the token head cannot).
  assert float(jnp.std(a, axis=2).mean()) > 1e-4
  _, out, _ = run(tiny(5), x)
  assert out["abundances"].shape == (2, 4, 3)


def test_endmembers_bounded_and_init_respected():
  bands = 7
  em = np.linspace(0.02, 0.98, bands * 3).reshape(bands, 3).astype(np.float32)
  model = tiny(bands, endmember_init=model_lib.constant_init(em))
  x = jnp.zeros((1, 8, 8, bands))
  params, out, _ = run(model, x)
  np.testing.assert_allclose(out["endmembers"], em, atol=1e-5)
  big = jax.tree.map(lambda p: p, params)
  big["endmembers_raw"] = params["endmembers_raw"] + 50.0
  e = model.apply({"params": big}, method=model.endmembers)
  assert float(e.max()) <= 1.0 and float(e.min()) >= 0.0
  unbounded = tiny(bands, max_reflectance=0.0,
                   endmember_init=model_lib.constant_init(em * 2))
  _, out, _ = run(unbounded, x)
  np.testing.assert_allclose(out["endmembers"], em * 2, rtol=1e-4)


def test_default_endmember_init_is_smooth():
  model = tiny(200)
  x = jnp.zeros((1, 8, 8, 200))
  _, out, _ = run(model, x)
  e = np.asarray(out["endmembers"])
  white = np.random.default_rng(0).uniform(0.05, 0.6, e.shape)
  rough = lambda v: np.abs(np.diff(v, 2, axis=0)).mean()
  assert rough(e) < 0.02 * rough(white)
  assert e.min() >= 0.04 and e.max() <= 0.61
