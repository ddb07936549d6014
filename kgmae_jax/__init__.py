"""kgmae_jax: knowledge-guided masked autoencoders (KARMA) for hyperspectral cubes in JAX."""

__version__ = "0.1.0"
