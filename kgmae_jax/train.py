"""Pretraining: TrainState, the pure train step, and the loop.

Reads top to bottom: optimiser -> state and step -> `train_and_evaluate`
(workdir and logging -> mesh -> data -> model -> eval_shape, shardings, jit
init -> resume -> loop -> final checkpoint -> evaluation, figures, summary).

The model sees standardised cubes, (x - mean) / std per band with the training
split's statistics; invalid (nodata/NaN) pixels are set to 0 there and carried
as a validity mask into every loss and metric.
"""

import contextlib
import dataclasses
import functools
import math
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import config_lib
from kgmae_jax import losses
from kgmae_jax import model as model_lib
from kgmae_jax import patching
from kgmae_jax import progress
from kgmae_jax import report
from kgmae_jax import sharding
from kgmae_jax import workdir as workdir_lib
# data, evaluate, plots, unmixing (grain, TFDS, matplotlib) are imported where
# used, so `build_trainer` needs only jax/flax/optax/orbax (benchmarks/).


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ----------------------------------------------------------------- optimiser


def _is_endmembers(path):
  return len(path) == 1 and getattr(path[0], "key", None) == model_lib.ENDMEMBERS_PARAM


def _decays(path, leaf):
  """AdamW decays weight matrices only: not biases, norms, tokens, spectra."""
  return leaf.ndim >= 2 and not _is_endmembers(path)


def make_optimizer(optim_cfg, lsmm_cfg, total_steps, max_nonfinite=1):
  """AdamW with linear warm-up + cosine decay and global-norm clipping.

  Returns (tx, schedule). The endmembers (`params['endmembers_raw']`) follow
  the same schedule scaled by `lsmm_cfg.lr_mult`, without weight decay; with
  `lsmm_cfg.learn = False` they get no update at all. The whole update is
  wrapped in `NonfinitePolicy.guard`: a step whose gradient holds NaN/inf
  leaves params and moments unchanged (counted in
  `opt_state.total_notfinite`), up to `max_nonfinite` such steps in a row.
  """
  warmup = min(optim_cfg.warmup_steps, total_steps - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
      decay_steps=total_steps, end_value=optim_cfg.lr * optim_cfg.final_lr_frac)
  tx = optax.adamw(
      schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
      weight_decay=optim_cfg.weight_decay,
      mask=lambda p: jax.tree_util.tree_map_with_path(_decays, p))
  mult = lsmm_cfg.lr_mult
  if not lsmm_cfg.learn:
    em_tx = optax.set_to_zero()
  else:
    em_tx = optax.adam(lambda step: mult * schedule(step), b1=optim_cfg.b1,
                       b2=optim_cfg.b2)
  label = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: "endmembers" if _is_endmembers(path) else "network", p)
  tx = optax.multi_transform({"network": tx, "endmembers": em_tx}, label)
  if optim_cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), tx)
  return NonfinitePolicy.guard(tx, max_nonfinite), schedule


# ------------------------------------------------------------ state and step
def init_state(rng, *, model, tx, tile_size):
  """Fresh TrainState (the model owns its init, endmembers included)."""
  n_tok = math.prod(model_lib.token_grid(tile_size, tile_size, model.patch_size))
  ids, _, _ = patching.no_masking(1, n_tok)
  cube = jnp.zeros((1, tile_size, tile_size, model.num_bands), jnp.float32)
  params = model.init(rng, cube, ids, ids)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params))


def objective_settings(config):
  """Static keyword arguments of `losses.objective` from the config: the
  term weights (every config.loss field naming a registered term) and the rest."""
  return dict(weights=losses.term_weights(config.loss),
              huber_delta=config.loss.huber_delta,
              lsmm_sam_weight=config.loss.lsmm_sam_weight,
              lsmm_on_visible=config.lsmm.on_visible)


