"""Run records: metrics.jsonl + TensorBoard scalars, config.json, summary.json.

`metrics.jsonl` has one JSON object per logged step with at least `step` and
`loss`, and one per periodic evaluation (config.evals.every_steps) with `step`
and `eval/<metric>` keys; on resume, lines past the restored step are dropped so a resumed run's
log reads as one uninterrupted run.
"""

import json
import math
import os
import pathlib
import subprocess

import numpy as np
from etils import epath


def record_revision(workdir):
  """Appends this code's revision to workdir/revisions.json (every revision
  that ran part of a resumable workdir); returns the list."""
  path = epath.Path(workdir) / "revisions.json"
  revisions = json.loads(path.read_text()) if path.exists() else []
  if git_revision() not in revisions:
    revisions.append(git_revision())
    write_json(path, revisions)
  return revisions


def git_revision():
  """`git describe --always --dirty` of this code (e.g. 'ae29b0e-dirty');
  $KGMAE_GIT_REVISION when set (copies without .git), 'unknown' without git."""
  if os.environ.get("KGMAE_GIT_REVISION"):
    return os.environ["KGMAE_GIT_REVISION"]
  try:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True,
        cwd=pathlib.Path(__file__).resolve().parents[1], text=True, check=True,
        timeout=10).stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def jsonable(x):
  """JSON-safe Python scalars/lists from numpy/jax values."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if hasattr(x, "tolist"):
    return jsonable(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)  # 'nan' / 'inf' stay visible without breaking JSON.
  return x


def write_json(path, obj):
  """Writes `obj` as indented JSON, atomically (temp file + rename)."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")
  tmp.replace(path)  # Overwrites: reruns in the same workdir resume.


def read_jsonl(path):
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


class MetricWriter:
  """Appends scalars to workdir/metrics.jsonl and TensorBoard event files."""

  def __init__(self, workdir, resume_step=0, enabled=True):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not enabled:
      return
    kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
    self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step, scalars):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(jsonable(record)) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))

  def close(self):
    if self._tb is not None:
      self._tb.close()
