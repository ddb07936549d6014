"""Downstream evaluation: per-pixel classification of class maps, with the
encoder frozen (probes) or trained end to end (fine-tuning).

The pretrained encoder (no masking) turns each tile into token features
(N, gh, gw, D) (`encoder_features`); the floor every encoder must beat uses the
standardised raw spectra of the patch's pixels instead (`raw_features`,
D = p*p*B, so a linear head on it is a linear classifier of the spectra). Only
a light head on top is trained, with optax, on the benchmark's `labels` map
(N, H, W):
  linear  one Dense per token to p*p*C logits, i.e. one logit per class for
          every pixel of the patch;
  conv    3x3 conv (width `conv_width`) over the token grid, GELU, then the
          same per-pixel Dense.
Features come from `features`, which stops gradients at the encoder,
and the optimiser only ever sees the head's parameters, so the encoder cannot
change. Label fractions take the first max(1, round(f * n)) tiles of a seeded
permutation of the labelled train tiles; each fraction is a subset of the next.

Fine-tuning (`finetune`): the encoder and a linear PixelHead trained together
(AdamW, warm-up + cosine, layer-wise lr decay: the tokenizer gets
lr * decay^(depth + 1), block i lr * decay^(depth - i), the head lr); the same
recipe from the untrained init is the from-scratch floor. Classic floors on
the raw spectra (`pixel_classifiers`): scikit-learn logistic regression and an
RBF SVM per pixel on the standardised spectrum.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kgmae_jax import data
from kgmae_jax import metrics as metrics_lib
from kgmae_jax import model as model_lib
from kgmae_jax import patching


HEAD_LAYOUTS = ("pixels", "upsample")


class PixelHead(nn.Module):
  """Token features (N, gh, gw, D) -> per-pixel logits (N, gh*p, gw*p, C).

  layout 'pixels': a Dense to p*p*C logits per token, its own weights for each
  pixel position of the patch (resolves sub-patch detail; needs labels at
  every position). 'upsample': a Dense to C logits per token, bilinearly
  upsampled to the pixels (the linear segmentation head of ViT segmenters;
  weights shared by every position, for sparse labels)."""
  num_classes: int
  patch_size: int
  conv_width: int = 0  # 0: linear head; > 0: 3x3 conv of this width first.
  layout: str = "pixels"

  @nn.compact
  def __call__(self, feats):
    n, gh, gw, _ = feats.shape
    p, c = self.patch_size, self.num_classes
    if self.layout not in HEAD_LAYOUTS:
      raise ValueError(f"PixelHead layout must be one of {HEAD_LAYOUTS}, got "
                       f"{self.layout!r}.")
    x = feats
    if self.conv_width:
      x = nn.gelu(nn.Conv(self.conv_width, (3, 3), padding="SAME", name="conv")(x))
    if self.layout == "upsample":
      logits = nn.Dense(c, name="out")(x)  # (N, gh, gw, C)
      return jax.image.resize(logits, (n, gh * p, gw * p, c), "bilinear")
    logits = nn.Dense(p * p * c, name="out")(x)  # (N, gh, gw, p*p*C)
    return patching.unpatchify(logits.reshape(n, gh * gw, p * p * c), p,
                               (gh, gw), c)


@functools.partial(jax.jit, static_argnames="model")
def features(model, params, cube, valid, mean, std):
  """Encoder token features (N, gh, gw, D) of a reflectance cube (N, H, W, B),
  no masking. Gradients stop at the encoder output: nothing downstream can
  reach the encoder's parameters."""
  n, h, w, _ = cube.shape
  p = model.patch_size
  x = model_lib.standardise(cube, valid, mean, std)
  tokens = model_lib.encode(params, x, model=model)  # (N, L, D)
  grid = model_lib.token_grid(h, w, p)
  return jax.lax.stop_gradient(tokens.reshape(n, *grid, -1))


@functools.partial(jax.jit, static_argnames="patch_size")
def raw_features(cube, valid, mean, std, patch_size):
  """Standardised spectra of each patch's pixels (N, gh, gw, p*p*B) of a cube
  (N, H, W, B): the input the encoder sees, with no encoder."""
  n, h, w, _ = cube.shape
  x = model_lib.standardise(cube, valid, mean, std)
  return patching.patchify(x, patch_size).reshape(
      n, *model_lib.token_grid(h, w, patch_size), -1)


def encoder_featurizer(model, params, stats):
  """(cube, valid) -> frozen encoder features (N, gh, gw, D)."""
  mean = jnp.asarray(stats["mean"], jnp.float32)
  std = jnp.asarray(stats["std"], jnp.float32)
  return lambda cube, valid: features(model, params, cube, valid, mean, std)


