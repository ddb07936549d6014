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


def _encoder_leaves(params, model):
  """{path: array} of the parameters `encode` uses."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat
          if model_lib.encoder_layer(k, model.depth) is not None}


def test_finetuning_changes_the_encoder_and_nothing_else():
  model, params, cube, labels, valid, stats = _setup()
  head = downstream.PixelHead(2, model.patch_size)
  before = jax.tree.map(np.array, params)
  tuned, hp = downstream.finetune(
      model, params, head, (cube, valid, labels, valid), stats, steps=30,
      lr=1e-2, layer_decay=0.75, weight_decay=0.0, batch_size=4, seed=0)
  enc_before, enc_after = (_encoder_leaves(before, model),
                           _encoder_leaves(tuned, model))
  assert enc_before and all(np.any(enc_after[k] != v)
                            for k, v in enc_before.items())
  # Decoder, pixel head, LSMM head and endmembers are never updated.
  flat = jax.tree_util.tree_flatten_with_path(tuned)[0]
  rest = [(k, v) for k, v in flat if model_lib.encoder_layer(k, 1) is None]
  assert any("decoder" in jax.tree_util.keystr(k) for k, _ in rest)
  for k, v in rest:
    np.testing.assert_array_equal(
        np.asarray(v), np.asarray(_get(before, k)), err_msg=str(k))
  # The caller's parameters are untouched, and the result classifies.
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
  f = np.asarray(downstream.encoder_featurizer(model, tuned, stats)(cube, valid))
  res = downstream.score_head(head, hp, f, labels, valid, ("a", "b"))
  assert res["top1"] > 90


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_layer_decay_orders_the_encoder_learning_rates():
  """One step of plain-gradient size: the tokenizer moves least, the head most
  (Adam's first step is lr * sign, so |update| is the layer's lr)."""
  tx = downstream.finetune_optimizer(depth=2, steps=10, lr=1.0, layer_decay=0.5,
                                     weight_decay=0.0)
  params = {"model": {"embed": {"bias": jnp.ones(3)},
                      "encoder": {"block0": {"b": jnp.ones(3)},
                                  "block1": {"b": jnp.ones(3)},
                                  "ln": {"scale": jnp.ones(3)}},
                      "decoder": {"b": jnp.ones(3)}},
            "head": {"b": jnp.ones(3)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(2):  # Warm-up: the first step has lr 0.
    updates, state = tx.update(grads, state, params)
  size = jax.tree.map(lambda u: float(jnp.abs(u).max()), updates)
  m = size["model"]
  assert m["decoder"]["b"] == 0
  assert (m["embed"]["bias"] < m["encoder"]["block0"]["b"]
          < m["encoder"]["block1"]["b"] < size["head"]["b"])
  # Layer l (tokenizer 0, block i at i + 1) at lr * decay^(depth + 1 - l).
  np.testing.assert_allclose(m["encoder"]["block1"]["b"] / size["head"]["b"],
                             0.5, rtol=1e-5)
  np.testing.assert_allclose(m["embed"]["bias"] / size["head"]["b"], 0.125,
                             rtol=1e-5)
  assert m["encoder"]["ln"]["scale"] == m["encoder"]["block1"]["b"]


def test_classic_pixel_classifiers_separate_spectra():
  _, _, cube, labels, valid, stats = _setup()
  x, y = cube[valid], labels[valid]
  for name in downstream.PIXEL_CLASSIFIERS:
    clf = downstream.fit_pixel_classifier(name, x[:300], y[:300], stats, 0)
    res = downstream.score_pixel_classifier(clf, x[300:], y[300:], stats,
                                            ("a", "b"))
    assert res["top1"] > 95, name
    assert res["num_pixels_a"] + res["num_pixels_b"] == len(x) - 300
