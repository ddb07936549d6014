r"""A figure of a trained model on an image: truth vs reconstruction, spectra,
abundance maps, all in reflectance (de-normalised).

  python -m kgmae_jax.visualize --workdir runs/own --input scene.tif \
      --output runs/own/figure.png [--pixels 10,20;40,8] [--window 0,0,256,256]

is `python -m kgmae_jax.predict ... --what figure`: predict's command and
flags, with --what defaulting to figure. The figure is `predict.figure`
(computing) and `plots.model_figure` (drawing, its rows described there).
This tool imports predict; predict never imports it.
"""

from absl import app
from absl import flags

from kgmae_jax import predict

figure = predict.figure  # Its name here before it moved to predict.


if __name__ == '__main__':
  flags.FLAGS.set_default('what', 'figure')
  flags.mark_flags_as_required(['workdir', 'input', 'output'])
  app.run(predict.main)