def raw_featurizer(patch_size, stats):
  """(cube, valid) -> standardised raw spectra per patch (N, gh, gw, p*p*B)."""
  mean = jnp.asarray(stats["mean"], jnp.float32)
  std = jnp.asarray(stats["std"], jnp.float32)
  return lambda cube, valid: raw_features(cube, valid, mean, std, patch_size)


def split_features(featurize, data_cfg, split, batch_size, max_tiles=None):
  """(features (N, gh, gw, D), labels (N, H, W) int32, valid (N, H, W)) of a
  split; `featurize(cube, valid)` is `encoder_featurizer` or `raw_featurizer`."""
  feats, labels, valid = [], [], []
  for batch in data.eval_batches(data_cfg, split, batch_size, max_tiles):
    feats.append(np.asarray(featurize(jnp.asarray(batch["cube"]),
                                      jnp.asarray(batch["valid"]))))
    labels.append(batch["labels"].astype(np.int32))
    valid.append(batch["valid"])
  return np.concatenate(feats), np.concatenate(labels), np.concatenate(valid)


def split_cubes(data_cfg, split, batch_size, max_tiles=None):
  """(cube (N, H, W, B) float32, valid (N, H, W), labels (N, H, W) int32)."""
  cubes, valid, labels = [], [], []
  for batch in data.eval_batches(data_cfg, split, batch_size, max_tiles):
    cubes.append(batch["cube"].astype(np.float32))
    valid.append(batch["valid"])
    labels.append(batch["labels"].astype(np.int32))
  return np.concatenate(cubes), np.concatenate(valid), np.concatenate(labels)


def head_loss(head, head_params, feats, labels, valid):
  """Mean softmax cross-entropy over valid pixels."""
  logits = head.apply({"params": head_params}, feats)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  w = valid.astype(jnp.float32)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


@functools.lru_cache(maxsize=None)
def _head_fns(head, steps, lr):
  """(tx, jitted step, jitted predict) of a head; cached, so every run and
  label fraction with the same head and batch shape reuses one compilation."""
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)

  @jax.jit
  def step(params, opt_state, f, y, v):
    loss, grads = jax.value_and_grad(
        functools.partial(head_loss, head))(params, f, y, v)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def confusion(params, f, y, v):
    pred = jnp.argmax(head.apply({"params": params}, f), -1)
    return metrics_lib.confusion_matrix(y, pred, head.num_classes, v)

  return tx, step, confusion


def train_head(head, feats, labels, valid, *, steps, lr, batch_size, seed):
  """Trains only `head` (AdamW, cosine decay) on fixed features; returns its
  params. Batches of `batch_size` tiles drawn at random (with replacement when
  fewer tiles are labelled)."""
  rng = np.random.default_rng(seed)
  params = jax.jit(head.init)(jax.random.key(seed), feats[:1])["params"]
  tx, step, _ = _head_fns(head, steps, lr)
  opt_state = tx.init(params)
  n = len(feats)
  for _ in range(steps):
    idx = rng.choice(n, batch_size, replace=n < batch_size)
    params, opt_state, _ = step(params, opt_state, feats[idx], labels[idx],
                                valid[idx])
  return params


def score_head(head, head_params, feats, labels, valid, class_names,
               batch_size=64):
  """Classification metrics (`confusion_metrics`) of a trained head."""
  num_classes = len(class_names)
  _, _, confusion = _head_fns(head, 1, 1.0)
  cm = np.zeros((num_classes, num_classes), np.float64)
  pad = lambda a, k: np.concatenate([a, np.zeros((k,) + a.shape[1:], a.dtype)])
  for i in range(0, len(feats), batch_size):
    k = batch_size - len(feats[i:i + batch_size])  # Fixed shape: one compile.
    cm += np.asarray(confusion(head_params, pad(feats[i:i + batch_size], k),
                               pad(labels[i:i + batch_size], k),
                               pad(valid[i:i + batch_size], k)))
  return confusion_metrics(cm, class_names)


def confusion_metrics(cm, class_names):
  """Flat JSON-ready dict: top1 (OA), mean_class_acc (AA), miou, kappa,
  acc_<class> (all in %, kappa x 100 too;
  acc NaN for a class without true pixels) and num_pixels_<class>."""
  out = jax.device_get(metrics_lib.classification_metrics(cm))
  names = list(class_names)
  res = {k: 100.0 * float(out[k])
         for k in ("top1", "mean_class_acc", "miou", "kappa")}
  for k, name in enumerate(names):
    res[f"acc_{name}"] = 100.0 * float(out["per_class_acc"][k])
    res[f"num_pixels_{name}"] = float(np.sum(cm[k]))
  return res


def label_subsets(num_tiles, fractions, seed):
  """{fraction: tile indices}: nested prefixes of one seeded permutation."""
  order = np.random.default_rng(seed).permutation(num_tiles)
  return {f: np.sort(order[:max(1, int(round(f * num_tiles)))]) for f in fractions}


