"""KARMA: a ViT masked autoencoder for hyperspectral cubes with an LSMM branch.

Shapes: N batch, H x W pixels, B bands, p patch size, L = (H/p)(W/p) tokens,
K visible tokens, D encoder width, E decoder width, M endmembers.

The model takes *standardised* cubes (per-band (x - mean) / std; see
`train.py`) and returns, per token:
  pred        (N, L, p*p*B)  pixel decoder output, standardised units; when
              some tokens are masked, only theirs (visible tokens hold 0);
  abundances  (N, L, p*p, M) per pixel (`abundance_head='pixel'`, or 'token'
              with `per_pixel_abundances`) or (N, L, M) per token;
              non-negative, sum to one (softmax);
  endmembers  (B, M)  learned, in [0, max_reflectance] (sigmoid of a raw
              parameter; softplus, unbounded above, with max_reflectance=0),
              reflectance units.
The physical reconstruction is `losses.lsmm_mix(abundances, endmembers)`,
a branch parallel to the pixel decoder, in reflectance units.

Abundance heads. 'token' (the paper's): an MLP on each decoder token (E ->
E/2 -> M, or M per pixel). 'pixel': each pixel's abundances come from its own
spectrum (standardised; for masked tokens the pixel decoder's prediction,
since the true spectrum is hidden) projected to E/2, plus the token's
projected decoder state (spatial context), then GELU and a dense layer to M.
A token summarises p*p pixels x B bands, so the token head cannot resolve
sub-patch mixtures; the pixel head can.

Tokenizers (`tokenizer`; kgmae_jax/tokenizers.py): the paper's linear patch
embedding, a per-pixel spectral adapter before it, or band-group tokens (one
per patch and group of adjacent bands). Masking always hides whole patches,
so everything after the encoder sees one token per patch; the encoder's
output per patch is `feature_width` wide (D, or G*D for band groups).

Position embeddings are fixed 2-D sin-cos, computed from the patch grid, so one
set of weights serves any tile size divisible by p. With `lsmm=False` and the
SAM/LSMM weights at 0 this is the plain ViT-MAE baseline.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kgmae_jax import losses
from kgmae_jax import patching
from kgmae_jax import tokenizers


# Name of the endmember parameter (top level of the params tree): the
# optimiser gives it its own learning rate, no weight decay, and freezes it
# with lsmm.learn = False (train.make_optimizer).
ENDMEMBERS_PARAM = "endmembers_raw"


def encoder_layer(path, depth):
  """Depth of a parameter in the encoder path, for layer-wise learning-rate
  decay: 0 the tokenizer (`embed`, `adapter`), i + 1 encoder block i, `depth`
  the encoder's final norm; None for a parameter `encode` does not use
  (decoder, heads, endmembers). `path`: key path from the params' top."""
  keys = [getattr(k, "key", None) for k in path]
  if keys[0] in ("embed", "adapter"):
    return 0
  if keys[0] != "encoder":
    return None
  if len(keys) > 1 and str(keys[1]).startswith("block"):
    return int(keys[1][len("block"):]) + 1
  return depth


def sincos_2d(grid_hw, dim):
  """Fixed 2-D sin-cos position embedding: (gh*gw, dim), float32 numpy."""
  if dim % 4:
    raise ValueError(f"Embedding width must be a multiple of 4, got {dim}.")
  gh, gw = grid_hw
  yy, xx = np.meshgrid(np.arange(gh, dtype=np.float64),
                       np.arange(gw, dtype=np.float64), indexing="ij")
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  out_y = yy.reshape(-1, 1) * omega[None]
  out_x = xx.reshape(-1, 1) * omega[None]
  emb = np.concatenate(
      [np.sin(out_x), np.cos(out_x), np.sin(out_y), np.cos(out_y)], axis=1)
  return emb.astype(np.float32)


