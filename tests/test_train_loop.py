"""train_and_evaluate end to end on a tiny build: outputs, exact resume,
corrupt checkpoints, shape mismatches, NaN guard."""

import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.checkpointers import async_checkpointer
import pytest

from kgmae_jax import checkpoint as ckpt_lib
from kgmae_jax import data
from kgmae_jax import report
from kgmae_jax import train
from kgmae_jax import workdir as workdir_lib
from tests import tiny_config


@pytest.fixture(scope="module")
def data_dir(tiny_run):
  """The shared run's data_dir: its build serves this module's runs too."""
  return tiny_run[1].data.data_dir


def config_for(data_dir, **train_overrides):
  c = tiny_config.get_config()
  c.data.data_dir = data_dir
  c.data.num_test_b = 0
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def final_params(workdir, config):
  """(meta, params) of the latest checkpoint, restored as saved."""
  del config
  ckpt = ckpt_lib.Checkpointer(workdir, 1, 5)
  restored = ckpt.manager.restore(ckpt.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  ckpt.close()
  return restored.meta, jax.device_get(restored.state["params"])


def same_tree(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def log_rows(workdir):
  rows = report.read_jsonl(workdir / "metrics.jsonl")
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]


@pytest.fixture(scope="module")
def reference(tiny_run):
  """An uninterrupted 8-step run: logs every 2 steps, checkpoints every 4
  (conftest's, shared with test_inference.py; config_for(data_dir)'s config)."""
  return tiny_run


def test_outputs(reference):
  workdir, _, summary = reference
  for name in ("config.json", "summary.json", "metrics.jsonl", "loss_curves.png",
               "reconstructions.png", "endmembers.png", "abundances.png"):
    assert (workdir / name).exists(), name
  saved = json.loads((workdir / "summary.json").read_text())
  for row in ("model", "train_mean", "visible_mean"):
    for metric in ("psnr", "ssim", "sam_deg", "rmse", "ergas"):
      assert np.isfinite(saved["reconstruction"][row][metric]), (row, metric)
  assert saved["unmixing"]["sad_deg_mean"] >= 0
  assert [r["step"] for r in log_rows(workdir)] == [2, 4, 6, 8]
  assert all(r["param_norm"] > 0 for r in log_rows(workdir))  # The loop's, at log steps.
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8]
  meta, _ = final_params(workdir, None)
  assert meta["num_bands"] == 218 and len(meta["wavelengths_nm"]) == 218
  assert len(meta["band_mean"]) == len(meta["band_std"]) == 218
  assert summary["train"]["steps"] == 8


def crashed_copy(reference, tmp_path, damage):
  """The reference workdir as if the run had died after step 4 (or with a
  damaged step-8 checkpoint)."""
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  step8 = workdir / "checkpoints" / "8"
  if damage == "deleted":
    shutil.rmtree(step8)
  elif damage == "missing_dir":
    shutil.rmtree(step8 / "state")
  elif damage == "truncated":
    for f in (step8 / "state").rglob("*"):
      if f.is_file() and f.stat().st_size > 100:
        f.write_bytes(f.read_bytes()[:50])
  (workdir / "summary.json").unlink()
  return workdir


@pytest.mark.parametrize("damage", ["deleted", "truncated", "missing_dir"])
def test_resume_ends_exactly_like_uninterrupted(reference, tmp_path, damage,
                                                no_eval):
  ref_dir, config, _ = reference
  workdir = crashed_copy(reference, tmp_path, damage)
  train.train_and_evaluate(config, str(workdir))
  same_tree(final_params(workdir, config)[1], final_params(ref_dir, config)[1])
  assert log_rows(workdir) == log_rows(ref_dir)
  if damage != "deleted":  # The broken step was set aside, not silently lost.
    assert (workdir / "corrupt_checkpoints" / "8").is_dir()


def test_checkpoint_of_another_model_shape_lists_parameters(reference, tmp_path):
  workdir = crashed_copy(reference, tmp_path, "deleted")
  config = config_for(reference[1].data.data_dir)
  config.model.width = 48
  config.lsmm.num_endmembers = 4
  config.train.allow_config_change = True  # Past the config check.
  with pytest.raises(ckpt_lib.ShapeMismatchError) as e:
    train.train_and_evaluate(config, str(workdir))
  msg = str(e.value)
  assert "embed/kernel: checkpoint (3488, 32) vs model (3488, 48)" in msg
  assert "endmembers_raw: checkpoint (218, 3) vs model (218, 4)" in msg


def test_band_count_differs_from_config(data_dir, tmp_path):
  config = config_for(data_dir)
  config.data.num_bands = 200
  with pytest.raises(ValueError, match=r"data.num_bands: .*200 bands.* has 218"):
    train.train_and_evaluate(config, str(tmp_path))


