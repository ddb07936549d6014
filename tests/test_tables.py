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
MODELS = ("random encoder (no pretraining)", "ViT-MAE", "KARMA")
EXPECTED = {
    "reconstruction": ({"ViT-MAE", "KARMA", "train mean spectrum",
                        "visible mean spectrum"},
                       {"psnr", "ssim", "sam_deg", "rmse", "ergas"}),
    "downstream": ({f"{m} | {h} | {f} % labels" for m in MODELS
                    for h in ("linear", "conv") for f in (1, 10, 100)},
                   {"top1", "mean_class_acc", "miou"}),
    "cross_region": ({f"{m} | {h}" for m in MODELS for h in ("linear", "conv")},
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
                  "KARMA: Huber + SAM + LSMM", "M = 4", "M = 10",
                  "endmembers fixed (library)", "endmembers learned from library",
                  "LSMM as in the paper (token head, random init, softplus)",
                  "token head (k-means init)", "smooth random init (pixel head)"},
                 {"psnr", "ssim", "sam_deg", "linear_top1", "linear_miou"}),
}
LSMM_ROWS = {"Huber + LSMM", "KARMA: Huber + SAM + LSMM", "M = 4", "M = 10",
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
  for rel in ("figures/label_fractions.png", "figures/loss_terms.png",
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