class Attention(nn.Module):
  """Multi-head self-attention through `jax.nn.dot_product_attention`."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  implementation: Optional[str] = None  # None (XLA), 'xla' or 'cudnn'.

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"Width {d} is not divisible by {self.num_heads} heads.")
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype)
    qkv = dense((3, self.num_heads, d // self.num_heads), name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    y = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    return dense(d, axis=(-2, -1), name="out")(y)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  attention: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    x = x + Attention(self.num_heads, self.dtype, self.attention, name="attn")(y)
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    y = nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp1")(y)
    y = nn.Dense(d, dtype=self.dtype, name="mlp2")(nn.gelu(y))
    return x + y


class Stack(nn.Module):
  """`depth` blocks then a final LayerNorm; optional rematerialisation."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  attention: Optional[str] = None
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.dtype, self.attention,
                name=f"block{i}")(x)
    return nn.LayerNorm(dtype=self.dtype, name="ln")(x)


class KarmaMAE(nn.Module):
  """ViT-MAE encoder/decoder with a pixel head and an optional LSMM head."""
  num_bands: int
  patch_size: int = 16
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  dec_width: int = 512
  dec_depth: int = 8
  dec_num_heads: int = 8
  mlp_ratio: float = 4.0
  lsmm: bool = True
  num_endmembers: int = 8
  per_pixel_abundances: bool = False
  abundance_head: str = "token"  # 'token' (paper) or 'pixel' (module doc).
  max_reflectance: float = 1.0  # Endmember bound; 0: softplus, no bound.
  endmember_init: Optional[Callable] = None  # (key, (B, M)) -> reflectance.
  pred_masked_only: bool = True  # `pred` computed for masked tokens only.
  tokenizer: str = "linear"  # linear (paper), adapter, band_groups (tokenizers.py).
  adapter_channels: tuple = (32, 64, 128)  # tokenizer 'adapter': conv channels.
  adapter_dim: int = 32  # tokenizer 'adapter': features per pixel.
  band_groups: int = 8  # tokenizer 'band_groups': G groups of adjacent bands.
  batch_sharding: Optional[Any] = None  # Sharding of per-sample arrays (train).
  dtype: jnp.dtype = jnp.float32
  attention: Optional[str] = None
  remat: bool = False

  def setup(self):
    p, b = self.patch_size, self.num_bands
    if self.tokenizer not in tokenizers.TOKENIZERS:
      raise ValueError(f"tokenizer must be one of {tokenizers.TOKENIZERS}, got "
                       f"{self.tokenizer!r}.")
    if self.tokenizer == "adapter":
      self.adapter = tokenizers.SpectralAdapter(
          tuple(self.adapter_channels), self.adapter_dim, self.dtype,
          name="adapter")
    self.embed = nn.Dense(self.width, dtype=self.dtype, name="embed")
    self.encoder = Stack(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                         self.attention, self.remat, name="encoder")
    self.dec_embed = nn.Dense(self.dec_width, dtype=self.dtype, name="dec_embed")
    self.mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                                 (self.dec_width,))
    self.decoder = Stack(self.dec_depth, self.dec_num_heads, self.mlp_ratio,
                         self.dtype, self.attention, self.remat, name="decoder")
    self.pixel_head = nn.Dense(p * p * b, dtype=self.dtype, name="pixel_head")
    if self.lsmm:
      m = self.num_endmembers
      if self.abundance_head not in ("token", "pixel"):
        raise ValueError(f"abundance_head must be 'token' or 'pixel', got "
                         f"{self.abundance_head!r}.")
      pixel = self.abundance_head == "pixel"
      out = m * p * p if (self.per_pixel_abundances and not pixel) else m
      self.lsmm_hidden = nn.Dense(self.dec_width // 2, dtype=self.dtype,
                                  name="lsmm_hidden")
      if pixel:
        self.lsmm_spectrum = nn.Dense(self.dec_width // 2, dtype=self.dtype,
                                      name="lsmm_spectrum")
      self.lsmm_out = nn.Dense(out, dtype=self.dtype, name="lsmm_out")
      # Raw parameter; endmembers() maps it to reflectance. The init
      # (reflectance spectra (B, M)): `endmember_init`, from lsmm.init via
      # `build`; smooth random spectra when None.
      init = self.endmember_init or smooth_random_init()
      self.endmembers_raw = self.param(
          ENDMEMBERS_PARAM,
          lambda key, shape: self._to_raw(init(key, shape)), (b, m))

  def encode(self, x, ids_keep=None):
    """Standardised cube (N, H, W, B) -> visible-token embeddings (N, K, F),
    F = `feature_width`.

    ids_keep (N, K) selects visible tokens; None keeps all (no masking).
    """
    self._check_bands(x)
    _, h, w, _ = x.shape
    p = self.patch_size
    patches = patching.patchify(x, p)
    grid = self.token_grid(h, w)
    pos = self._pos(grid, patches.shape[0])
    if ids_keep is not None:  # Gather first: only visible patches are embedded.
      patches = patching.gather_tokens(patches, ids_keep)
      pos = patching.gather_tokens(pos, ids_keep)
    return self._encode_tokens(patches, pos)

  def _check_bands(self, x):
    if x.shape[-1] != self.num_bands:
      raise ValueError(f"Cube has {x.shape[-1]} bands but the model was built "
                       f"for {self.num_bands} (model.num_bands).")

  def _pos(self, grid, n):
    return jnp.broadcast_to(sincos_2d(grid, self.width),
                            (n, grid[0] * grid[1], self.width))

  def _encode_tokens(self, patches, pos):
    """Visible patches (N, K, p*p*B) and their positions (N, K, D) ->
    embeddings (N, K, F), F = `feature_width` (D, or G*D for band groups)."""
    x, pos = patches.astype(self.dtype), pos.astype(self.dtype)
    n, k, _ = x.shape
    if self.tokenizer == "linear":
      return self.encoder(self.embed(x) + pos)
    if self.tokenizer == "adapter":
      pixels = x.reshape(n, k, -1, self.num_bands)
      return self.encoder(self.embed(self.adapter(pixels).reshape(n, k, -1)) + pos)
    g = self.band_groups  # One token per (patch, band group).
    spectral = tokenizers.sincos_1d(g, self.width).astype(self.dtype)
    tokens = (self.embed(tokenizers.to_band_groups(x, self.num_bands, g))
              + pos[:, :, None] + spectral)
    return self.encoder(tokens.reshape(n, k * g, self.width)).reshape(n, k, -1)

  @property
  def feature_width(self):
    """Encoder output width per patch (embeddings, probes)."""
    return tokenizers.feature_width(self.tokenizer, self.width, self.band_groups)

  def token_grid(self, height, width):
    """(gh, gw) patches of an H x W cube (H, W multiples of the patch size)."""
    return token_grid(height, width, self.patch_size)

  def decode(self, latent, ids_restore):
    """Visible latents (N, K, D) -> decoder tokens (N, L, E) in image order."""
    n, k, _ = latent.shape
    num_tokens = ids_restore.shape[1]
    x = self.dec_embed(latent)
    mask_tokens = jnp.broadcast_to(self.mask_token.astype(x.dtype),
                                   (n, num_tokens - k, self.dec_width))
    x = jnp.concatenate([x, mask_tokens], axis=1)
    return patching.gather_tokens(x, ids_restore)

  def __call__(self, x, ids_keep, ids_restore):
    """Standardised cube (N, H, W, B) + masking indices -> output dict in
    image order (evaluation, inference; training calls `shuffled`)."""
    n, h, w, _ = x.shape
    p = self.patch_size
    self._check_bands(x)
    grid = self.token_grid(h, w)
    k, num_tokens = ids_keep.shape[1], grid[0] * grid[1]
    ids_shuffle = jnp.argsort(ids_restore, axis=1)  # [:, :k] == ids_keep.
    patches = patching.gather_tokens(patching.patchify(x, p), ids_shuffle)
    out = self.shuffled(patches, ids_shuffle, ids_restore, k, grid)
    pred = out["pred"].astype(jnp.float32)
    if pred.shape[1] < num_tokens:  # Masked tokens only; visible ones get 0.
      back = jnp.clip(ids_restore - k, 0, num_tokens - k - 1)
      pred = jnp.where((ids_restore >= k)[..., None],
                       patching.gather_tokens(pred, back), 0.0)
    else:
      pred = patching.gather_tokens(pred, ids_restore)
    out["pred"] = pred
    if self.lsmm:
      out["abundances"] = patching.gather_tokens(out["abundances"], ids_restore)
    return out

  def shuffled(self, patches, ids_shuffle, ids_restore, k, grid):
    """The model on patches in shuffled order: the training path.

    patches: (N, L, p*p*B) standardised, in the order `ids_shuffle` (N, L):
    the K = `k` visible tokens first, then the masked ones (as
    `patching.random_shuffle`); ids_restore is its inverse; grid (gh, gw).
    Returns, in the same shuffled order: `pred` (N, L - K, p*p*B) for the
    masked tokens only when `pred_masked_only` and K < L (else all L), in
    the compute dtype; with LSMM `abundances` (N, L, [p*p,] M) and
    `endmembers`.
    """
    n, num_tokens = ids_shuffle.shape
    p = self.patch_size
    pos = patching.gather_tokens(self._pos(grid, n), ids_shuffle[:, :k])
    y = self.decode(self._encode_tokens(patches[:, :k], pos), ids_restore)
    y = y + sincos_2d(grid, self.dec_width).astype(y.dtype)
    y = patching.gather_tokens(self.decoder(y), ids_shuffle)  # Shuffled order.
    # Only masked tokens' pixels are ever scored: the pixel head (the largest
    # matmul) runs on those alone. Gathers only (per-sample, along tokens): no
    # scatter, so a batch sharded over devices is never gathered onto one.
    first = k if (self.pred_masked_only and k < num_tokens) else 0
    pred = self._per_sample(self.pixel_head(y[:, first:]))
    out = {"pred": pred}
    if self.lsmm:
      if self.abundance_head == "pixel":
        # Each pixel's spectrum: observed where its token is visible, the
        # pixel decoder's prediction where it is masked. Projected part by
        # part and joined after the projection (E/2 wide, not B).
        pixels = lambda x: x.astype(self.dtype).reshape(n, x.shape[1], p * p,
                                                        self.num_bands)
        h = jnp.concatenate([self.lsmm_spectrum(pixels(patches[:, :k])),
                             self.lsmm_spectrum(pixels(pred[:, k - first:]))], axis=1)
        h = h + self.lsmm_hidden(y)[:, :, None, :]
        logits = self.lsmm_out(nn.gelu(h)).astype(jnp.float32)
      else:
        logits = self.lsmm_out(nn.gelu(self.lsmm_hidden(y))).astype(jnp.float32)
        if self.per_pixel_abundances:
          logits = logits.reshape(n, num_tokens, p * p, self.num_endmembers)
      out["abundances"] = jax.nn.softmax(logits, axis=-1)
      out["endmembers"] = self.endmembers()
    return out

  def _per_sample(self, x):
    """`x` kept sharded over the batch (under FSDP, XLA would otherwise gather
    the batch of a head output whose kernel is sharded over features)."""
    if self.batch_sharding is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.batch_sharding)

  def _to_raw(self, reflectance):
    """Inverse of `endmembers()`'s map, for an init in reflectance units."""
    if self.max_reflectance > 0:
      r = jnp.clip(jnp.asarray(reflectance, jnp.float32) / self.max_reflectance,
                   1e-3, 1 - 1e-3)
      return jnp.log(r) - jnp.log1p(-r)
    return softplus_inverse(reflectance)

  def endmembers(self):
    """Endmember matrix (B, M), reflectance units, in [0, max_reflectance]."""
    raw = self.endmembers_raw.astype(jnp.float32)
    if self.max_reflectance > 0:
      return self.max_reflectance * jax.nn.sigmoid(raw)
    return jax.nn.softplus(raw)


