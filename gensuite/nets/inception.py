"""Inception-v3 as used for FID (the 2015-12-05 TensorFlow graph), from a weights file.

  params = load_weights('pt_inception-2015-12-05-6726825d.pth')   # or .pt / .npz
  feats = pool3_features(params, images_uint8_nhwc, resize='tf')  # [n, 2048]

This is the network of Heusel et al.'s FID (TTUR code, `classify_image_graph_def.pb`
of inception-2015-12-05), which differs from torchvision's Inception-v3 in three
places: the average pools of the A, C and first E blocks leave padding out of their
counts, the last E block pools its fourth branch with a max instead of an average,
and batch norm has no scale (gamma = 1). Only the trunk up to the 2048-d `pool3`
features is built; the 1008-way classifier is not needed for FID.

Weights are never downloaded. `load_weights` reads, without PyTorch:
  * the PyTorch state dict of pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`),
    in torchvision's names (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`);
  * a TorchScript port that keeps the TensorFlow graph's names (`layers.conv.weight`,
    `layers.mixed_9.tower_mixed_conv.beta`, with `beta`, `mean`, `var` per conv);
  * an .npz holding either set of names (no pickle involved at all).
A file whose classifier has other than 1008 classes (torchvision's ImageNet
Inception-v3 has the same conv shapes and 1000) is refused.

Input handling (`resize`):
  'tf'           the TF graph's own preprocessing: bilinear resize to 299x299 with
                 TF1's `resize_bilinear` (align_corners=False, no half-pixel centres),
                 then (x - 128) / 128 on [0, 255] values; what TTUR's FID computes.
  'pytorch_fid'  pytorch-fid's: `F.interpolate(..., 'bilinear', align_corners=False)`
                 (half-pixel centres) on x / 255, then 2 x - 1.
An image already 299x299 is not resampled in either mode. Gray images are repeated
to three channels.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from gensuite.errors import ConfigError

SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
RESIZE_MODES = ('tf', 'pytorch_fid')
_HI = jax.lax.Precision.HIGHEST

# (name, out, in, kh, kw): every conv of the trunk in torchvision's names, in the
# order the forward pass uses them. Strides and paddings live in the forward pass.
_STEM = [('Conv2d_1a_3x3', 32, 3, 3, 3), ('Conv2d_2a_3x3', 32, 32, 3, 3),
         ('Conv2d_2b_3x3', 64, 32, 3, 3), ('Conv2d_3b_1x1', 80, 64, 1, 1),
         ('Conv2d_4a_3x3', 192, 80, 3, 3)]


def _block_a(cin, pool):
  return [('branch1x1', 64, cin, 1, 1), ('branch5x5_1', 48, cin, 1, 1),
          ('branch5x5_2', 64, 48, 5, 5), ('branch3x3dbl_1', 64, cin, 1, 1),
          ('branch3x3dbl_2', 96, 64, 3, 3), ('branch3x3dbl_3', 96, 96, 3, 3),
          ('branch_pool', pool, cin, 1, 1)]


def _block_b(cin):
  return [('branch3x3', 384, cin, 3, 3), ('branch3x3dbl_1', 64, cin, 1, 1),
          ('branch3x3dbl_2', 96, 64, 3, 3), ('branch3x3dbl_3', 96, 96, 3, 3)]


def _block_c(c7):
  cin = 768
  return [('branch1x1', 192, cin, 1, 1), ('branch7x7_1', c7, cin, 1, 1),
          ('branch7x7_2', c7, c7, 1, 7), ('branch7x7_3', 192, c7, 7, 1),
          ('branch7x7dbl_1', c7, cin, 1, 1), ('branch7x7dbl_2', c7, c7, 7, 1),
          ('branch7x7dbl_3', c7, c7, 1, 7), ('branch7x7dbl_4', c7, c7, 7, 1),
          ('branch7x7dbl_5', 192, c7, 1, 7), ('branch_pool', 192, cin, 1, 1)]


def _block_d():
  cin = 768
  return [('branch3x3_1', 192, cin, 1, 1), ('branch3x3_2', 320, 192, 3, 3),
          ('branch7x7x3_1', 192, cin, 1, 1), ('branch7x7x3_2', 192, 192, 1, 7),
          ('branch7x7x3_3', 192, 192, 7, 1), ('branch7x7x3_4', 192, 192, 3, 3)]


def _block_e(cin):
  return [('branch1x1', 320, cin, 1, 1), ('branch3x3_1', 384, cin, 1, 1),
          ('branch3x3_2a', 384, 384, 1, 3), ('branch3x3_2b', 384, 384, 3, 1),
          ('branch3x3dbl_1', 448, cin, 1, 1), ('branch3x3dbl_2', 384, 448, 3, 3),
          ('branch3x3dbl_3a', 384, 384, 1, 3), ('branch3x3dbl_3b', 384, 384, 3, 1),
          ('branch_pool', 192, cin, 1, 1)]


_BLOCKS = [('Mixed_5b', _block_a(192, 32)), ('Mixed_5c', _block_a(256, 64)),
           ('Mixed_5d', _block_a(288, 64)), ('Mixed_6a', _block_b(288)),
           ('Mixed_6b', _block_c(128)), ('Mixed_6c', _block_c(160)),
           ('Mixed_6d', _block_c(160)), ('Mixed_6e', _block_c(192)),
           ('Mixed_7a', _block_d()), ('Mixed_7b', _block_e(1280)),
           ('Mixed_7c', _block_e(2048))]


def conv_specs() -> dict[str, tuple[int, int, int, int]]:
  """'Block.branch' (or stem name) -> (out, in, kh, kw) of every conv of the trunk."""
  specs = {name: shape for name, *shape in _STEM}
  for block, convs in _BLOCKS:
    specs.update({f'{block}.{name}': tuple(shape) for name, *shape in convs})
  return specs


# The TensorFlow graph's names of the same convs (as kept by TorchScript ports).
_TF_STEM = {'conv': 'Conv2d_1a_3x3', 'conv_1': 'Conv2d_2a_3x3', 'conv_2': 'Conv2d_2b_3x3',
            'conv_3': 'Conv2d_3b_1x1', 'conv_4': 'Conv2d_4a_3x3'}
_TF_A = {'conv': 'branch1x1', 'tower_conv': 'branch5x5_1', 'tower_conv_1': 'branch5x5_2',
         'tower_1_conv': 'branch3x3dbl_1', 'tower_1_conv_1': 'branch3x3dbl_2',
         'tower_1_conv_2': 'branch3x3dbl_3', 'tower_2_conv': 'branch_pool'}
_TF_B = {'conv': 'branch3x3', 'tower_conv': 'branch3x3dbl_1',
         'tower_conv_1': 'branch3x3dbl_2', 'tower_conv_2': 'branch3x3dbl_3'}
_TF_C = {'conv': 'branch1x1', 'tower_conv': 'branch7x7_1', 'tower_conv_1': 'branch7x7_2',
         'tower_conv_2': 'branch7x7_3', 'tower_1_conv': 'branch7x7dbl_1',
         'tower_1_conv_1': 'branch7x7dbl_2', 'tower_1_conv_2': 'branch7x7dbl_3',
         'tower_1_conv_3': 'branch7x7dbl_4', 'tower_1_conv_4': 'branch7x7dbl_5',
         'tower_2_conv': 'branch_pool'}
_TF_D = {'tower_conv': 'branch3x3_1', 'tower_conv_1': 'branch3x3_2',
         'tower_1_conv': 'branch7x7x3_1', 'tower_1_conv_1': 'branch7x7x3_2',
         'tower_1_conv_2': 'branch7x7x3_3', 'tower_1_conv_3': 'branch7x7x3_4'}
_TF_E = {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1',
         'tower_mixed_conv': 'branch3x3_2a', 'tower_mixed_conv_1': 'branch3x3_2b',
         'tower_1_conv': 'branch3x3dbl_1', 'tower_1_conv_1': 'branch3x3dbl_2',
         'tower_1_mixed_conv': 'branch3x3dbl_3a', 'tower_1_mixed_conv_1': 'branch3x3dbl_3b',
         'tower_2_conv': 'branch_pool'}
_TF_BLOCKS = {'mixed': ('Mixed_5b', _TF_A), 'mixed_1': ('Mixed_5c', _TF_A),
              'mixed_2': ('Mixed_5d', _TF_A), 'mixed_3': ('Mixed_6a', _TF_B),
              'mixed_4': ('Mixed_6b', _TF_C), 'mixed_5': ('Mixed_6c', _TF_C),
              'mixed_6': ('Mixed_6d', _TF_C), 'mixed_7': ('Mixed_6e', _TF_C),
              'mixed_8': ('Mixed_7a', _TF_D), 'mixed_9': ('Mixed_7b', _TF_E),
              'mixed_10': ('Mixed_7c', _TF_E)}
_TF_PARAMS = {'weight': 'kernel', 'beta': 'bias', 'mean': 'mean', 'var': 'var'}
_TV_PARAMS = {'conv.weight': 'kernel', 'bn.weight': 'scale', 'bn.bias': 'bias',
              'bn.running_mean': 'mean', 'bn.running_var': 'var'}
_TF_BLOCK = re.compile(r'conv(?:_\d)?|mixed(?:_\d+)?')
_TV_KEY = re.compile(r'(?:^|\.)((?:Conv2d_\w+?)|(?:Mixed_\w+?\.\w+?))\.'
                     r'(conv\.weight|bn\.weight|bn\.bias|bn\.running_mean|bn\.running_var)$')


def _from_torchvision_names(arrays):
  out = {}
  for key, value in arrays.items():
    m = _TV_KEY.search(key)
    if m:
      out[(m.group(1), _TV_PARAMS[m.group(2)])] = value
  return out


def _from_tf_names(arrays):
  out = {}
  for key, value in arrays.items():
    parts = key.split('.')
    if parts[-1] not in _TF_PARAMS:
      continue
    # The first segment naming a stem conv or a mixed block; what follows it, up to
    # the parameter, names the conv inside the block ('tower.mixed.conv' and
    # 'tower_mixed_conv' are the same conv).
    i = next((j for j, s in enumerate(parts[:-1]) if _TF_BLOCK.fullmatch(s)), None)
    if i is None:
      continue
    block, inner = parts[i], '_'.join(parts[i + 1:-1])
    if not inner and block in _TF_STEM:
      name = _TF_STEM[block]
    elif inner and block in _TF_BLOCKS:
      mixed, table = _TF_BLOCKS[block]
      if inner not in table:
        continue
      name = f'{mixed}.{table[inner]}'
    else:
      continue
    out[(name, _TF_PARAMS[parts[-1]])] = value
  return out


def params_from_arrays(arrays: dict[str, np.ndarray], source: str = 'weights') -> dict:
  """{'Mixed_5b.branch1x1': {'kernel' (HWIO), 'scale', 'bias', 'mean', 'var'}, ...}.

  `arrays` holds torchvision names (pytorch-fid's state dict) or the TF graph's
  names; anything else in it (the classifier, counters) is ignored. A missing or
  misshapen tensor raises a ConfigError naming it.
  """
  specs = conv_specs()
  found = _from_torchvision_names(arrays)
  layout = 'torchvision'
  fc = [v for k, v in arrays.items() if k.endswith('fc.weight') and np.ndim(v) == 2]
  if found and fc and fc[0].shape[0] != 1008:
    # torchvision's ImageNet Inception-v3 shares every conv shape but is another net.
    raise ConfigError(f'{source}: its classifier has {fc[0].shape[0]} classes; the FID '
                      f'Inception-v3 (2015-12-05 graph) has 1008. These look like other '
                      f'Inception-v3 weights (torchvision\'s ImageNet model has 1000), '
                      f'which give FIDs that are not comparable')
  if not found:
    found, layout = _from_tf_names(arrays), 'tensorflow'
  if not found:
    some = ', '.join(list(arrays)[:3])
    raise ConfigError(f'{source}: no Inception-v3 tensors found (first names: {some}); '
                      f'allowed: pytorch-fid\'s state dict (Conv2d_1a_3x3.conv.weight, ...) '
                      f'or the TF graph\'s names (conv.weight, mixed.tower.conv.beta, ...)')
  params = {}
  for name, (cout, cin, kh, kw) in specs.items():
    wanted = {'kernel': (cout, cin, kh, kw), 'bias': (cout,), 'mean': (cout,), 'var': (cout,)}
    if layout == 'torchvision':
      wanted['scale'] = (cout,)
    p = {}
    for param, shape in wanted.items():
      if (name, param) not in found:
        raise ConfigError(f'{source}: missing tensor for {name} {param} ({layout} names); '
                          f'is this the FID Inception-v3 (2015-12-05) weights file?')
      value = np.asarray(found[(name, param)], np.float32)
      if value.shape != shape:
        raise ConfigError(f'{source}: {name} {param} has shape {value.shape}, the FID '
                          f'Inception-v3 needs {shape}')
      p[param] = value
    p['kernel'] = p['kernel'].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    p.setdefault('scale', np.ones((cout,), np.float32))
    params[name] = {k: jnp.asarray(v) for k, v in p.items()}
  return params


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A state dict in pytorch-fid's names with random weights (numpy only).

  Not a trained network: for tests that compare this implementation with another
  on the same weights, and for timing without a weights file. He-scaled kernels and
  batch-norm statistics near (0, 1) keep activations O(1) through all 94 convs.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for name, (cout, cin, kh, kw) in conv_specs().items():
    std = np.sqrt(2.0 / (cin * kh * kw))
    out[f'{name}.conv.weight'] = (std * rng.standard_normal((cout, cin, kh, kw))
                                  ).astype(np.float32)
    out[f'{name}.bn.weight'] = rng.uniform(0.8, 1.2, cout).astype(np.float32)
    out[f'{name}.bn.bias'] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    out[f'{name}.bn.running_mean'] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    out[f'{name}.bn.running_var'] = rng.uniform(0.8, 1.2, cout).astype(np.float32)
  return out


def check_weights_path(path: str | None) -> None:
  """A one-line ConfigError unless `path` names an existing file."""
  if not path:
    raise ConfigError('fid needs the FID Inception-v3 weights as a local file: set '
                      'config.eval.inception_weights=PATH (gensuite eval: '
                      '--inception_weights=PATH); nothing is downloaded')
  if not os.path.isfile(path):
    raise ConfigError(f'config.eval.inception_weights: file {path} does not exist')


def load_weights(path: str) -> dict:
  """Params from a .pth/.pt (PyTorch or TorchScript) or .npz file (module docstring)."""
  check_weights_path(path)
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  else:
    from gensuite.nets import torch_files  # pylint: disable=g-import-not-at-top
    arrays = torch_files.read_torch_file(path)
  return params_from_arrays(arrays, source=path)


# ---- forward pass -----------------------------------------------------------------------

def _conv(params, name, x, stride=1, pad=(0, 0)):
  p = params[name]
  y = jax.lax.conv_general_dilated(
      x, p['kernel'], (stride, stride), ((pad[0], pad[0]), (pad[1], pad[1])),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=_HI)
  y = (y - p['mean']) * (p['scale'] * jax.lax.rsqrt(p['var'] + BN_EPS)) + p['bias']
  return jax.nn.relu(y)


def _max_pool(x, size=3, stride=2, pad=0):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1),
                               ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_3x3_valid_count(x):
  """3x3, stride 1, padding 1, dividing by the number of unpadded cells."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype), 0.0, jax.lax.add,
                                (3, 3), (1, 1), pads[1:3])
  return total / count[None, :, :, None]


