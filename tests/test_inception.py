"""The FID Inception-v3 and the PyTorch-file reader against the reference implementations.

tests/data/inception_reference.npz holds what pytorch-fid, PyTorch and TensorFlow
computed (experiments/inception_reference.py says how); the network's random weights
are regenerated here from their seed.
"""
import io
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

from conftest import run_cli, tree_hash
from gensuite import metrics
from gensuite.errors import ConfigError
from gensuite.metrics import features
from gensuite.nets import inception
from gensuite.nets import torch_files

DATA = os.path.join(os.path.dirname(__file__), 'data')
REF = dict(np.load(os.path.join(DATA, 'inception_reference.npz')))
RESIZE_CASES = (((8, 6), (37, 23)), ((32, 32), (299, 41)), ((600, 5), (299, 5)))


@pytest.fixture(scope='module')
def random_params():
  return inception.params_from_arrays(inception.random_state_dict(0))


@pytest.fixture(scope='module')
def weights_npz(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('inception') / 'random_inception.npz')
  np.savez(path, **inception.random_state_dict(0))
  return path


# ---- the PyTorch-file reader ------------------------------------------------------------

@pytest.mark.parametrize('name,prefix', [('torch_zip.pth', 'file/'),
                                         ('torch_legacy.pth', 'file/'),
                                         ('torchscript.pt', 'script/')])
def test_reader_returns_the_tensors_torch_saved(name, prefix):
  """Zip and legacy torch.save files and a TorchScript archive, read without torch:
  every tensor (transposed views, storage offsets, fp16/bf16/f64/int/bool, nested
  dicts, a module's parameters and buffers) equals what PyTorch held."""
  got = torch_files.read_torch_file(os.path.join(DATA, name))
  expected = {k[len(prefix):]: v for k, v in REF.items() if k.startswith(prefix)}
  assert sorted(got) == sorted(expected)
  for k, v in expected.items():
    assert got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def _zip_with_pickle(path, payload: bytes):
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', payload)
    zf.writestr('archive/version', '3\n')


class _Evil:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, 'w'))


def test_reader_refuses_to_run_code_from_a_pickle(tmp_path):
  target = str(tmp_path / 'pwned')
  path = str(tmp_path / 'evil.pth')
  _zip_with_pickle(path, pickle.dumps({'w': _Evil(target)}, protocol=2))
  with pytest.raises(ConfigError, match='refusing to load'):
    torch_files.read_torch_file(path)
  assert not os.path.exists(target)
  legacy = str(tmp_path / 'evil_legacy.pth')
  with open(legacy, 'wb') as f:
    for obj in (0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}):
      pickle.dump(obj, f, protocol=2)
    pickle.dump({'w': _Evil(target)}, f, protocol=2)
  with pytest.raises(ConfigError, match='refusing to load'):
    torch_files.read_torch_file(legacy)
  header = str(tmp_path / 'evil_header.pth')  # the payload where the magic number goes
  with open(header, 'wb') as f:
    pickle.dump(_Evil(target), f, protocol=2)
  with pytest.raises(ConfigError, match='refusing to load'):
    torch_files.read_torch_file(header)
  assert not os.path.exists(target)


def _rebuild_tensor_v2(*args):  # stands in for torch's, renamed in the pickle below
  del args


class FloatStorage:  # likewise torch.FloatStorage
  pass


class _Rebuild:
  def __init__(self, size, stride):
    self.size, self.stride = size, stride

  def __reduce__(self):
    return (_rebuild_tensor_v2, (_Storage(), 0, self.size, self.stride, False, {}))


class _Storage:
  pass