def make_train_step(model, tx, schedule, config, mean, std):
  """The pure step `(state, batch, rng) -> (state, metrics)`.

  batch: {'cube': (N, H, W, B) reflectance, 'valid': (N, H, W) bool}.
  rng is the run's base key; the step folds in `state.step`, so masking is a
  function of (seed, step) alone and a resumed run repeats it exactly.
  The loss is `losses.fused_objective` on `model.train_forward`'s shuffled,
  masked-only layout: the same terms and values as `losses.objective` on
  `model.forward`'s (tests/test_losses.py), one pass over the pixels each way.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  accum = config.train.grad_accum_steps
  mask_ratio = config.model.mask_ratio
  settings = objective_settings(config)
  on_visible = settings.pop("lsmm_on_visible")

  def loss_fn(params, mb):
    keep = patching.num_visible(mb["ids_shuffle"].shape[1], mask_ratio)
    res = model_lib.train_forward(model, params, mb["cube"], mb["valid"],
                                  mb["ids_shuffle"], mb["ids_restore"], keep,
                                  mean, std)
    lsmm = {}
    if model.lsmm:
      first = 0 if on_visible else keep  # Tokens the LSMM term covers.
      refl, ok = res["refl"][:, first:], res["valid"][:, first:]
      ab = res["abundances"][:, first:]
      if ab.ndim == 3:  # Per token: A.a explains the patch's mean valid spectrum.
        count = ok.sum(-1)
        refl = jnp.where(ok[..., None] > 0, refl, 0.0).sum(-2) / jnp.maximum(
            count, 1.0)[..., None]
        ok = (count > 0).astype(jnp.float32)
      lsmm = dict(abundances=ab, endmembers=res["endmembers"], lsmm_target=refl,
                  lsmm_mask=ok)
    return losses.fused_objective(res["pred"], res["target"], res["mask"],
                                  mean=mean, std=std, outputs=res, **lsmm,
                                  **settings)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    cube, valid = batch["cube"], batch["valid"]
    n, h, w, _ = cube.shape
    num_tokens = math.prod(model_lib.token_grid(h, w, model.patch_size))
    ids_shuffle, ids_restore = patching.random_shuffle(rng, n, num_tokens)
    full = dict(cube=cube, valid=valid, ids_shuffle=ids_shuffle,
                ids_restore=ids_restore)
    if accum == 1:
      (total, aux), grads = grad_fn(state.params, full)
    else:
      # Gradient accumulation: microbatch j holds rows j, j + accum, ... so
      # every device keeps its own rows; masks are drawn for the full batch.
      # Loss and grads are the mean over microbatches, equal to one big batch
      # when microbatches hold equally many valid masked pixels (no nodata).
      micro = jax.tree.map(lambda x: jnp.swapaxes(
          x.reshape(n // accum, accum, *x.shape[1:]), 0, 1), full)
      zeros = jax.tree.map(
          lambda s: jnp.zeros(s.shape, s.dtype),
          jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro)))

      def accumulate(carry, mb):
        return jax.tree.map(jnp.add, carry, grad_fn(state.params, mb)), None

      summed, _ = jax.lax.scan(accumulate, zeros, micro)
      (total, aux), grads = jax.tree.map(lambda x: x / accum, summed)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux)
    metrics["loss"] = total
    # The same reduction as the clipping's and the guard's (XLA computes it
    # once). param_norm is the loop's, on log steps only (param_norm).
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["lr"] = schedule(state.step)
    metrics["valid_frac"] = valid.mean()
    # Non-finite updates dropped so far (NonfinitePolicy.guard).
    metrics["skipped_steps"] = getattr(opt_state, "total_notfinite", 0)
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  return train_step


# -------------------------------------------------------------------- loop
@dataclasses.dataclass(frozen=True)
class Trainer:
  """What the loop needs for one mesh: model, jitted init and step."""
  model: model_lib.KarmaMAE
  init: Any  # jitted rng -> TrainState, placed with `state_shardings`.
  abstract_state: Any  # TrainState of ShapeDtypeStructs.
  state_shardings: Any
  batch_sharding: Any
  step: Any  # jitted (state, batch, rng) -> (state, metrics); donates state.


def build_trainer(config, mesh, num_bands, mean, std, endmembers=None):
  """Builds the model, optimiser, shardings and the compiled functions."""
  model = model_lib.build(config.model, config.lsmm, num_bands, endmembers)
  tx, schedule = make_optimizer(config.optim, config.lsmm, config.train.steps,
                                max_nonfinite=config.train.max_skipped_in_a_row)
  init = functools.partial(init_state, model=model, tx=tx,
                           tile_size=config.data.tile_size)
  abstract = jax.eval_shape(init, jax.random.key(0))
  state_shardings = sharding.state_sharding(mesh, abstract)
  batch_sharding = sharding.batch_sharding(mesh)
  step = jax.jit(
      make_train_step(model.clone(batch_sharding=batch_sharding), tx, schedule,
                      config, mean, std),
      in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))
  return Trainer(model=model, init=jax.jit(init, out_shardings=state_shardings),
                 abstract_state=abstract, state_shardings=state_shardings,
                 batch_sharding=batch_sharding, step=step)


def initial_endmembers(config, wavelengths):
  """(B, M) endmember init for lsmm.init = kmeans | vca | data | library;
  None for random (the model's smooth random init).

  The data-driven inits read up to `lsmm.init_pixels` valid training pixels.
  """
  from kgmae_jax import data, unmixing  # pylint: disable=g-import-not-at-top
  if not config.lsmm.enabled or config.lsmm.init == "random":
    return None
  m, seed = config.lsmm.num_endmembers, config.seed
  if config.lsmm.init == "library":
    return unmixing.library_endmembers(wavelengths, m, seed=seed)
  pixels = []
  for batch in data.eval_batches(config.data, "train", batch_size=64):
    pixels.append(batch["cube"][batch["valid"]])
    if sum(len(p) for p in pixels) >= 4 * config.lsmm.init_pixels:
      break
  pixels = np.concatenate(pixels).astype(np.float64)
  rng = np.random.default_rng(seed)
  if len(pixels) > config.lsmm.init_pixels:
    pixels = pixels[rng.choice(len(pixels), config.lsmm.init_pixels,
                               replace=False)]
  if len(pixels) < m:
    raise ValueError(f"lsmm.init={config.lsmm.init!r} needs at least M={m} "
                     f"valid training pixels, the data has {len(pixels)}.")
  if config.lsmm.init == "kmeans":
    em = unmixing.kmeans_endmembers(pixels, m, seed=seed)
  elif config.lsmm.init == "vca":
    em = unmixing.vca(pixels, m, seed=seed)[0]
  else:  # data
    em = unmixing.farthest_angle_pixels(pixels, m)
  logging.info("Endmember init %r from %d training pixels.", config.lsmm.init,
               len(pixels))
  return np.asarray(em, np.float32).T


def _train_batches(config, per_process, start, batch_sharding):
  """Device batches: grain's, copied two steps ahead, or gathered on device
  with data.device_resident."""
  from kgmae_jax import data, device_data  # pylint: disable=g-import-not-at-top
  if config.data.device_resident:
    return device_data.train_batches(
        config.data, batch_sharding, config.train.batch_size, seed=config.seed,
        start_step=start)
  return device_data.prefetch(data.train_iterator(
      config.data, per_process, seed=config.seed, start_step=start,
      process_index=jax.process_index(), process_count=jax.process_count()),
      batch_sharding)


def _log_line(step, total, scalars, rate):
  terms = " ".join(f"{k} {scalars[k]:.4f}" for k in losses.term_names(scalars))
  eta = (total - step) / max(rate, 1e-9)
  return (f"step {step}/{total} | loss {scalars['loss']:.4f} ({terms}) | "
          f"{rate:.2f} steps/s | eta {int(eta) // 60}m{int(eta) % 60:02d}s")


def nonfinite_terms(scalars):
  """Names of the loss terms (from `losses.term_names`), the loss and the grad
  norm that are NaN/inf in `scalars`."""
  guarded = losses.term_names(scalars) + ["loss", "grad_norm"]
  return [k for k in guarded if k in scalars and not np.isfinite(scalars[k])]


def check_finite(step_range, scalars):
  """Raises FloatingPointError naming the steps and non-finite loss terms."""
  bad = nonfinite_terms(scalars)
  if bad:
    first, last = step_range
    where = f"at step {first}" if first == last else f"between steps {first} and {last}"
    raise FloatingPointError(
        f"Non-finite loss {where}: {', '.join(bad)} = {[scalars[k] for k in bad]}. "
        "The update was not applied and no checkpoint was written after it; lower "
        "optim.lr, check the data, or set train.on_nonfinite='skip'.")


class NonfinitePolicy:
  """What a NaN/inf loss or gradient does (config.train.on_nonfinite), in one place.

  On device, the optimiser never applies such an update: `guard(tx)` (optax's
  `apply_if_finite` rule, select-based) leaves params and moments unchanged
  and counts the step (`metrics['skipped_steps']`).
  On the host, the loop passes every step's metrics to `accept` before it logs
  or saves anything after that step: with 'error' the first bad step raises
  FloatingPointError (naming steps and terms, no checkpoint past the last good
  step); with 'skip' it is logged, left out of the averages, and
  `max_skipped_in_a_row` bad steps in a row raise.
  """

  def __init__(self, train_cfg):
    self.skip = train_cfg.on_nonfinite == "skip"
    self.max_in_a_row = train_cfg.max_skipped_in_a_row
    self.bad_run = 0  # Consecutive non-finite steps so far.

  @staticmethod
  def guard(tx, max_in_a_row):
    """`tx` dropping non-finite updates, up to `max_in_a_row` in a row.

    `optax.apply_if_finite`'s rule and state, with selects instead of its
    `lax.cond` (a conditional around the whole optimiser): the update is
    always computed, and where the gradient's global norm (the reduction
    clipping computes anyway) is not finite, the zero update and the old
    moments are selected, element by element, in the same pass.
    """

    def init(params):
      return optax.ApplyIfFiniteState(
          notfinite_count=jnp.zeros((), jnp.int32), last_finite=jnp.array(True),
          total_notfinite=jnp.zeros((), jnp.int32), inner_state=tx.init(params))

    def update(updates, state, params=None):
      finite = jnp.isfinite(optax.global_norm(updates))
      count = jnp.where(finite, 0, state.notfinite_count + 1)
      apply = finite | (count > max_in_a_row)
      new, inner = tx.update(updates, state.inner_state, params)
      pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(apply, x, y), a, b)
      return (jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new),
              optax.ApplyIfFiniteState(
                  notfinite_count=count, last_finite=finite,
                  total_notfinite=state.total_notfinite + (~finite).astype(jnp.int32),
                  inner_state=pick(inner, state.inner_state)))

    return optax.GradientTransformation(init, update)

  def accept(self, step, scalars):
    """True if step's `scalars` are finite (log them); False if the step was
    skipped; raises FloatingPointError when the policy says stop."""
    bad = nonfinite_terms(scalars)
    self.bad_run = self.bad_run + 1 if bad else 0
    if bad and (not self.skip or self.bad_run >= self.max_in_a_row):
      check_finite((step - self.bad_run + 1, step), scalars)
    if bad:
      logging.warning("Step %d: non-finite %s; update skipped (%d so far).",
                      step, ", ".join(bad), int(scalars["skipped_steps"]))
    return not bad


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after writing a checkpoint."""

  def __init__(self, step, signum, workdir):
    self.step, self.signum = step, signum
    super().__init__(
        f"Stopped by {signal.Signals(signum).name} at step {step} after saving a "
        f"checkpoint in {workdir}; rerun the same command to resume.")


