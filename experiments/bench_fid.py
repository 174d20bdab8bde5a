"""Throughput of the FID Inception-v3 features (images/s), no weights file needed.

  python experiments/bench_fid.py [--batch=100] [--size=32] [--repeats=3] [--torch]

Times gensuite's jitted pool3 features (random weights: the cost does not depend on
their values) on `batch` images of size x size x 3, resized to 299x299 inside, on the
default JAX device, after one compiling call; the best of `repeats`. With --torch
(needs torch and pytorch-fid) also times pytorch-fid's InceptionV3 on the same
images and CPU threads.
"""
import argparse
import time

import jax
import numpy as np

from gensuite.nets import inception


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--size', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--torch', action='store_true')
  args = parser.parse_args()
  state = inception.random_state_dict(0)
  params = inception.params_from_arrays(state)
  images = np.random.default_rng(0).integers(
      0, 256, (args.batch, args.size, args.size, 3)).astype(np.float32)
  fn = jax.jit(inception.pool3_features, static_argnums=2)
  x = jax.device_put(images)
  t0 = time.perf_counter()
  fn(params, x, 'tf').block_until_ready()
  compile_s = time.perf_counter() - t0
  best = _best(lambda: fn(params, x, 'tf').block_until_ready(), args.repeats)
  device = jax.devices()[0]
  print(f'gensuite: {args.batch / best:.1f} images/s ({args.batch} at {args.size}x{args.size} '
        f'-> 299, {device.platform} {device.device_kind}); first call {compile_s:.1f} s')
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
    torch_state = {k: torch.from_numpy(v) for k, v in state.items()}
    filler = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()  # pylint: disable=protected-access
    for k, v in filler.items():
      torch_state.setdefault(k, v)
    pf.load_state_dict_from_url = lambda *a, **k: torch_state  # no download
    net = pf.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    t = torch.from_numpy(images / 255.0).float().permute(0, 3, 1, 2)
    with torch.no_grad():
      net(t)
      best = _best(lambda: net(t), args.repeats)
    print(f'pytorch-fid: {args.batch / best:.1f} images/s ({torch.get_num_threads()} threads)')


if __name__ == '__main__':
  main()
