"""`python -m kgmae_jax.main` as users run it: bad flags, preemption, kill -9."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kgmae_jax import train
from tests import test_train_loop
from tests import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def command(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "kgmae_jax.main", "--config", "tests/tiny_config.py",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.data.num_test_b=0", *overrides]


def run(cmd, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag, message", [
    ("--config.train.stepz=3", "stepz"),
    ("--config.model.mask_ratio=1.0", "config.model.mask_ratio: must be in (0, 1)"),
])  # Every other field's check: tests/test_config_lib.py.
def test_bad_flags_fail_at_start_naming_the_field(tmp_path, flag, message):
  result = run(command(tmp_path / "w", tmp_path / "d", flag))
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / "d").exists()  # Nothing built before the check.


def wait_for_checkpoint(proc, workdir, after_step, timeout=240):
  """Blocks until a finished checkpoint newer than `after_step` exists."""
  ckpts = workdir / "checkpoints"
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    done = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
    if any(s > after_step for s in done):
      return max(done)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.02)
  raise TimeoutError(f"no checkpoint after step {after_step} in {timeout} s")


def test_sigterm_then_kill9_then_resume_matches_uninterrupted(tmp_path,
                                                              no_eval):
  steps = 48
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  cmd = command(workdir, data_dir, f"--config.train.steps={steps}",
                "--config.train.log_every=1")

  # Preemption notice: finish the step, checkpoint, exit 128 + SIGTERM.
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  wait_for_checkpoint(proc, workdir, 0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "rerun the same command to resume" in err
  stopped = max(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert 4 <= stopped < steps
  rows = test_train_loop.log_rows(workdir)
  assert rows[-1]["step"] == stopped

  # Hard kill somewhere after the next checkpoint.
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  killed_after = wait_for_checkpoint(proc, workdir, stopped)
  os.kill(proc.pid, signal.SIGKILL)
  proc.communicate(timeout=60)
  assert killed_after < steps, "the run ended before it could be killed"

  result = run(cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step" in result.stderr

  # The same run, uninterrupted, in this process (parameters and log rows
  # only: no final evaluation).
  config = tiny_config.get_config()
  config.data.data_dir, config.data.num_test_b = str(data_dir), 0
  config.train.steps, config.train.log_every = steps, 1
  ref_dir = tmp_path / "ref"
  train.train_and_evaluate(config, str(ref_dir))
  jax.tree.map(np.testing.assert_array_equal,
               test_train_loop.final_params(workdir, None)[1],
               test_train_loop.final_params(ref_dir, None)[1])
  assert test_train_loop.log_rows(workdir) == test_train_loop.log_rows(ref_dir)


def test_sigterm_to_one_of_two_processes_makes_both_save_the_same_step(tmp_path):
  """Two CPU processes joined by jax.distributed.initialize on localhost
  (as on a pod): SIGTERM reaches process 1 only; both agree (orbax's
  reached_preemption) on one step, save it together and exit 128 + SIGTERM."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  runner = ("import sys, jax\n"
            f"jax.distributed.initialize('localhost:{port}', 2, int(sys.argv[1]))\n"
            "from absl import app\nfrom kgmae_jax import main\n"
            "sys.argv = ['main'] + sys.argv[2:]\napp.run(main.main)\n")
  env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                      "JAX_PLATFORMS": "cpu"}
  args = command(workdir, tmp_path / "data", "--config.train.steps=100000",
                 "--config.ckpt.every_steps=100000", "--config.train.log_every=1")[3:]
  procs = [subprocess.Popen([sys.executable, "-c", runner, str(i), *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    deadline = time.monotonic() + 300
    while not test_train_loop.log_rows(workdir):  # Both processes are training.
      assert time.monotonic() < deadline, "no metrics row"
      for p in procs:
        assert p.poll() is None, p.communicate()[1][-3000:]
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
  assert len(steps) == 1, steps
  for err in errs:
    assert f"Stopped by SIGTERM at step {steps[0]} after saving" in err
