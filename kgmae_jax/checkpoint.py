"""Checkpoints: an orbax CheckpointManager under `workdir/checkpoints`.

Each step directory holds two items:
  state  the TrainState (step, params incl. decoder and LSMM head, optimiser);
  meta   JSON: the config, band wavelengths, per-band normalisation mean/std,
         class names and the band count: all a user needs to apply the model
         later without the data set.

Orbax writes each step into a temporary directory and renames it when complete
(`commit_success.txt` marks it), so an interrupted save never becomes the
"latest" step. `restore_latest` goes further for checkpoints damaged after the
fact (a truncated file, a deleted folder): it falls back to the newest step
that restores, moving the broken ones to `workdir/corrupt_checkpoints/`.
A checkpoint whose parameters differ in names or shapes from the model is not
"corrupt": that raises `ShapeMismatchError` listing every difference.
"""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class ShapeMismatchError(ValueError):
  """The checkpoint's parameter tree differs from the model's."""


class CheckpointSaveError(OSError):
  """An (asynchronous) checkpoint save failed, e.g. on a full disk."""


def absolute(path):
  """`path` as an absolute epath (orbax needs one); URLs (gs://) unchanged."""
  path = str(path)
  return epath.Path(path if "://" in path else os.path.abspath(path))


def _flat_shapes(tree):
  """{'a/b/c': shape} of a nested dict of arrays / metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path):
          tuple(leaf.shape) for path, leaf in flat}


def param_diff(saved, expected):
  """Human-readable lines for every parameter missing, unexpected or of another
  shape in `saved` (checkpoint) against `expected` (model); [] if equal."""
  got, want = _flat_shapes(saved), _flat_shapes(expected)
  lines = [f"  missing in checkpoint: {k} {want[k]}" for k in sorted(want.keys() - got.keys())]
  lines += [f"  not in model: {k} {got[k]}" for k in sorted(got.keys() - want.keys())]
  lines += [f"  {k}: checkpoint {got[k]} vs model {want[k]}"
            for k in sorted(got.keys() & want.keys()) if got[k] != want[k]]
  return lines


class Checkpointer:
  """Saves every `every_steps` (and when forced), keeps the last `keep`."""

  def __init__(self, workdir, every_steps, keep, create=True):
    self.workdir = absolute(workdir)
    self.directory = self.workdir / "checkpoints"
    self.every_steps = every_steps
    self._keep = keep
    self._saving = None  # Step of the last save started.
    self._unchecked = False  # Its outcome not yet checked.
    self._create = create  # False: for readers; a missing folder stays missing.
    self.manager = self._manager()

  def _manager(self):
    # We decide when to save (`save`); orbax would also save the very first step.
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep,
                                           create=self._create)
    return ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    """Sorted steps of the checkpoints on disk."""
    return sorted(self.manager.all_steps())

  def due(self, step):
    return step % self.every_steps == 0

  def save(self, step, state, meta, force=False):
    """Saves asynchronously if `step` is due (or `force`); True if saving."""
    if not (force or self.due(step)) or step in self.manager.all_steps():
      return False
    self.manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)
    self._saving, self._unchecked = step, True
    logging.info("Saving checkpoint at step %d to %s", step, self.directory)
    return True

  def preempted(self, step):
    """True on every process at the same step once any process of a
    multi-process run got SIGTERM (orbax's `reached_preemption`, JAX's
    preemption sync point); call it at every step. False with one process,
    whose own signal handler decides (train._StopRequests)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def _save_failed(self, error, now):
    kept = [s for s in self.manager.all_steps() if s != self._saving]
    prev = (f"the previous checkpoint (step {max(kept)}) is intact"
            if kept else "there is no earlier checkpoint")
    return CheckpointSaveError(
        f"Saving the checkpoint of step {self._saving} to "
        f"{self.directory / str(self._saving)} failed: {type(error).__name__}: "
        f"{error}. The run stopped{now}; {prev}. Fix the cause (e.g. free disk "
        "space) and rerun the same command to resume.")

  def raise_if_save_failed(self, step):
    """Raises CheckpointSaveError (naming step, path and cause) once the
    last background save has failed; never waits for a save in progress."""
    if not self._unchecked or self.manager.is_saving_in_progress():
      return
    self._unchecked = False
    try:  # The save is over: this returns at once, or raises its error.
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e, f" at step {step}") from e

  def restore(self, step, abstract_state):
    """(state, meta) at `step`, arrays placed as `abstract_state`'s shardings.

    Raises ShapeMismatchError (listing names and shapes) when the saved
    parameters do not match `abstract_state.params`.
    """
    self._check_params(step, abstract_state.params)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_params(self, step, abstract_params):
    """Only the parameters at `step`, placed as `abstract_params`' shardings;
    the optimiser state is never read. Raises ShapeMismatchError as `restore`."""
    self._check_params(step, abstract_params)
    item = {"params": abstract_params}
    restored = ocp.PyTreeCheckpointer().restore(
        self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
            item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
    return restored["params"]

  def _check_params(self, step, abstract_params):
    """Raises ShapeMismatchError unless the saved params fit `abstract_params`."""
    saved = self.manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    diff = param_diff(saved["params"], abstract_params)
    if diff:
      raise ShapeMismatchError(
          f"Checkpoint {self.directory / str(step)} does not fit the model "
          "(check config.model / config.lsmm and the data's band count, or use "
          "another --workdir):\n" + "\n".join(diff))

  def restore_latest(self, abstract_state):
    """(step, state, meta) of the newest checkpoint that restores, or None.

    Steps that fail to read are moved to `workdir/corrupt_checkpoints/` with a
    warning naming them; a ShapeMismatchError is raised, not skipped.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state)
      except (ShapeMismatchError, TypeError, AttributeError, NameError):
        raise  # A misfit or a bug, not a damaged file: never set a step aside.
      except Exception as e:  # pylint: disable=broad-except
        self._quarantine(step, e)
        continue
      return step, state, meta
    return None

  def _quarantine(self, step, error):
    """Moves the unreadable `step` aside so training can save it again."""
    dest = self.workdir / "corrupt_checkpoints" / str(step)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
      dest.rmtree()
    (self.directory / str(step)).rename(dest)
    logging.warning(
        "Skipped unreadable checkpoint at step %d (%s: %s); moved it to %s and "
        "fell back to the previous one.", step, type(error).__name__,
        str(error).splitlines()[0] if str(error) else "", dest)
    self.manager.close()
    self.manager = self._manager()

  def restore_meta(self, step=None):
    """The JSON meta of `step` (default latest) without loading arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    return self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def close(self):
    """Waits for pending writes, then releases the manager; raises
    CheckpointSaveError if one of them failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e, "") from e
    finally:
      self.manager.close()


def newest_meta(workdir):
  """(step, meta) of the newest checkpoint in `workdir` whose JSON meta
  reads, or None; creates nothing (for checks before a run writes)."""
  directory = absolute(workdir) / "checkpoints"
  if not directory.exists():
    return None
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={"meta": ocp.JsonCheckpointHandler()})
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return step, manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
      except Exception:  # pylint: disable=broad-except
        continue  # Damaged: restore_latest reports and sets it aside.
    return None
  finally:
    manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_tree, shardings)
