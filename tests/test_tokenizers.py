"""Tokenizers: shapes for any band count, band-group layout against numpy,
gradients reach every parameter, the masked-only pixel head, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import config_lib
from kgmae_jax import inference
from kgmae_jax import losses
from kgmae_jax import model as model_lib
from kgmae_jax import patching
from kgmae_jax import tokenizers
from kgmae_jax import train

TOKENIZERS = ("adapter", "band_groups", "linear")


def tiny(num_bands, tokenizer, **kw):
  args = dict(num_bands=num_bands, patch_size=4, width=32, depth=1,
              num_heads=2, dec_width=32, dec_depth=1, dec_num_heads=2,
              mlp_ratio=2.0, num_endmembers=3, abundance_head="pixel",
              tokenizer=tokenizer, adapter_channels=(4, 8, 8), adapter_dim=6,
              band_groups=3)
  args.update(kw)
  return model_lib.KarmaMAE(**args)


def masking(n, num_tokens, seed=0):
  return patching.random_masking(jax.random.key(seed), n, num_tokens, 0.5)


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
@pytest.mark.parametrize("bands", [1, 7, 218])
def test_shapes_any_band_count(tokenizer, bands):
  model = tiny(bands, tokenizer, band_groups=min(3, bands))
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, bands))
  ids_keep, ids_restore, _ = masking(2, 6)
  params = inference.init_params(model, jax.random.key(1))
  out = model.apply({"params": params}, x, ids_keep, ids_restore)
  assert out["pred"].shape == (2, 6, 16 * bands)
  assert out["abundances"].shape == (2, 6, 16, 3)
  emb = model_lib.encode(params, x, model=model)
  assert emb.shape == (2, 6, model.feature_width)
  groups = min(3, bands) if tokenizer == "band_groups" else 1
  assert model.feature_width == 32 * groups
  assert np.all(np.isfinite(emb))


def test_band_groups_layout_matches_numpy():
  rng = np.random.default_rng(0)
  b, groups, pp = 7, 3, 4
  patches = rng.normal(size=(2, 5, pp * b)).astype(np.float32)
  got = np.asarray(tokenizers.to_band_groups(jnp.asarray(patches), b, groups))
  g = 3  # ceil(7 / 3); the last group holds band 6 and two zeros.
  want = np.zeros((2, 5, groups, pp * g), np.float32)
  pix = patches.reshape(2, 5, pp, b)
  for j in range(groups):
    for q in range(pp):
      for t in range(g):
        if j * g + t < b:
          want[:, :, j, q * g + t] = pix[:, :, q, j * g + t]
  np.testing.assert_array_equal(got, want)


def test_band_groups_are_separate_tokens():
  """Changing one band group's input changes that group's slice of the
  encoder input alone: the groups are tokens, not one concatenation."""
  model = tiny(9, "band_groups", depth=1)
  params = inference.init_params(model, jax.random.key(1))
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 9))
  tok = lambda x: model.apply({"params": params}, patching.patchify(x, 4),
                              method=lambda m, p: m.embed(
                                  tokenizers.to_band_groups(p, 9, 3)))
  y = x.at[..., 3:6].add(1.0)  # Group 1 only.
  diff = np.abs(np.asarray(tok(y) - tok(x))).sum(-1)[0, 0]  # (G,)
  assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0


def test_adapter_sees_each_pixel_alone():
  """The adapter is per pixel: a change in one pixel changes only its own
  adapter features."""
  model = tiny(20, "adapter")
  params = inference.init_params(model, jax.random.key(1))
  pixels = jax.random.normal(jax.random.key(0), (1, 1, 16, 20))
  f = lambda p: model.apply({"params": params}, p,
                            method=lambda m, p: m.adapter(p))
  diff = np.abs(np.asarray(f(pixels.at[0, 0, 5].add(1.0)) - f(pixels)))
  changed = diff.sum(-1)[0, 0]
  assert changed[5] > 0 and np.all(np.delete(changed, 5) == 0)
  assert tokenizers.adapter_length(218) == 3  # 218 -> 44 -> 9 -> 3.


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_gradients_reach_every_parameter(tokenizer):
  model = tiny(11, tokenizer)
  cube = jax.random.uniform(jax.random.key(0), (2, 8, 8, 11), minval=0.05,
                            maxval=0.6)
  valid = jnp.ones((2, 8, 8), bool)
  mean, std = jnp.full((11,), 0.3), jnp.full((11,), 0.15)
  ids_keep, ids_restore, mask = masking(2, 4)
  params = inference.init_params(model, jax.random.key(1))

  def loss(params):
    res = model_lib.forward(model, params, cube, valid, ids_keep, ids_restore,
                            mean, std)
    return losses.objective(res, mask, {"huber": 1.0, "sam": 1.0, "lsmm": 0.5},
                            mean=mean, std=std)[0]

  grads = jax.grad(loss)(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(k) for k, g in flat
          if not np.any(np.asarray(g) != 0)]
  assert not dead, f"no gradient reaches {dead}"
  names = {jax.tree_util.keystr(k) for k, _ in flat}
  assert any("adapter" in n for n in names) == (tokenizer == "adapter")


@pytest.mark.parametrize("tokenizer", ("adapter", "band_groups"))
def test_masked_only_pixel_head_unchanged(tokenizer):
  """The pixel head on masked tokens alone gives the values of the full
  pixel head at those tokens (visible tokens hold 0)."""
  model = tiny(10, tokenizer)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 10))
  ids_keep, ids_restore, mask = masking(2, 4)
  params = inference.init_params(model, jax.random.key(1))
  lean = model.apply({"params": params}, x, ids_keep, ids_restore)["pred"]
  full = model.clone(pred_masked_only=False).apply(
      {"params": params}, x, ids_keep, ids_restore)["pred"]
  m = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(lean)[m], np.asarray(full)[m],
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(lean)[~m] == 0)


@pytest.mark.parametrize("tokenizer", ("adapter", "band_groups"))
def test_checkpoint_restores(tokenizer, tmp_path):
  """Parameters saved as training saves them load back through
  inference.load with the tokenizer from the saved config."""
  c = config_lib.base_config()
  config_lib.model_preset(c, "micro")
  c.model.tokenizer = tokenizer
  c.model.adapter_channels = (4, 8, 8)
  c.lsmm.num_endmembers = 3
  bands = 12
  model = model_lib.build(c.model, c.lsmm, bands)
  params = inference.init_params(model, jax.random.key(3))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state={})
  meta = {"config": c.to_dict(), "num_bands": bands,
          "band_mean": [0.3] * bands, "band_std": [0.1] * bands,
          "wavelengths_nm": list(np.linspace(400, 2400, bands))}
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 1)
  ckpt.save(1, state, meta, force=True)
  ckpt.close()
  loaded = inference.load(tmp_path)
  assert loaded.model.tokenizer == tokenizer
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  cube = np.random.default_rng(0).uniform(0.1, 0.5, (16, 24, bands))
  emb = inference.embed(loaded, cube.astype(np.float32))
  assert emb.shape == (2, 3, loaded.model.feature_width)


def test_config_validation_names_the_field():
  c = config_lib.base_config()
  c.model.tokenizer = "pixels"
  with pytest.raises(ValueError, match="model.tokenizer"):
    config_lib.validate(c)
  c.model.tokenizer = "band_groups"
  c.model.band_groups = 300
  with pytest.raises(ValueError, match="model.band_groups"):
    config_lib.validate(c, num_bands=218)
  c.model.band_groups = 8
  c.model.adapter_channels = (8, 8)
  with pytest.raises(ValueError, match="model.adapter_channels"):
    config_lib.validate(c)


def test_encoder_layers_for_layer_decay():
  model = tiny(9, "adapter", depth=2)
  params = inference.init_params(model, jax.random.key(0))
  layers = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    layers.setdefault(model_lib.encoder_layer(path, 2), set()).add(path[0].key)
  assert layers[0] == {"embed", "adapter"}
  assert layers[1] == layers[2] == {"encoder"}
  assert "decoder" in layers[None] and "encoder" not in layers[None]
