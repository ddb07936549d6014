"""launch/ scripts: their dry runs print the gcloud / srun commands."""

import os
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", "configs/karma_enmap.py", "--workdir", "/mnt/shared/runs/k",
        "--config.train.steps=10"]


def dry_run(script, *args, **env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  out = subprocess.run(["bash", str(ROOT / "launch" / script), *args],
                       env=clean | {"DRY_RUN": "1", **env}, capture_output=True,
                       text=True, check=True, timeout=60)
  return [shlex.split(line[2:]) for line in out.stdout.splitlines()
          if line.startswith("+ ")]


def test_tpu_pod_dry_run_creates_copies_installs_runs_on_all_workers():
  cmds = dry_run("tpu_pod.sh", *ARGS, TPU_NAME="pod1", ZONE="z1",
                 ACCELERATOR="v5p-32", NUM_HOSTS="4")
  assert [c[:5] for c in cmds if c[0] == "gcloud"] == [
      ["gcloud", "compute", "tpus", "tpu-vm", v]
      for v in ("create", "scp", "ssh", "ssh")]
  create, scp, install, main = [c for c in cmds if c[0] == "gcloud"]
  assert create[5] == "pod1" and "v5p-32" in create and "z1" in create
  assert "--worker=all" in scp and "--worker=all" in install
  assert "pip install" in install[-1] and "jax[tpu]" in install[-1]
  assert "--worker=all" in main
  remote = main[main.index("--command") + 1]
  assert "KGMAE_DISTRIBUTED=1" in remote and "KGMAE_EXPECTED_PROCESSES=4" in remote
  assert remote.endswith("python -m kgmae_jax.main " + " ".join(ARGS))


def test_tpu_pod_dry_run_flag_and_usage():
  cmds = dry_run("tpu_pod.sh", "--dry-run", *ARGS, DRY_RUN="0")
  assert cmds[-1][-1].endswith(" ".join(ARGS))
  usage = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh")],
                         capture_output=True, text=True)
  assert usage.returncode == 2 and "usage" in usage.stderr


def test_slurm_dry_run_sets_coordinator_and_runs_srun():
  cmds = dry_run("slurm.sbatch", *ARGS)
  export, srun = cmds
  assert "JAX_COORDINATOR_ADDRESS=node0:29500" in export
  assert "KGMAE_EXPECTED_PROCESSES=16" in export and "KGMAE_DISTRIBUTED=1" in export
  assert srun[0] == "srun" and "--nodes=2" in srun and "--ntasks-per-node=8" in srun
  assert "python -m kgmae_jax.main" in srun[srun.index("-c") + 1]
  assert srun[-len(ARGS):] == ARGS
  env = dry_run("slurm.sbatch", *ARGS, JAX_PORT="1234")
  assert "JAX_COORDINATOR_ADDRESS=node0:1234" in env[0]


def test_object_store_workdirs_are_refused_by_launcher_and_run(tmp_path):
  for args in (["--workdir", "gs://b/runs/k"], ["--workdir=gs://b/runs/k"]):
    out = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"),
                          "--config", "configs/karma_enmap.py", *args],
                         env=os.environ | {"DRY_RUN": "1"}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "not an object-store URL" in out.stderr
    assert "gcloud" not in out.stdout
  main = subprocess.run(
      [sys.executable, "-m", "kgmae_jax.main", "--config", "tests/tiny_config.py",
       "--workdir=gs://b/runs/k", f"--config.data.data_dir={tmp_path / 'd'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert main.returncode != 0
  assert "--workdir gs://b/runs/k: object-store URLs are not supported" in main.stderr
  assert not (tmp_path / "d").exists()  # Refused before anything is built.
