"""Speed features: grad accumulation, remat, bf16, one compilation, device data."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from kgmae_jax import config_lib
from kgmae_jax import data
from kgmae_jax import device_data
from kgmae_jax import model as model_lib
from kgmae_jax import sharding
from kgmae_jax import train
from tests import tiny_config

BANDS = 6


def clean_batch(seed, n=8, size=8):
  """Mixtures of 3 spectra, every pixel valid (equal counts per microbatch)."""
  rng = np.random.default_rng(seed)
  em = rng.uniform(0.05, 0.6, (3, BANDS))
  a = rng.dirichlet(np.ones(3), (n, size, size))
  cube = (a @ em + rng.normal(0, 0.005, (n, size, size, BANDS))).astype(np.float32)
  return {"cube": cube, "valid": np.ones((n, size, size), bool)}


def sgd_step(config):
  """One step with SGD(lr=1) from a fixed init: (metrics, grads = p - p')."""
  model = model_lib.build(config.model, config.lsmm, BANDS)
  tx = optax.sgd(1.0)
  state = train.init_state(jax.random.key(0), model=model, tx=tx, tile_size=8)
  step = jax.jit(train.make_train_step(model, tx, lambda s: 1.0, config,
                                       np.full(BANDS, 0.3), np.full(BANDS, 0.15)))
  new, metrics = step(state, clean_batch(0), jax.random.key(1))
  grads = jax.tree.map(lambda a, b: a - b, state.params, new.params)
  return jax.device_get(metrics), jax.device_get(grads)


@pytest.fixture(scope="module")
def reference():
  return sgd_step(tiny_config.get())


def assert_same(a, b, rtol, keys=("loss", "huber", "sam", "lsmm", "grad_norm")):
  for k in keys:
    np.testing.assert_allclose(a[0][k], b[0][k], rtol=rtol, atol=1e-7, err_msg=k)
  # Parameters after an update: float32 rounding of values near 1e-3.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6),
               a[1], b[1])


def test_grad_accum_equals_one_big_batch(reference):
  config = tiny_config.get()
  config.train.grad_accum_steps = 4
  assert_same(sgd_step(config), reference, rtol=1e-4)


def test_grad_accum_validation_names_field():
  config = tiny_config.get()
  config.train.grad_accum_steps = 3
  with pytest.raises(ValueError, match="config.train.grad_accum_steps"):
    config_lib.validate(config)
  config.train.grad_accum_steps = 2  # 8 / 2 = 4 rows over 8 devices: no.
  with pytest.raises(ValueError, match="config.train.grad_accum_steps"):
    config_lib.validate(config, num_devices=8)


def test_remat_gives_same_loss_and_grads(reference):
  config = tiny_config.get()
  config.model.remat = True
  assert_same(sgd_step(config), reference, rtol=1e-5)


@pytest.fixture(scope="module")
def bf16_run():
  """Four AdamW steps in bfloat16; compile events heard after the first."""
  config = tiny_config.get()
  config.model.dtype = "bfloat16"
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  trainer = train.build_trainer(config, mesh, BANDS, np.full(BANDS, 0.3, np.float32),
                                np.full(BANDS, 0.15, np.float32))
  state = trainer.init(jax.random.key(0))
  compiles, metrics = [], []
  listener = lambda event, duration, **kw: compiles.append(event) if (
      event == "/jax/core/compile/backend_compile_duration") else None
  for s in range(4):  # New data, new step counter, donated state.
    if s == 1:
      jax.monitoring.register_event_duration_secs_listener(listener)
    batch = sharding.put_batch(clean_batch(s), trainer.batch_sharding)
    state, m = trainer.step(state, batch, jax.random.key(1))
    metrics.append(jax.device_get(m))
  try:
    steps_compiled = len(compiles)
    jax.jit(lambda x: x * 3 + 1)(np.arange(5.0))  # Control: the listener hears.
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return dict(metrics=metrics, params=jax.device_get(state.params),
              steps_compiled=steps_compiled, control_compiled=len(compiles) - steps_compiled)


def test_bfloat16_steps_finite_and_close_to_float32(bf16_run, reference):
  for m in bf16_run["metrics"]:
    for k in ("loss", "huber", "sam", "lsmm", "grad_norm"):
      assert np.isfinite(m[k]), k
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16_run["params"]))
  # Step 1 sees the same init, batch and masks as the float32 reference.
  for k in ("loss", "sam", "lsmm"):
    np.testing.assert_allclose(bf16_run["metrics"][0][k], reference[0][k],
                               rtol=0.03, err_msg=k)


def test_step_compiles_once(bf16_run):
  assert bf16_run["steps_compiled"] == 0
  assert bf16_run["control_compiled"] == 1