def test_reader_refuses_tensors_that_reach_past_their_storage(tmp_path):
  """Size and stride come from the file: a tensor may not read beyond its storage."""
  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, _Storage):
        return ('storage', FloatStorage, '0', 'cpu', 4)
      return None

  for size, stride, ok in (((2, 2), (2, 1), True), ((2, 2), (3, 1), False),
                           ((5,), (1,), False), ((2,), (-1,), False)):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({'w': _Rebuild(size, stride)})
    payload = buf.getvalue().replace(
        f'{__name__}\n_rebuild_tensor_v2'.encode(), b'torch._utils\n_rebuild_tensor_v2'
    ).replace(f'{__name__}\nFloatStorage'.encode(), b'torch\nFloatStorage')
    path = str(tmp_path / 'strided.pth')
    with zipfile.ZipFile(path, 'w') as zf:
      zf.writestr('archive/data.pkl', payload)
      zf.writestr('archive/data/0', np.arange(4, dtype='<f4').tobytes())
    if ok:
      np.testing.assert_array_equal(torch_files.read_torch_file(path)['w'],
                                    [[0.0, 1.0], [2.0, 3.0]])
    else:
      with pytest.raises(ConfigError, match='malformed tensor'):
        torch_files.read_torch_file(path)


def test_reader_errors_are_one_line(tmp_path):
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a torch file at all')
  for path, match in ((str(junk), 'not a PyTorch file'),
                      (str(tmp_path / 'absent.pth'), 'does not exist')):
    with pytest.raises(ConfigError, match=match) as e:
      torch_files.read_torch_file(path)
    assert '\n' not in str(e.value)
  empty = str(tmp_path / 'empty.pth')
  _zip_with_pickle(empty, pickle.dumps({'step': 3}, protocol=2))
  with pytest.raises(ConfigError, match='no tensors'):
    torch_files.read_torch_file(empty)


# ---- the network ----------------------------------------------------------------------------

def test_pool3_features_equal_pytorch_fids_network_on_the_same_weights(random_params):
  """pytorch-fid's InceptionV3 (resize_input, normalize_input, 2048-d) computed these
  features with the same random weights: equal to float32 rounding, far below the
  differences between images."""
  got = np.asarray(jax.jit(inception.pool3_features, static_argnums=2)(
      random_params, REF['pf_images'].astype(np.float32), 'pytorch_fid'))
  ref = REF['pf_features']
  assert got.shape == ref.shape == (3, 2048)
  err = np.abs(got - ref).max()
  between_images = np.abs(ref[0] - ref[2]).max()
  assert err < 2e-4, err
  assert between_images > 100 * err
  # The TF preprocessing is a different function of the same pixels.
  tf_mode = np.asarray(inception.pool3_features(random_params,
                                                REF['pf_images'].astype(np.float32), 'tf'))
  assert np.abs(tf_mode - ref).max() > 10 * err


@pytest.mark.parametrize('case', RESIZE_CASES, ids=lambda c: f'{c[0][0]}x{c[0][1]}')
def test_resize_matches_tensorflow_and_pytorch(case):
  """'tf' is TF1's resize_bilinear (align_corners=False, the FID graph's); 'pytorch_fid'
  is F.interpolate(bilinear, align_corners=False): up, mixed and down sampling."""
  (h, w), size = case
  x = np.random.default_rng(2)
  inputs = {hw: x.integers(0, 256, (1,) + hw + (1,)).astype(np.float32)
            for hw, _ in RESIZE_CASES}[(h, w)]
  for mode, key in (('tf', 'tf_resize'), ('pytorch_fid', 'pt_resize')):
    got = np.asarray(inception.resize_bilinear(inputs, size, mode))
    ref = REF[f'{key}_{h}_{w}']
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-3, err_msg=mode)  # values 0..255
  # The two modes really differ (except where no resampling happens).
  if (h, w) != size:
    assert np.abs(REF[f'tf_resize_{h}_{w}'] - REF[f'pt_resize_{h}_{w}']).max() > 1.0


