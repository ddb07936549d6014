r"""Entry point: pretrain and evaluate from a config file.

  python -m kgmae_jax.main --config configs/quickstart.py --workdir runs/quickstart

A config with a `tables` group (configs/paper_tables.py) runs the whole set of
paper tables instead (kgmae_jax/tables.py).

Any field can be overridden, e.g. `--config.train.steps=100`. Rerunning with
the same --workdir resumes from its latest checkpoint. On a multi-host pod set
KGMAE_DISTRIBUTED=1 (or run under a launcher that sets the JAX coordinator
variables) so `jax.distributed.initialize()` is called first; set
KGMAE_EXPECTED_PROCESSES=N to fail fast unless N processes joined.
"""

import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kgmae_jax import config_lib
from kgmae_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, figures, summary.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_lib.validate(_CONFIG.value)  # Fail fast, before any import or build.
  workdir_lib.check_supported(_WORKDIR.value)  # Local or mounted paths only.
  if os.environ.get("KGMAE_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  from kgmae_jax import sharding, train  # pylint: disable=g-import-not-at-top
  sharding.check_process_count(os.environ.get("KGMAE_EXPECTED_PROCESSES"))
  try:
    if "tables" in _CONFIG.value and _CONFIG.value.data.labels:
      from kgmae_jax import scene_classification  # pylint: disable=g-import-not-at-top
      scene_classification.run(_CONFIG.value, _WORKDIR.value)
      return
    if "tables" in _CONFIG.value:
      from kgmae_jax import tables  # pylint: disable=g-import-not-at-top
      tables.run(_CONFIG.value, _WORKDIR.value)
      return
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Preempted as e:
    logging.warning("%s", e)
    sys.exit(128 + e.signum)  # The shell's convention for death by signal.
  rec = summary["metrics"]["reconstruction"]
  for name, m in rec.items():
    logging.info("%-13s PSNR %6.2f dB  SSIM %.3f  SAM %5.2f deg  RMSE %.4f",
                 name, m["psnr"], m["ssim"], m["sam_deg"], m["rmse"])
  logging.info("Wrote %s", os.path.join(_WORKDIR.value, "summary.json"))


if __name__ == "__main__":
  app.run(main)
