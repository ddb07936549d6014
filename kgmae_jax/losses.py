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
* `fused_objective(pred, target, mask, weights, ...)` -> `(total, aux)`: the same terms
  as `objective` for the train step (`model.train_forward`'s masked-only layout), each
  read of prediction and target shared: one neutralisation, and Huber, SAM and the LSMM
  term from per-spectrum sums (p.t, |p|^2, |t|^2) of one elementwise pass, the
  prediction in its own dtype (bf16) accumulated in float32; a Python-0 weight computes
  nothing (its `_raw` is not logged).
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


# ------------------------------------------------------------- the fused train path
_BUILTIN = ("huber", "sam", "lsmm")


def _safe_sqrt(x: Array) -> Array:
  """sqrt(max(x, 0)) with a zero (not inf/NaN) gradient at x <= 0."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def angle_from_sums(pt, pp, tt, eps: float = 1e-8) -> Array:
  """Spectral angle (radians) from the per-spectrum sums p.t, |p|^2 and |t|^2.

  `2 atan2(sqrt(1 - c), sqrt(1 + c))` with c = p.t / (|p| |t|): one reduction pass
  instead of `spectral_angle`'s four; float32 resolves angles down to ~5e-4 rad (use
  `spectral_angle` to score tiny angles). Zero spectra: pi/2 with a zero gradient.
  """
  degenerate = (pp <= eps * eps) | (tt <= eps * eps)
  pp = jnp.where(degenerate, 1.0, pp)
  tt = jnp.where(degenerate, 1.0, tt)
  cos = jnp.clip(jnp.where(degenerate, 0.0, pt) * jax.lax.rsqrt(pp) * jax.lax.rsqrt(tt),
                 -1.0, 1.0)
  angle = 2.0 * jnp.arctan2(_safe_sqrt(1.0 - cos), _safe_sqrt(1.0 + cos))
  return jnp.where(degenerate, 0.5 * math.pi, angle)


def _huber(x, delta):
  quadratic = jnp.minimum(jnp.abs(x), delta)
  return 0.5 * quadratic * quadratic + delta * (jnp.abs(x) - quadratic)


def _mean_over(values, w):
  total = jnp.sum(w)
  return jnp.sum(w * values) / jnp.where(total > 0, total, 1.0)


def _is_zero(weight) -> bool:
  return isinstance(weight, numbers.Real) and weight == 0


def _mix_unrolled(abundances, endmembers):
  """`lsmm_mix` as M multiply-adds (M is a handful), so that XLA fuses the mixing
  into the loss's elementwise pass instead of writing `A a` out as a matmul result."""
  mixed = abundances[..., 0:1] * endmembers[:, 0]
  for m in range(1, endmembers.shape[1]):
    mixed = mixed + abundances[..., m:m + 1] * endmembers[:, m]
  return mixed


def _sum_last(*xs):
  """Sums of each `xs[i]` over the last axis in one variadic reduction (one pass)."""
  zero = jnp.zeros((), jnp.float32)
  return jax.lax.reduce(xs, (zero,) * len(xs),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)),
                        (xs[0].ndim - 1,))


def _huber_grad(x, delta):
  return jnp.clip(x, -delta, delta)


# Per-spectrum sums of a spectrum U against reflectance t, in one pass each way:
#   h = sum_b huber((U_b - t_b) / std_b), pt = sum U t, pp = sum U^2, tt = sum t^2,
# for spectra where `sel`; U and t are replaced by 1 elsewhere (nothing non-finite
# is read). `t` is data: no gradient flows to it, `std` or `sel`.
def _pair(u, t, sel, inv_std):
  return jnp.where(sel, u, 1.0), jnp.where(sel, t.astype(jnp.float32), 1.0), inv_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _pred_sums(pred, t, sel, scale, offset, delta):
  """U = pred * scale + offset (pred standardised, any float dtype)."""
  u, t, inv = _pair(pred.astype(jnp.float32) * scale + offset, t, sel, 1.0 / scale)
  r = (u - t) * inv
  return _sum_last(_huber(r, delta), u * t, u * u, t * t)


def _pred_sums_fwd(pred, t, sel, scale, offset, delta):
  return _pred_sums(pred, t, sel, scale, offset, delta), (pred, t, sel, scale, offset)


def _pred_sums_bwd(delta, res, cts):
  pred, t_raw, sel, scale, offset = res
  ch, cpt, cpp, _ = (c[..., None] for c in cts)
  u, t, inv = _pair(pred.astype(jnp.float32) * scale + offset, t_raw, sel, 1.0 / scale)
  du = ch * _huber_grad((u - t) * inv, delta) * inv + cpt * t + 2.0 * cpp * u
  dpred = jnp.where(sel, du * scale, 0.0).astype(pred.dtype)
  return (dpred, None, None, jnp.zeros_like(scale), jnp.zeros_like(offset))