def nan_at_step(monkeypatch, *bad_steps):
  """Feeds a NaN pixel marked valid at `bad_steps`, bypassing data.prepare."""
  real = data.train_iterator

  def poisoned(*args, start_step=0, **kwargs):
    for step, batch in enumerate(real(*args, start_step=start_step, **kwargs),
                                 start=start_step + 1):
      if step in bad_steps:
        batch = dict(batch, cube=batch["cube"].copy())
        batch["cube"][0, 0, 0, 5] = np.nan
      yield batch

  monkeypatch.setattr(data, "train_iterator", poisoned)


def test_nonfinite_loss_stops_naming_step_and_term(data_dir, tmp_path, monkeypatch):
  nan_at_step(monkeypatch, 6)
  with pytest.raises(FloatingPointError, match=r"at step 6: huber, .*no checkpoint"):
    train.train_and_evaluate(config_for(data_dir), str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4]
  assert [r["step"] for r in log_rows(tmp_path)] == [2, 4]


def test_nonfinite_loss_skip_mode(data_dir, tmp_path, monkeypatch, no_eval):
  nan_at_step(monkeypatch, 3)
  train.train_and_evaluate(config_for(data_dir, on_nonfinite="skip"), str(tmp_path))
  rows = log_rows(tmp_path)
  assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1]
  assert all(np.isfinite(r["loss"]) for r in rows)
  _, params = final_params(tmp_path, None)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_too_many_nonfinite_steps_in_a_row_stop_skip_mode(data_dir, tmp_path, monkeypatch):
  nan_at_step(monkeypatch, 3, 4)
  config = config_for(data_dir, on_nonfinite="skip", max_skipped_in_a_row=2)
  with pytest.raises(FloatingPointError, match=r"between steps 3 and 4: huber"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == []


# ------------------------------------------- one run per workdir (issue 13)
def test_second_writer_is_refused_and_a_killed_holder_does_not_block(reference, tmp_path, no_eval):
  ref_dir, config, _ = reference
  workdir = crashed_copy(reference, tmp_path, "deleted")
  record = (workdir / "config.json").read_bytes()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from kgmae_jax import workdir\n"
       "with workdir.lock(sys.argv[1]):\n  print('held', flush=True)\n"
       "  time.sleep(600)", str(workdir)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirLocked,
                       match=rf"in use by process {holder.pid} on host"):
      train.train_and_evaluate(config, str(workdir))
    assert (workdir / "config.json").read_bytes() == record
  finally:
    holder.kill()  # kill -9: the lock file stays behind, the flock does not.
    holder.wait()
  assert (workdir / workdir_lib.LOCK_FILE).exists()
  train.train_and_evaluate(config, str(workdir))
  same_tree(final_params(workdir, config)[1], final_params(ref_dir, config)[1])


def test_concurrent_first_builds_of_one_data_dir_both_succeed(tmp_path):
  """Two processes building the same data set at once: one builds, the
  other waits for it (TFDS alone: FileExistsError on the rename)."""
  go = tmp_path / "go"
  code = ("import os, sys, time\n"
          "from kgmae_jax import data\nfrom tests import tiny_config\n"
          "c = tiny_config.get_config().data\nc.data_dir = sys.argv[1]\n"
          "c.num_train, c.num_test, c.num_test_b = 8, 0, 0\n"
          "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n"
          "data.band_stats(c)\nprint('ok')\n")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d"),
                             str(go)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            cwd=pathlib.Path(__file__).parents[1])
           for _ in range(2)]
  go.touch()
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and out.strip().endswith("ok"), err[-2000:]


def test_resume_with_another_config_is_refused_with_a_diff(reference, tmp_path):
  workdir = crashed_copy(reference, tmp_path, "deleted")  # At step 4.
  record = (workdir / "config.json").read_bytes()
  config = config_for(reference[1].data.data_dir)
  config.optim.lr = 5e-2
  config.train.steps = 30
  with pytest.raises(workdir_lib.ConfigChangeError) as e:
    train.train_and_evaluate(config, str(workdir))
  assert "optim.lr: checkpoint 0.003 vs now 0.05" in str(e.value)
  assert "train.steps: checkpoint 8 vs now 30" in str(e.value)
  assert "train.allow_config_change=True" in str(e.value)
  config = config_for(reference[1].data.data_dir)
  config.train.steps = 2
  with pytest.raises(workdir_lib.ConfigChangeError,
                     match=r"train.steps=2 is below the step .*\(4\)"):
    train.train_and_evaluate(config, str(workdir))
  assert (workdir / "config.json").read_bytes() == record
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4]


