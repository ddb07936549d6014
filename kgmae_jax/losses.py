"""KARMA loss terms: Huber, spectral angle (SAM) and linear-spectral-mixing (LSMM) consistency.

Pure `jax.numpy` functions (no flax, no optax) that work under `jit`, `vmap` and `grad`
for any leading batch shape. Conventions shared by every function:

* Spectra lie on the last axis: `pred`, `target` are `(..., B)` and broadcast together.
* Arithmetic is at least float32: bfloat16/float16/integer inputs are cast inside, so the
  results are float32 scalars or arrays even for bfloat16 inputs.
* `mask`, where accepted, has shape `pred.shape[:-1]` (one entry per spectrum): bool,
  0/1, or non-negative float weights. An entry > 0 selects the spectrum with that weight;
  means are weighted means over the selected spectra. Masked-out spectra are replaced by
  safe values *before* any arithmetic, so NaN/inf in them reach neither the value nor the
  gradient. A mean over zero selected spectra is 0.
* Angles are in radians. A spectrum whose Euclidean norm is <= `eps` counts as zero; a
  zero spectrum carries no shape, so its angle to anything (another zero included) is
  pi/2, with a zero gradient. Mask out nodata (all-zero) pixels rather than relying on it.

Functions (shapes for `pred: (..., B)`):

* `spectral_angle(pred, target, eps)` -> `(...)`: angle per spectrum,
  `2 atan2(||p^ - t^||, ||p^ + t^||)` with `p^ = p / ||p||` (Kahan's formula): accurate to
  ~1e-7 rad in float32 down to zero angle (arccos of the cosine loses half the digits
  there), pi for opposite spectra, and a finite gradient at p == t, for scaled copies and
  for zero spectra.
* `sam_loss(pred, target, mask)` -> scalar: mean spectral angle (radians).
* `huber_loss(pred, target, delta, mask)` -> scalar: mean over the selected spectra and
  all B bands of `0.5 x^2` (|x| <= delta) or `delta (|x| - 0.5 delta)`, x = pred - target.
* `lsmm_mix(abundances (..., M), endmembers (B, M))` -> `(..., B)`: linear mixing.
* `lsmm_loss(mixed, target, mask, scale, delta, sam_weight)` -> scalar physics term.
* `karma_loss(pred, target, mask, mixed, mean, std, weights, ...)` -> `(total, aux)`.
* `objective(outputs, token_mask, weights, ...)` -> `(total, aux)`: the training
  objective from `model.forward`'s results; its terms are the registry `TERMS`
  (`register_term(name, fn)`), weighted by `weights[name]` (config.loss.<name>). A new
  term is a `register_term` call and a config weight: the loop, its non-finite guard, the
  logs, plots and reports take the names from `aux` (`term_names`).
"""

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_float(x) -> Array:
  """`x` as a JAX array of at least float32 precision (float64 stays float64 under x64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def checked_mask(mask, pred_shape) -> Array:
  """`mask` as an array, checked to hold one entry per spectrum: `pred_shape[:-1]`."""
  mask = jnp.asarray(mask)
  if mask.shape != tuple(pred_shape[:-1]):
    raise ValueError(f"mask shape {mask.shape} must equal pred.shape[:-1] = "
                     f"{tuple(pred_shape[:-1])} (one entry per spectrum).")
  return mask


def _prepare(pred, target, mask):
  """Broadcasts pred/target to float, checks the mask and neutralises masked-out spectra.

  Returns `(p, t, w)`: `w` is None (no mask) or float32 weights of shape `p.shape[:-1]`,
  zero where not selected; there `p` and `t` hold ones (angle 0, Huber 0, finite gradient).
  """
  p, t = jnp.broadcast_arrays(_as_float(pred), _as_float(target))
  if p.ndim == 0:
    raise ValueError("pred/target must have a spectral (last) axis; got scalars.")
  if mask is None:
    return p, t, None
  w = checked_mask(mask, p.shape).astype(jnp.float32)
  selected = w > 0
  p = jnp.where(selected[..., None], p, 1.0)
  t = jnp.where(selected[..., None], t, 1.0)
  return p, t, jnp.where(selected, w, 0.0)


def _weighted_mean(values: Array, w: Optional[Array]) -> Array:
  """Mean of `values` (one per spectrum) weighted by `w`; 0 when nothing is selected."""
  if w is None:
    return jnp.sum(values) / max(values.size, 1)
  total = jnp.sum(w)
  return jnp.sum(w * values) / jnp.where(total > 0, total, 1.0)


def _safe_norm(x: Array) -> Array:
  """Euclidean norm over the last axis whose gradient at x == 0 is 0, not NaN."""
  sq = jnp.sum(x * x, axis=-1)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _weighted_term(weight, term: Callable[[], Array]) -> Array:
  """`weight * term()`, exactly 0 when the weight is 0 even if the term is NaN.

  A Python/numpy 0 skips the term altogether (value and gradient clean); a traced 0 is
  handled with `where`, which keeps the value clean but cannot protect a gradient that is
  NaN inside the term.
  """
  if isinstance(weight, numbers.Real) and weight == 0:
    return jnp.zeros((), jnp.float32)
  weight = jnp.asarray(weight, jnp.float32)
  return jnp.where(weight == 0, 0.0, weight * term())


def spectral_angle(pred, target, eps: float = 1e-8) -> Array:
  """Angle (radians, in [0, pi]) between `pred` and `target` spectra: shape `pred.shape[:-1]`.

  Spectra with norm <= `eps` are zero: their angle is pi/2 and their gradient 0. NaN in an
  input gives NaN for that spectrum only (use the masked losses to drop such spectra).
  """
  p, t = jnp.broadcast_arrays(_as_float(pred), _as_float(target))
  p_sq = jnp.sum(p * p, axis=-1)
  t_sq = jnp.sum(t * t, axis=-1)
  degenerate = (p_sq <= eps * eps) | (t_sq <= eps * eps)
  # Double where: zero spectra become ones before any division, so no inf/NaN gradient.
  p = jnp.where(degenerate[..., None], 1.0, p)
  t = jnp.where(degenerate[..., None], 1.0, t)
  p_hat = p / jnp.sqrt(jnp.sum(p * p, axis=-1, keepdims=True))
  t_hat = t / jnp.sqrt(jnp.sum(t * t, axis=-1, keepdims=True))
  angle = 2.0 * jnp.arctan2(_safe_norm(p_hat - t_hat), _safe_norm(p_hat + t_hat))
  return jnp.where(degenerate, 0.5 * math.pi, angle)


def sam_loss(pred, target, mask=None) -> Array:
  """Mean spectral angle (radians) over the spectra selected by `mask` (all when None)."""
  p, t, w = _prepare(pred, target, mask)
  return _weighted_mean(spectral_angle(p, t), w)


def huber_loss(pred, target, delta=1.0, mask=None) -> Array:
  """Mean elementwise Huber loss over the bands of the selected spectra.

  `sum_{selected spectra, bands} w * huber(pred - target) / (sum(w) * B)`; with a bool mask
  that is the mean over the selected spectra and all B bands.
  """
  if isinstance(delta, numbers.Real) and delta <= 0:
    raise ValueError(f"huber delta must be > 0, got {delta}.")
  p, t, w = _prepare(pred, target, mask)
  abs_x = jnp.abs(p - t)
  quadratic = jnp.minimum(abs_x, delta)  # Gradient-friendly form: no branch on |x|.
  elementwise = 0.5 * quadratic * quadratic + delta * (abs_x - quadratic)
  return _weighted_mean(jnp.mean(elementwise, axis=-1), w)


def lsmm_mix(abundances, endmembers) -> Array:
  """Linear spectral mixing `abundances @ endmembers.T`: `(..., M), (B, M) -> (..., B)`.

  Computed in float32 (or wider) at full matmul precision (no TF32/bf16 passes), which is
  cheap for the handful of endmembers M an LSMM head uses.
  """
  a, e = _as_float(abundances), _as_float(endmembers)
  if e.ndim != 2 or a.ndim < 1 or a.shape[-1] != e.shape[1]:
    raise ValueError(f"need abundances (..., M) and endmembers (B, M); got {a.shape} and "
                     f"{e.shape}.")
  return jnp.einsum("...m,bm->...b", a, e, precision=jax.lax.Precision.HIGHEST)


def lsmm_loss(mixed, target, mask=None, *, scale=None, delta=1.0, sam_weight=1.0) -> Array:
  """Physics-consistency term between an LSMM reconstruction and the observed pixels.

  The physical target: the linear-mixing reconstruction `mixed = A a` (endmembers times
  abundances, reflectance units) must explain the observed reflectance `target` both in
  amplitude and in spectral shape:

    huber_loss((mixed - target) / scale, 0, delta, mask)
        + sam_weight * sam_loss(mixed, target, mask)

  `scale` (scalar or per band, shape (B,), positive; None -> 1) is the data set's per-band
  standard deviation, so the Huber part is on the same footing as a pixel loss computed on
  standardised data. `sam_weight` 0 (a Python number) skips the SAM part.
  """
  m, t, _ = _prepare(mixed, target, mask)  # Neutralise NaN before the division by scale.
  residual = m - t
  if scale is not None:
    residual = residual / _as_float(scale)
  huber = huber_loss(residual, 0.0, delta, mask)
  return huber + _weighted_term(sam_weight, lambda: sam_loss(m, t, mask))


# ------------------------------------------------------------------ the objective
@dataclasses.dataclass(frozen=True)
class LossInputs:
  """What every loss term sees for one batch; built by `objective` (or `karma_loss`).

  `pred`, `target`: `(..., B)` standardised, already NaN-free where `mask` drops them;
  `mask`: `pred.shape[:-1]` (masked, valid pixels); `mean`, `std`: `(B,)` (or 0 and 1)
  mapping standardised values to reflectance; `std_scale`: `std` or None (lsmm Huber
  scale); `mixed`: LSMM `A a` in reflectance, `(..., B)` per pixel or per token, or None;
  `lsmm_target`, `lsmm_mask`: what `mixed` must explain and where; `outputs`: every
  `model.forward` result (abundances, endmembers, ...) for terms that need more;
  `settings`: the static non-weight settings (`huber_delta`, `lsmm_sam_weight`, ...).
  """
  pred: Array
  target: Array
  mask: Optional[Array]
  mean: Any
  std: Any
  std_scale: Any
  mixed: Optional[Array]
  lsmm_target: Optional[Array]
  lsmm_mask: Optional[Array]
  outputs: Mapping[str, Any]
  settings: Mapping[str, Any]

  @property
  def target_reflectance(self) -> Array:
    return self.target * self.std + self.mean


# name -> fn(LossInputs) -> raw (unweighted) float32 scalar; insertion order is the
# order of the terms in `aux` and in the sum.
TERMS: dict[str, Callable[[LossInputs], Array]] = {}


def register_term(name: str, fn: Callable[[LossInputs], Array]) -> None:
  """Adds the loss term `name`: its weight is `weights[name]` (config.loss.<name>)."""
  if name.endswith("_raw") or name in ("total", "loss"):
    raise ValueError(f"{name!r} is reserved for the logged values of the objective.")
  TERMS[name] = fn


def unregister_term(name: str) -> None:
  TERMS.pop(name)


def term_weights(loss_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """`{name: weight}` for every registered term in `loss_cfg` (e.g. config.loss)."""
  return {name: loss_cfg[name] for name in TERMS if name in loss_cfg}


def term_names(aux: Mapping[str, Any]) -> list[str]:
  """The weighted term names in an `aux` dict (or a logged row), in its order: keys with a
  `_raw` twin, or registered term names."""
  return [k for k in aux if not k.endswith("_raw") and (k + "_raw" in aux or k in TERMS)]


register_term("huber", lambda x: huber_loss(x.pred, x.target, x.settings["huber_delta"],
                                            x.mask))
register_term("sam", lambda x: sam_loss(x.pred * x.std + x.mean, x.target_reflectance,
                                        x.mask))


def _lsmm_term(x: LossInputs) -> Array:
  if x.mixed is None:
    return jnp.zeros((), jnp.float32)
  return lsmm_loss(x.mixed, x.target_reflectance if x.lsmm_target is None else x.lsmm_target,
                   x.mask if x.lsmm_mask is None else x.lsmm_mask, scale=x.std_scale,
                   delta=x.settings["huber_delta"],
                   sam_weight=x.settings["lsmm_sam_weight"])


register_term("lsmm", _lsmm_term)


def _combine(inputs: LossInputs, weights: Mapping[str, Any]) -> tuple[Array, dict[str, Array]]:
  """`(total, aux)`: each term of `weights` (registry order), weighted and raw."""
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise ValueError(f"unknown loss terms {unknown}; registered: {list(TERMS)}.")
  aux = {}
  for name, fn in TERMS.items():
    if name in weights:
      value = fn(inputs)
      aux[name] = _weighted_term(weights[name], lambda value=value: value)
      aux[name + "_raw"] = value
  total = functools.reduce(lambda a, b: a + b, [aux[k] for k in term_names(aux)])
  aux["total"] = total
  return total, aux


def _inputs(pred, target, mask, *, mean, std, mixed=None, lsmm_target=None, lsmm_mask=None,
            outputs=None, **settings) -> LossInputs:
  p, t, _ = _prepare(pred, target, mask)  # NaN-free from here on, whatever the mask drops.
  return LossInputs(
      pred=p, target=t, mask=mask, mean=0.0 if mean is None else _as_float(mean),
      std=1.0 if std is None else _as_float(std), std_scale=std, mixed=mixed,
      lsmm_target=lsmm_target, lsmm_mask=lsmm_mask, outputs=outputs or {},
      settings=settings)


def objective(outputs: Mapping[str, Any], token_mask, weights: Mapping[str, Any], *, mean,
              std, huber_delta=1.0, lsmm_sam_weight=1.0, lsmm_on_visible=True,
              **settings) -> tuple[Array, dict[str, Array]]:
  """The training objective of one batch of `model.forward` results: `(total, aux)`.

  Args:
    outputs: `model.forward`'s dict: `pred`, `target` `(N, L, P, B)` standardised;
      `refl` `(N, L, P, B)` reflectance; `pixel_valid` `(N, L, P)`; with LSMM also
      `mixed` (`(N, L, P, B)` per pixel or `(N, L, B)` per token), `abundances`,
      `endmembers`.
    token_mask: `(N, L)`, 1 for masked tokens (the MAE targets).
    weights: `{term: weight}` (see `term_weights(config.loss)`); only these terms are
      computed. A Python 0 keeps its term out of `total` and its gradient.
    mean, std: `(B,)` band statistics of the standardisation.
    huber_delta, lsmm_sam_weight: as in `karma_loss`.
    lsmm_on_visible: the LSMM term covers visible tokens too, not only masked ones.
    **settings: extra static settings for registered terms (`LossInputs.settings`).

  The pixel terms cover masked, valid pixels. LSMM: per-pixel `mixed` explains each
  valid pixel's reflectance; per-token `mixed` the patch's mean valid spectrum.

  Returns:
    `(total, aux)`: `aux[name]` weighted and `aux[name + '_raw']` unweighted per term,
    and `aux['total']`; float32 scalars.
  """
  pixel_valid = outputs["pixel_valid"]
  pixel_mask = token_mask[..., None] * pixel_valid  # Masked, valid pixels.
  mixed = outputs.get("mixed")
  lsmm_target = lsmm_mask = None
  if mixed is not None:
    lsmm_tokens = jnp.ones_like(token_mask) if lsmm_on_visible else token_mask
    if mixed.ndim == 4:  # Per-pixel abundances: A.a explains each pixel.
      lsmm_target, lsmm_mask = outputs["refl"], lsmm_tokens[..., None] * pixel_valid
    else:  # Per token: A.a explains the patch's mean valid spectrum.
      count = pixel_valid.sum(-1)
      lsmm_target = (outputs["refl"] * pixel_valid[..., None]).sum(-2) / jnp.maximum(
          count, 1.0)[..., None]
      lsmm_mask = lsmm_tokens * (count > 0)
  inputs = _inputs(outputs["pred"], outputs["target"], pixel_mask, mean=mean, std=std,
                   mixed=mixed, lsmm_target=lsmm_target, lsmm_mask=lsmm_mask,
                   outputs=outputs, huber_delta=huber_delta,
                   lsmm_sam_weight=lsmm_sam_weight, **settings)
  return _combine(inputs, weights)


def karma_loss(pred, target, mask=None, *, mixed=None, mean=None, std=None,
               weights: Sequence = (1.0, 1.0, 1.0), huber_delta=1.0, lsmm_sam_weight=1.0,
               lsmm_target=None, lsmm_mask=None) -> tuple[Array, dict[str, Array]]:
  """KARMA objective `lambda1 huber + lambda2 sam + lambda3 lsmm` and its logged terms.

  Args:
    pred, target: the pixel decoder's prediction and the true pixels, `(..., B)`, in the
      model's standardised space `(x - mean) / std` per band.
    mask: `pred.shape[:-1]` selection/weights, typically the masked patches' valid pixels.
    mixed: LSMM reconstruction `lsmm_mix(abundances, endmembers)` in reflectance units, or
      None (then the lsmm term is 0).
    mean, std: per-band `(B,)` statistics mapping standardised values back to reflectance
      (None -> 0 and 1).
    weights: `(lambda1, lambda2, lambda3)`. A Python 0 skips its term in `total` (a NaN
      in that term cannot leak into the value or the gradient); the raw term is still
      computed for the logs.
    huber_delta: Huber threshold for the pixel term and the LSMM amplitude term.
    lsmm_sam_weight: weight of the SAM part inside `lsmm_loss`.
    lsmm_target, lsmm_mask: optional reflectance target and mask for the lsmm term when it
      is not the masked pixels themselves (e.g. per-token mean spectra `(N, L, B)` with a
      `(N, L)` mask, or all valid pixels); default `target * std + mean` and `mask`.

  Terms: `huber` on standardised values (numerical accuracy); `sam` on reflectance
  `pred * std + mean` vs `target * std + mean` (angles are physical there); `lsmm` =
  `lsmm_loss(mixed, lsmm_target, lsmm_mask, scale=std, ...)`. The same registered terms
  as `objective`, which also builds the masks from `model.forward`'s results.

  Returns:
    `(total, aux)`: `aux` holds the weighted `'huber'`, `'sam'`, `'lsmm'`, the unweighted
    `'huber_raw'`, `'sam_raw'`, `'lsmm_raw'`, and `'total'`, all float32 scalars.
  """
  if len(weights) != 3:
    raise ValueError(f"weights must be (huber, sam, lsmm), got {weights!r}.")
  inputs = _inputs(pred, target, mask, mean=mean, std=std, mixed=mixed,
                   lsmm_target=lsmm_target, lsmm_mask=lsmm_mask, huber_delta=huber_delta,
                   lsmm_sam_weight=lsmm_sam_weight)
  return _combine(inputs, dict(zip(("huber", "sam", "lsmm"), weights)))
