"""gensuite's FID against the reference implementations, on real FID Inception weights.

Needs torch and pytorch-fid beside gensuite, and a weights file: a TorchScript port of
the 2015-12-05 graph (names as in the TF graph, e.g. stylegan2-ada-pytorch's
`inception-2015-12-05.pt`) and/or pytorch-fid's state dict
(`pt_inception-2015-12-05-6726825d.pth`):

  python experiments/fid_agreement.py --torchscript=inception-2015-12-05.pt
  python experiments/fid_agreement.py --state_dict=pt_inception-2015-12-05-6726825d.pth

--torchscript: the TorchScript network itself, run by PyTorch on (x - 128) / 128 at
299x299, against gensuite's trunk on the same input; then the file is also written
as a pytorch-fid state dict (--export, default /tmp/fid_state_dict.pth) and checked
as below.
--state_dict: pytorch-fid's InceptionV3 (resize_input, normalize_input) with these
weights against gensuite's `resize='pytorch_fid'` mode, features and FID (pytorch-fid's
own `calculate_frechet_distance`), on the digits train split (1500) vs test (297).
Also prints gensuite's FID in both resize modes and its feature throughput here.
"""
import argparse
import time

import jax
import numpy as np


def _digits():
  from gensuite.data import images  # pylint: disable=g-import-not-at-top
  out = []
  for split in ('train', 'test'):
    src = images.open_image_source('digits', split=split)
    out.append(np.asarray(src.get(np.arange(len(src)))['x'], np.float32))
  return out


def check_torchscript(path: str, export: str) -> str:
  import torch  # pylint: disable=g-import-not-at-top
  from gensuite.nets import inception, torch_files  # pylint: disable=g-import-not-at-top
  module = torch.jit.load(path).eval()
  layers = module
  for wrapper in ('net', 'base'):  # wrappers seen around the trunk's `layers`
    layers = getattr(layers, wrapper, layers)
  layers = layers.layers
  params = inception.load_weights(path)
  rng = np.random.default_rng(0)
  u = rng.integers(0, 256, (4, 299, 299, 3)).astype(np.float32)
  x = (u - 128.0) / 128.0
  with torch.no_grad():
    ref = layers(torch.from_numpy(x).permute(0, 3, 1, 2)).reshape(4, -1).numpy()
  got = np.asarray(jax.jit(inception.trunk)(params, x))
  print(f'torchscript trunk vs gensuite trunk, 4 random 299x299 images: max |diff| '
        f'{np.abs(got - ref).max():.3g} (max |feature| {np.abs(ref).max():.3g})')
  # The same weights in pytorch-fid's names, batch-norm scale 1 (TF has none).
  arrays = torch_files.read_torch_file(path)
  found = inception._from_tf_names(arrays)  # pylint: disable=protected-access
  state = {}
  for (name, param), value in found.items():
    t = torch.from_numpy(np.ascontiguousarray(value))
    if param == 'kernel':
      state[f'{name}.conv.weight'] = t
    else:
      key = {'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[param]
      state[f'{name}.bn.{key}'] = t
      if param == 'bias':
        state[f'{name}.bn.weight'] = torch.ones_like(t)
  torch.save(state, export)
  print(f'wrote the weights as a pytorch-fid state dict: {export}')
  return export


def check_state_dict(path: str) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  state = torch.load(path, map_location='cpu', weights_only=True)
  filler = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()  # pylint: disable=protected-access
  for k, v in filler.items():  # the classifier head is not used by pool3 features
    state.setdefault(k, v)
  pf.load_state_dict_from_url = lambda *args, **kwargs: state  # no download
  net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                       normalize_input=True).eval()
  train, test = _digits()

  def torch_features(x):
    u = features.to_uint8_values(x) / 255.0
    t = torch.from_numpy(np.repeat(u, 3, -1).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
      return np.concatenate([net(t[i:i + 100])[0][:, :, 0, 0].numpy()
                             for i in range(0, t.shape[0], 100)]).astype(np.float64)

  t0 = time.time()
  ref_train, ref_test = torch_features(train), torch_features(test)
  torch_seconds = time.time() - t0
  ref_fid = fid_score.calculate_frechet_distance(ref_train.mean(0), np.cov(ref_train, rowvar=False),
                                                 ref_test.mean(0), np.cov(ref_test, rowvar=False))
  ext = features.inception_extractor(path, 'pytorch_fid')
  t0 = time.time()
  got_train, got_test = ext.features(train), ext.features(test)
  jax_seconds = time.time() - t0
  diff = max(np.abs(got_train - ref_train).max(), np.abs(got_test - ref_test).max())
  ours = features.frechet_distance_of_features(got_train, got_test)
  n = train.shape[0] + test.shape[0]
  print(f'pytorch-fid vs gensuite (pytorch_fid mode), {n} digits: max |feature diff| '
        f'{diff:.3g}; FID train vs test: pytorch-fid {ref_fid:.6f}, gensuite {ours:.6f}')
  tf_mode = features.fid(test, train, path, resize='tf')
  print(f'gensuite FID test vs train, resize=tf: {tf_mode:.4f}; resize=pytorch_fid: '
        f'{ours:.4f}')
  print(f'features: gensuite {n / jax_seconds:.1f} images/s (includes compiling), '
        f'pytorch-fid {n / torch_seconds:.1f} images/s, on {jax.devices()[0].platform}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--torchscript', default='')
  parser.add_argument('--state_dict', default='')
  parser.add_argument('--export', default='/tmp/fid_state_dict.pth')
  args = parser.parse_args()
  state_dict = args.state_dict
  if args.torchscript:
    state_dict = check_torchscript(args.torchscript, args.export)
  if state_dict:
    check_state_dict(state_dict)


if __name__ == '__main__':
  main()
