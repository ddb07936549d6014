"""The paper's tables and the ones it left out, over seeds, with 95 % CIs.

`run(config, workdir)` (called by main.py when the config has a `tables`
group; see configs/paper_tables.py) does, for every seed in
`config.tables.seeds` and every run in `RUNS` (same data, model size and
budget; only the loss terms and the LSMM settings differ):

  workdir/runs/<run>/seed<k>/   train.train_and_evaluate (skipped when its
                                summary.json exists; resumes its checkpoints
                                otherwise), then downstream.json;
  workdir/runs/<run>/seed<k>/curve.json   for `CURVE_RUNS` when
                                `tables.curve_points` > 0: the linear probe
                                at each of the run's saved checkpoints;
  workdir/runs/random_encoder/seed<k>/downstream.json   untrained encoder;
  workdir/runs/raw_spectra/seed<k>/downstream.json   heads on the raw spectra;
  workdir/runs/raw_spectra/seed<k>/pixel_classifiers.json   logistic
                                regression and RBF SVM per pixel;
  .../finetune.json             with tables.downstream.finetune, the encoder
                                fine-tuned with a linear head (mae, karma; the
                                random encoder's: from scratch);
  workdir/runs/baselines/seed<k>/unmixing.json   FCLS (true endmembers) and
                                VCA + FCLS on the held-out tiles;

and then writes `tables.json` ({table: {row: {metric: {mean, ci95, values}}}},
tables reconstruction, downstream, cross_region, unmixing, ablation and, with
curves, learning_curves),
`report.md` and `figures/`. The 95 % CI is mean +- t(0.975, n-1) s / sqrt(n)
over seeds; with one seed it is [mean, mean] (no spread can be estimated).
Metrics undefined on the data (the accuracy of a class with no pixel in the
split) are left out of the tables rather than reported as NaN.
"""

import copy
import json

import jax
import numpy as np
from absl import logging
from etils import epath

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import data
from kgmae_jax import downstream
from kgmae_jax import inference
from kgmae_jax import metrics as metrics_lib
from kgmae_jax import model as model_lib
from kgmae_jax import progress
from kgmae_jax import report
from kgmae_jax import table_report
from kgmae_jax import train
from kgmae_jax import unmixing


def runs(m_true):
  """{run name: (row label, config overrides)}; the base config is full KARMA
  with M = m_true and the default LSMM branch (pixel head, k-means init)."""
  return {
      "mae": ("ViT-MAE (Huber only)",
              {"lsmm.enabled": False, "loss.sam": 0.0, "loss.lsmm": 0.0}),
      "huber_sam": ("Huber + SAM", {"lsmm.enabled": False, "loss.lsmm": 0.0}),
      "huber_lsmm": ("Huber + LSMM", {"loss.sam": 0.0}),
      "karma": ("KARMA: Huber + SAM + LSMM", {}),
      "m_minus2": (f"M = {m_true - 2}", {"lsmm.num_endmembers": m_true - 2}),
      "m_plus4": (f"M = {m_true + 4}", {"lsmm.num_endmembers": m_true + 4}),
      "em_fixed_library": ("endmembers fixed (library)",
                           {"lsmm.init": "library", "lsmm.learn": False}),
      "em_learned_library": ("endmembers learned from library",
                             {"lsmm.init": "library"}),
      # What each LSMM change bought (docs/results): the paper's branch as
      # described, then one change of today's default at a time reverted.
      "lsmm_paper": ("LSMM as in the paper (token head, random init, softplus)",
                     PAPER_LSMM),
      "lsmm_token_head": ("token head (k-means init)",
                          {"lsmm.head": "token", "lsmm.per_pixel": True}),
      "lsmm_random_init": ("smooth random init (pixel head)",
                           {"lsmm.init": "random"}),
  }


# The LSMM branch as the paper describes it (configs/karma_enmap.py:paper).
PAPER_LSMM = {"lsmm.head": "token", "lsmm.per_pixel": True,
              "lsmm.init": "random", "lsmm.max_reflectance": 0.0,
              "lsmm.lr_mult": 1.0}


