"""Pictures of samples: image grids, 2-D scatter plots, PNG files (numpy in, uint8 out).

  grid = pictures.image_grid(x)                         # [N, H, W, C] in [-1, 1]
  plot = pictures.scatter_plot(samples, reference, title='step 100')
  pictures.save_png('samples.png', grid)

The loop logs them to TensorBoard and DIR/samples/; methods draw their own with them.
"""
import math

import numpy as np


def image_grid(x: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
  """Images in [-1, 1], [N, H, W, C] -> one uint8 [rows*(H+pad), cols*(W+pad), C] grid."""
  x = np.clip((np.asarray(x, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
  n, h, w, c = x.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
  if c == 1:
    grid = np.repeat(grid, 3, axis=-1)
  return grid


def scatter_plot(samples: np.ndarray, reference: np.ndarray | None = None,
                 title: str = '', size: float = 4.0) -> np.ndarray:
  """2-D samples (and reference data) as a uint8 [H, W, 3] scatter plot."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(size, size), dpi=80)
  canvas = FigureCanvasAgg(fig)
  ax = fig.add_subplot(111)
  if reference is not None:
    ax.scatter(reference[:, 0], reference[:, 1], s=1, c='tab:gray', alpha=0.4, label='data')
  ax.scatter(samples[:, 0], samples[:, 1], s=1, c='tab:blue', alpha=0.6, label='samples')
  pts = samples if reference is None else np.concatenate([samples, reference])
  pts = pts[np.all(np.isfinite(pts), axis=1)]
  if len(pts):
    lo, hi = np.percentile(pts, [0.5, 99.5], axis=0)
    span = (hi - lo).max() * 0.6 + 1e-3
    mid = (hi + lo) / 2
    ax.set_xlim(mid[0] - span, mid[0] + span)
    ax.set_ylim(mid[1] - span, mid[1] + span)
  ax.set_aspect('equal')
  ax.legend(loc='upper right', markerscale=6, fontsize=7)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(path: str, image: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
