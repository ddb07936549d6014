r"""KARMA in the paper's setting: 218 EnMAP bands, patch 16, width 512, 8 heads.

  python -m kgmae_jax.main --config configs/karma_enmap.py --workdir runs/karma

Paper values (arXiv 2512.12445): patch 16, width 512, 8 heads, 75 % masking,
loss lambda1 Huber + lambda2 SAM + lambda3 LSMM, abundances per patch token.
Unpublished and chosen here (each a field in kgmae_jax/config_lib.py):
encoder depth 12, decoder 8 x 512, M = 8, lambda = (1, 1, 0.5), Huber delta 1
(standardised units), AdamW lr 1.5e-4, warm-up 500, 20k steps of batch 64.
Tiles are 64x64 on the embedded benchmark (224x224 on EnMAP L2A products).
Meant for a GPU; on a CPU, run configs/quickstart.py instead.
"""

from kgmae_jax import config_lib


def get_config(arg=None):
  config_lib.no_argument(arg, "configs/karma_enmap.py")
  return config_lib.base_config()
