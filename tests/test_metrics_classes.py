"""Classification and unmixing metrics (metrics.py) against numpy float64 loops."""

import jax
import numpy as np

from kgmae_jax import metrics
from kgmae_jax import unmixing


def np_confusion(labels, pred, c, mask):
  cm = np.zeros((c, c))
  for t, p, m in zip(labels.ravel(), pred.ravel(), mask.ravel()):
    if m and 0 <= t < c:
      cm[t, p] += 1
  return cm


def test_confusion_and_classification_metrics():
  rng = np.random.default_rng(0)
  c = 5
  labels = rng.integers(0, c - 1, (3, 9, 7))  # Class 4 never true.
  pred = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, c, labels.shape))
  mask = rng.random(labels.shape) < 0.8
  labels[0, 0, :3] = -1  # Ignored label values never count.
  cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(labels, pred, c, mask)
  ref = np_confusion(labels, pred, c, mask)
  np.testing.assert_array_equal(cm, ref)
  out = jax.jit(metrics.classification_metrics)(cm)
  keep = mask & (labels >= 0)
  np.testing.assert_allclose(out["top1"], np.mean(labels[keep] == pred[keep]), rtol=1e-6)
  acc = [np.mean(pred[keep & (labels == k)] == k) for k in range(c - 1)]
  np.testing.assert_allclose(out["per_class_acc"][:-1], acc, rtol=1e-6)
  assert np.isnan(out["per_class_acc"][-1])
  np.testing.assert_allclose(out["mean_class_acc"], np.mean(acc), rtol=1e-6)
  ious = []
  for k in range(c):
    inter = np.sum(keep & (labels == k) & (pred == k))
    union = np.sum(keep & ((labels == k) | (pred == k)))
    ious.append(inter / union)  # Class 4 is predicted somewhere: IoU 0, counted.
  np.testing.assert_allclose(out["per_class_iou"], ious, rtol=1e-6)
  np.testing.assert_allclose(out["miou"], np.mean(ious), rtol=1e-6)
  # Cohen's kappa against scikit-learn on the same labels.
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(
      out["kappa"], skm.cohen_kappa_score(labels[keep], pred[keep]), rtol=1e-5)


def test_perfect_prediction_and_empty_class():
  labels = np.array([[0, 1], [1, 0]])
  cm = metrics.confusion_matrix(labels, labels, 3)
  out = metrics.classification_metrics(cm)
  assert out["top1"] == 1 and out["miou"] == 1 and out["mean_class_acc"] == 1
  assert out["kappa"] == 1
  assert np.isnan(out["per_class_iou"][2])  # Never true, never predicted.


def test_abundance_rmse_and_sad_after_matching():
  rng = np.random.default_rng(1)
  true_em = rng.uniform(0.05, 0.6, (4, 30))
  perm = np.array([2, 0, 3, 1])
  learned = true_em[perm] * 1.2 + rng.normal(0, 0.01, (4, 30))
  rows, cols, angles = unmixing.match_endmembers(learned, true_em)
  sad = metrics.spectral_angle_distance(learned[rows], true_em[cols])
  np.testing.assert_allclose(sad, np.degrees(angles), atol=1e-3)
  true_a = rng.dirichlet(np.ones(4), (6, 5))
  pred_a = true_a[..., perm] + rng.normal(0, 0.05, true_a.shape)
  mask = rng.random((6, 5)) < 0.7
  got = metrics.abundance_rmse(pred_a, true_a, rows, cols, mask)
  ref = [np.sqrt(np.mean((pred_a[..., r][mask] - true_a[..., c][mask]) ** 2))
         for r, c in zip(rows, cols)]
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  np.testing.assert_allclose(metrics.abundance_rmse(pred_a, true_a, rows, cols),
                             [np.sqrt(np.mean((pred_a[..., r] - true_a[..., c]) ** 2))
                              for r, c in zip(rows, cols)], rtol=1e-5)