def token_grid(height, width, patch_size):
  """(gh, gw) patches of an H x W cube; raises unless the patch divides both."""
  if height % patch_size or width % patch_size:
    raise ValueError(f"Cube of {height}x{width} pixels is not divisible by "
                     f"patch_size={patch_size}.")
  return height // patch_size, width // patch_size


def per_pixel(tokens, patch_size):
  """Per-token values (N, L, C), e.g. a token head's abundances, repeated for
  each of the patch's pixels: (N, L, p*p, C); per-pixel input unchanged."""
  if tokens.ndim == 3:
    return jnp.repeat(tokens[:, :, None], patch_size * patch_size, axis=2)
  return tokens


def standardise(cube, valid, mean, std):
  """Reflectance (N, H, W, B) -> (x - mean) / std, 0 at invalid pixels."""
  x = (cube - mean) / std
  return jnp.where(valid[..., None], x, 0.0)


def forward(model, params, cube, valid, ids_keep, ids_restore, mean, std):
  """Model outputs plus per-pixel targets and masks, all in token layout.

  Returns a dict with `pred`, `target` (N, L, p*p, B) standardised; `refl`
  (N, L, p*p, B) reflectance; `pixel_valid` (N, L, p*p); and, with the LSMM
  branch, `abundances`, `endmembers` and `mixed` (A.a, reflectance) per pixel
  (N, L, p*p, .) or per token (N, L, .).
  """
  n, h, w, b = cube.shape
  p = model.patch_size
  gh, gw = token_grid(h, w, p)
  num_tokens = gh * gw
  x = standardise(cube, valid, mean, std)
  out = model.apply({"params": params}, x, ids_keep, ids_restore)
  res = {
      "pred": out["pred"].reshape(n, num_tokens, p * p, b),
      "target": patching.patchify(x, p).reshape(n, num_tokens, p * p, b),
      "refl": patching.patchify(jnp.where(valid[..., None], cube, 0.0), p
                                ).reshape(n, num_tokens, p * p, b),
      "pixel_valid": patching.pixels_per_token(valid, p).astype(jnp.float32),
  }
  if model.lsmm:
    res["abundances"] = out["abundances"]
    res["endmembers"] = out["endmembers"]
    res["mixed"] = losses.lsmm_mix(out["abundances"], out["endmembers"])
  return res


