"""Reference outputs for tests/test_inception.py, computed by the reference implementations.

The tests compare gensuite's FID Inception-v3 and its PyTorch-file reader with what
pytorch-fid, PyTorch and TensorFlow themselves produce. Those libraries are not
dependencies of gensuite, so their outputs are computed once here and stored in
tests/data/ (small files; the random network is regenerated from its seed).

  # 1. with torch, torchvision and pytorch-fid installed beside gensuite:
  python experiments/inception_reference.py --part=torch
  # 2. with tensorflow-cpu and numpy (gensuite not needed):
  python experiments/inception_reference.py --part=tf

Part `torch` writes:
  pf_images, pf_features   pytorch-fid's InceptionV3 (resize_input, normalize_input,
                           2048-d pool3) with gensuite.nets.inception.random_state_dict(0)
                           as its weights, on three 32x32 RGB images;
  pt_resize_*              F.interpolate(bilinear, align_corners=False) outputs;
  torch_zip.pth            torch.save of tensors of several dtypes, views and offsets;
  torch_legacy.pth         the same with _use_new_zipfile_serialization=False;
  torchscript.pt           torch.jit.save of a small scripted module;
  file/<name>              the arrays those three files must read back as.
Part `tf` writes tf_resize_*: tf.compat.v1.image.resize_bilinear(align_corners=False).
"""
import argparse
import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), '..', 'tests', 'data')
REFERENCE = os.path.join(DATA, 'inception_reference.npz')
# (h, w) -> (out_h, out_w) cases for the resize references: up, mixed, down.
RESIZE_CASES = (((8, 6), (37, 23)), ((32, 32), (299, 41)), ((600, 5), (299, 5)))


def resize_inputs() -> dict[tuple, np.ndarray]:
  rng = np.random.default_rng(2)
  return {(h, w): rng.integers(0, 256, (1, h, w, 1)).astype(np.float32)
          for (h, w), _ in RESIZE_CASES}


def fid_images() -> np.ndarray:
  """Two noise images and one smooth pattern, 32x32 RGB, values 0..255."""
  rng = np.random.default_rng(1)
  noise = rng.integers(0, 256, (2, 32, 32, 3))
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  smooth = np.stack([128 + 127 * np.sin(6 * xx), 128 + 127 * np.cos(5 * yy),
                     255 * xx * yy], -1)
  return np.concatenate([noise, np.floor(smooth)[None]], 0).astype(np.uint8)


def _update(values: dict) -> None:
  old = {}
  if os.path.exists(REFERENCE):
    with np.load(REFERENCE) as f:
      old = {k: f[k] for k in f.files}
  old.update(values)
  np.savez_compressed(REFERENCE, **old)
  print(f'wrote {sorted(values)} to {REFERENCE}')


def part_torch() -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
  from gensuite.nets import inception  # pylint: disable=g-import-not-at-top

  values = {}
  # pytorch-fid's own network on gensuite's random weights (the classifier head and
  # batch-norm counters are filled from an untrained torchvision model: unused).
  state = {k: torch.from_numpy(v) for k, v in inception.random_state_dict(0).items()}
  filler = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()  # pylint: disable=protected-access
  for k, v in filler.items():
    state.setdefault(k, v)
  pf.load_state_dict_from_url = lambda *args, **kwargs: state  # no download
  net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                       normalize_input=True, use_fid_inception=True).eval()
  images = fid_images()
  x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  with torch.no_grad():
    values['pf_features'] = net(x)[0][:, :, 0, 0].numpy()
  values['pf_images'] = images

  for (h, w), x in resize_inputs().items():
    out = dict(RESIZE_CASES)[(h, w)]
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = F.interpolate(t, size=out, mode='bilinear', align_corners=False)
    values[f'pt_resize_{h}_{w}'] = y.permute(0, 2, 3, 1).numpy()

  # PyTorch files: dtypes, a transposed view, a storage offset, nesting, a scalar.
  g = torch.Generator().manual_seed(0)
  base = torch.randn(12, generator=g)
  a = torch.randn(3, 4, generator=g)
  tensors = {
      'a': a, 'a_t': a.t(), 'offset': base[3:7], 'half': torch.randn(5, generator=g).half(),
      'bf16': torch.randn(4, generator=g).bfloat16(), 'f64': torch.randn(2, 2, generator=g).double(),
      'i64': torch.tensor(7), 'u8': torch.arange(6, dtype=torch.uint8).reshape(2, 3),
      'flag': torch.tensor([True, False]),
  }
  obj = {**tensors, 'nested': {'g': torch.randn(2, generator=g)}, 'step': 3}
  torch.save(obj, os.path.join(DATA, 'torch_zip.pth'))
  torch.save(obj, os.path.join(DATA, 'torch_legacy.pth'), _use_new_zipfile_serialization=False)
  for k, v in tensors.items():
    values[f'file/{k}'] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
  values['file/nested.g'] = obj['nested']['g'].numpy()

  class Sub(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.p = torch.nn.Parameter(torch.randn(3, generator=g))
      self.register_buffer('buf', torch.arange(4.0))

    def forward(self, x):
      return x * self.p.sum() + self.buf.sum()

  class Net(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
      self.sub = Sub()

    def forward(self, x):
      return self.sub(self.conv(x))

  scripted = torch.jit.script(Net())
  torch.jit.save(scripted, os.path.join(DATA, 'torchscript.pt'))
  for k, v in scripted.state_dict().items():
    values[f'script/{k}'] = v.detach().numpy()
  _update(values)


def part_tf() -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = {}
  for (h, w), x in resize_inputs().items():
    out = dict(RESIZE_CASES)[(h, w)]
    y = tf.compat.v1.image.resize_bilinear(x, out, align_corners=False)
    values[f'tf_resize_{h}_{w}'] = y.numpy()
  _update(values)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--part', choices=('torch', 'tf'), required=True)
  args = parser.parse_args()
  os.makedirs(DATA, exist_ok=True)
  {'torch': part_torch, 'tf': part_tf}[args.part]()


if __name__ == '__main__':
  main()