def test_resume_check_fields_override_and_data(reference):
  _, config, _ = reference
  saved = json.loads(json.dumps(report.jsonable(config.to_dict())))
  changed = config_for(config.data.data_dir)
  changed.ckpt.every_steps = 7  # Bookkeeping: no diff.
  changed.evals.num_tiles = 2
  workdir_lib.check_resume_config(changed, saved, 4, "ckpt")
  older = json.loads(json.dumps(saved))  # Made before a field existed.
  del older["data"]["drop_bands"], older["train"]["allow_config_change"]
  workdir_lib.check_resume_config(changed, older, 4, "ckpt")
  changed.data.scene = "/other/cube.tif"  # Another scene: refused...
  with pytest.raises(workdir_lib.ConfigChangeError, match="data.scene"):
    workdir_lib.check_resume_config(changed, saved, 4, "ckpt")
  changed.train.allow_config_change = True  # ...unless asked for.
  workdir_lib.check_resume_config(changed, saved, 4, "ckpt")
  meta = {"wavelengths_nm": [400.0, 500.0], "band_mean": [0.1, 0.2],
          "band_std": [0.01, 0.02]}
  other = dict(meta, band_mean=[0.1, 0.3])  # Same bands, other statistics.
  with pytest.raises(workdir_lib.ConfigChangeError,
                     match=r"band_mean: differs in 1 bands \(first: band 1"):
    workdir_lib.check_resume_data(other, meta, config)


def test_resume_check_reads_the_saved_config_as_from_saved():
  """A checkpoint from before the LSMM fields meant the token head and
  softplus endmembers (config_lib.from_saved), not today's defaults."""
  config = config_for("/tmp/unused")
  saved = json.loads(json.dumps(report.jsonable(config.to_dict())))
  for key in ("head", "max_reflectance", "lr_mult", "init_pixels"):
    del saved["lsmm"][key]
  with pytest.raises(workdir_lib.ConfigChangeError) as e:
    workdir_lib.check_resume_config(config, saved, 4, "ckpt")
  assert "lsmm.head: checkpoint 'token' vs now 'pixel'" in str(e.value)
  assert "lsmm.max_reflectance: checkpoint 0.0 vs now 1.0" in str(e.value)
  assert "lsmm.init_pixels" not in str(e.value)  # Its legacy value is today's.
  config.lsmm.head, config.lsmm.max_reflectance = "token", 0.0
  config.lsmm.lr_mult = 1.0
  workdir_lib.check_resume_config(config, saved, 4, "ckpt")  # The same run.


def test_failed_async_save_stops_the_run_naming_step_path_and_cause(
    data_dir, tmp_path, monkeypatch):
  real = async_checkpointer._background_wait_for_commit_futures

  def disk_full(directory, *args, **kwargs):
    if re.search(r"checkpoints/4\b", str(directory)):
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(directory, *args, **kwargs)

  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures",
                      disk_full)
  config = config_for(data_dir)
  config.ckpt.every_steps = 2
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r"checkpoint of step 4 to .*checkpoints/4 failed: "
                     r"OSError: .*No space left on device.*stopped at step "
                     r"(5|6).*previous checkpoint \(step 2\) is intact"):
    train.train_and_evaluate(config, str(tmp_path))
  assert max(r["step"] for r in log_rows(tmp_path)) <= 6
  assert ckpt_lib.Checkpointer(tmp_path, 2, 2).manager.all_steps() == [2]


def test_first_row_after_a_resume_equals_the_uninterrupted_row(reference, tmp_path, monkeypatch, no_eval):
  """Preempted at step 3 (between log rows at 2 and 4), then resumed: the
  row of step 4 averages steps 3 and 4, as in the uninterrupted run."""
  ref_dir, config, _ = reference
  real = train.build_trainer

  def sigterm_during_step_3(*args, **kwargs):
    trainer = real(*args, **kwargs)
    calls = []

    def step(state, batch, rng):
      calls.append(1)
      if len(calls) == 3:  # A fresh run: the third call is step 3.
        os.kill(os.getpid(), signal.SIGTERM)
      return trainer.step(state, batch, rng)

    return dataclasses.replace(trainer, step=step)

  monkeypatch.setattr(train, "build_trainer", sigterm_during_step_3)
  with pytest.raises(train.Preempted, match="at step 3 "):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(train, "build_trainer", real)
  train.train_and_evaluate(config, str(tmp_path))
  assert log_rows(tmp_path) == log_rows(ref_dir)


def test_periodic_evaluation_is_logged_under_eval_and_leaves_training_alone(
    reference, tmp_path, no_eval):
  ref_dir, config, _ = reference
  config = config_for(config.data.data_dir)
  config.evals.every_steps = 4
  train.train_and_evaluate(config, str(tmp_path))
  rows = log_rows(tmp_path)
  evals = [r for r in rows if "loss" not in r]
  assert [r["step"] for r in evals] == [4, 8]
  for r in evals:
    for k in ("eval/psnr", "eval/ssim", "eval/sam_deg", "eval/lsmm_psnr"):
      assert np.isfinite(r[k]), k
  assert [r for r in rows if "loss" in r] == log_rows(ref_dir)
  assert list((tmp_path / "tensorboard").iterdir())