def _tf_names(state: dict, dotted: bool) -> dict:
  """pytorch-fid's names -> the TF graph's, as TorchScript ports spell them."""
  out = {}
  inverse_stem = {v: k for k, v in inception._TF_STEM.items()}  # pylint: disable=protected-access
  blocks = {}
  for tf_block, (block, table) in inception._TF_BLOCKS.items():  # pylint: disable=protected-access
    blocks[block] = (tf_block, {v: k for k, v in table.items()})
  for key, value in state.items():
    name, _, param = key.rpartition('.')
    conv = name.rsplit('.', 1)[0]
    if param == 'weight' and name.endswith('.bn'):
      continue  # TF's batch norm has no scale
    tf_param = {'conv.weight': 'weight', 'bn.bias': 'beta', 'bn.running_mean': 'mean',
                'bn.running_var': 'var'}[f'{name.rsplit(".", 1)[1]}.{param}']
    if conv in inverse_stem:
      tf_name = inverse_stem[conv]
    else:
      block, branch = conv.split('.')
      tf_block, table = blocks[block]
      inner = table[branch]
      if dotted:
        inner = inner.replace('tower_mixed', 'tower.mixed').replace('_conv', '.conv')
      tf_name = f'{tf_block}.{inner}'
    out[f'net.layers.{tf_name}.{tf_param}'] = value
  return out


@pytest.mark.parametrize('dotted', [False, True])
def test_tensorflow_names_give_the_same_network(dotted):
  """A state dict in the TF graph's names (gamma = 1) loads to the same params as
  pytorch-fid's names with bn.weight = 1, whether the E blocks' inner convs are
  spelled tower_mixed_conv or tower.mixed.conv."""
  state = inception.random_state_dict(0)
  for k in state:
    if k.endswith('bn.weight'):
      state[k] = np.ones_like(state[k])
  a = inception.params_from_arrays(state)
  b = inception.params_from_arrays(_tf_names(state, dotted))
  assert sorted(a) == sorted(b) and len(a) == 94
  for name in a:
    for p in a[name]:
      np.testing.assert_array_equal(a[name][p], b[name][p], err_msg=f'{name} {p}')


def test_weights_errors_name_the_tensor():
  state = inception.random_state_dict(0)
  del state['Mixed_6c.branch7x7dbl_3.bn.running_var']
  with pytest.raises(ConfigError, match='Mixed_6c.branch7x7dbl_3 var'):
    inception.params_from_arrays(state)
  state = inception.random_state_dict(0)
  state['Mixed_7b.branch3x3_2a.conv.weight'] = np.zeros((384, 384, 3, 1), np.float32)
  with pytest.raises(ConfigError, match=r'Mixed_7b.branch3x3_2a kernel has shape'):
    inception.params_from_arrays(state)
  state = inception.random_state_dict(0)
  state['fc.weight'] = np.zeros((1000, 2048), np.float32)  # torchvision's ImageNet head
  with pytest.raises(ConfigError, match='1008'):
    inception.params_from_arrays(state)
  state['fc.weight'] = np.zeros((1008, 2048), np.float32)
  assert len(inception.params_from_arrays(state)) == 94
  with pytest.raises(ConfigError, match='no Inception-v3 tensors'):
    inception.params_from_arrays({'fc.weight': np.zeros((3, 3))})
  with pytest.raises(ConfigError, match='inception_weights'):
    inception.load_weights('')


# ---- FID -----------------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero_and_cached_statistics_are_reused(
    weights_npz, tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (12, 8, 8, 1)).astype(np.float32)
  y = np.clip(x + 0.5, -1, 1)
  cache = str(tmp_path / 'run')
  same = features.fid(x, x, weights_npz, cache_dir=cache)
  assert abs(same) < 1e-3
  cached = os.listdir(os.path.join(cache, 'fid'))
  assert len(cached) == 1 and cached[0].startswith('reference_')
  extractor = features.inception_extractor(weights_npz)
  fx, fy = extractor.features(x), extractor.features(y)
  expected = features.frechet_distance_of_features(fy, fx)
  shifted = features.fid(y, x, weights_npz, cache_dir=cache)  # reference from the cache
  np.testing.assert_allclose(shifted, expected, rtol=1e-6)
  assert shifted > 1.0 and len(os.listdir(os.path.join(cache, 'fid'))) == 1
  stats = os.path.join(cache, 'fid', cached[0])
  np.testing.assert_allclose(features.fid(y, None, weights_npz, fid_stats=stats), shifted,
                             rtol=1e-9)
  # Batched with padding: the same features as one batch.
  np.testing.assert_allclose(extractor.features(x, batch=5), fx, rtol=1e-5, atol=1e-5)


