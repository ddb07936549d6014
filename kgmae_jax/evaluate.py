"""Held-out evaluation: reconstruction of masked patches, LSMM and unmixing.

`Evaluator` runs it (compiled once) on any parameters, also during training
(config.evals.every_steps, `scalars` flattens it for the log).

Reconstruction (the MAE task): each tile is masked as in training (a fixed
eval key); the image scored is the input with its masked patches replaced by
the prediction, and every metric counts only masked, valid pixels. Two
baselines fill the masked pixels the same way: `train_mean` (the training
split's mean spectrum) and `visible_mean` (the mean spectrum of the tile's
visible pixels). PSNR comes from the pooled MSE over all tiles; the other
metrics are pixel-weighted means of per-batch values.

LSMM and unmixing use a pass with every token visible: A.a against the cube
over valid pixels, and, when the data set knows the truth, learned endmembers
matched to the true materials (Hungarian, by spectral angle) with the spectral
angle distance (SAD) and abundance RMSE per matched material.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kgmae_jax import data
from kgmae_jax import metrics as metrics_lib
from kgmae_jax import model as model_lib
from kgmae_jax import patching
from kgmae_jax import unmixing


def _to_pixels(tokens, grid, p):
  """(N, L, p*p, C) or (N, L, C) per token -> (N, H, W, C) per pixel."""
  tokens = model_lib.per_pixel(tokens, p)  # Per token: every pixel shares it.
  n, _, _, c = tokens.shape
  return patching.unpatchify(tokens.reshape(n, -1, p * p * c), p, grid, c)


def make_predict_fn(model, mean, std, mask_ratio):
  """Jitted (params, cube, valid, rng) -> dict of per-pixel predictions."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  p = model.patch_size

  @jax.jit
  def predict(params, cube, valid, rng):
    n, h, w, b = cube.shape
    grid = model_lib.token_grid(h, w, p)
    ids_keep, ids_restore, token_mask = patching.random_masking(
        rng, n, grid[0] * grid[1], mask_ratio)
    res = model_lib.forward(model, params, cube, valid, ids_keep, ids_restore,
                            mean, std)
    pred = _to_pixels(res["pred"] * std + mean, grid, p)
    masked = _to_pixels(token_mask[..., None], grid, p)[..., 0] > 0
    visible = valid & ~masked
    vis_count = jnp.maximum(visible.sum((1, 2)), 1)[:, None]
    vis_mean = (cube * visible[..., None]).sum((1, 2)) / vis_count
    out = {
        "recon": jnp.where(masked[..., None], pred, cube),
        "train_mean": jnp.where(masked[..., None], mean, cube),
        "visible_mean": jnp.where(masked[..., None], vis_mean[:, None, None],
                                  cube),
        "masked": masked & valid,
    }
    if model.lsmm:  # Unmixing from a pass with every token visible.
      ids, _, _ = patching.no_masking(n, grid[0] * grid[1])
      full = model_lib.forward(model, params, cube, valid, ids, ids, mean, std)
      out["abundances"] = _to_pixels(full["abundances"], grid, p)
      out["mixed"] = _to_pixels(full["mixed"], grid, p)
      out["endmembers"] = full["endmembers"]
    return out

  return predict


class _Mean:
  """Weighted running means of scalar dicts."""

  def __init__(self):
    self.sums = collections.defaultdict(float)
    self.weight = 0.0

  def add(self, values, weight):
    for k, v in values.items():
      self.sums[k] += float(v) * weight
    self.weight += weight

  def result(self):
    return {k: v / max(self.weight, 1e-12) for k, v in self.sums.items()}


def _pooled(mean_metrics, data_range):
  """Replaces per-batch-averaged PSNR by PSNR of the pooled MSE."""
  out = dict(mean_metrics)
  mse = out.pop("_mse")
  out["psnr"] = float(10 * np.log10(data_range**2 / max(mse, 1e-20)))
  return out


def evaluate(model, params, config, stats, wavelengths, rng, class_names=()):
  """Runs the evaluation on `config.evals.split`; returns a dict with
  `metrics` (JSON-ready) and `plot` (numpy arrays for `plots.write_all`)."""
  del wavelengths
  return Evaluator(model, config, stats, class_names)(params, rng)


