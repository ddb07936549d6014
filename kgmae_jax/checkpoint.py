"""Checkpoints: an orbax CheckpointManager under `workdir/checkpoints`.

Each step directory holds two items:
  state  the TrainState (step, params incl. decoder and LSMM head, optimiser);
  meta   JSON: the config, band wavelengths, per-band normalisation mean/std,
         class names and the package version: all a user needs to apply the
         model later without the data set.
Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never becomes the "latest" step.
"""

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class Checkpointer:
  """Save every `every_steps` (and when forced), keep the last `keep`."""

  def __init__(self, workdir, every_steps, keep):
    self.directory = epath.Path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, meta, force=False):
    """Saves asynchronously if `step` is due (or `force`); True if saving."""
    saved = self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force)
    if saved:
      logging.info("Saving checkpoint at step %d to %s", step, self.directory)
    return saved

  def restore(self, step, abstract_state):
    """(state, meta) at `step`; arrays placed as `abstract_state`'s shardings."""
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_meta(self, step=None):
    """The JSON meta of `step` (default latest) without loading arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    return self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def close(self):
    """Waits for pending writes, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_tree, shardings)