# Which downstream evaluations each run gets: all heads x fractions, or the
# linear head on all labels (enough for the ablation table).
FULL_DOWNSTREAM = ("mae", "karma", "random_encoder", "raw_spectra")
CONTROLS = ("random_encoder", "raw_spectra", "baselines")
# Runs with learning curves (tables.curve_points > 0).
CURVE_RUNS = ("mae", "karma")
RECON_METRICS = ("psnr", "ssim", "sam_deg", "rmse", "ergas", "psnr_band_mean")
CLS_METRICS = ("top1", "mean_class_acc", "miou", "kappa")


def selected_runs(tc):
  """{run: (label, overrides)} of `tables.runs` (all of `runs` when empty)."""
  every = runs(tc.m_true)
  chosen = tuple(tc.runs) or tuple(every)
  return {name: every[name] for name in chosen}


def run_config(config, name, seed, m_true):
  """The pretraining config of one run and seed. With
  `tables.curve_points` = k > 0, CURVE_RUNS save (and evaluate on held-out
  tiles) k evenly spaced checkpoints, for the learning curves."""
  cfg = copy.deepcopy(config)
  points = config.tables.curve_points
  with cfg.unlocked():
    del cfg["tables"]
    cfg.seed = seed
    for field, value in runs(m_true).get(name, ("", {}))[1].items():
      group, key = field.split(".")
      cfg[group][key] = value
    if points and name in CURVE_RUNS:
      every = max(1, cfg.train.steps // points)
      cfg.ckpt.every_steps = every
      cfg.ckpt.keep = -(-cfg.train.steps // every)
      cfg.evals.every_steps = every
  return cfg


def restore_model(config, workdir, pretrained=True, step=None):
  """(model, params): checkpoint `step` (default latest) of `workdir`, or with
  pretrained=False the init of config.seed (the untrained encoder; the same
  parameters train_and_evaluate starts from with lsmm.init 'random')."""
  if pretrained:
    loaded = inference.load(workdir, step=step)
    return loaded.model, loaded.params
  model = model_lib.build(config.model, config.lsmm,
                          len(data.wavelengths(config.data)))
  init_rng = jax.random.split(jax.random.key(config.seed), 3)[0]  # As train.
  return model, inference.init_params(model, init_rng)


def _downstream(config, path, featurizer, class_names, seed, full):
  """The downstream json at `path` (computed once); `featurizer()` ->
  (featurize, patch_size) as in downstream.evaluate. Without `full`, only
  the linear head on all labels."""
  if path.exists():
    return json.loads(path.read_text())
  cfg = copy.deepcopy(config)
  if not full:
    with cfg.unlocked():
      cfg.tables.downstream.label_fractions = (1.0,)
      cfg.tables.downstream.heads = ("linear",)
  res = downstream.evaluate(*featurizer(), cfg, class_names, seed)
  report.write_json(path, res)
  return res


def _cached(path, compute):
  """The json at `path`, computed (and written) once."""
  if path.exists():
    return json.loads(path.read_text())
  res = compute()
  report.write_json(path, res)
  return res


def _finetuned(config, cfg, wd, class_names, seed, pretrained=True):
  """{'finetune': ...} of a run's encoder (or, not pretrained, of its
  untrained init: the from-scratch floor), cached in finetune.json; {} when
  tables.downstream.finetune is off."""
  if not config.tables.downstream.finetune:
    return {}
  def compute():
    model, params = restore_model(cfg, wd, pretrained)
    return downstream.evaluate_finetune(
        model, params, data.band_stats(config.data), config, class_names, seed)
  return _cached(wd / "finetune.json", compute)


def _encoder(config, wd, pretrained=True, step=None):
  """featurizer() of a run's checkpoint (or its untrained init)."""
  def featurizer():
    model, params = restore_model(config, wd, pretrained, step)
    return (downstream.encoder_featurizer(model, params,
                                          data.band_stats(config.data)),
            model.patch_size)
  return featurizer


def _raw_spectra(config):
  """featurizer() of the raw-spectra floor (no encoder)."""
  p = config.model.patch_size
  return lambda: (downstream.raw_featurizer(p, data.band_stats(config.data)), p)


def learning_curve(config, cfg, wd, class_names, seed, final):
  """{step: linear-probe metrics (all label fractions, region A held out)}
  of every checkpoint a CURVE_RUNS run kept; cached in curve.json. The last
  step's are `final`'s (the run's downstream.json), not computed again."""
  path = wd / "curve.json"
  if path.exists():
    return json.loads(path.read_text())
  cc = copy.deepcopy(config)
  with cc.unlocked():
    cc.tables.downstream.heads = ("linear",)
  ckpt = ckpt_lib.Checkpointer(wd, 1, None, create=False)
  try:
    steps = ckpt.all_steps()
  finally:
    ckpt.close()
  out = {}
  for step in steps:
    if step == cfg.train.steps:
      res = final
    else:
      res = downstream.evaluate(*_encoder(cfg, wd, step=step)(), cc,
                                class_names, seed, splits=("test",))
    out[str(step)] = {frac: r["test"] for frac, r in res["linear"].items()}
    logging.info("tables: learning curve, %s step %d done.", wd, step)
  report.write_json(path, out)
  return out


def unmixing_baselines(config, seed, class_names, vca_pixels):
  """FCLS with each tile's true endmembers, and VCA + FCLS on the pooled
  held-out pixels, scored as evaluate.py scores the LSMM head."""
  ev = config.evals
  cubes, abund, valid, true_em = [], [], [], []
  max_tiles = ev.num_tiles if ev.num_tiles > 0 else None
  for b in data.eval_batches(config.data, ev.split, ev.batch_size, max_tiles):
    cubes.append(b["cube"])
    abund.append(b["abundances"])
    valid.append(b["valid"])
    true_em.append(b["endmembers"])
  cube, abund = np.concatenate(cubes), np.concatenate(abund)
  valid, true_em = np.concatenate(valid), np.concatenate(true_em)
  ref = true_em.mean(axis=0)  # (M_true, B), as in evaluate.py.
  m_true = ref.shape[0]
  ceiling = np.zeros(abund.shape, np.float64)
  for i in range(len(cube)):  # The tile's own endmembers: the ceiling.
    ceiling[i][valid[i]] = unmixing.fcls(cube[i][valid[i]], true_em[i])
  pix = cube[valid]
  rng = np.random.default_rng(seed)
  sample = pix[rng.choice(len(pix), min(len(pix), vca_pixels),
                          replace=False)]
  vca_em, _ = unmixing.vca(sample, m_true, seed=seed)
  floor = np.zeros(abund.shape[:-1] + (m_true,), np.float64)
  floor[valid] = unmixing.fcls(pix, vca_em)
  out = {}
  ident = np.arange(m_true)
  for name, pred, rows, cols, sad in (
      ("fcls_true", ceiling, ident, ident, np.zeros(m_true)),
      ("vca_fcls", floor) + _matched(vca_em, ref)):
    rmse = np.asarray(metrics_lib.abundance_rmse(pred, abund, rows, cols, valid))
    names = [class_names[c] for c in cols]
    out[name] = {
        "sad_deg": dict(zip(names, np.asarray(sad, float).tolist())),
        "sad_deg_mean": float(np.mean(sad)),
        "abundance_rmse": dict(zip(names, rmse.tolist())),
        "abundance_rmse_mean": float(rmse.mean()),
    }
  out["vca_endmembers"] = vca_em
  return out


def _matched(learned, ref):
  rows, cols, _ = unmixing.match_endmembers(learned, ref)
  sad = metrics_lib.spectral_angle_distance(learned[rows], ref[cols])
  return rows, cols, np.asarray(sad)


def collect(config, workdir):
  """Runs (or reloads) everything; returns {run: [per-seed record]}."""
  tc = config.tables
  m_true = tc.m_true
  class_names = list(data.class_names(config.data))
  chosen = selected_runs(tc)
  records = {name: [] for name in list(chosen) + list(CONTROLS)}
  # One step per run and seed, and one per seed's controls.
  bar = progress.bar(len(tc.seeds) * (len(chosen) + 1), "tables", unit="run")
  for seed in tc.seeds:
    for name in chosen:
      cfg = run_config(config, name, seed, m_true)
      wd = epath.Path(workdir) / "runs" / name / f"seed{seed}"
      summary_path = wd / "summary.json"
      if summary_path.exists():
        logging.info("tables: %s seed %d done, reusing %s.", name, seed, wd)
      else:
        logging.info("tables: pretraining %s seed %d in %s.", name, seed, wd)
        train.train_and_evaluate(cfg, wd)
      summary = json.loads(summary_path.read_text())
      ds = _downstream(config, wd / "downstream.json", _encoder(cfg, wd),
                       class_names, seed, name in FULL_DOWNSTREAM)
      if name in FULL_DOWNSTREAM:
        ds = ds | _finetuned(config, cfg, wd, class_names, seed)
      record = {"summary": summary, "downstream": ds, "workdir": str(wd)}
      if tc.curve_points and name in CURVE_RUNS:
        record["curve"] = learning_curve(config, cfg, wd, class_names, seed,
                                         final=ds)
      records[name].append(record)
      bar.update()
    # Controls: an untrained encoder, raw spectra, classic unmixing baselines.
    cfg = run_config(config, "karma", seed, m_true)
    wd = epath.Path(workdir) / "runs" / "random_encoder" / f"seed{seed}"
    wd.mkdir(parents=True, exist_ok=True)
    ds = _downstream(config, wd / "downstream.json",
                     _encoder(cfg, wd, pretrained=False), class_names, seed,
                     True)
    ds = ds | _finetuned(config, cfg, wd, class_names, seed, pretrained=False)
    records["random_encoder"].append({"downstream": ds})
    wd = epath.Path(workdir) / "runs" / "raw_spectra" / f"seed{seed}"
    wd.mkdir(parents=True, exist_ok=True)
    ds = _downstream(config, wd / "downstream.json", _raw_spectra(config),
                     class_names, seed, True)
    ds = ds | _cached(wd / "pixel_classifiers.json", lambda: (
        downstream.pixel_classifiers(data.band_stats(config.data), config,
                                     class_names, seed)))
    records["raw_spectra"].append({"downstream": ds})
    wd = epath.Path(workdir) / "runs" / "baselines" / f"seed{seed}"
    wd.mkdir(parents=True, exist_ok=True)
    path = wd / "unmixing.json"
    if not path.exists():
      report.write_json(path, unmixing_baselines(cfg, seed, class_names,
                                                        tc.vca_pixels))
    records["baselines"].append({"unmixing": json.loads(path.read_text())})
    bar.update()
  bar.close()
  return records


# ---------------------------------------------------------------- aggregation
def cell(values):
  mean, (lo, hi) = table_report.ci95(values)
  return {"mean": mean, "ci95": [lo, hi], "values": [float(x) for x in values]}


def _row(per_seed):
  """[{metric: value}] per seed -> {metric: cell}; metrics missing or
  non-finite in any seed are left out (undefined on this data)."""
  keys = per_seed[0].keys()
  row = {}
  for k in keys:
    vals = [r.get(k, np.nan) for r in per_seed]
    vals = [float(v) if isinstance(v, (int, float)) else np.nan for v in vals]
    if np.all(np.isfinite(vals)):
      row[k] = cell(vals)
  return row


def _cls(res, suffix=""):
  """Classification metrics of one split's result, class accuracies included
  only for classes present in the split."""
  out = {k + suffix: res[k] for k in CLS_METRICS}
  for k, v in res.items():
    if k.startswith("acc_") and res["num_pixels_" + k[4:]] > 0:
      out[k + suffix] = v
  crops = [v for k, v in res.items() if k.startswith("acc_crop_")
           and res["num_pixels_" + k[4:]] > 0]
  if crops:  # The paper's cross-region claim is about crops.
    out["acc_crops" + suffix] = float(np.mean(crops))
  return out


MODEL_LABELS = {"random_encoder": "random encoder (no pretraining)",
                "raw_spectra": "raw spectra (no encoder)",
                "mae": "ViT-MAE", "karma": "KARMA"}


def _head_label(name, head):
  """Row label of a head; the untrained encoder fine-tuned is 'from scratch'."""
  return "finetune (from scratch)" if (name, head) == ("random_encoder",
                                                       "finetune") else head


def build_tables(records, config):
  """tables.json content from `collect`'s records."""
  labels = {k: v[0] for k, v in selected_runs(config.tables).items()}
  t = {name: {} for name in ("reconstruction", "downstream", "cross_region",
                             "unmixing", "ablation")}
  # Reconstruction of masked patches, region A held out.
  rec = lambda r, key: r["summary"]["reconstruction"][key]
  t["reconstruction"]["ViT-MAE"] = _row([rec(r, "model") for r in records["mae"]])
  t["reconstruction"]["KARMA"] = _row([rec(r, "model") for r in records["karma"]])
  t["reconstruction"]["train mean spectrum"] = _row(
      [rec(r, "train_mean") for r in records["karma"]])
  t["reconstruction"]["visible mean spectrum"] = _row(
      [rec(r, "visible_mean") for r in records["karma"]])
  for table in t["reconstruction"].values():
    for k in list(table):
      if k not in RECON_METRICS:
        del table[k]
  # Downstream (region A) for every head and label fraction; cross-region.
  for name in FULL_DOWNSTREAM:
    recs = records.get(name)
    if not recs:
      continue
    for head, by_frac in recs[0]["downstream"].items():
      for frac in by_frac:
        row = f"{MODEL_LABELS[name]} | {_head_label(name, head)} | {100 * float(frac):g} % labels"
        t["downstream"][row] = _row(
            [_cls(r["downstream"][head][frac]["test"]) for r in recs])
      full = max(by_frac, key=float)
      t["cross_region"][f"{MODEL_LABELS[name]} | {_head_label(name, head)}"] = _row([
          _cls(r["downstream"][head][full]["test"], "_A")
          | _cls(r["downstream"][head][full]["test_b"], "_B") for r in recs])
  # Unmixing against the truth.
  def unmix(u):
    out = {"abundance_rmse_mean": u["abundance_rmse_mean"],
           "sad_deg_mean": u["sad_deg_mean"]}
    out.update({f"abundance_rmse_{k}": v for k, v in u["abundance_rmse"].items()})
    return out
  for name, row in (("karma", "KARMA LSMM head (default: pixel head, learned from k-means init)"),
                    ("lsmm_paper", "KARMA LSMM as in the paper (token head, learned from random)"),
                    ("lsmm_token_head", "token head, learned from k-means init"),
                    ("lsmm_random_init", "pixel head, learned from smooth random init"),
                    ("em_learned_library", "pixel head, learned from library"),
                    ("em_fixed_library", "pixel head, fixed library endmembers")):
    if not records.get(name):
      continue
    t["unmixing"][row] = _row([unmix(r["summary"]["unmixing"])
                               for r in records[name]])
  t["unmixing"]["FCLS, true endmembers (ceiling)"] = _row(
      [unmix(r["unmixing"]["fcls_true"]) for r in records["baselines"]])
  t["unmixing"]["VCA + FCLS (blind floor)"] = _row(
      [unmix(r["unmixing"]["vca_fcls"]) for r in records["baselines"]])
  if any("curve" in r for name in CURVE_RUNS for r in records.get(name, [])):
    t["learning_curves"] = learning_curve_table(records)
  # Ablations: reconstruction, linear probe (all labels), unmixing when LSMM.
  for name, label in labels.items():
    per_seed = []
    for r in records[name]:
      s = r["summary"]
      m = {k: s["reconstruction"]["model"][k] for k in ("psnr", "ssim", "sam_deg")}
      lin = r["downstream"]["linear"]
      lin = lin[max(lin, key=float)]["test"]
      m["linear_top1"], m["linear_miou"] = lin["top1"], lin["miou"]
      if "unmixing" in s:
        m["lsmm_psnr"] = s["lsmm_reconstruction"]["psnr"]
        m["sad_deg_mean"] = s["unmixing"]["sad_deg_mean"]
        m["abundance_rmse_mean"] = s["unmixing"]["abundance_rmse_mean"]
      per_seed.append(m)
    t["ablation"][label] = _row(per_seed)
  return t


def _curve_metrics(by_frac):
  """{'top1_<pct>pct', 'miou_<pct>pct'} of {str(fraction): metrics}."""
  return {f"{m}_{100 * float(frac):g}pct": res[m]
          for frac, res in by_frac.items() for m in ("top1", "miou")}


def learning_curve_table(records):
  """{'<model> | step <s>': {metric: cell}}: held-out masked-patch PSNR
  (`psnr`, from the run's periodic evaluation) and the linear probe per
  label fraction at each kept checkpoint; the random encoder is step 0."""
  table = {}
  ds = [r["downstream"]["linear"] for r in records.get("random_encoder", [])]
  if ds:
    table[f"{MODEL_LABELS['random_encoder']} | step 0"] = _row(
        [_curve_metrics({f: d[f]["test"] for f in d}) for d in ds])
  for name in CURVE_RUNS:
    recs = [r for r in records.get(name, []) if "curve" in r]
    if not recs:
      continue
    steps = sorted({int(s) for r in recs for s in r["curve"]})
    for step in steps:
      per_seed = []
      for r in recs:
        if str(step) not in r["curve"]:
          continue
        m = _curve_metrics(r["curve"][str(step)])
        psnr = [row["eval/psnr"] for row in report.read_jsonl(
            epath.Path(r["workdir"]) / "metrics.jsonl")
                if row.get("step") == step and "eval/psnr" in row]
        if psnr:
          m["psnr"] = psnr[-1]
        per_seed.append(m)
      if len(per_seed) == len(recs):
        table[f"{MODEL_LABELS[name]} | step {step}"] = _row(per_seed)
  return table


def _validate(tc):
  def need(ok, field, msg):
    if not ok:
      raise ValueError(f"config.tables.{field}: {msg}")
  need(len(tc.seeds) >= 1, "seeds", "needs at least one seed.")
  need(len(set(tc.seeds)) == len(tc.seeds), "seeds", f"repeats a seed: {tc.seeds}.")
  need(tc.m_true >= 3, "m_true", f"must be >= 3 (M_true - 2 >= 1), got {tc.m_true}.")
  fr = tc.downstream.label_fractions
  need(all(0 < f <= 1 for f in fr) and 1.0 in fr, "downstream.label_fractions",
       f"fractions in (0, 1] including 1.0, got {fr}.")
  need(set(tc.downstream.heads) == {"linear", "conv"}, "downstream.heads",
       f"the tables need both 'linear' and 'conv', got {tc.downstream.heads}.")
  need(tc.downstream.steps >= 1, "downstream.steps", "must be >= 1.")
  need(tc.vca_pixels >= tc.m_true, "vca_pixels", "must be >= m_true.")
  unknown = set(tc.runs) - set(runs(tc.m_true))
  need(not unknown, "runs", f"unknown run(s) {sorted(unknown)}; known: "
       f"{sorted(runs(tc.m_true))}.")
  need({"mae", "karma"} <= set(tc.runs or runs(tc.m_true)), "runs",
       f"the tables compare 'mae' and 'karma'; got {tc.runs}.")
  need(tc.curve_points >= 0, "curve_points", "must be >= 0 (0: off).")


def run(config, workdir):
  """Everything: runs, tables.json, figures/, report.md. Returns the tables."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _validate(config.tables)
  # Seeds > 0 reuse seed 0's compilations; a cache the user set up is kept.
  if config.tables.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  report.write_json(workdir / "tables_config.json", config.to_dict())
  # Every code revision that ran part of this workdir (resumes can mix them).
  revisions = report.record_revision(workdir)
  records = collect(config, workdir)
  tables = build_tables(records, config)
  report.write_json(workdir / "tables.json", tables)
  figures = table_report.write_figures(workdir, records, tables, config)
  table_report.write_markdown(workdir / "report.md", tables, figures, config,
                              revisions)
  logging.info("Wrote %s and %s.", workdir / "tables.json",
               workdir / "report.md")
  return tables