class Evaluator:
  """The held-out evaluation, compiled once and run on any parameters.

  `Evaluator(...)(params, rng)` -> `{'metrics', 'plot'}` as `evaluate`;
  `baselines=False` skips the train_mean / visible_mean baselines (the cheap
  variant run during training, see `scalars`).
  """

  def __init__(self, model, config, stats, class_names=(), baselines=True):
    ev = self.evals = config.evals
    self.model, self.config, self.class_names = model, config, class_names
    self.predict = make_predict_fn(model, stats["mean"], stats["std"],
                                   config.model.mask_ratio)
    self.scorer = jax.jit(functools.partial(metrics_lib.reconstruction_metrics,
                                            data_range=ev.data_range))
    self.methods = (("model", "recon"),) + ((
        ("train_mean", "train_mean"), ("visible_mean", "visible_mean"))
                                            if baselines else ())

  def __call__(self, params, rng):
    model, config, class_names = self.model, self.config, self.class_names
    ev, predict, scorer = self.evals, self.predict, self.scorer
    recon = {name: _Mean() for name, _ in self.methods}
    lsmm_mean = _Mean()
    cross, abund_n = None, 0.0
    plot, num_tiles, true_em = {}, 0, []
    max_tiles = ev.num_tiles or None
    split = data.evaluation_split(config.data, ev.split)
    for i, batch in enumerate(data.eval_batches(config.data, split,
                                                ev.batch_size, max_tiles)):
      cube = jnp.asarray(batch["cube"])
      valid = jnp.asarray(batch["valid"])
      out = predict(params, cube, valid, jax.random.fold_in(rng, i))
      weight = float(out["masked"].sum())
      for name, key in self.methods:
        if weight:  # A batch without valid masked pixels has nothing to score.
          m = jax.device_get(scorer(out[key], cube, mask=out["masked"]))
          recon[name].add(dict(m, _mse=m["rmse"] ** 2), weight)
      if model.lsmm:
        if valid.any():
          m = jax.device_get(scorer(out["mixed"], cube, mask=valid))
          lsmm_mean.add(dict(m, _mse=m["rmse"] ** 2), float(valid.sum()))
        if "abundances" in batch:  # Squared-error sums for every pairing.
          true_em.append(batch["endmembers"])
          v = np.asarray(valid)
          pa = np.asarray(out["abundances"], np.float64)[v]  # (P, M)
          ta = np.asarray(batch["abundances"], np.float64)[v]  # (P, M_true)
          sums = (np.square(pa).sum(0), np.square(ta).sum(0), pa.T @ ta)
          cross = sums if cross is None else tuple(
              a + b for a, b in zip(cross, sums))
          abund_n += v.sum()
      if i == 0:
        k = ev.num_plot
        plot = {key: np.asarray(val[:k]) for key, val in out.items()
                if key != "endmembers"}
        plot["cube"] = batch["cube"][:k]
        for key in ("abundances", "labels"):
          if key in batch:
            plot["true_" + key] = batch[key][:k]
        if model.lsmm:
          plot["endmembers"] = np.asarray(out["endmembers"])
      num_tiles += cube.shape[0]

    results = {
        "reconstruction": {k: _pooled(v.result(), ev.data_range)
                           for k, v in recon.items()},
        "eval": {"split": split, "num_tiles": num_tiles,
                 "mask_ratio": config.model.mask_ratio},
    }
    if model.lsmm:
      results["lsmm_reconstruction"] = _pooled(lsmm_mean.result(), ev.data_range)
    if true_em:
      ref = np.mean(np.concatenate(true_em), axis=0)  # (M_true, B)
      learned = plot["endmembers"].T
      rows, cols, angles = unmixing.match_endmembers(learned, ref)
      p2, t2, pt = cross
      rmse = np.sqrt(np.maximum(p2[rows] + t2[cols] - 2 * pt[rows, cols], 0)
                     / abund_n)
      names = [class_names[c] if c < len(class_names) else str(c) for c in cols]
      results["unmixing"] = {
          "sad_deg": dict(zip(names, np.degrees(angles).tolist())),
          "sad_deg_mean": float(np.degrees(angles).mean()),
          "abundance_rmse": dict(zip(names, rmse.tolist())),
          "abundance_rmse_mean": float(rmse.mean()),
          "matched_endmember": dict(zip(names, rows.tolist())),
      }
      plot["true_endmembers"] = ref
      plot["matching"] = (rows, cols)
    logging.info("Evaluation on %d '%s' tiles: %s", num_tiles, split,
                 {k: round(v["psnr"], 2) for k, v in
                  results["reconstruction"].items()})
    return {"metrics": results, "plot": plot}


def scalars(metrics):
  """Flat `{name: float}` of an evaluation's `metrics` for the training log:
  the model's reconstruction metrics (psnr, ssim, sam_deg, ...), `lsmm_psnr`
  and the unmixing means when present."""
  out = dict(metrics["reconstruction"]["model"])
  if "lsmm_reconstruction" in metrics:
    out["lsmm_psnr"] = metrics["lsmm_reconstruction"]["psnr"]
  for key in ("sad_deg_mean", "abundance_rmse_mean"):
    if key in metrics.get("unmixing", {}):
      out[key] = metrics["unmixing"][key]
  return {k: float(v) for k, v in out.items()}
