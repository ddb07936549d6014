"""End to end: configs/paper_tables.py:tiny -> tables.json, report.md, figures."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from kgmae_jax import table_report
from kgmae_jax import tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("random encoder (no pretraining)", "raw spectra (no encoder)",
          "ViT-MAE", "KARMA")
# (model, head) rows: frozen probes for all, fine-tuning for the encoders
# (the untrained one's is from scratch), classic classifiers on raw spectra.
HEADS = ([(m, h) for m in MODELS for h in ("linear", "conv")]
         + [("ViT-MAE", "finetune"), ("KARMA", "finetune"),
            ("random encoder (no pretraining)", "finetune (from scratch)"),
            ("raw spectra (no encoder)", "logreg"),
            ("raw spectra (no encoder)", "svm")])
EXPECTED = {
    "reconstruction": ({"ViT-MAE", "KARMA", "train mean spectrum",
                        "visible mean spectrum"},
                       {"psnr", "ssim", "sam_deg", "rmse", "ergas"}),
    "downstream": ({f"{m} | {h} | {f} % labels" for m, h in HEADS
                    for f in (1, 10, 100)},
                   {"top1", "mean_class_acc", "miou", "kappa"}),
    "cross_region": ({f"{m} | {h}" for m, h in HEADS},
                     {"top1_A", "miou_A", "top1_B", "miou_B"}),
    "unmixing": ({"KARMA LSMM head (default: pixel head, learned from k-means init)",
                  "KARMA LSMM as in the paper (token head, learned from random)",
                  "token head, learned from k-means init",
                  "pixel head, learned from smooth random init",
                  "pixel head, learned from library",
                  "pixel head, fixed library endmembers",
                  "FCLS, true endmembers (ceiling)", "VCA + FCLS (blind floor)"},
                 {"abundance_rmse_mean", "sad_deg_mean"}),
    "ablation": ({"ViT-MAE (Huber only)", "Huber + SAM", "Huber + LSMM",
                  "KARMA: Huber + SAM + LSMM", "M = 8", "M = 14",
                  "endmembers fixed (library)", "endmembers learned from library",
                  "LSMM as in the paper (token head, random init, softplus)",
                  "token head (k-means init)", "smooth random init (pixel head)"},
                 {"psnr", "ssim", "sam_deg", "linear_top1", "linear_miou"}),
    # Tiny: 3 steps, a checkpoint (and held-out eval) at each.
    "learning_curves": ({"random encoder (no pretraining) | step 0"}
                        | {f"{m} | step {s}" for m in ("ViT-MAE", "KARMA")
                           for s in (1, 2, 3)},
                        {"top1_1pct", "miou_1pct", "top1_100pct"}),
}
LSMM_ROWS = {"Huber + LSMM", "KARMA: Huber + SAM + LSMM", "M = 8", "M = 14",
             "endmembers fixed (library)", "endmembers learned from library",
             "LSMM as in the paper (token head, random init, softplus)",
             "token head (k-means init)", "smooth random init (pixel head)"}


def _tiny_config(data_dir):
  spec = importlib.util.spec_from_file_location(
      "paper_tables", ROOT / "configs" / "paper_tables.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.data.data_dir = str(data_dir)
  config.tables.compilation_cache = False  # Leave the test process's jax alone.
  # k-means endmember init on 1024 of the 4096 training pixels (the preset
  # takes all): a quarter of the time in each LSMM run; no check reads it.
  config.lsmm.init_pixels = 1024
  return config


@pytest.mark.slow  # Minutes: 8 pretraining runs, each compiled anew.
def test_tables_end_to_end_and_resume(tmp_path):
  config = _tiny_config(tmp_path / "data")
  workdir = tmp_path / "tables"
  tables.run(config, workdir)
  got = json.loads((workdir / "tables.json").read_text())
  assert set(got) == set(EXPECTED)
  for name, (rows, metrics) in EXPECTED.items():
    assert set(got[name]) == rows, name
    for row, cells in got[name].items():
      need = metrics | ({"sad_deg_mean", "abundance_rmse_mean", "lsmm_psnr"}
                        if name == "ablation" and row in LSMM_ROWS else set())
      need |= {"psnr"} if name == "learning_curves" and "step 0" not in row else set()
      assert need <= set(cells), (name, row, need - set(cells))
      for metric, cell in cells.items():
        lo, hi = cell["ci95"]
        assert len(cell["values"]) == 1, (name, row, metric)
        assert all(math.isfinite(x) for x in (cell["mean"], lo, hi, *cell["values"]))
        assert lo == hi == cell["mean"] == cell["values"][0]  # One seed: a point.
  # Unmixing ceiling: true endmembers, SAD 0, better abundances than VCA.
  unmix = got["unmixing"]
  assert unmix["FCLS, true endmembers (ceiling)"]["sad_deg_mean"]["mean"] == 0
  assert (unmix["FCLS, true endmembers (ceiling)"]["abundance_rmse_mean"]["mean"]
          < unmix["VCA + FCLS (blind floor)"]["abundance_rmse_mean"]["mean"])
  report = (workdir / "report.md").read_text()
  for name in EXPECTED:
    assert f"## {name}" in report
  assert "## Verdict per claim, in plain words" in report
  assert "Random-encoder check" in report
  for rel in ("figures/label_fractions.png", "figures/loss_terms.png",
              "figures/learning_curves.png",
              "figures/karma_endmembers.png", "figures/karma_abundances.png"):
    assert (workdir / rel).exists() and f"({rel})" in report
  # Rerunning reuses every finished run and gives the same tables.
  summary = workdir / "runs" / "karma" / "seed0" / "summary.json"
  stamp = summary.stat().st_mtime_ns
  assert tables.run(config, workdir) == got
  assert summary.stat().st_mtime_ns == stamp


def test_ci95_is_the_t_interval():
  from scipy import stats
  values = [1.0, 2.5, 1.7, 3.1]
  mean, (lo, hi) = table_report.ci95(values)
  ref = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                         scale=stats.sem(values))
  np.testing.assert_allclose([mean, lo, hi], [np.mean(values), *ref], rtol=1e-12)
  assert table_report.ci95([2.0]) == (2.0, [2.0, 2.0])


def test_rows_leave_out_metrics_undefined_in_a_seed():
  row = tables._row([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}])
  assert set(row) == {"a"} and row["a"]["values"] == [1.0, 3.0]


def test_untrained_encoder_is_the_trainers_init(tmp_path):
  """restore_model(pretrained=False) builds no trainer yet gives exactly the
  parameters training starts from (lsmm.init 'random')."""
  import jax  # pylint: disable=g-import-not-at-top
  from kgmae_jax import sharding, train  # pylint: disable=g-import-not-at-top
  config = _tiny_config(tmp_path)
  model, params = tables.restore_model(config, tmp_path, pretrained=False)
  mesh = sharding.make_mesh(config.mesh)
  b = model.num_bands
  trainer = train.build_trainer(config, mesh, b, np.zeros(b), np.ones(b))
  init_rng = jax.random.split(jax.random.key(config.seed), 3)[0]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               jax.device_get(trainer.init(init_rng).params))


def _cells(values_by_row, metric="top1"):
  return {row: {metric: tables.cell(v)} for row, v in values_by_row.items()}


def test_verdicts_in_plain_words_and_the_random_encoder_check():
  rows = {
      "ViT-MAE | linear | 1 % labels": [40.0, 41.0, 42.0],
      "KARMA | linear | 1 % labels": [45.0, 46.0, 47.5],
      "random encoder (no pretraining) | linear | 1 % labels": [30.0, 31.0, 29.0],
      "raw spectra (no encoder) | linear | 1 % labels": [44.0, 47.0, 46.0],
  }
  t = {"downstream": _cells(rows)}
  text = table_report.verdict_markdown(t)
  assert "KARMA > random encoder (Top-1, linear, 1 %) holds here" in text
  assert "ViT-MAE > raw spectra (Top-1, linear, 1 %) is reversed here" in text
  assert "KARMA > raw spectra (Top-1, linear, 1 %) is not shown here" in text
  assert "best pretrained (KARMA) 46.2 %" in text and "intervals separated" in text
  rows["random encoder (no pretraining) | linear | 1 % labels"] = [44, 47, 46.5]
  text = table_report.verdict_markdown({"downstream": _cells(rows)})
  assert "intervals overlapping" in text


def test_learning_curve_table_reads_probe_and_periodic_eval(tmp_path):
  def run(seed, psnr):
    wd = tmp_path / f"s{seed}"
    wd.mkdir()
    (wd / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in (
            {"step": 5, "loss": 1.0}, {"step": 5, "eval/psnr": psnr},
            {"step": 10, "eval/psnr": psnr + 1})))
    probe = lambda t: {"0.01": {"top1": t, "miou": t / 2},
                       "1.0": {"top1": t + 10, "miou": t}}
    return {"workdir": str(wd), "curve": {"5": probe(40.0 + seed),
                                          "10": probe(50.0 + seed)}}
  records = {"mae": [run(0, 15.0), run(1, 16.0)],
             "random_encoder": [{"downstream": {"linear": {
                 f: {"test": {"top1": 30.0, "miou": 10.0}} for f in ("0.01", "1.0")}}}] * 2}
  t = tables.learning_curve_table(records)
  assert list(t) == ["random encoder (no pretraining) | step 0",
                     "ViT-MAE | step 5", "ViT-MAE | step 10"]
  assert t["ViT-MAE | step 10"]["psnr"]["values"] == [16.0, 17.0]
  assert t["ViT-MAE | step 5"]["top1_1pct"]["values"] == [40.0, 41.0]
  assert t["ViT-MAE | step 5"]["miou_100pct"]["values"] == [40.0, 41.0]
  assert "psnr" not in t["random encoder (no pretraining) | step 0"]


def test_medium_preset_is_the_main_comparison_with_curves():
  spec = importlib.util.spec_from_file_location(
      "paper_tables", ROOT / "configs" / "paper_tables.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("medium")
  assert tuple(c.tables.runs) == ("mae", "karma") and len(c.tables.seeds) == 3
  assert list(tables.selected_runs(c.tables)) == ["mae", "karma"]
  cfg = tables.run_config(c, "karma", 1, c.tables.m_true)
  points = c.tables.curve_points
  assert cfg.ckpt.every_steps * points == c.train.steps == cfg.evals.every_steps * points
  assert cfg.ckpt.keep == points and cfg.seed == 1 and "tables" not in cfg
  with pytest.raises(ValueError, match="config.tables.runs"):
    with c.unlocked():
      c.tables.runs = ("karma", "nope")
    tables._validate(c.tables)