class _StopRequests:
  """Records SIGTERM/SIGINT instead of dying mid-step; a second SIGINT kills."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      # With several processes, SIGTERM stays with JAX's preemption service
      # (jax.distributed.initialize installs it): all processes then agree on
      # the step to save at (Checkpointer.preempted).
      sigs = (signal.SIGINT,) if jax.process_count() > 1 else (
          signal.SIGTERM, signal.SIGINT)
      for sig in sigs:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("Received %s: finishing this step, then saving a "
                    "checkpoint.", signal.Signals(signum).name)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _periodic_eval(evaluator, params, rng, step, writer):
  """Held-out evaluation at `step`, logged as eval/<metric> (one row)."""
  from kgmae_jax import evaluate  # pylint: disable=g-import-not-at-top
  results = evaluate.scalars(evaluator(params, rng)["metrics"])
  writer.write(step, {"eval/" + k: v for k, v in results.items()})
  logging.info("step %d | eval %s", step,
               " ".join(f"{k} {v:.4f}" for k, v in results.items()))


def _closer(resource):
  """ExitStack callback closing `resource`; after another error, a failure to
  close is logged instead of hiding that error."""

  def close(exc_type, exc, tb):
    del exc, tb
    try:
      resource.close()
    except Exception:  # pylint: disable=broad-except
      if exc_type is None:
        raise
      logging.exception("Closing %s after an error failed.",
                        type(resource).__name__)

  return close


def _host_scalars(metrics):
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config, workdir):
  """Pretrains (resuming from `workdir` if it holds checkpoints), then
  evaluates and writes summary.json and figures. Returns the summary dict.

  Raises Preempted after saving a checkpoint on SIGTERM/SIGINT, and
  FloatingPointError (before any checkpoint past the last good step) when a
  loss term goes non-finite with train.on_nonfinite='error'. Refuses, before
  writing anything: a workdir another live run holds (WorkdirLocked), an
  object-store URL, and a resume whose run-changing config fields differ from
  the checkpoint's (ConfigChangeError); see kgmae_jax/workdir.py.
  """
  workdir_lib.check_supported(workdir)
  workdir = ckpt_lib.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.lock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir):
  from kgmae_jax import data, evaluate, plots  # pylint: disable=g-import-not-at-top
  is_main = jax.process_index() == 0
  saved = ckpt_lib.newest_meta(workdir)  # (step, meta) of a resumed run.
  if saved is not None:  # Never overwrite the record of another run.
    workdir_lib.check_resume_config(config, saved[1]["config"], saved[0],
                                    workdir / "checkpoints")
  if is_main:
    report.write_json(workdir / "config.json", config.to_dict())
  logging.info("Process %d/%d, %d local / %d global devices (%s).",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)

  # Mesh.
  config_lib.validate(config, num_devices=jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  logging.info("Mesh: %s", dict(mesh.shape))

  # Data.
  data.prepared_builder(config.data)
  stats = data.band_stats(config.data)
  wavelengths = np.asarray(data.wavelengths(config.data), np.float32)
  num_bands = len(wavelengths)
  config_lib.validate(config, num_bands=num_bands)
  meta = report.jsonable({
      "config": config.to_dict(), "wavelengths_nm": wavelengths,
      "band_mean": stats["mean"], "band_std": stats["std"],
      "class_names": list(data.class_names(config.data)),
      "num_bands": num_bands,
  })
  if saved is not None:  # The same config on other data (a replaced scene).
    workdir_lib.check_resume_data(meta, saved[1], config)

  # Model, optimiser, state shardings, compiled init and step.
  rng = jax.random.key(config.seed)
  init_rng, step_rng, eval_rng = jax.random.split(rng, 3)
  # A resumed run restores its endmembers: the data-driven init is not needed.
  endmembers = initial_endmembers(config, wavelengths) if saved is None else None
  trainer = build_trainer(config, mesh, num_bands, stats["mean"], stats["std"],
                          endmembers=endmembers)
  model, total = trainer.model, config.train.steps
  num_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
  logging.info("Model: %.2fM parameters, %d bands, LSMM %s; compute %s, "
               "attention %s (model.dtype=%r, model.attention=%r).",
               num_params / 1e6, num_bands, "on" if model.lsmm else "off",
               jnp.dtype(model.dtype).name, model.attention or "xla",
               config.model.dtype, config.model.attention)

  # Resume from this workdir (newest readable checkpoint), else from scratch.
  # Everything opened from here to the end of training is closed by `cleanup`
  # on every exit: done, non-finite loss, failed save, preemption.
  with contextlib.ExitStack() as cleanup:
    ckpt = ckpt_lib.Checkpointer(workdir, config.ckpt.every_steps, config.ckpt.keep)
    cleanup.push(_closer(ckpt))
    _check_saved_bands(ckpt, num_bands)
    restored = ckpt.restore_latest(ckpt_lib.abstract_with_shardings(
        trainer.abstract_state, trainer.state_shardings))
    window = []  # Metrics of the steps since the last log row.
    if restored is not None:
      start, state, restored_meta = restored
      window = list(restored_meta.get("log_window", []))  # Exact first row.
      logging.info("Resumed from step %d in %s.", start, ckpt.directory)
    else:
      start = 0
      if saved is not None:  # No checkpoint was readable: start as a new run.
        trainer = build_trainer(
            config, mesh, num_bands, stats["mean"], stats["std"],
            endmembers=initial_endmembers(config, wavelengths))
        model = trainer.model
      state = trainer.init(init_rng)

    # Loop.
    per_process = config.train.batch_size // jax.process_count()
    batches = _train_batches(config, per_process, start, trainer.batch_sharding)
    writer = report.MetricWriter(workdir, resume_step=start, enabled=is_main)
    cleanup.push(_closer(writer))
    nonfinite = NonfinitePolicy(config.train)
    eval_every = config.evals.every_steps  # Held-out evaluation (0: off).
    evaluator = evaluate.Evaluator(model, config, stats, meta["class_names"],
                                   baselines=False) if eval_every else None
    param_norm = jax.jit(optax.global_norm)  # Log steps only, not in the step.
    unchecked, last_log, t0 = [], start, time.perf_counter()
    stop = cleanup.enter_context(_StopRequests())
    bar = cleanup.enter_context(progress.bar(  # On process 0 only.
        total, "train", enabled=None if is_main else False, initial=start,
        unit="step"))
    for step in range(start + 1, total + 1):
      batch = sharding.put_batch(next(batches), trainer.batch_sharding)
      state, metrics = trainer.step(state, batch, step_rng)
      bar.update()
      ckpt.raise_if_save_failed(step)  # A failed async save stops the run now.
      unchecked.append((step, metrics))
      log_now = step % config.train.log_every == 0 or step == total
      if stop.signum is None and ckpt.preempted(step):  # Agreed by all hosts.
        stop.signum = signal.SIGTERM
      save_now = ckpt.due(step) or step == total or stop.signum is not None
      eval_now = evaluator is not None and step % eval_every == 0
      if not (log_now or save_now or eval_now):
        continue
      # Every step's metrics are checked before anything is logged or saved.
      for s, m in unchecked:
        m = _host_scalars(m)
        if nonfinite.accept(s, m):
          window.append(m)
      unchecked = []
      if log_now and window:
        scalars = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
        scalars["skipped_steps"] = window[-1]["skipped_steps"]
        scalars["param_norm"] = float(param_norm(state.params))  # At `step`.
        rate = (step - last_log) / (time.perf_counter() - t0)
        scalars["steps_per_sec"] = rate
        writer.write(step, scalars)
        logging.info(_log_line(step, total, scalars, rate))
        bar.set_postfix(loss=f"{scalars['loss']:.4f}",
                        steps_per_s=f"{rate:.2f}")
        window, last_log, t0 = [], step, time.perf_counter()
      if eval_now:  # Its time is left out of the next row's steps_per_sec.
        t_eval = time.perf_counter()
        _periodic_eval(evaluator, state.params, eval_rng, step, writer)
        t0 += time.perf_counter() - t_eval
      ckpt.save(step, state, meta | {"log_window": window},
                force=(step == total or stop.signum is not None))
      if stop.signum is not None and step < total:
        raise Preempted(step, stop.signum, workdir)
    ckpt.save(total, state, meta, force=True)  # No-op unless resumed at `total`.

  # Evaluation, figures, summary.
  summary = evaluate.evaluate(
      model, state.params, config, stats, wavelengths, eval_rng,
      class_names=meta["class_names"])
  summary["train"] = {"steps": total, "num_params": int(num_params)}
  if is_main:
    report.write_json(workdir / "summary.json", summary["metrics"] | {
        "train": summary["train"]})
    plots.write_all(workdir, summary, wavelengths, meta["class_names"])
  return summary


def _check_saved_bands(ckpt, num_bands):
  """Clear error when the workdir's checkpoint was trained on another band count."""
  try:
    saved = ckpt.restore_meta()["num_bands"] if ckpt.latest_step() else None
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable: restore_latest reports it and falls back.
  if saved is not None and saved != num_bands:
    raise ValueError(
        f"Checkpoint in {ckpt.directory} has {saved} bands but the data has "
        f"{num_bands}: set config.data to the data set it was trained on, or "
        "use another --workdir.")