def test_cudnn_attention_needs_bfloat16():
  config = tiny_config.get()
  config.model.attention = "cudnn"
  config.model.dtype = "float32"
  with pytest.raises(ValueError, match="config.model.attention"):
    config_lib.validate(config)


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  return ml_collections.ConfigDict(dict(
      name="kgmae_benchmark", data_dir=str(tmp_path_factory.mktemp("data")),
      tile_size=8, num_train=6, num_test=0, num_test_b=0, snr_vnir=150.0,
      snr_swir=80.0, seed=0, num_workers=0, prefetch=2, device_resident=True))


def test_device_resident_batches_equal_grain_batches(data_cfg):
  # 6 tiles padded to 8 over 8 devices; batch 8 crosses epochs every step.
  mesh = sharding.make_mesh(config_lib.base_config().mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  dev = device_data.train_batches(data_cfg, batch_sharding, 8, seed=3, start_step=2)
  host = data.train_iterator(data_cfg, 8, seed=3, start_step=2)
  for _ in range(3):
    d, h = next(dev), next(host)
    assert d["cube"].sharding == batch_sharding
    np.testing.assert_array_equal(np.asarray(d["cube"]), h["cube"])
    np.testing.assert_array_equal(np.asarray(d["valid"]), h["valid"])


def test_device_resident_rows_follow_grain_process_split(data_cfg):
  src = data.prepared_builder(data_cfg).as_data_source("train")
  tiles = np.stack([data.prepare(src[i], keys=())["cube"] for i in range(len(src))])
  idx = device_data.batch_indices(len(src), 4, seed=1, process_count=2)
  per_process = [data.train_iterator(data_cfg, 2, seed=1, process_index=p,
                                     process_count=2) for p in range(2)]
  for _ in range(3):
    want = np.concatenate([next(it)["cube"] for it in per_process])
    np.testing.assert_array_equal(tiles[next(idx)], want)


def test_process_count_check():
  sharding.check_process_count(None)
  sharding.check_process_count("")
  sharding.check_process_count("1")
  with pytest.raises(RuntimeError, match="Expected 4 JAX processes"):
    sharding.check_process_count(4)


def test_prefetch_yields_every_batch_in_order_on_device():
  mesh = sharding.make_mesh(config_lib.base_config().mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  host = [clean_batch(s) for s in range(5)]
  out = list(device_data.prefetch(iter(host), batch_sharding, size=2))
  assert len(out) == 5
  for h, d in zip(host, out):
    assert isinstance(d["cube"], jax.Array) and d["cube"].sharding == batch_sharding
    np.testing.assert_array_equal(np.asarray(d["cube"]), h["cube"])


def _losses(dtype, steps):
  config = tiny_config.get()
  config.model.dtype = dtype
  config.train.steps = steps
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  trainer = train.build_trainer(config, mesh, BANDS, np.full(BANDS, 0.3, np.float32),
                                np.full(BANDS, 0.15, np.float32))
  state = trainer.init(jax.random.key(0))
  out = []
  for s in range(steps):
    state, m = trainer.step(state, sharding.put_batch(clean_batch(s % 4), trainer.batch_sharding),
                            jax.random.key(1))
    out.append(float(m["loss"]))
  return np.array(out)


def test_bfloat16_run_tracks_float32_run():
  """bf16 compute with float32 parameters (the GPU/TPU default) follows the float32
  run: every step's loss of 30 within 2 % (measured: at most 0.18 %), and both learn."""
  f32, bf16 = _losses("float32", 30), _losses("bfloat16", 30)
  np.testing.assert_allclose(bf16, f32, rtol=0.02)
  assert bf16[-5:].mean() < 0.7 * bf16[0] and f32[-5:].mean() < 0.7 * f32[0]


@pytest.mark.parametrize("platform,dtype,heads,want", [
    ("cpu", "auto", 2, ("float32", None)),
    ("tpu", "auto", 2, ("bfloat16", None)),
    ("gpu", "auto", 2, ("bfloat16", "cudnn")),  # Head width 32/2 = 16.
    ("gpu", "float32", 2, ("float32", None)),
    ("gpu", "auto", 8, ("bfloat16", None)),  # Head width 4: not for cuDNN.
])
def test_auto_dtype_and_attention(platform, dtype, heads, want):
  config = tiny_config.get()
  config.model.dtype = dtype
  config.model.num_heads = config.model.dec_num_heads = heads
  assert model_lib.compute_settings(config.model, platform) == want


def test_cudnn_attention_with_auto_dtype_on_a_cpu_names_the_field():
  config = tiny_config.get()
  config.model.attention = "cudnn"
  with pytest.raises(ValueError, match="config.model.attention: cudnn needs bfloat16"):
    model_lib.compute_settings(config.model, "cpu")