def train_forward(model, params, cube, valid, ids_shuffle, ids_restore, k, mean,
                  std):
  """The training path: model outputs and targets in shuffled token order.

  The cube is patchified and shuffled once, in float32 (the targets), and
  standardised into the compute dtype for the model (the model casts its input
  to that dtype first, so bf16 here changes no value). Returns `pred`
  (N, L - K, p*p, B) compute dtype (masked tokens), `target` (N, L - K, p*p, B)
  reflectance (NaN possible where invalid), `mask` (N, L - K, p*p) their valid
  pixels; `refl` (N, L, p*p, B), `valid` (N, L, p*p) for every token; with the
  LSMM branch `abundances`, `endmembers`.
  """
  n, h, w, b = cube.shape
  p = model.patch_size
  grid = token_grid(h, w, p)
  num_tokens = grid[0] * grid[1]
  refl = patching.gather_tokens(patching.patchify(cube, p), ids_shuffle)
  ok = patching.gather_tokens(patching.pixels_per_token(valid, p), ids_shuffle)
  refl = refl.reshape(n, num_tokens, p * p, b)
  x = jnp.where(ok[..., None], (refl - mean) / std, 0.0).astype(model.dtype)
  out = model.apply({"params": params}, x.reshape(n, num_tokens, p * p * b),
                    ids_shuffle, ids_restore, k, grid, method=KarmaMAE.shuffled)
  first = num_tokens - out["pred"].shape[1]  # k, or 0 without pred_masked_only.
  scored = (jnp.arange(first, num_tokens) >= k)[None, :, None]  # Masked tokens.
  res = {"pred": out["pred"].reshape(n, -1, p * p, b), "target": refl[:, first:],
         "mask": (ok[:, first:] & scored).astype(jnp.float32), "refl": refl,
         "valid": ok.astype(jnp.float32)}
  if model.lsmm:
    res["abundances"] = out["abundances"]
    res["endmembers"] = out["endmembers"]
  return res