def _a(params, b, x):
  c = lambda n, y, **kw: _conv(params, f'{b}.{n}', y, **kw)
  b1 = c('branch1x1', x)
  b5 = c('branch5x5_2', c('branch5x5_1', x), pad=(2, 2))
  b3 = c('branch3x3dbl_1', x)
  b3 = c('branch3x3dbl_3', c('branch3x3dbl_2', b3, pad=(1, 1)), pad=(1, 1))
  bp = c('branch_pool', _avg_pool_3x3_valid_count(x))
  return jnp.concatenate([b1, b5, b3, bp], -1)


def _b(params, b, x):
  c = lambda n, y, **kw: _conv(params, f'{b}.{n}', y, **kw)
  b3 = c('branch3x3', x, stride=2)
  bd = c('branch3x3dbl_2', c('branch3x3dbl_1', x), pad=(1, 1))
  bd = c('branch3x3dbl_3', bd, stride=2)
  return jnp.concatenate([b3, bd, _max_pool(x)], -1)


def _c(params, b, x):
  c = lambda n, y, **kw: _conv(params, f'{b}.{n}', y, **kw)
  row, col = (0, 3), (3, 0)  # paddings of the 1x7 and 7x1 convs
  b1 = c('branch1x1', x)
  b7 = c('branch7x7_3', c('branch7x7_2', c('branch7x7_1', x), pad=row), pad=col)
  bd = c('branch7x7dbl_1', x)
  for i, pad in zip(range(2, 6), (col, row, col, row)):
    bd = c(f'branch7x7dbl_{i}', bd, pad=pad)
  bp = c('branch_pool', _avg_pool_3x3_valid_count(x))
  return jnp.concatenate([b1, b7, bd, bp], -1)


