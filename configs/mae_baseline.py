r"""Plain ViT-MAE baseline: karma_enmap with the LSMM branch off and SAM at 0.

  python -m kgmae_jax.main --config configs/mae_baseline.py --workdir runs/mae

Same model, data, optimiser and budget as configs/karma_enmap.py; loss is
Huber on standardised pixels only (lambda2 = lambda3 = 0).
For a quick CPU comparison with the quickstart, add
--config.model.width=64 etc., or use configs/quickstart.py with
--config.lsmm.enabled=False --config.loss.sam=0 --config.loss.lsmm=0.
"""

from kgmae_jax import config_lib


def get_config(arg=None):
  config_lib.no_argument(arg, "configs/mae_baseline.py")
  c = config_lib.base_config()
  c.lsmm.enabled = False
  c.loss.sam = 0.0
  c.loss.lsmm = 0.0
  return c
