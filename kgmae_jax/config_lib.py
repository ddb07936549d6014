"""Config pieces shared by `configs/*.py`, and start-up validation.

Configs are `ml_collections.ConfigDict`s built by `get_config()` in a Python
file; `base_config()` holds every field with the paper's values where the
paper gives them, and each config overrides what differs. `validate()` runs
before anything is built and raises a `ValueError` that names the field.
"""

import ml_collections

from kgmae_jax import losses
from kgmae_jax import tokenizers


def base_config():
  """Every field, with a one-line comment each. Values: the paper's setting."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Parameter init, masking and data order all derive from it.

  c.data = ml_collections.ConfigDict()
  c.data.name = "kgmae_benchmark"  # TFDS name of the embedded benchmark.
  c.data.data_dir = ""  # '' -> $KGMAE_DATA_DIR or ~/tensorflow_datasets.
  c.data.tile_size = 64  # Tile edge in pixels (H = W).
  c.data.num_train = 1024  # Region-A training tiles.
  c.data.num_test = 64  # Region-A held-out tiles.
  c.data.num_test_b = 64  # Region-B tiles (cross-region tests).
  c.data.snr_vnir = 150.0  # Signal-to-noise ratio below 1000 nm.
  c.data.snr_swir = 80.0  # Signal-to-noise ratio above 1000 nm.
  c.data.seed = 0  # Generator seed: a new seed is a new data set.
  c.data.num_bands = 0  # Expected band count; 0 takes it from the data set.
  c.data.num_workers = 0  # grain reader threads; 0 reads in the main thread.
  # Real data (name 'enmap_l2a' or 'own_scene'; see enmap_l2a.py, scene.py, readers.py).
  c.data.manual_dir = ""  # enmap_l2a: folder of L2A products; '' -> <data_dir>/downloads/manual.
  c.data.scene = ""  # own_scene: the cube, GeoTIFF / ENVI .hdr / .npy (H, W, B).
  c.data.wavelengths_file = ""  # own_scene: band centres, one per line; '' -> from the file.
  c.data.reflectance_scale = 0.0  # reflectance = value * scale; 0: L2A gains / 1 for own_scene.
  c.data.nodata = -32768.0  # own_scene: raw value of missing pixels (NaN always is).
  c.data.drop_bands = ()  # own_scene: 0-based file band indices left out (dead or empty detectors).
  c.data.drop_ranges_nm = ()  # own_scene: ((lo, hi), ...) nm ranges whose bands are left out.
  c.data.labels = ""  # own_scene: class map (.npy (H, W) or one-band raster, 0 = unlabelled) for scene_classification; never read by pretraining.
  c.data.label_names = ()  # own_scene: names of the class map's classes, in increasing id order.
  c.data.tile_overlap = 0  # Pixels shared by neighbouring tiles (enmap_l2a, own_scene).
  c.data.min_valid_fraction = 0.5  # Tiles with fewer valid pixels are dropped.
  c.data.test_fraction = 0.1  # Bottom share of each scene's rows held out as 'test'.
  c.data.prefetch = 2  # Batches read ahead.
  c.data.device_resident = False  # Train tiles uploaded once; batches gathered on device.

  c.model = ml_collections.ConfigDict()
  c.model.patch_size = 16  # Pixels per patch edge (paper: 16).
  c.model.width = 512  # Encoder width D (paper: 512).
  c.model.depth = 12  # Encoder blocks (unpublished; ViT-B depth).
  c.model.num_heads = 8  # Encoder heads (paper: 8).
  c.model.dec_width = 512  # Decoder width E.
  c.model.dec_depth = 8  # Decoder blocks (MAE default).
  c.model.dec_num_heads = 8  # Decoder heads.
  c.model.mlp_ratio = 4.0  # MLP hidden width / model width.
  c.model.mask_ratio = 0.75  # Fraction of tokens hidden from the encoder.
  c.model.dtype = "auto"  # Compute dtype (params stay float32): auto (bfloat16 on GPU/TPU, float32 on CPU), float32, bfloat16.
  c.model.attention = "auto"  # auto (cudnn on a GPU in bfloat16, else xla), xla or cudnn (GPU, bfloat16 only).
  c.model.remat = False  # Rematerialise transformer blocks (saves memory).
  c.model.tokenizer = "linear"  # linear (paper: Dense per patch), adapter (1-D convs per pixel first), band_groups (a token per patch x band group); tokenizers.py.
  c.model.adapter_channels = (32, 64, 128)  # adapter: channels of its 3 convolutions (kernel/stride 7/5, 7/5, 5/3).
  c.model.adapter_dim = 32  # adapter: features per pixel fed to the patch embedding.
  c.model.band_groups = 8  # band_groups: G groups of adjacent bands (encoder sees K*G tokens).

  c.lsmm = ml_collections.ConfigDict()
  c.lsmm.enabled = True  # LSMM branch on; off gives the plain ViT-MAE.
  c.lsmm.num_endmembers = 8  # M (unpublished; 8 for EnMAP scenes).
  c.lsmm.head = "pixel"  # Abundances from each pixel's spectrum + token context; 'token': paper's MLP on decoder tokens.
  c.lsmm.per_pixel = True  # head='token' only: p*p*M outputs per token (else M, shared by the patch).
  c.lsmm.init = "kmeans"  # kmeans (blind, training pixels), vca, data (farthest-angle pixels), library, random (smooth).
  c.lsmm.init_pixels = 8192  # Training pixels sampled for the kmeans / vca / data inits.
  c.lsmm.max_reflectance = 1.0  # Endmembers = max * sigmoid(raw) in [0, max]; 0: softplus (>= 0, unbounded).
  c.lsmm.lr_mult = 0.5  # Endmember learning rate / optim.lr (reflectance units, no weight decay).
  c.lsmm.learn = True  # False keeps the endmembers fixed at their init.
  c.lsmm.on_visible = True  # LSMM loss on visible tokens too, not only masked.

  c.loss = ml_collections.ConfigDict()
  c.loss.huber = 1.0  # lambda1: Huber on standardised pixels.
  c.loss.sam = 1.0  # lambda2: spectral angle (radians) in reflectance space.
  c.loss.lsmm = 0.5  # lambda3: LSMM physics term (Huber + SAM of A.a).
  c.loss.huber_delta = 1.0  # Huber threshold, in per-band std units.
  c.loss.lsmm_sam_weight = 1.0  # SAM share inside the LSMM term.

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1.5e-4  # Peak learning rate (MAE: 1.5e-4 * batch / 256).
  c.optim.warmup_steps = 500  # Linear warm-up from 0.
  c.optim.final_lr_frac = 0.01  # Cosine decays to lr * final_lr_frac.
  c.optim.weight_decay = 0.05  # AdamW decay on matrices only.
  c.optim.b1 = 0.9  # Adam beta1.
  c.optim.b2 = 0.95  # Adam beta2 (MAE).
  c.optim.grad_clip = 1.0  # Global-norm clipping; 0 disables.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # Global batch, split over the mesh.
  c.train.steps = 20000  # Optimiser steps.
  c.train.log_every = 50  # Steps between metric logs.
  c.train.on_nonfinite = "error"  # NaN/inf loss: 'error' stops, 'skip' drops the update.
  c.train.max_skipped_in_a_row = 10  # With 'skip': consecutive bad steps before giving up.
  c.train.grad_accum_steps = 1  # Microbatches per step (lax.scan); grads averaged.
  c.train.allow_config_change = False  # Resume even if model/data/optim/schedule fields differ from the checkpoint's.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Devices on the batch axis; -1: all left after fsdp.
  c.mesh.fsdp = 1  # Devices over which parameters are sharded (1: replicated).

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every_steps = 1000  # Save interval; the last step is always saved.
  c.ckpt.keep = 3  # Checkpoints kept.

  c.evals = ml_collections.ConfigDict()
  c.evals.split = "test"  # Held-out split for the final evaluation.
  c.evals.num_tiles = 64  # Tiles evaluated (0: all).
  c.evals.batch_size = 16  # Tiles per evaluation batch.
  c.evals.data_range = 1.0  # Reflectance range for PSNR and SSIM.
  c.evals.num_plot = 4  # Tiles drawn in the reconstruction figure.
  c.evals.every_steps = 0  # Steps between held-out evaluations during training (eval/ metrics; 0: only at the end).
  return c


def no_argument(arg, path):
  """Refuses `--config path:arg` for configs that take no argument (a typo
  after ':' must not be ignored)."""
  if arg not in (None, ""):
    raise ValueError(
        f"{path} takes no ':argument', got '{path}:{arg}'; drop ':{arg}' "
        "(configs/paper_tables.py takes :small, :full or :tiny; "
        "configs/karma_enmap.py takes :paper).")


# Fields added after a release, with the value that reproduces what a saved
# config without them meant (checkpoints written before the field existed).
_LEGACY = {
    "lsmm.head": "token",  # Only the token head existed.
    "lsmm.max_reflectance": 0.0,  # Softplus endmembers.
    "lsmm.lr_mult": 1.0,
    "lsmm.init_pixels": 8192,
    "data.drop_bands": (),  # Every band of the file was used.
    "data.drop_ranges_nm": (),
    "train.allow_config_change": False,
    "evals.every_steps": 0,
    "data.labels": "",
    "data.label_names": (),
    "model.tokenizer": "linear",  # The paper's patch embedding only.
    "model.adapter_channels": (32, 64, 128),
    "model.adapter_dim": 32,
    "model.band_groups": 8,
}


def from_saved(saved):
  """ConfigDict of a saved run's config (a dict from config.json or the
  checkpoint's metadata); fields it predates get their legacy values."""
  c = ml_collections.ConfigDict(saved)
  for field, value in _LEGACY.items():
    group, key = field.split(".")
    if group in c and key not in c[group]:
      c[group][key] = value
  return c


