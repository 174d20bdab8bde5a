"""Feature-space image metrics: closed forms and sampling facts (ALGORITHMS.md §9)."""
import os

import jax
import numpy as np
import pytest

from gensuite import metrics
from gensuite.errors import ConfigError
from gensuite.metrics import features

# Measured test accuracy of the digits classifier (seed 0, 800 steps): 0.936 on a
# loaded 2-core machine; the threshold leaves room for platform differences.
MIN_CLASSIFIER_ACCURACY = 0.92


def _gaussian(rng, n, mean, cov):
  return rng.multivariate_normal(mean, cov, size=n)


def test_frechet_distance_closed_form_commuting_and_rotated():
  """Diagonal covariances: |dmu|^2 + sum (sqrt(l1) - sqrt(l2))^2, also after a rotation."""
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
  l1, l2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(l1) - np.sqrt(l2))**2)
  got = features.frechet_distance(mu1, np.diag(l1), mu2, np.diag(l2))
  np.testing.assert_allclose(got, expected, rtol=1e-8)
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
  rotated = features.frechet_distance(q @ mu1, q @ np.diag(l1) @ q.T, q @ mu2,
                                      q @ np.diag(l2) @ q.T)
  np.testing.assert_allclose(rotated, expected, rtol=1e-6)


def test_frechet_distance_non_commuting_matches_the_1d_and_2d_definitions():
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
  np.testing.assert_allclose(features.frechet_distance(0.3, 4.0, -0.2, 1.0), 0.25 + 1.0)
  # 2-D, non-commuting: tr(S1 + S2 - 2 S1^{1/2}... ) via the symmetric form
  # tr((S1^{1/2} S2 S1^{1/2})^{1/2}), computed by eigendecompositions.
  s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
  s2 = np.array([[1.0, -0.4], [-0.4, 0.5]])
  w, v = np.linalg.eigh(s1)
  r1 = v @ np.diag(np.sqrt(w)) @ v.T
  w2 = np.linalg.eigvalsh(r1 @ s2 @ r1)
  expected = np.trace(s1) + np.trace(s2) - 2.0 * np.sum(np.sqrt(w2))
  np.testing.assert_allclose(features.frechet_distance(np.zeros(2), s1, np.zeros(2), s2),
                             expected, rtol=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_samples_approach_closed_form():
  rng = np.random.default_rng(1)
  x = _gaussian(rng, 4000, [0.0, 0.0], np.eye(2))
  assert abs(features.frechet_distance_of_features(x, x)) < 1e-8
  y = _gaussian(rng, 4000, [1.0, 0.0], np.diag([4.0, 1.0]))
  # closed form: 1 + (2 - 1)^2 = 2; the plug-in estimate is within a few percent.
  np.testing.assert_allclose(features.frechet_distance_of_features(x, y), 2.0, rtol=0.08)


def test_kid_is_unbiased_for_two_samples_of_the_same_distribution():
  """The unbiased polynomial MMD^2 has mean 0 under the null, and takes both signs."""
  rng = np.random.default_rng(2)
  cov = np.diag([1.0, 2.0, 0.5, 1.0])
  values = []
  for r in range(200):
    x = _gaussian(rng, 100, np.zeros(4), cov)
    y = _gaussian(rng, 100, np.zeros(4), cov)
    values.append(features.kid(x, y, jax.random.PRNGKey(r), num_subsets=1,
                               subset_size=100)[0])
  values = np.array(values)
  se = values.std() / np.sqrt(values.size)
  assert abs(values.mean()) < 4 * se, (values.mean(), se)
  assert (values > 0).any() and (values < 0).any()
  shifted = features.kid(_gaussian(rng, 300, np.zeros(4), cov),
                         _gaussian(rng, 300, np.full(4, 0.5), cov), num_subsets=10,
                         subset_size=300)[0]
  assert shifted > 5 * values.std()


def test_precision_recall_identical_shifted_and_separated_sets():
  rng = np.random.default_rng(3)
  real = rng.normal(size=(500, 3))
  assert features.precision_recall(real, real.copy()) == (1.0, 1.0)
  p_shift, r_shift = features.precision_recall(real, real + 1.0)
  assert p_shift < 0.9 and r_shift < 0.9
  far = real + 10.0 * features.knn_radii(real).max() + 10.0
  assert features.precision_recall(real, far) == (0.0, 0.0)
  # Fakes drawn from a narrower distribution: high precision, lower recall.
  p_narrow, r_narrow = features.precision_recall(real, 0.3 * rng.normal(size=(500, 3)))
  assert p_narrow > 0.95 and r_narrow < 0.8, (p_narrow, r_narrow)


def test_digits_metrics_through_the_registry_use_the_cached_classifier(tmp_path):
  """metrics.evaluate(..., workdir=DIR) reads DIR/fd_digits/classifier.npz and never
  retrains; a classifier file written by hand (untrained weights) proves the path."""
  net = features.DigitsClassifier()
  params = net.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))['params']
  path = os.path.join(tmp_path, features.CLASSIFIER_FILE)
  features._save(path, params, accuracy=-1.0)  # pylint: disable=protected-access
  rng = np.random.default_rng(4)
  images = np.clip(rng.normal(size=(200, 8, 8, 1)), -1, 1).astype(np.float32)
  names = ('fd_digits', 'kid_digits', 'precision_digits', 'recall_digits')
  same = metrics.evaluate(names, jax.random.PRNGKey(0), images, images, workdir=str(tmp_path))
  assert abs(same['fd_digits']) < 1e-6
  assert same['precision_digits'] == 1.0 and same['recall_digits'] == 1.0
  other = metrics.evaluate(names, jax.random.PRNGKey(0), images, -images,
                           workdir=str(tmp_path))
  assert other['fd_digits'] > 1e-3
  assert features.digits_extractor(str(tmp_path)).accuracy == -1.0  # loaded, not trained
  with pytest.raises(ConfigError, match='8x8x1'):
    metrics.evaluate(('fd_digits',), jax.random.PRNGKey(0), np.zeros((10, 5)),
                     np.zeros((10, 5)), workdir=str(tmp_path))