def test_fid_metric_in_the_registry_and_its_checks(weights_npz, tmp_path):
  x = np.random.default_rng(1).uniform(-1, 1, (10, 8, 8, 1)).astype(np.float32)
  out = metrics.evaluate(('fid',), jax.random.PRNGKey(0), x, x, workdir=str(tmp_path),
                         inception_weights=weights_npz)
  assert abs(out['fid']) < 1e-3
  with pytest.raises(ConfigError, match='inception_weights'):
    metrics.check(('fid',))
  with pytest.raises(ConfigError, match='does not exist'):
    metrics.check(('fid',), inception_weights=str(tmp_path / 'absent.pth'))
  with pytest.raises(ConfigError, match='inception_resize'):
    metrics.check(('fid',), inception_weights=weights_npz, inception_resize='pil')
  with pytest.raises(ConfigError, match='unknown metric option'):
    metrics.evaluate(('mmd',), jax.random.PRNGKey(0), x, x, inception_weight='typo')
  with pytest.raises(ConfigError, match=r'\[n, h, w, 1 or 3\]'):
    features.fid(np.zeros((4, 2)), np.zeros((4, 2)), weights_npz)
  bad = str(tmp_path / 'stats.npz')
  np.savez(bad, mean=np.zeros(3))
  with pytest.raises(ConfigError, match='mu and sigma'):
    features.load_fid_stats(bad)


def test_cli_fid_train_eval_and_bad_input(weights_npz, tmp_path):
  """fid without weights stops `train` before anything is written and `eval` before
  metrics.jsonl changes; with weights it is logged in training (samples drawn in
  chunks) and `eval` reproduces the same value from the cached reference statistics
  given as --fid_stats."""
  workdir = str(tmp_path / 'digits')
  args = ('train', '--config=configs/flow_matching/digits.py:smoke', f'--workdir={workdir}',
          "--config.eval.metrics=('fid',)")
  proc = run_cli(*args, check=False)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert 'inception_weights' in proc.stderr and not os.path.exists(workdir)
  # Samples drawn in chunks of 5 (5, 5, 5, 1 for the smoke config's 16).
  run_cli(*args, f'--config.eval.inception_weights={weights_npz}',
          '--config.eval.sample_batch=5')
  rows = [r for r in metrics_rows(workdir) if 'eval/fid' in r]
  assert [r['step'] for r in rows] == [6]
  trained = rows[0]['eval/fid']
  assert np.isfinite(trained) and trained > 0
  before = tree_hash(workdir)
  proc = run_cli('eval', f'--workdir={workdir}', '--inception_weights=/nonexistent.pth',
                 check=False)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert 'does not exist' in proc.stderr and tree_hash(workdir) == before
  stats = [f for f in os.listdir(os.path.join(workdir, 'fid')) if f.endswith('.npz')]
  assert len(stats) == 1
  proc = run_cli('eval', f'--workdir={workdir}',
                 f'--fid_stats={os.path.join(workdir, "fid", stats[0])}')
  printed = dict(line.split(': ') for line in proc.stdout.strip().splitlines())
  np.testing.assert_allclose(float(printed['eval/fid']), trained, rtol=1e-4)
  proc = run_cli('eval', f'--workdir={workdir}', '--num=0', check=False)
  assert proc.returncode == 2 and '--num' in proc.stderr


def metrics_rows(workdir):
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  return log_lib.read_jsonl(workdir)


def test_eval_sample_batch_must_be_non_negative():
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file('configs/flow_matching/toy2d.py')
  config.eval.sample_batch = -1
  with pytest.raises(ConfigError, match='sample_batch'):
    config_lib.validate(config)