def smooth_random_init(lo=0.05, hi=0.6, knots=8):
  """Initializer (key, (B, M)) -> random spectra smooth across bands: values
  U(lo, hi) at `knots` evenly spaced bands, linearly interpolated. (The
  paper's init is unpublished; per-band white noise would stay noise, since
  every band of an endmember gets nearly the same gradient.)"""
  def init(key, shape):
    b, m = shape
    k = max(2, min(knots, b))
    values = jax.random.uniform(key, (k, m), jnp.float32, lo, hi)
    at = jnp.linspace(0.0, b - 1.0, k)
    grid = jnp.arange(b, dtype=jnp.float32)
    return jax.vmap(lambda v: jnp.interp(grid, at, v), in_axes=1, out_axes=1)(
        values)
  return init


def constant_init(endmembers):
  """Initializer returning the given (B, M) reflectance spectra (library or
  data-derived endmembers; see `train.initial_endmembers`)."""
  e = np.asarray(endmembers, np.float32)

  def init(key, shape):
    del key
    if e.shape != tuple(shape):
      raise ValueError(f"Endmember init has shape {e.shape}, the model needs "
                       f"{tuple(shape)} (bands, M).")
    return jnp.asarray(e)
  return init


def softplus_inverse(y):
  """x with softplus(x) = y, for y > 0 (used to set endmembers from spectra)."""
  y = jnp.maximum(jnp.asarray(y, jnp.float32), 1e-6)
  return y + jnp.log(-jnp.expm1(-y))


