"""Scale-out: same loss on (data=8) and (data=4, fsdp=2) (and so on one
device: test_train.py checks data=8 against it); the compiled step gathers
parameters, never the batch."""

import re

import jax
import numpy as np
import pytest

from kgmae_jax import sharding
from kgmae_jax import train
from tests import tiny_config

BANDS = 6
BATCH = 24  # 3 rows per device; no parameter has a dimension of 24.


def batch_of(seed):
  rng = np.random.default_rng(seed)
  em = rng.uniform(0.05, 0.6, (3, BANDS))
  a = rng.dirichlet(np.ones(3), (BATCH, 8, 8))
  cube = (a @ em + rng.normal(0, 0.005, (BATCH, 8, 8, BANDS))).astype(np.float32)
  valid = np.ones((BATCH, 8, 8), bool)
  valid[1, 2, :5] = False
  return {"cube": np.where(valid[..., None], cube, 0.0), "valid": valid}


def gathered_shapes(hlo_text, op):
  """Result shapes (tuples of ints) of every `op` instruction in HLO text."""
  shapes = []
  for line in hlo_text.splitlines():
    m = re.search(r"=\s*(.*?)\s" + re.escape(op) + r"(-start)?\(", line)
    if m:
      shapes += [tuple(int(d) for d in dims.split(",") if d)
                 for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
  return shapes


def run(fsdp, devices, steps=2):
  config = tiny_config.get()
  config.train.batch_size = BATCH
  config.mesh.fsdp = fsdp
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  trainer = train.build_trainer(config, mesh, BANDS, np.full(BANDS, 0.3, np.float32),
                                np.full(BANDS, 0.15, np.float32))
  state = trainer.init(jax.random.key(0))
  rng = jax.random.key(1)
  first = sharding.put_batch(batch_of(0), trainer.batch_sharding)
  compiled = trainer.step.lower(state, first, rng).compile()
  losses = []
  for s in range(steps):
    state, m = compiled(state, sharding.put_batch(batch_of(s), trainer.batch_sharding),
                        rng)
    losses.append(float(m["loss"]))
  return losses, compiled.as_text(), state


def test_meshes_agree_and_batch_is_never_gathered(monkeypatch):
  monkeypatch.setattr(sharding, "_MIN_FSDP_SIZE", 512)  # Shard the tiny model.
  dp, dp_hlo, _ = run(1, jax.devices())
  fsdp, fsdp_hlo, fsdp_state = run(2, jax.devices())
  np.testing.assert_allclose(fsdp, dp, rtol=2e-5)
  specs = [x.sharding.spec for x in jax.tree.leaves(fsdp_state.params)]
  assert any("fsdp" in tuple(s) for s in specs), specs
  # FSDP gathers parameters (so the parser sees all-gathers) ...
  assert gathered_shapes(fsdp_hlo, "all-gather")
  for hlo in (dp_hlo, fsdp_hlo):
    for op in ("all-gather", "all-to-all", "collective-permute"):
      for shape in gathered_shapes(hlo, op):
        # ... but nothing batch-sized: no leading dimension of the global batch.
        assert not shape or shape[0] != BATCH, (op, shape)
  assert not gathered_shapes(dp_hlo, "all-gather")  # Pure data parallel.


@pytest.mark.parametrize("text,want", [
    ("%ag = f32[24,8]{1,0} all-gather(f32[3,8]{1,0} %p), dimensions={0}", [(24, 8)]),
    ("%s = (f32[4]{0}, bf16[2,3]{1,0}) all-gather-start(...)", [(4,), (2, 3)]),
    ("%a = f32[24,8]{1,0} all-reduce(f32[24,8]{1,0} %p)", []),
])
def test_gathered_shapes_parser(text, want):
  assert gathered_shapes(text, "all-gather") == want
