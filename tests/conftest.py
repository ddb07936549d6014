"""Test set-up: 8 fake CPU devices, so sharding code runs as on a small pod,
one persistent compilation cache for the session and its subprocesses (the
end-to-end tests compile the same tiny step many times), and the fixtures
several test modules share: one tiny trained run, and `no_eval`."""

import os
import tempfile

import pytest

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="kgmae_jax_test_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """One tiny KARMA pretraining run, shared by every test that only reads a
  trained workdir (or copies it): (workdir, config, summary).

  tests/tiny_config.py's `get_config` (16x16 tiles, 8 steps, logs every 2,
  checkpoints at 4 and 8) without the region-B split, on its own data_dir.
  """
  from kgmae_jax import train  # pylint: disable=g-import-not-at-top
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config.get_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("tiny_data"))
  config.data.num_test_b = 0
  workdir = tmp_path_factory.mktemp("tiny_run")
  summary = train.train_and_evaluate(config, str(workdir))
  return workdir, config, summary


@pytest.fixture
def no_eval(monkeypatch):
  """Skips train_and_evaluate's final evaluation and figures, for tests of
  the loop only (what they skip is tested on `tiny_run`)."""
  from kgmae_jax import evaluate, plots  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: {"metrics": {}})
  monkeypatch.setattr(plots, "write_all", lambda *a, **k: None)