_pred_sums.defvjp(_pred_sums_fwd, _pred_sums_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _mixed_sums(abundances, endmembers, t, sel, inv_std, delta):
  """U = A a formed inside the pass (never written out); (..., M), (B, M)."""
  u, t, inv = _pair(_mix_unrolled(abundances, endmembers), t, sel, inv_std)
  return _sum_last(_huber((u - t) * inv, delta), u * t, u * u, t * t)


def _mixed_sums_fwd(abundances, endmembers, t, sel, inv_std, delta):
  out = _mixed_sums(abundances, endmembers, t, sel, inv_std, delta)
  return out, (abundances, endmembers, t, sel, inv_std)


def _mixed_sums_bwd(delta, res, cts):
  abundances, endmembers, t_raw, sel, inv_std = res
  ch, cpt, cpp, _ = (c[..., None] for c in cts)
  u, t, inv = _pair(_mix_unrolled(abundances, endmembers), t_raw, sel, inv_std)
  g = jnp.where(sel, ch * _huber_grad((u - t) * inv, delta) * inv + cpt * t
                + 2.0 * cpp * u, 0.0)
  hi = jax.lax.Precision.HIGHEST
  da = jnp.einsum("...b,bm->...m", g, endmembers, precision=hi)
  # (M, B) then transposed: g stays the plain right operand of the GEMM (as
  # "...b->bm", XLA transposed all of g first, the slowest op of the CPU step).
  de = jnp.einsum("...m,...b->mb", abundances, g, precision=hi).T
  return (da, de, None, None, jnp.zeros_like(inv_std))


_mixed_sums.defvjp(_mixed_sums_fwd, _mixed_sums_bwd)


def fused_objective(pred, target, mask, weights: Mapping[str, Any], *, mean, std,
                    huber_delta=1.0, lsmm_sam_weight=1.0, abundances=None,
                    endmembers=None, lsmm_target=None, lsmm_mask=None, outputs=None,
                    **settings) -> tuple[Array, dict[str, Array]]:
  """`objective`'s terms in one pass over prediction and target (the train step's path).

  Args:
    pred: `(..., B)` predicted standardised spectra of the scored (masked) pixels, any
      float dtype (bf16 stays bf16 in memory; arithmetic is float32).
    target: `(..., B)` true *reflectance* of those pixels (NaN allowed where `mask` is 0).
    mask: `pred.shape[:-1]` weights of the pixel terms (masked, valid pixels).
    weights: `{term: weight}`; a Python 0 computes nothing for its term.
    mean, std: `(B,)` band statistics (standardised = (reflectance - mean) / std).
    abundances, endmembers: the LSMM branch, `(..., M)` and `(B, M)`, or None;
      `A a` is never written out: it is formed inside the loss's elementwise pass.
    lsmm_target, lsmm_mask: reflectance `abundances.shape[:-1] + (B,)` that `A a` must
      explain, and its weights.
    outputs: extra model outputs for registered terms other than huber/sam/lsmm (they
      get a `LossInputs` with standardised `pred`/`target`).

  Returns `(total, aux)` as `objective`, except that a term with a Python-0 weight is
  logged as 0 without its `_raw` value (it is not computed). Values and gradients equal
  `objective`'s within float32 rounding; SAM goes through `angle_from_sums`.
  """
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise ValueError(f"unknown loss terms {unknown}; registered: {list(TERMS)}.")
  mean = jnp.asarray(0.0 if mean is None else mean, jnp.float32)
  std = jnp.asarray(1.0 if std is None else std, jnp.float32)
  w = checked_mask(mask, pred.shape).astype(jnp.float32)
  sel = (w > 0)[..., None]
  wants = {name: name in weights and not _is_zero(weights[name]) for name in _BUILTIN}
  raw = {}
  if wants["huber"] or wants["sam"]:
    # One pass: Huber on standardised values = Huber((U - t) / std) with U the
    # prediction in reflectance; SAM from the sums.
    h, pt, pp, tt = _pred_sums(pred, target, sel, std, mean, huber_delta)
    if wants["huber"]:
      raw["huber"] = _mean_over(h, w) / pred.shape[-1]
    if wants["sam"]:
      raw["sam"] = _mean_over(angle_from_sums(pt, pp, tt), w)
  if wants["lsmm"]:
    raw["lsmm"] = (jnp.zeros((), jnp.float32) if abundances is None else _fused_lsmm(
        abundances, endmembers, lsmm_target, lsmm_mask, std, huber_delta,
        lsmm_sam_weight))
  others = [n for n in weights if n not in _BUILTIN and not _is_zero(weights[n])]
  if others:
    p, t, _ = _prepare(pred, (target - mean) / std, w)
    inputs = LossInputs(
        pred=p, target=t, mask=w, mean=mean, std=std,
        std_scale=std, mixed=None if abundances is None else lsmm_mix(abundances,
                                                                     endmembers),
        lsmm_target=lsmm_target, lsmm_mask=lsmm_mask,
        outputs=dict(outputs or {}, pred=pred), settings=dict(
            settings, huber_delta=huber_delta, lsmm_sam_weight=lsmm_sam_weight))
    raw.update({n: TERMS[n](inputs) for n in others})
  aux = {}
  for name in TERMS:
    if name not in weights:
      continue
    if name in raw:
      aux[name] = _weighted_term(weights[name], lambda v=raw[name]: v)
      aux[name + "_raw"] = raw[name]
    else:
      aux[name] = jnp.zeros((), jnp.float32)
  total = functools.reduce(lambda a, b: a + b, [aux[k] for k in TERMS if k in weights])
  aux["total"] = total
  return total, aux


def _fused_lsmm(abundances, endmembers, target, mask, std, delta, sam_weight):
  """`lsmm_loss(lsmm_mix(abundances, endmembers), target, mask, scale=std, ...)` with
  `A a` formed inside one elementwise pass over the target (`_mixed_sums`)."""
  w = checked_mask(mask, target.shape).astype(jnp.float32)
  h, pt, pp, tt = _mixed_sums(abundances.astype(jnp.float32),
                              endmembers.astype(jnp.float32), target, (w > 0)[..., None],
                              1.0 / std, delta)
  value = _mean_over(h, w) / target.shape[-1]
  if not _is_zero(sam_weight):
    value = value + _weighted_term(
        sam_weight, lambda: _mean_over(angle_from_sums(pt, pp, tt), w))
  return value
