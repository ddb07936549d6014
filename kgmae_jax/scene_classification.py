"""Per-pixel classification of a real labelled scene from k labels per class.

A labelled scene is an own_scene cube (`data.scene`, read as the own_scene
build reads it: scale, nodata, dropped bands) plus a class map
(`data.labels`: .npy (H, W) or a one-band raster; 0 = unlabelled). Pretraining
reads the cube alone (the own_scene build never opens the class map); this
module evaluates what the encoders learned:

* the scene is cut into non-overlapping tiles of `data.tile_size` (edges
  padded with invalid pixels), the unit every method sees;
* a draw picks k labelled pixels per class at random (at most half of a
  class's pixels, so every class keeps pixels to score); every other labelled
  pixel is scored. `tables.scene.draws` draws per seed and every k of
  `tables.scene.shots`, the same draws for every method (paired differences);
* methods: for each encoder, frozen `linear` and `conv` probes
  (downstream.PixelHead in `tables.scene.head_layout`, default 'upsample':
  a few labels cannot train one set of weights per pixel position; only the
  head trained), `finetune` (encoder + linear
  head end to end, downstream.finetune) and, from the untrained init, the
  same fine-tuning recipe (`scratch`); on the raw spectra, the linear head on
  the standardised pixels (`raw_linear`) and scikit-learn's logistic
  regression and RBF SVM per pixel;
* metrics over the scored pixels: overall accuracy (`top1`), average accuracy
  (`mean_class_acc`), Cohen's kappa and mIoU, in %.

`run(config, workdir)` (main.py, for a `tables` config whose data has
`labels`; configs/paper_tables.py:real_scenes) pretrains `tables.runs` on the
scene for every seed, evaluates, and writes tables.json and report.md with
95 % intervals over all (seed, draw) pairs.
"""

import dataclasses
import json

import numpy as np
from absl import logging
from etils import epath

from kgmae_jax import data
from kgmae_jax import downstream
from kgmae_jax import progress
from kgmae_jax import readers
from kgmae_jax import report
from kgmae_jax import table_report
from kgmae_jax import tables
from kgmae_jax import train


@dataclasses.dataclass(frozen=True)
class LabelledScene:
  """A cube and its class map, in the model's bands."""
  cube: np.ndarray  # (H, W, B) float32 reflectance, 0 at invalid pixels.
  valid: np.ndarray  # (H, W) bool.
  labels: np.ndarray  # (H, W) int32: -1 unlabelled or invalid, else 0..C-1.
  class_ids: tuple  # (C,) the class map's value of each class.
  class_names: tuple  # (C,) names (`data.label_names`, else 'class <id>').


def load(data_cfg) -> LabelledScene:
  """The scene of `data_cfg` (own_scene fields + `labels`, `label_names`)."""
  if not data_cfg.get("labels"):
    raise ValueError("config.data.labels: a labelled scene needs the path of "
                     "its class map (.npy (H, W) or a one-band GeoTIFF).")
  reader = readers.open_scene(
      data_cfg.scene, scale=data_cfg.reflectance_scale or 1.0,
      nodata=data_cfg.nodata, wavelengths_file=data_cfg.wavelengths_file,
      drop_bands=data_cfg.drop_bands, drop_ranges_nm=data_cfg.drop_ranges_nm)
  try:
    h, w, _ = reader.shape
    cube, valid = reader.read(0, 0, h, w)
  finally:
    reader.close()
  raw = readers.read_class_map(data_cfg.labels, (h, w))
  ids = tuple(int(i) for i in np.unique(raw[raw > 0]))
  if len(ids) < 2:
    raise ValueError(f"config.data.labels: {data_cfg.labels} has {len(ids)} "
                     "class(es) besides 0 (unlabelled); classification needs 2.")
  names = tuple(data_cfg.get("label_names", ()) or ())
  if names and len(names) != len(ids):
    raise ValueError(f"config.data.label_names: {len(names)} names for the "
                     f"{len(ids)} classes {ids} of the class map.")
  labels = np.full((h, w), -1, np.int32)
  for c, i in enumerate(ids):
    labels[raw == i] = c
  labels[~valid] = -1
  return LabelledScene(cube=np.where(valid[..., None], cube, 0.0).astype(
      np.float32), valid=valid, labels=labels, class_ids=ids,
                       class_names=names or tuple(f"class {i}" for i in ids))