def evaluate(featurize, patch_size, config, class_names, seed,
             splits=("test", "test_b")):
  """Frozen-feature classification for every head and label fraction of
  `config.tables.downstream` (heads, label_fractions, steps, lr, ...);
  `featurize` as in `split_features`.

  Heads train on region A's `train` tiles and are scored on `splits` (`test`:
  region A, held out; `test_b`: region B). Returns
  {head: {str(fraction): {split: metrics}}}.
  """
  dc = config.tables.downstream
  bs = config.evals.batch_size
  train = split_features(featurize, config.data, "train", bs,
                         dc.num_train_tiles if dc.num_train_tiles > 0 else None)
  num_eval = config.evals.num_tiles if config.evals.num_tiles > 0 else None
  evals = {s: split_features(featurize, config.data, s, bs, num_eval)
           for s in splits}
  subsets = label_subsets(len(train[0]), dc.label_fractions, seed)
  results = {}
  for name in dc.heads:
    width = {"linear": 0, "conv": dc.conv_width}[name]
    head = PixelHead(len(class_names), patch_size, width)
    results[name] = {}
    for frac, idx in subsets.items():
      hp = train_head(head, *(a[idx] for a in train), steps=dc.steps, lr=dc.lr,
                      batch_size=dc.batch_size, seed=seed)
      results[name][str(frac)] = {
          s: score_head(head, hp, *evals[s], class_names) for s in evals}
  return results



# ---------------------------------------------------------------- fine-tuning
def finetune_optimizer(depth, steps, lr, layer_decay, weight_decay):
  """AdamW over {'model': encoder params, 'head': ...}: warm-up (10 %) and
  cosine decay, the encoder's layers at lr * layer_decay^(depth + 1 - layer)
  (`model.encoder_layer`), parameters `encode` does not use never updated."""
  def schedule(scale):
    return optax.warmup_cosine_decay_schedule(
        0.0, lr * scale, max(1, steps // 10), max(steps, 2))

  def adamw(scale):
    return optax.adamw(schedule(scale), weight_decay=weight_decay,
                       mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))

  def label(path, _):
    if path[0].key == "head":
      return "head"
    layer = model_lib.encoder_layer(path[1:], depth)
    return "frozen" if layer is None else f"layer{layer}"

  txs = {"head": adamw(1.0), "frozen": optax.set_to_zero()}
  for i in range(depth + 1):
    txs[f"layer{i}"] = adamw(layer_decay ** (depth + 1 - i))
  return optax.multi_transform(
      txs, lambda p: jax.tree_util.tree_map_with_path(label, p))


def _logits(model, head, params, cube, valid, mean, std):
  """Per-pixel logits (N, H, W, C): encoder (no masking) then the head."""
  n, h, w, _ = cube.shape
  x = model_lib.standardise(cube, valid, mean, std)
  tokens = model_lib.encode(params["model"], x, model=model)
  feats = tokens.reshape(n, *model_lib.token_grid(h, w, model.patch_size), -1)
  return head.apply({"params": params["head"]}, feats)


@functools.lru_cache(maxsize=None)
def _finetune_fns(model, head, steps, lr, layer_decay, weight_decay):
  """(tx, jitted step) of end-to-end training; cached per recipe."""
  tx = finetune_optimizer(model.depth, steps, lr, layer_decay, weight_decay)

  def loss(params, cube, valid, labels, mask, mean, std):
    logits = _logits(model, head, params, cube, valid, mean, std)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    w = mask.astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

  @jax.jit
  def step(params, opt_state, cube, valid, labels, mask, mean, std):
    value, grads = jax.value_and_grad(loss)(params, cube, valid, labels, mask,
                                            mean, std)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return tx, step


def finetune(model, params, head, train, stats, *, steps, lr, layer_decay,
             weight_decay, batch_size, seed):
  """Trains encoder and head end to end on `train` = (cube (N, H, W, B),
  valid (N, H, W), labels (N, H, W), mask (N, H, W): pixels that count).
  Returns (model params, head params); only encoder parameters change."""
  cube, valid, labels, mask = train
  rng = np.random.default_rng(seed)
  p = model.patch_size
  grid = model_lib.token_grid(cube.shape[1], cube.shape[2], p)
  feats = np.zeros((1, *grid, model.feature_width), np.float32)
  both = {"model": params,
          "head": jax.jit(head.init)(jax.random.key(seed), feats)["params"]}
  tx, step = _finetune_fns(model, head, steps, lr, layer_decay, weight_decay)
  opt_state = tx.init(both)
  mean = jnp.asarray(stats["mean"], jnp.float32)
  std = jnp.asarray(stats["std"], jnp.float32)
  n = len(cube)
  for _ in range(steps):
    idx = rng.choice(n, batch_size, replace=n < batch_size)
    both, opt_state, _ = step(both, opt_state, cube[idx], valid[idx],
                              labels[idx], mask[idx], mean, std)
  return both["model"], both["head"]


def finetune_recipe(dc):
  """finetune's keyword arguments from config.tables.downstream."""
  return dict(steps=dc.finetune_steps, lr=dc.finetune_lr,
              layer_decay=dc.finetune_layer_decay,
              weight_decay=dc.finetune_weight_decay,
              batch_size=dc.batch_size)


def _num_eval(config):
  """Held-out tiles scored (None: all)."""
  return config.evals.num_tiles if config.evals.num_tiles > 0 else None


def _train_cubes(config):
  """split_cubes of region A's labelled train tiles (tables.downstream)."""
  n = config.tables.downstream.num_train_tiles
  return split_cubes(config.data, "train", config.evals.batch_size,
                     n if n > 0 else None)


def evaluate_finetune(model, params, stats, config, class_names, seed,
                      splits=("test", "test_b")):
  """{'finetune': {str(fraction): {split: metrics}}}: the encoder from
  `params` (pretrained, or an untrained init for the from-scratch floor) and
  a linear PixelHead trained end to end on each label fraction of region A's
  train tiles (config.tables.downstream), scored on `splits`."""
  dc, bs, num_eval = config.tables.downstream, config.evals.batch_size, _num_eval(config)
  cube, valid, labels = _train_cubes(config)
  head = PixelHead(len(class_names), model.patch_size)
  out = {}
  for frac, idx in label_subsets(len(cube), dc.label_fractions, seed).items():
    train = (cube[idx], valid[idx], labels[idx], valid[idx])
    tuned, hp = finetune(model, params, head, train, stats, seed=seed,
                         **finetune_recipe(dc))
    featurize = encoder_featurizer(model, tuned, stats)
    out[str(frac)] = {s: score_head(head, hp, *split_features(
        featurize, config.data, s, bs, num_eval), class_names) for s in splits}
  return {"finetune": out}


# ------------------------------------------------- classic raw-spectra floors
PIXEL_CLASSIFIERS = ("logreg", "svm")


def make_pixel_classifier(name, seed):
  """A scikit-learn classifier of standardised spectra: multinomial logistic
  regression (C = 1) or an RBF SVM (C = 100, gamma 'scale')."""
  try:
    from sklearn import linear_model, svm  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The raw-spectra classifiers need scikit-learn: "
                      "pip install 'scikit-learn>=1.3,<2'.") from e
  if name == "logreg":
    return linear_model.LogisticRegression(C=1.0, max_iter=2000)
  if name == "svm":
    return svm.SVC(C=100.0, gamma="scale", random_state=seed)
  raise ValueError(f"Unknown pixel classifier {name!r}; one of "
                   f"{PIXEL_CLASSIFIERS}.")