def compute_settings(model_cfg, platform=None):
  """(dtype name, attention implementation or None for XLA) of `model_cfg`
  on `platform` (default: jax's backend). dtype 'auto': bfloat16 on a GPU or
  TPU, float32 on a CPU. attention 'auto': cuDNN flash attention on a GPU in
  bfloat16 when every head's width suits it (a multiple of 8, at most 128),
  XLA's elsewhere."""
  platform = platform or jax.default_backend()
  dtype = model_cfg.dtype
  if dtype == "auto":
    dtype = "float32" if platform == "cpu" else "bfloat16"
  attention = model_cfg.attention
  if attention == "auto":
    heads = [(model_cfg.width, model_cfg.num_heads),
             (model_cfg.dec_width, model_cfg.dec_num_heads)]
    fits = all((w // h) % 8 == 0 and w // h <= 128 for w, h in heads)
    attention = "cudnn" if (platform == "gpu" and dtype == "bfloat16" and fits) else "xla"
  if attention == "cudnn" and dtype != "bfloat16":
    raise ValueError(f"config.model.attention: cudnn needs bfloat16; model.dtype="
                     f"{model_cfg.dtype!r} is {dtype} on {platform}.")
  return dtype, (None if attention == "xla" else attention)


def build(model_cfg, lsmm_cfg, num_bands, endmembers=None, platform=None):
  """KarmaMAE from the `model` and `lsmm` config groups and the data's bands.

  endmembers: optional (B, M) reflectance spectra to initialise A with
  (lsmm.init library / data / kmeans / vca); None: smooth random spectra.
  """
  dtype, attention = compute_settings(model_cfg, platform)
  return KarmaMAE(
      num_bands=num_bands,
      patch_size=model_cfg.patch_size,
      width=model_cfg.width,
      depth=model_cfg.depth,
      num_heads=model_cfg.num_heads,
      dec_width=model_cfg.dec_width,
      dec_depth=model_cfg.dec_depth,
      dec_num_heads=model_cfg.dec_num_heads,
      mlp_ratio=model_cfg.mlp_ratio,
      lsmm=lsmm_cfg.enabled,
      num_endmembers=lsmm_cfg.num_endmembers,
      per_pixel_abundances=lsmm_cfg.per_pixel,
      abundance_head=lsmm_cfg.head,
      max_reflectance=lsmm_cfg.max_reflectance,
      endmember_init=None if endmembers is None else constant_init(endmembers),
      dtype=jnp.dtype(dtype),
      attention=attention,
      remat=model_cfg.remat,
      tokenizer=model_cfg.tokenizer,
      adapter_channels=tuple(model_cfg.adapter_channels),
      adapter_dim=model_cfg.adapter_dim,
      band_groups=model_cfg.band_groups,
  )


def encode(params, cube, *, model):
  """Token embeddings (N, L, D) of a standardised cube, no masking."""
  return model.apply({"params": params}, cube, method=KarmaMAE.encode)
