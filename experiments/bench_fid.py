"""Throughput of the FID Inception-v3 features (images/s), no weights file needed.

  python experiments/bench_fid.py [--batch=100] [--size=32] [--repeats=3] [--torch]
      [--variant=shipped|fold_bn|nchw|patches_matmul|matmul_1x1]

Times gensuite's jitted pool3 features (random weights: the cost does not depend on
their values) on `batch` images of size x size x 3, resized to 299x299 inside, on the
default JAX device, after one compiling call; the best of `repeats`. With --torch
(needs torch and pytorch-fid) also times pytorch-fid's InceptionV3 on the same
images and CPU threads.

--variant times one re-expression of the same network (features equal to the shipped
ones to float error, which the script prints), to find what XLA:CPU runs faster:
  fold_bn         batch norm folded into the conv kernels and a bias
  nchw            fold_bn with NCHW activations and OIHW kernels
  patches_matmul  fold_bn, every conv as conv_general_dilated_patches then a matmul
  matmul_1x1      fold_bn, the 1x1 convs as matmuls and the rest as convs
XLA_FLAGS set in the environment apply as usual (e.g. --xla_cpu_use_xnnpack=true).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from gensuite.nets import inception

VARIANTS = ('shipped', 'fold_bn', 'nchw', 'patches_matmul', 'matmul_1x1')


def _fold(params):
  """Each conv's batch norm folded into its kernel and a bias."""
  out = {}
  for name, p in params.items():
    s = p['scale'] * jax.lax.rsqrt(p['var'] + inception.BN_EPS)
    out[name] = {'kernel': p['kernel'] * s, 'bias': p['bias'] - p['mean'] * s}
  return out


def _conv_variant(variant):
  """A replacement for inception._conv taking folded params."""
  hi = jax.lax.Precision.HIGHEST

  def conv(params, name, x, stride=1, pad=(0, 0)):
    p = params[name]
    k = p['kernel']
    kh, kw, ci, co = k.shape
    pads = ((pad[0], pad[0]), (pad[1], pad[1]))
    one = kh == 1 and kw == 1 and stride == 1
    if variant == 'nchw':
      y = jax.lax.conv_general_dilated(
          x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1), (stride, stride), pads,
          dimension_numbers=('NCHW', 'OIHW', 'NCHW'), precision=hi).transpose(0, 2, 3, 1)
    elif variant == 'patches_matmul' or (variant == 'matmul_1x1' and one):
      if not one:
        x = jax.lax.conv_general_dilated_patches(
            x, (kh, kw), (stride, stride), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
            precision=hi)  # channels ordered (ci, kh, kw)
      y = jnp.einsum('nhwc,co->nhwo', x, k.transpose(2, 0, 1, 3).reshape(-1, co),
                     precision=hi)
    else:
      y = jax.lax.conv_general_dilated(x, k, (stride, stride), pads,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       precision=hi)
    return jax.nn.relu(y + p['bias'])
  return conv


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
  parser.add_argument('--variant', default='shipped', choices=VARIANTS)
  args = parser.parse_args()
  state = inception.random_state_dict(0)
  params = inception.params_from_arrays(state)
  images = np.random.default_rng(0).integers(
      0, 256, (args.batch, args.size, args.size, 3)).astype(np.float32)
  x = jax.device_put(images)
  shipped = jax.jit(inception.pool3_features, static_argnums=2)
  fn, used = shipped, params
  if args.variant != 'shipped':
    shipped_conv = inception._conv  # pylint: disable=protected-access
    inception._conv = _conv_variant(args.variant)  # pylint: disable=protected-access
    fn, used = jax.jit(inception.pool3_features, static_argnums=2), jax.jit(_fold)(params)
  t0 = time.perf_counter()
  out = fn(used, x, 'tf').block_until_ready()
  compile_s = time.perf_counter() - t0
  best = _best(lambda: fn(used, x, 'tf').block_until_ready(), args.repeats)
  device = jax.devices()[0]
  print(f'gensuite ({args.variant}): {args.batch / best:.1f} images/s ({args.batch} at '
        f'{args.size}x{args.size} -> 299, {device.platform} {device.device_kind}); first call '
        f'{compile_s:.1f} s')
  if args.variant != 'shipped':
    inception._conv = shipped_conv  # pylint: disable=protected-access
    ref = jax.jit(inception.pool3_features, static_argnums=2)(params, x, 'tf')
    print(f'max |features - shipped features|: {float(jnp.max(jnp.abs(out - ref))):.2e}')
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gensuite import bench_peers  # pylint: disable=g-import-not-at-top
    net = bench_peers.pytorch_fid_net(state)
    t = torch.from_numpy(images / 255.0).float().permute(0, 3, 1, 2)
    with torch.no_grad():
      net(t)
      best = _best(lambda: net(t), args.repeats)
    print(f'pytorch-fid: {args.batch / best:.1f} images/s ({torch.get_num_threads()} threads)')


if __name__ == '__main__':
  main()