def fit_pixel_classifier(name, spectra, labels, stats, seed):
  """Fitted classifier of (P, B) reflectance spectra with (P,) labels."""
  x = (spectra - stats["mean"]) / stats["std"]
  return make_pixel_classifier(name, seed).fit(x, labels)


def score_pixel_classifier(clf, spectra, labels, stats, class_names):
  """`confusion_metrics` of `clf` on (P, B) spectra with (P,) true labels."""
  pred = clf.predict((spectra - stats["mean"]) / stats["std"])
  c = len(class_names)
  cm = np.zeros((c, c), np.float64)
  np.add.at(cm, (labels, pred), 1.0)
  return confusion_metrics(cm, class_names)


def pixel_classifiers(stats, config, class_names, seed,
                      splits=("test", "test_b")):
  """{classifier: {str(fraction): {split: metrics}}} of the classic floors
  on each label fraction's pixels (at most
  config.tables.downstream.max_pixels of them, drawn with `seed`)."""
  dc, bs, num_eval = config.tables.downstream, config.evals.batch_size, _num_eval(config)
  cube, valid, labels = _train_cubes(config)
  evals = {}
  for s in splits:
    c, v, y = split_cubes(config.data, s, bs, num_eval)
    evals[s] = (c[v], y[v])
  rng = np.random.default_rng(seed)
  out = {name: {} for name in dc.pixel_classifiers}
  for frac, idx in label_subsets(len(cube), dc.label_fractions, seed).items():
    x, y = cube[idx][valid[idx]], labels[idx][valid[idx]]
    if len(x) > dc.max_pixels:
      keep = rng.choice(len(x), dc.max_pixels, replace=False)
      x, y = x[keep], y[keep]
    for name in dc.pixel_classifiers:
      clf = fit_pixel_classifier(name, x, y, stats, seed)
      out[name][str(frac)] = {
          s: score_pixel_classifier(clf, *evals[s], stats, class_names)
          for s in splits}
  return out
