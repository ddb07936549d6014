"""Tokenizers: how a patch of p x p pixels x B bands becomes encoder tokens.

`model.tokenizer` (config field) picks one; `model.KarmaMAE` owns the
parameters, this module the layers and the token geometry:

  linear       the paper's: one token per patch, Dense(p*p*B -> D). It must
               squeeze p*p*B values (3,488 at the quickstart's 4x4x218) into
               D numbers in one linear map.
  adapter      a spectral adapter (SpectralEarth, Braham et al. 2024): each
               pixel's spectrum through 1-D convolutions along the bands
               (kernel 7 stride 5, 7/5, 5/3; GELU after each), flattened and
               projected to `adapter_dim` features per pixel; then
               Dense(p*p*adapter_dim -> D) per patch.
  band_groups  one token per patch and group of adjacent bands (SpectralGPT-
               like 3-D tokens): G groups of g = ceil(B/G) bands (the last
               zero-padded), Dense(p*p*g -> D) shared by the groups, plus a
               fixed 1-D sin-cos spectral position; the encoder attends over
               K*G tokens and its output is regrouped per patch, (K, G*D).

Masking hides whole patches (every band group of a patch at once), so the
decoder, the pixel head and the LSMM branch see one token per patch whatever
the tokenizer; only the encoder's sequence and its feature width change
(`feature_width`).
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

TOKENIZERS = ("linear", "adapter", "band_groups")
# SpectralEarth's adapter: (kernel, stride) of each 1-D convolution.
ADAPTER_CONVS = ((7, 5), (7, 5), (5, 3))


def group_size(num_bands, groups):
  """Bands per group, ceil(B / G); the last group is zero-padded."""
  return math.ceil(num_bands / groups)


def feature_width(tokenizer, width, groups):
  """Width of the encoder's output per patch: D, or G*D for band groups."""
  return width * groups if tokenizer == "band_groups" else width


def sequence_length(tokenizer, num_patches, groups):
  """Encoder tokens for `num_patches` visible patches."""
  return num_patches * groups if tokenizer == "band_groups" else num_patches


def to_band_groups(patches, num_bands, groups):
  """(N, K, p*p*B) patches -> (N, K, G, p*p*g) band-group tokens (pixels
  major, bands minor in each group, as in `patching.patchify`)."""
  n, k, d = patches.shape
  pp = d // num_bands
  g = group_size(num_bands, groups)
  x = patches.reshape(n, k, pp, num_bands)
  x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, groups * g - num_bands)))
  x = x.reshape(n, k, pp, groups, g).transpose(0, 1, 3, 2, 4)
  return x.reshape(n, k, groups, pp * g)


def sincos_1d(length, dim):
  """Fixed 1-D sin-cos position embedding (length, dim), float32 numpy."""
  if dim % 2:
    raise ValueError(f"Embedding width must be even, got {dim}.")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
  pos = np.arange(length, dtype=np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(pos), np.cos(pos)], axis=1).astype(np.float32)


def adapter_length(num_bands):
  """Positions left along the bands after the adapter's convolutions."""
  length = num_bands
  for _, stride in ADAPTER_CONVS:
    length = math.ceil(length / stride)
  return length


class SpectralAdapter(nn.Module):
  """Per-pixel spectra (..., B) -> features (..., out_dim): 1-D convolutions
  along the bands (SAME padding, so any B >= 1 works), flattened, Dense."""
  channels: tuple = (32, 64, 128)
  out_dim: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if len(self.channels) != len(ADAPTER_CONVS):
      raise ValueError(f"The adapter has {len(ADAPTER_CONVS)} convolutions; "
                       f"got {len(self.channels)} channel counts.")
    lead, b = x.shape[:-1], x.shape[-1]
    y = x.reshape(-1, b, 1).astype(self.dtype)
    for i, ((kernel, stride), ch) in enumerate(zip(ADAPTER_CONVS, self.channels)):
      y = nn.gelu(nn.Conv(ch, (kernel,), strides=(stride,), padding="SAME",
                          dtype=self.dtype, name=f"conv{i}")(y))
    y = y.reshape(y.shape[0], -1)  # (pixels, length * channels).
    y = nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(y)
    return y.reshape(*lead, self.out_dim)