def to_tiles(array, tile, fill):
  """(H, W, ...) -> (N, tile, tile, ...) row-major tiles; the edges padded
  with `fill` up to multiples of `tile`."""
  h, w = array.shape[:2]
  ph, pw = -h % tile, -w % tile
  pad = ((0, ph), (0, pw)) + ((0, 0),) * (array.ndim - 2)
  x = np.pad(array, pad, constant_values=fill)
  gh, gw = x.shape[0] // tile, x.shape[1] // tile
  x = x.reshape(gh, tile, gw, tile, *array.shape[2:]).swapaxes(1, 2)
  return x.reshape(gh * gw, tile, tile, *array.shape[2:])


def draw(labels, k, rng):
  """(H, W) bool: k labelled pixels of every class (at most half of the
  class's pixels, at least one), drawn with `rng`."""
  train = np.zeros(labels.shape, bool)
  for c in range(labels.max() + 1):
    idx = np.flatnonzero(labels == c)
    take = max(1, min(k, len(idx) // 2))
    train.flat[rng.choice(idx, take, replace=False)] = True
  return train


def _pixels(tiles, mask):
  return tiles["cube"][mask], tiles["labels"][mask]


def evaluate(config, encoders, stats, seed, scene=None):
  """{method: {str(k): [metrics per draw]}} of the scene of config.data.

  encoders: {name: (model, params)}, e.g. {'karma': ..., 'mae': ...,
  'random': ...}: frozen probes for every one; fine-tuning for every one
  (that of an untrained init is the from-scratch floor). Methods are named
  '<encoder> | <linear|conv|finetune>', 'raw | linear', 'raw | logreg',
  'raw | svm'. Draw d of seed s uses np.random.default_rng((s, k, d)).
  """
  se, dc = config.tables.scene, config.tables.downstream
  scene = scene or load(config.data)
  names = scene.class_names
  t = config.data.tile_size
  tiles = {"cube": to_tiles(scene.cube, t, 0.0),
           "valid": to_tiles(scene.valid, t, False),
           "labels": to_tiles(scene.labels, t, -1)}
  safe = np.maximum(tiles["labels"], 0)  # Labels where no pixel counts.
  featurizers = {name: (downstream.encoder_featurizer(model, params, stats),
                        model.patch_size) for name, (model, params)
                 in encoders.items()}
  p = config.model.patch_size
  featurizers["raw"] = (downstream.raw_featurizer(p, stats), p)
  feats = {name: np.asarray(f(tiles["cube"], tiles["valid"]))
           for name, (f, _) in featurizers.items()}
  out = {}
  bar = progress.bar(len(se.shots) * se.draws, f"scene seed {seed}", unit="draw")

  def add(method, k, metrics):
    out.setdefault(method, {}).setdefault(str(k), []).append(metrics)

  for k in se.shots:
    for d in range(se.draws):
      rng = np.random.default_rng((seed, k, d))
      train = to_tiles(draw(scene.labels, k, rng), t, False)
      score = (tiles["labels"] >= 0) & ~train
      rows = np.flatnonzero(train.any((1, 2)))  # Tiles with a training pixel.
      for name, (_, patch) in featurizers.items():
        for head_name in ("linear", "conv"):
          if name == "raw" and head_name == "conv":
            continue
          width = {"linear": 0, "conv": dc.conv_width}[head_name]
          head = downstream.PixelHead(len(names), patch, width, se.head_layout)
          hp = downstream.train_head(
              head, feats[name][rows], safe[rows], train[rows], steps=dc.steps,
              lr=dc.lr, batch_size=dc.batch_size, seed=seed)
          add(f"{name} | {head_name}", k, downstream.score_head(
              head, hp, feats[name], safe, score, names))
      head = downstream.PixelHead(len(names), p, layout=se.head_layout)
      for name, (model, params) in encoders.items():
        tuned, hp = downstream.finetune(
            model, params, head, (tiles["cube"][rows], tiles["valid"][rows],
                                  safe[rows], train[rows]), stats, seed=seed,
            **downstream.finetune_recipe(dc))
        f = downstream.encoder_featurizer(model, tuned, stats)
        add(f"{name} | finetune", k, downstream.score_head(
            head, hp, np.asarray(f(tiles["cube"], tiles["valid"])), safe, score,
            names))
      for clf in dc.pixel_classifiers:
        fitted = downstream.fit_pixel_classifier(
            clf, *_pixels(tiles, train), stats, seed)
        add(f"raw | {clf}", k, downstream.score_pixel_classifier(
            fitted, *_pixels(tiles, score), stats, names))
      logging.info("scene classification: seed %d, k = %d, draw %d: %s", seed,
                   k, d, {m: round(r[str(k)][-1]["top1"], 1)
                          for m, r in out.items()})
      bar.update()
  bar.close()
  return out



# ------------------------------------------------------------ the tables run
LABELS = {"karma": "KARMA", "mae": "ViT-MAE", "random": "random init",
          "raw": "raw spectra"}
METRICS = ("top1", "mean_class_acc", "kappa", "miou")


def _label(method):
  enc, how = method.split(" | ")
  if enc == "random" and how == "finetune":
    return "from scratch (fine-tuned from random init)"
  return f"{LABELS.get(enc, enc)} | {how}"


def build_table(per_seed):
  """{'<method> | k = <k>': {metric: cell}} over every (seed, draw)."""
  table = {}
  first = per_seed[0]
  for method in first:
    for k in first[method]:
      rows = [m for res in per_seed for m in res[method][k]]
      table[f"{_label(method)} | k = {k}"] = {
          m: tables.cell([r[m] for r in rows]) for m in METRICS}
  return table


def paired(table, row_a, row_b, metric="top1"):
  """(mean, lo, hi) of the paired difference a - b over (seed, draw)."""
  a, b = table[row_a][metric]["values"], table[row_b][metric]["values"]
  mean, (lo, hi) = table_report.ci95(np.subtract(a, b))
  return mean, lo, hi


def markdown(table, config, shots):
  """report.md: the table and, per k, paired differences of fine-tuned
  KARMA against the floors."""
  lines = [f"# Labelled scene: {config.data.scene}", "",
           f"Class map {config.data.labels}; seeds {tuple(config.tables.seeds)}"
           f" x {config.tables.scene.draws} label draws; mean ± 95 % CI half "
           "width over all (seed, draw) pairs; scored on every labelled pixel "
           "not drawn for training.", "",
           "| row | " + " | ".join(METRICS) + " |",
           "|---" * (len(METRICS) + 1) + "|"]
  for row, cells in table.items():
    lines.append("| " + row + " | " + " | ".join(
        table_report.format_cell(cells[m]) for m in METRICS) + " |")
  lines += ["", "## Paired differences (overall accuracy, points)", ""]
  for k in shots:
    for name in ("karma", "mae"):
      row = f"{LABELS[name]} | finetune | k = {k}"
      if row not in table:
        continue
      for other in [f"from scratch (fine-tuned from random init) | k = {k}"] + [
          f"raw spectra | {c} | k = {k}" for c in ("svm", "logreg", "linear")]:
        if other in table:
          mean, lo, hi = paired(table, row, other)
          verdict = "above" if lo > 0 else ("below" if hi < 0 else "not separated")
          lines.append(f"- k = {k}: {row.split(' |')[0]} fine-tuned − "
                       f"{other.rsplit(' | k', 1)[0]}: {mean:+.2f} "
                       f"[{lo:+.2f}, {hi:+.2f}] ({verdict}).")
  return "\n".join(lines) + "\n"


def run(config, workdir):
  """Pretrains every run of `tables.runs` per seed on the scene (labels
  unused), evaluates the k-shot classification, writes tables.json and
  report.md. Finished pretraining and per-seed results are reused."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tc = config.tables
  revisions = report.record_revision(workdir)
  scene = load(config.data)
  stats = data.band_stats(config.data)
  per_seed = []
  for seed in tc.seeds:
    path = workdir / "runs" / "scene" / f"seed{seed}.json"
    if path.exists():
      per_seed.append(json.loads(path.read_text()))
      continue
    encoders = {}
    for name in tc.runs or ("mae", "karma"):
      cfg = tables.run_config(config, name, seed, tc.m_true)
      wd = workdir / "runs" / name / f"seed{seed}"
      if not (wd / "summary.json").exists():
        logging.info("scene tables: pretraining %s seed %d in %s.", name, seed,
                     wd)
        train.train_and_evaluate(cfg, wd)
      encoders[name] = tables.restore_model(cfg, wd)
    cfg = tables.run_config(config, "karma", seed, tc.m_true)
    encoders["random"] = tables.restore_model(cfg, None, pretrained=False)
    res = evaluate(config, encoders, stats, seed, scene)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(path, res)
    per_seed.append(res)
  table = build_table(per_seed)
  report.write_json(workdir / "tables.json", {"scene_classification": table})
  (workdir / "report.md").write_text(
      markdown(table, config, tc.scene.shots)
      + f"\nCode revisions that ran part of this workdir: {', '.join(revisions)}.\n")
  logging.info("Wrote %s and %s.", workdir / "tables.json",
               workdir / "report.md")
  return table
