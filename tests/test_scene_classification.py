"""Labelled real scenes: class-map reading, label draws, tiling, and the
k-shot tables run end to end on a small synthetic scene."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from kgmae_jax import readers
from kgmae_jax import scene_classification as sc

ROOT = pathlib.Path(__file__).resolve().parents[1]
BANDS = 12


def _scene(tmp_path, h=24, w=20):
  """A .npy cube of three materials in vertical stripes, a class map with
  ids 0 (unlabelled), 3 and 7 and 9, a wavelengths file; nodata corner."""
  rng = np.random.default_rng(0)
  spectra = np.stack([np.linspace(0.1, 0.5, BANDS), np.linspace(0.5, 0.1, BANDS),
                      0.3 + 0.1 * np.sin(np.arange(BANDS))])
  cls = np.repeat(np.arange(3), -(-w // 3))[:w]
  cls = np.broadcast_to(cls, (h, w))
  cube = spectra[cls] + rng.normal(0, 0.01, (h, w, BANDS))
  cube = (cube * 1e4).astype(np.int16)
  cube[:2, :2] = -9999
  labels = np.array([3, 7, 9])[cls].astype(np.uint8)
  labels[5:8] = 0
  np.save(tmp_path / "cube.npy", cube)
  np.save(tmp_path / "labels.npy", labels)
  np.savetxt(tmp_path / "wl.txt", np.linspace(450, 2400, BANDS))
  return tmp_path


def _config(path, preset="real_scenes"):
  spec = importlib.util.spec_from_file_location(
      "paper_tables", ROOT / "configs" / "paper_tables.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(preset)
  c.data.scene = str(path / "cube.npy")
  c.data.labels = str(path / "labels.npy")
  c.data.wavelengths_file = str(path / "wl.txt")
  c.data.reflectance_scale = 1e-4
  c.data.data_dir = str(path / "tfds")
  return c


def test_load_maps_class_ids_and_marks_nodata_unlabelled(tmp_path):
  c = _config(_scene(tmp_path))
  scene = sc.load(c.data)
  assert scene.cube.shape == (24, 20, BANDS) and scene.class_ids == (3, 7, 9)
  assert scene.class_names == ("class 3", "class 7", "class 9")
  assert not scene.valid[0, 0] and scene.labels[0, 0] == -1
  assert np.all(scene.cube[0, 0] == 0)
  raw = np.load(tmp_path / "labels.npy")
  ok = scene.valid & (raw > 0)
  np.testing.assert_array_equal(np.array([3, 7, 9])[scene.labels[ok]], raw[ok])
  assert np.all(scene.labels[5:8] == -1)
  c.data.label_names = ("a", "b")
  with pytest.raises(ValueError, match="config.data.label_names"):
    sc.load(c.data)


def test_class_map_errors_name_the_field(tmp_path):
  np.save(tmp_path / "bad.npy", np.zeros((3, 4)))
  with pytest.raises(ValueError, match="config.data.labels: .* is \\(3, 4\\)"):
    readers.read_class_map(tmp_path / "bad.npy", (5, 4, 2))
  np.save(tmp_path / "frac.npy", np.full((3, 4), 0.5))
  with pytest.raises(ValueError, match="non-integer"):
    readers.read_class_map(tmp_path / "frac.npy", (3, 4))
  with pytest.raises(FileNotFoundError, match="config.data.labels"):
    readers.read_class_map(tmp_path / "none.npy", (3, 4))


def test_draw_k_per_class_at_most_half_and_reproducible():
  labels = np.full((10, 10), -1)
  labels[:5] = 0  # 50 pixels.
  labels[5, :6] = 1  # 6 pixels: at most 3 drawn.
  train = sc.draw(labels, 5, np.random.default_rng((0, 5, 1)))
  assert train[labels == 0].sum() == 5 and train[labels == 1].sum() == 3
  assert not train[labels == -1].any()
  again = sc.draw(labels, 5, np.random.default_rng((0, 5, 1)))
  np.testing.assert_array_equal(train, again)
  other = sc.draw(labels, 5, np.random.default_rng((0, 5, 2)))
  assert not np.array_equal(train, other)


def test_tiles_pad_and_keep_every_pixel():
  x = np.arange(5 * 7 * 2).reshape(5, 7, 2)
  t = sc.to_tiles(x, 4, -1)
  assert t.shape == (4, 4, 4, 2)
  np.testing.assert_array_equal(t[1, :, :3], x[:4, 4:7])
  np.testing.assert_array_equal(t[2, :1], x[4:5, :4])
  assert np.all(t[3, 1:] == -1) and np.all(t[1, :, 3] == -1)
  assert np.sort(t[t >= 0]).tolist() == sorted(x.ravel().tolist())


@pytest.mark.slow  # About a minute: two tiny pretraining runs, every method.
def test_real_scenes_run_end_to_end_and_resume(tmp_path):
  c = _config(_scene(tmp_path))
  c.data.tile_size = 12  # SSIM in the pretraining evaluation needs >= 11.
  c.data.tile_overlap = 6
  c.model.patch_size = 4
  c.model.width = c.model.dec_width = 16
  c.model.depth = c.model.dec_depth = 1
  c.model.num_heads = c.model.dec_num_heads = 2
  c.lsmm.num_endmembers = 3
  c.tables.m_true = 3
  c.lsmm.init_pixels = 64
  c.train.steps = 2
  c.train.batch_size = 8
  c.evals.batch_size = 4
  c.tables.seeds = (0,)
  c.tables.scene.shots = (2,)
  c.tables.scene.draws = 2
  c.tables.downstream.steps = 3
  c.tables.downstream.finetune_steps = 3
  c.tables.compilation_cache = False
  workdir = tmp_path / "work"
  table = sc.run(c, workdir)
  methods = {f"{m} | {h}" for m in ("ViT-MAE", "KARMA", "random init")
             for h in ("linear", "conv")} | {
                 "ViT-MAE | finetune", "KARMA | finetune",
                 "from scratch (fine-tuned from random init)",
                 "raw spectra | linear", "raw spectra | logreg",
                 "raw spectra | svm"}
  assert set(table) == {f"{m} | k = 2" for m in methods}
  for cells in table.values():
    assert set(cells) == set(sc.METRICS)
    assert len(cells["top1"]["values"]) == 2  # One seed x two draws.
    assert all(0 <= v <= 100 for v in cells["top1"]["values"])
  # Three well-separated spectra: the SVM classifies them.
  assert table["raw spectra | svm | k = 2"]["top1"]["mean"] > 90
  got = json.loads((workdir / "tables.json").read_text())
  assert got["scene_classification"] == json.loads(json.dumps(table))
  report = (workdir / "report.md").read_text()
  assert "KARMA fine-tuned − raw spectra | svm" in report
  stamp = (workdir / "runs" / "karma" / "seed0" / "summary.json").stat().st_mtime_ns
  assert sc.run(c, workdir) == table  # Resumes: nothing recomputed.
  assert (workdir / "runs" / "karma" / "seed0" / "summary.json"
          ).stat().st_mtime_ns == stamp
