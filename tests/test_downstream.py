"""Frozen-encoder downstream heads: the encoder gets no gradient, heads learn."""

import jax
import jax.numpy as jnp
import numpy as np

from kgmae_jax import downstream
from kgmae_jax import model as model_lib

BANDS = 5


def _setup():
  model = model_lib.KarmaMAE(num_bands=BANDS, patch_size=2, width=16, depth=1,
                             num_heads=2, dec_width=16, dec_depth=1,
                             dec_num_heads=2, num_endmembers=3)
  x = jnp.zeros((1, 8, 8, BANDS))
  ids = jnp.arange(16)[None]
  params = jax.jit(model.init)(jax.random.key(0), x, ids, ids)["params"]
  # Two classes per 2x2 patch, with distinct spectra.
  rng = np.random.default_rng(0)
  tok = rng.integers(0, 2, (12, 4, 4))
  labels = np.repeat(np.repeat(tok, 2, 1), 2, 2).astype(np.int32)
  spectra = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.3, 0.3, 0.2, 0.1]])
  cube = spectra[labels] + rng.normal(0, 0.01, labels.shape + (BANDS,))
  valid = np.ones(labels.shape, bool)
  stats = {"mean": np.full(BANDS, 0.3, np.float32), "std": np.full(BANDS, 0.15, np.float32)}
  return model, params, cube.astype(np.float32), labels, valid, stats


def test_encoder_gets_no_gradient_and_is_untouched():
  model, params, cube, labels, valid, stats = _setup()
  before = jax.tree.map(np.array, params)
  head = downstream.PixelHead(2, model.patch_size, conv_width=8)
  f = downstream.features(model, params, cube, valid, stats["mean"], stats["std"])
  hp = downstream.train_head(head, np.asarray(f), labels, valid, steps=5, lr=1e-2,
                             batch_size=4, seed=0)
  assert set(hp) == {"conv", "out"}  # Only head parameters were optimised.

  def loss_through_encoder(enc_params):
    feats = downstream.features(model, enc_params, cube, valid, stats["mean"],
                                stats["std"])
    return downstream.head_loss(head, hp, feats, labels, valid)

  grads = jax.jit(jax.grad(loss_through_encoder))(params)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))
  # Without the stop-gradient the same loss does reach the encoder.
  def unstopped(enc_params):
    x = model_lib.standardise(cube, valid, stats["mean"], stats["std"])
    tok = model_lib.encode(enc_params, x, model=model).reshape(12, 4, 4, -1)
    return downstream.head_loss(head, hp, tok, labels, valid)
  assert any(np.any(g != 0) for g in jax.tree.leaves(jax.jit(jax.grad(unstopped))(params)))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))


def test_linear_head_learns_separable_classes():
  model, params, cube, labels, valid, stats = _setup()
  f = np.asarray(downstream.features(model, params, cube, valid, stats["mean"],
                                     stats["std"]))
  head = downstream.PixelHead(2, model.patch_size)
  hp = downstream.train_head(head, f, labels, valid, steps=150, lr=3e-2,
                             batch_size=8, seed=0)
  res = downstream.score_head(head, hp, f, labels, valid, ("a", "b"), batch_size=5)
  assert res["top1"] > 95 and res["miou"] > 90
  assert res["num_pixels_a"] + res["num_pixels_b"] == labels.size
  np.testing.assert_allclose(res["acc_a"], 100 * np.mean(
      np.asarray(jnp.argmax(head.apply({"params": hp}, f), -1))[labels == 0] == 0))


def test_label_subsets_nested_and_at_least_one_tile():
  subsets = downstream.label_subsets(50, (0.01, 0.1, 1.0), seed=3)
  assert [len(subsets[f]) for f in (0.01, 0.1, 1.0)] == [1, 5, 50]
  assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0])
  assert not np.array_equal(downstream.label_subsets(50, (0.1,), 4)[0.1], subsets[0.1])


def test_raw_features_are_the_standardised_patch_pixels():
  model, _, cube, labels, valid, stats = _setup()
  del labels
  f = np.asarray(downstream.raw_featurizer(2, stats)(cube, valid))
  assert f.shape == (12, 4, 4, 2 * 2 * BANDS)
  x = (cube - stats["mean"]) / stats["std"]
  # Token (i, j) holds pixels (2i..2i+1, 2j..2j+1), row-major, bands last.
  np.testing.assert_allclose(f[3, 1, 2].reshape(2, 2, BANDS),
                             x[3, 2:4, 4:6], rtol=1e-5, atol=1e-6)
  # Invalid pixels are neutral (0 after standardising), as for the encoder.
  valid = valid.copy()
  valid[0, 0, 0] = False
  g = np.asarray(downstream.raw_featurizer(2, stats)(cube, valid))
  np.testing.assert_array_equal(g[0, 0, 0, :BANDS], 0.0)
  del model


def test_linear_probe_on_raw_spectra_learns_separable_classes():
  _, _, cube, labels, valid, stats = _setup()
  f = np.asarray(downstream.raw_featurizer(2, stats)(cube, valid))
  head = downstream.PixelHead(2, 2)
  hp = downstream.train_head(head, f, labels, valid, steps=150, lr=3e-2,
                             batch_size=8, seed=0)
  res = downstream.score_head(head, hp, f, labels, valid, ("a", "b"))
  assert res["top1"] > 95