def _d(params, b, x):
  c = lambda n, y, **kw: _conv(params, f'{b}.{n}', y, **kw)
  b3 = c('branch3x3_2', c('branch3x3_1', x), stride=2)
  b7 = c('branch7x7x3_3', c('branch7x7x3_2', c('branch7x7x3_1', x), pad=(0, 3)),
         pad=(3, 0))
  b7 = c('branch7x7x3_4', b7, stride=2)
  return jnp.concatenate([b3, b7, _max_pool(x)], -1)


def _e(params, b, x, max_pool_branch):
  c = lambda n, y, **kw: _conv(params, f'{b}.{n}', y, **kw)
  b1 = c('branch1x1', x)
  b3 = c('branch3x3_1', x)
  b3 = [c('branch3x3_2a', b3, pad=(0, 1)), c('branch3x3_2b', b3, pad=(1, 0))]
  bd = c('branch3x3dbl_2', c('branch3x3dbl_1', x), pad=(1, 1))
  bd = [c('branch3x3dbl_3a', bd, pad=(0, 1)), c('branch3x3dbl_3b', bd, pad=(1, 0))]
  pooled = _max_pool(x, 3, 1, 1) if max_pool_branch else _avg_pool_3x3_valid_count(x)
  return jnp.concatenate([b1, *b3, *bd, c('branch_pool', pooled)], -1)