# Named model sizes (as big_vision's `decode_variant`): the `model` fields a
# preset sets; everything else keeps base_config()'s value.
_MODEL_FIELDS = ("patch_size", "width", "depth", "num_heads", "dec_width",
                 "dec_depth", "dec_num_heads", "mlp_ratio")
MODEL_PRESETS = {
    # The paper's size (base_config): patch 16, width 512, 12 + 8 blocks.
    "paper": (16, 512, 12, 8, 512, 8, 8, 4.0),
    # CPU minutes: quickstart, own_scene, paper_tables:small.
    "tiny": (4, 64, 2, 4, 64, 1, 4, 2.0),
    # Seconds per run: paper_tables:tiny, the end-to-end test.
    "micro": (8, 16, 1, 2, 16, 1, 2, 2.0),
}


def model_preset(c, name):
  """Sets config `c`'s model size to MODEL_PRESETS[name]; returns `c`."""
  if name not in MODEL_PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; known: "
                     f"{sorted(MODEL_PRESETS)}.")
  for field, value in zip(_MODEL_FIELDS, MODEL_PRESETS[name]):
    c.model[field] = value
  return c


_DTYPES = ("auto", "float32", "bfloat16")
_ATTENTION = ("auto", "xla", "cudnn")
_INITS = ("kmeans", "vca", "data", "library", "random")
_HEADS = ("pixel", "token")
_NONFINITE = ("error", "skip")