def test_class_proportions_tv_closed_forms_and_through_the_registry(tmp_path):
  """TV of class proportions: 0 for a permutation, 0.9 for one class against ten equal
  ones, 1 for disjoint classes; through the registry, samples made only of the
  reference's most frequent predicted class k score 1 - p_ref(k)."""
  uniform = np.repeat(np.arange(10), 7)
  assert features.class_proportions_tv(uniform, uniform[::-1]) == 0.0
  assert features.class_proportions_tv(np.zeros(50, int), uniform) == pytest.approx(0.9)
  assert features.class_proportions_tv(np.zeros(5, int), np.ones(3, int)) == 1.0
  net = features.DigitsClassifier()
  params = net.init(jax.random.PRNGKey(1), np.zeros((1, 8, 8, 1), np.float32))['params']
  features._save(os.path.join(tmp_path, features.CLASSIFIER_FILE), params,  # pylint: disable=protected-access
                 accuracy=-1.0)
  images = np.random.default_rng(5).uniform(-1, 1, (300, 8, 8, 1)).astype(np.float32)
  labels = features.digits_extractor(str(tmp_path)).classify(images)
  k = np.bincount(labels).argmax()
  p_k = np.mean(labels == k)
  assert p_k < 1.0  # the closed form below is not trivially 0
  got = metrics.evaluate(('class_tv_digits',), jax.random.PRNGKey(0), images[labels == k],
                         images, workdir=str(tmp_path))['class_tv_digits']
  assert got == pytest.approx(1.0 - p_k)
  same = metrics.evaluate(('class_tv_digits',), jax.random.PRNGKey(0), images[::-1], images,
                          workdir=str(tmp_path))
  assert same['class_tv_digits'] == 0.0


def test_inception_fid_without_weights_is_a_one_line_config_error():
  for weights in (None, ''):
    with pytest.raises(ConfigError, match='inception_weights') as e:
      features.fid(np.zeros((2, 32, 32, 3)), np.zeros((2, 32, 32, 3)), weights)
    assert '\n' not in str(e.value)


@pytest.mark.slow
def test_digits_classifier_accuracy_and_features_separate_classes(tmp_path):
  """Trained from scratch (about 1.5 min on a loaded 2-core CPU): test accuracy above
  the measured threshold, and real test digits score far better than noise."""
  extractor = features.digits_extractor(str(tmp_path))
  assert extractor.accuracy > MIN_CLASSIFIER_ACCURACY, extractor.accuracy
  assert os.path.exists(os.path.join(tmp_path, features.CLASSIFIER_FILE))
  x_train, _ = features._load_digits('train')  # pylint: disable=protected-access
  x_test, y_test = features._load_digits('test')  # pylint: disable=protected-access
  assert np.mean(extractor.classify(x_test) == y_test) > MIN_CLASSIFIER_ACCURACY
  real = extractor.features(x_test)
  fd_real = features.frechet_distance_of_features(real, extractor.features(x_train))
  noise = np.random.default_rng(0).uniform(-1, 1, x_test.shape).astype(np.float32)
  fd_noise = features.frechet_distance_of_features(real, extractor.features(noise))
  assert fd_noise > 10 * fd_real, (fd_real, fd_noise)


def test_trace_sqrt_product_equals_the_sqrtm_trace_also_when_rank_deficient():
  """The eigendecomposition form of tr((S1 S2)^{1/2}) against scipy's sqrtm, for
  full-rank and for sample covariances with fewer points than dimensions."""
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  for n in (500, 40):
    a = rng.normal(size=(n, 64))
    b = rng.normal(size=(n, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.5 * a
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.trace(np.real(scipy.linalg.sqrtm(c1 @ c2)))
    np.testing.assert_allclose(features.trace_sqrt_product(c1, c2), expected, rtol=1e-6)