def trunk(params, x: jax.Array) -> jax.Array:
  """[n, 299, 299, 3] network input (already normalised) -> [n, 2048] pool3 features."""
  x = _conv(params, 'Conv2d_1a_3x3', x, stride=2)
  x = _conv(params, 'Conv2d_2a_3x3', x)
  x = _max_pool(_conv(params, 'Conv2d_2b_3x3', x, pad=(1, 1)))
  x = _max_pool(_conv(params, 'Conv2d_4a_3x3', _conv(params, 'Conv2d_3b_1x1', x)))
  for b in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
    x = _a(params, b, x)
  x = _b(params, 'Mixed_6a', x)
  for b in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
    x = _c(params, b, x)
  x = _d(params, 'Mixed_7a', x)
  x = _e(params, 'Mixed_7b', x, max_pool_branch=False)
  x = _e(params, 'Mixed_7c', x, max_pool_branch=True)
  return x.mean((1, 2))


def _resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
  """[n_out, n_in] weights of 1-D bilinear resampling (module docstring's modes).

  Source coordinates are computed in float32, as both TensorFlow's and PyTorch's
  CPU kernels do, so that the floor picks the same pixel at the boundaries.
  """
  scale = np.float32(n_in) / np.float32(n_out)
  dst = np.arange(n_out, dtype=np.float32)
  if mode == 'tf':
    src = dst * scale
  else:
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w = (src - i0.astype(np.float32)).astype(np.float64)
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), i0), 1.0 - w)
  np.add.at(m, (np.arange(n_out), i1), w)
  return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int], mode: str = 'tf') -> jax.Array:
  """[n, h, w, c] -> [n, size[0], size[1], c], bilinear as in the module docstring's modes."""
  mh = jnp.asarray(_resize_matrix(x.shape[1], size[0], mode))
  mw = jnp.asarray(_resize_matrix(x.shape[2], size[1], mode))
  return jnp.einsum('ph,nhwc,qw->npqc', mh, x, mw, precision=_HI)


def preprocess(images_255: jax.Array, resize: str = 'tf') -> jax.Array:
  """[n, h, w, c] values in [0, 255] (c = 1 or 3) -> the trunk's [n, 299, 299, 3] input."""
  if resize not in RESIZE_MODES:
    raise ConfigError(f'unknown inception resize mode {resize!r}; allowed: '
                      f'{", ".join(RESIZE_MODES)}')
  x = jnp.asarray(images_255, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ConfigError(f'Inception-v3 features need [n, h, w, 1 or 3] images, got shape '
                      f'{tuple(x.shape)}')
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (SIZE, SIZE):
    x = resize_bilinear(x, (SIZE, SIZE), resize)
  if resize == 'tf':
    return (x - 128.0) / 128.0
  return 2.0 * (x / 255.0) - 1.0


def pool3_features(params, images_255, resize: str = 'tf') -> jax.Array:
  """[n, h, w, c] images in [0, 255] -> [n, 2048] FID features."""
  return trunk(params, preprocess(images_255, resize))
