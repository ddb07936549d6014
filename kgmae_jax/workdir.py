"""One run per workdir: the workdir lock, supported workdirs, and the check
that a resumed run is the run its checkpoint was made by.

* `lock(workdir)` holds an exclusive `fcntl.flock` on `workdir/run.lock` for
  the life of the run and writes the holder (pid, host, start time, command)
  into it. The kernel drops the lock when its process dies, even by `kill -9`,
  so a stale file never blocks the next resume; a live holder makes a second
  run fail at start-up with `WorkdirLocked` naming that process. The same
  helper (`file_lock`) serialises first builds of a data set (data.py).
* `check_supported(workdir)`: workdirs are local or mounted paths (a
  Lustre/NFS/gcsfuse mount on a pod); object-store URLs (gs://, s3://) are
  refused at start-up, because flock, append-only metrics and TensorBoard's
  writer need a POSIX file system.
* `check_resume_config(config, saved, step)`: the fields of `config` that
  change what is trained (model, data, loss, optimiser, schedule, seed, batch)
  must equal the checkpoint's; otherwise `ConfigChangeError` lists every
  difference, unless `train.allow_config_change` is set.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from absl import logging

from kgmae_jax import report

LOCK_FILE = "run.lock"

# Fields that may differ on resume without changing the trained parameters:
# bookkeeping, logging, evaluation, where/how data is read, and the layout.
_FREE = ("ckpt.", "evals.", "mesh.", "tables.", "train.log_every",
         "train.on_nonfinite", "train.max_skipped_in_a_row",
         "train.allow_config_change", "data.data_dir", "data.num_workers",
         "data.prefetch", "data.device_resident", "data.manual_dir",
         "data.num_bands",
         "model.remat", "model.attention")


class WorkdirLocked(RuntimeError):
  """Another live process is writing to this workdir (or data build)."""


class ConfigChangeError(ValueError):
  """The resumed checkpoint was trained with another run-changing config."""


def check_supported(workdir):
  """Raises ValueError for a workdir that is not a local or mounted path."""
  if "://" in str(workdir):
    raise ValueError(
        f"--workdir {workdir}: object-store URLs are not supported as "
        "workdirs (the run lock, metrics.jsonl appends and TensorBoard need a "
        "POSIX file system). Use a local path, or mount the bucket (e.g. "
        "gcsfuse) and pass the mount point.")


def _holder():
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}


@contextlib.contextmanager
def file_lock(path, what, wait=False):
  """Holds an exclusive flock on `path` (created if needed). If another
  process holds it: waits when `wait`, else raises WorkdirLocked naming the
  holder recorded in the file."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
        logging.warning("%s: this file system has no flock (%s); a second "
                        "writer would not be detected.", path, e)
        yield
        return
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      if wait:
        logging.info("Waiting for another process to finish %s (%s).", what,
                     path)
        fcntl.flock(fd, fcntl.LOCK_EX)
      else:
        try:
          h = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except ValueError:
          h = {}
        raise WorkdirLocked(
            f"{what} is in use by process {h.get('pid', '?')} on host "
            f"{h.get('host', '?')} (started {h.get('started', '?')}: "
            f"{h.get('command', '?')}); wait for it to finish or stop it, or "
            f"use another directory. The lock is {path}.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the flock.


@contextlib.contextmanager
def lock(workdir, enabled=True):
  """One writer per workdir (see the module docstring); no-op if disabled."""
  if not enabled:
    yield
    return
  with file_lock(os.path.join(os.fspath(workdir), LOCK_FILE),
                 f"Workdir {workdir}"):
    yield


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_diff(saved, new, defaults=None):
  """['  field: checkpoint X vs now Y'] over run-changing fields; [] if same.

  All are plain dicts (JSON round trip of `config.to_dict()`). A field the
  checkpoint's code did not have yet counts as its default (`defaults`;
  check_resume_config first gives it its legacy value, config_lib.from_saved);
  a field the current code no longer has is ignored."""
  a, b, d = _flat(saved), _flat(new), _flat(defaults or {})
  lines = []
  for k in sorted(b.keys()):
    if k not in a and k in d:
      a[k] = d[k]
    if k.startswith(_FREE) or a.get(k, "<absent>") == b[k]:
      continue
    lines.append(f"  {k}: checkpoint {a.get(k, '<absent>')!r} vs now "
                 f"{b.get(k, '<absent>')!r}")
  return lines


def check_resume_config(config, saved, saved_step, where):
  """Raises ConfigChangeError unless `config` continues the saved run.

  Args:
    config: the new ConfigDict.
    saved: the checkpoint's config (a dict from its JSON meta).
    saved_step: the checkpoint's step.
    where: the checkpoint directory, for the message.
  """
  from kgmae_jax import config_lib  # pylint: disable=g-import-not-at-top
  new = json.loads(json.dumps(report.jsonable(config.to_dict())))
  # Fields the checkpoint predates: first their legacy values (what the saved
  # run meant, config_lib.from_saved), then today's defaults for the rest.
  saved = json.loads(json.dumps(report.jsonable(
      config_lib.from_saved(saved).to_dict())))
  if config.train.steps < saved_step:
    raise ConfigChangeError(
        f"config.train.steps={config.train.steps} is below the step of the "
        f"checkpoint in {where} ({saved_step}); set train.steps >= "
        f"{saved_step} or use another --workdir.")
  defaults = json.loads(json.dumps(report.jsonable(
      config_lib.base_config().to_dict())))
  _refuse_or_warn(
      config, config_diff(saved, new, defaults),
      f"Resuming from step {saved_step} in {where} with a changed config",
      f"The checkpoint in {where} (step {saved_step}) was trained with another "
      "config", "Rerun with the checkpoint's values, use another --workdir, or "
      "set --config.train.allow_config_change=True to continue this run with "
      "the new values.")


def check_resume_data(meta, saved_meta, config):
  """Raises ConfigChangeError if the data's wavelengths or band statistics
  differ from those the checkpoint was trained with (e.g. a replaced scene
  file at the same path), unless `train.allow_config_change`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  diff = []
  for key in ("wavelengths_nm", "band_mean", "band_std"):
    a, b = saved_meta.get(key), meta.get(key)
    if a is None or b is None:
      continue
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-7):
      bad = (np.flatnonzero(~np.isclose(a, b, rtol=1e-5, atol=1e-7))
             if a.shape == b.shape else [])
      diff.append(f"  {key}: differs" + (
          f" in {len(bad)} bands (first: band {bad[0]}: checkpoint "
          f"{a[bad[0]]:.6g} vs now {b[bad[0]]:.6g})" if len(bad) else
          f" in shape: checkpoint {a.shape} vs now {b.shape}"))
  _refuse_or_warn(
      config, diff, "Resuming on data that differs from the checkpoint's",
      "The data differs from the data the checkpoint was trained on",
      "Point config.data at the original data, use another --workdir, or set "
      "--config.train.allow_config_change=True.")


def _refuse_or_warn(config, diff, warning, error, advice):
  """Raises ConfigChangeError listing `diff` (lines), or only logs it with
  `train.allow_config_change`; nothing when `diff` is empty."""
  if not diff:
    return
  if config.train.get("allow_config_change", False):
    logging.warning("%s (train.allow_config_change):\n%s", warning,
                    "\n".join(diff))
    return
  raise ConfigChangeError(f"{error}:\n" + "\n".join(diff) + "\n" + advice)