def validate(c, num_devices=None, num_bands=None):
  """Raises ValueError naming the offending field; returns None."""
  m = c.model

  def need(ok, field, msg):
    if not ok:
      raise ValueError(f"config.{field}: {msg}")

  need(m.patch_size > 0, "model.patch_size", "must be positive.")
  d = c.data
  need(0 <= d.tile_overlap < d.tile_size, "data.tile_overlap",
       f"must be in [0, tile_size={d.tile_size}), got {d.tile_overlap}.")
  need(0.0 < d.min_valid_fraction <= 1.0, "data.min_valid_fraction",
       f"must be in (0, 1], got {d.min_valid_fraction}.")
  need(0.0 <= d.test_fraction < 1.0, "data.test_fraction",
       f"must be in [0, 1), got {d.test_fraction}.")
  need(d.reflectance_scale >= 0, "data.reflectance_scale",
       f"must be >= 0 (0: automatic), got {d.reflectance_scale}.")
  need(d.name == "own_scene" or not (d.drop_bands or d.drop_ranges_nm),
       "data.drop_bands", f"only own_scene builds drop bands, not {d.name!r}.")
  need(not d.labels or d.name == "own_scene", "data.labels",
       f"class maps go with own_scene cubes, not {d.name!r}.")
  need(d.name != "own_scene" or d.scene, "data.scene",
       "own_scene needs the path of a cube (.tif, ENVI .hdr or .npy).")
  t, p = c.data.tile_size, m.patch_size
  if t % p:
    lo, hi = (t // p) * p, (t // p + 1) * p
    need(False, "data.tile_size",
         f"{t} is not divisible by model.patch_size={p}; nearest valid tile "
         f"sizes are {[s for s in (lo, hi) if s > 0]}.")
  need(0.0 < m.mask_ratio < 1.0, "model.mask_ratio",
       f"must be in (0, 1), got {m.mask_ratio}.")
  need(m.width % m.num_heads == 0 and m.width % 4 == 0, "model.width",
       f"{m.width} must be a multiple of 4 and of model.num_heads={m.num_heads}.")
  need(m.dec_width % m.dec_num_heads == 0 and m.dec_width % 4 == 0,
       "model.dec_width", f"{m.dec_width} must be a multiple of 4 and of "
       f"model.dec_num_heads={m.dec_num_heads}.")
  need(m.depth >= 1 and m.dec_depth >= 1, "model.depth",
       "encoder and decoder need at least one block each.")
  need(m.dtype in _DTYPES, "model.dtype", f"one of {_DTYPES}, got {m.dtype!r}.")
  need(m.attention in _ATTENTION, "model.attention",
       f"one of {_ATTENTION}, got {m.attention!r}.")
  need(m.attention != "cudnn" or m.dtype in ("bfloat16", "auto"), "model.attention",
       "cudnn attention needs model.dtype='bfloat16' (or 'auto' on a GPU).")
  need(m.tokenizer in tokenizers.TOKENIZERS, "model.tokenizer",
       f"one of {tokenizers.TOKENIZERS}, got {m.tokenizer!r}.")
  need(len(m.adapter_channels) == len(tokenizers.ADAPTER_CONVS)
       and min(m.adapter_channels) >= 1, "model.adapter_channels",
       f"{len(tokenizers.ADAPTER_CONVS)} positive channel counts, got "
       f"{tuple(m.adapter_channels)}.")
  need(m.adapter_dim >= 1, "model.adapter_dim", f"must be >= 1, got {m.adapter_dim}.")
  need(m.band_groups >= 1, "model.band_groups", f"must be >= 1, got {m.band_groups}.")
  need(c.lsmm.num_endmembers >= 1, "lsmm.num_endmembers",
       f"must be >= 1, got {c.lsmm.num_endmembers}.")
  need(c.lsmm.init in _INITS, "lsmm.init", f"one of {_INITS}, got {c.lsmm.init!r}.")
  need(c.lsmm.head in _HEADS, "lsmm.head", f"one of {_HEADS}, got {c.lsmm.head!r}.")
  need(c.lsmm.init_pixels >= c.lsmm.num_endmembers, "lsmm.init_pixels",
       f"must be >= lsmm.num_endmembers={c.lsmm.num_endmembers}.")
  need(c.lsmm.max_reflectance >= 0, "lsmm.max_reflectance",
       f"must be >= 0 (0: unbounded), got {c.lsmm.max_reflectance}.")
  need(c.lsmm.lr_mult > 0, "lsmm.lr_mult", f"must be > 0, got {c.lsmm.lr_mult}.")
  weights = losses.term_weights(c.loss)
  for term, weight in weights.items():
    need(weight >= 0, f"loss.{term}", f"must be >= 0, got {weight}.")
  need(sum(weights.values()) > 0, "loss",
       "all loss weights are 0: nothing to train.")
  need(c.lsmm.enabled or c.loss.lsmm == 0, "loss.lsmm",
       "is > 0 but lsmm.enabled is False; set one of them.")
  need(c.loss.huber_delta > 0, "loss.huber_delta", "must be positive.")
  need(c.optim.lr > 0, "optim.lr", "must be positive.")
  need(0 <= c.optim.warmup_steps, "optim.warmup_steps", "must be >= 0.")
  need(c.train.steps >= 1, "train.steps", "must be >= 1.")
  need(c.train.batch_size >= 1, "train.batch_size", "must be >= 1.")
  need(c.train.log_every >= 1, "train.log_every", "must be >= 1.")
  need(c.train.on_nonfinite in _NONFINITE, "train.on_nonfinite",
       f"one of {_NONFINITE}, got {c.train.on_nonfinite!r}.")
  need(c.train.max_skipped_in_a_row >= 1, "train.max_skipped_in_a_row",
       "must be >= 1.")
  accum = c.train.grad_accum_steps
  need(accum >= 1, "train.grad_accum_steps", f"must be >= 1, got {accum}.")
  need(c.train.batch_size % accum == 0, "train.grad_accum_steps",
       f"{accum} does not divide train.batch_size={c.train.batch_size}.")
  need(c.ckpt.every_steps >= 1, "ckpt.every_steps", "must be >= 1.")
  need(c.evals.every_steps >= 0, "evals.every_steps",
       f"must be >= 0 (0: off), got {c.evals.every_steps}.")
  need(c.ckpt.keep >= 1, "ckpt.keep", "must be >= 1.")
  need(c.mesh.fsdp >= 1, "mesh.fsdp", "must be >= 1.")
  if num_devices is not None:
    need(num_devices % c.mesh.fsdp == 0, "mesh.fsdp",
         f"{c.mesh.fsdp} does not divide the {num_devices} devices.")
    data = c.mesh.data if c.mesh.data > 0 else num_devices // c.mesh.fsdp
    need(data * c.mesh.fsdp == num_devices, "mesh.data",
         f"mesh.data={data} x mesh.fsdp={c.mesh.fsdp} != {num_devices} devices.")
    need(c.train.batch_size % num_devices == 0, "train.batch_size",
         f"{c.train.batch_size} is not divisible by the {num_devices} devices.")
    need(c.train.batch_size % (num_devices * accum) == 0,
         "train.grad_accum_steps", f"batch {c.train.batch_size} / {accum} "
         f"microbatches is not divisible by the {num_devices} devices.")
  if num_bands is not None:
    need(num_bands >= 1, "data", "the data set has no bands.")
    need(m.tokenizer != "band_groups" or m.band_groups <= num_bands,
         "model.band_groups", f"{m.band_groups} groups for {num_bands} bands; "
         f"at most one group per band.")
    need(c.data.num_bands in (0, num_bands), "data.num_bands",
         f"the config expects {c.data.num_bands} bands but the data set has "
         f"{num_bands}; set data.num_bands={num_bands} (or 0) or point "
         "config.data at the intended data set.")


def tables_group():
  """The `tables` group of configs/paper_tables.py (read by tables.py)."""
  t = ml_collections.ConfigDict()
  t.seeds = (0, 1, 2)  # Every run is repeated for each seed (init, masking, order).
  t.m_true = 10  # True number of materials; ablations use M_true - 2, M_true + 4.
  t.runs = ()  # Pretraining runs (tables.runs() names); (): all of them.
  t.curve_points = 0  # > 0: learning curves of mae and karma at this many
  #   evenly spaced checkpoints (held-out eval + linear probe at each).
  t.vca_pixels = 4096  # Held-out pixels sampled for VCA's endmember search.
  t.compilation_cache = True  # Persistent XLA cache in workdir/jax_cache.
  t.scene = ml_collections.ConfigDict()  # Labelled real scenes (data.labels; scene_classification.py).
  t.scene.shots = (5, 10, 50)  # Labelled pixels per class.
  t.scene.draws = 5  # Random label draws per seed and k.
  t.scene.head_layout = "upsample"  # Heads: C logits per token, bilinear to pixels ('pixels': p*p*C per token).
  t.downstream = ml_collections.ConfigDict()
  t.downstream.heads = ("linear", "conv")  # Heads on the frozen encoder.
  t.downstream.label_fractions = (0.01, 0.1, 1.0)  # Shares of labelled train tiles.
  t.downstream.num_train_tiles = 0  # Labelled train tiles used (0: all).
  t.downstream.steps = 300  # Head optimiser steps.
  t.downstream.lr = 3e-3  # Head peak learning rate (AdamW, cosine decay).
  t.downstream.batch_size = 32  # Tiles per head step.
  t.downstream.conv_width = 64  # Channels of the conv head's 3x3 layer.
  t.downstream.finetune = True  # Also train encoder + linear head end to end (pretrained and from scratch).
  t.downstream.finetune_steps = 300  # Fine-tuning optimiser steps.
  t.downstream.finetune_lr = 1e-3  # Fine-tuning peak lr of the head (AdamW, warm-up + cosine).
  t.downstream.finetune_layer_decay = 0.75  # Encoder layer l gets lr * decay^(depth + 1 - l).
  t.downstream.finetune_weight_decay = 0.05  # AdamW decay on matrices.
  t.downstream.pixel_classifiers = ("logreg", "svm")  # Classic raw-spectra floors (scikit-learn).
  t.downstream.max_pixels = 20000  # Training pixels drawn for the classic floors (SVMs scale badly).
  return t
