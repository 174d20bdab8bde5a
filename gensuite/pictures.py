"""Pictures of samples: image grids, 2-D scatter plots, PNG files (numpy in, uint8 out).

  grid = pictures.image_grid(x)                         # [N, H, W, C] in [-1, 1]
  grid = pictures.image_grid(x, labels=y)               # a class label under each image
  plot = pictures.scatter_plot(samples, reference, title='step 100')
  plot = pictures.scatter_plot(samples, reference, trajectories=traj)  # [T, n, 2] paths
  pictures.save_png('samples.png', grid)
  both = pictures.side_by_side([pictures.titled(g1, '1 NFE'), pictures.titled(g2, '2 NFE')])
  curve = pictures.line_plot({'run a': (steps, values)}, xlabel='step', logy=True)

The loop logs them to TensorBoard and DIR/samples/; methods draw their own with them.
They are for looking at, not for measuring: a grid upscales small images by an integer
factor with nearest-neighbour pixels (each image at least `min_side` px a side: an
8x8 digit becomes 32x32) and separates them with a grey border; the arrays a run
returns or `gensuite sample` writes are never changed. A 2-D plot puts the data and
the samples in side-by-side panels with the same axes (the data drawn under the
samples would hide where the samples cover them), and a third panel of trajectories
when given.
"""
import math

import numpy as np

BORDER = 96     # grey between images, visible on black and white digits alike
LABEL_H = 11    # px of the strip under each image that holds its label


def _label_strip(text: str, width: int) -> np.ndarray:
  """A [LABEL_H, width] uint8 strip with `text` in white on black (PIL's default font)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  strip = Image.new('L', (width, LABEL_H), 0)
  draw = ImageDraw.Draw(strip)
  left, _, right, _ = draw.textbbox((0, 0), text)
  draw.text((max(0, (width - (right - left)) // 2), 0), text, fill=255)
  return np.asarray(strip, np.uint8)


def image_grid(x: np.ndarray, ncols: int | None = None, pad: int = 2,
               min_side: int = 32, labels=None) -> np.ndarray:
  """Images in [-1, 1], [N, H, W, C] -> one uint8 RGB grid (module docstring).

  Each image is scaled by s = ceil(min_side / min(H, W)) (1 for images already that
  large) with nearest-neighbour pixels; `pad` px of grey separate them; `labels` ([N]
  ints or strings) are written under the images.
  """
  x = np.clip((np.asarray(x, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
  n, h, w, c = x.shape
  scale = max(1, int(math.ceil(min_side / max(1, min(h, w)))))
  if scale > 1:
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
  if c == 1:
    x = np.repeat(x, 3, axis=-1)
  elif c != 3:
    x = np.repeat(x[..., :1], 3, axis=-1)
  label_h = LABEL_H if labels is not None else 0
  cell_h, cell_w = h + label_h + pad, w + pad
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * cell_h + pad, ncols * cell_w + pad, 3), BORDER, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncols)
    top, left = pad + r * cell_h, pad + q * cell_w
    grid[top:top + h, left:left + w] = x[i]
    if labels is not None:
      grid[top + h:top + h + label_h, left:left + w] = _label_strip(str(labels[i]), w)[..., None]
  return grid


def _limits(*point_sets):
  pts = np.concatenate([p.reshape(-1, 2) for p in point_sets if p is not None])
  pts = pts[np.all(np.isfinite(pts), axis=1)]
  if not len(pts):
    return None
  lo, hi = np.percentile(pts, [0.5, 99.5], axis=0)
  span = (hi - lo).max() * 0.6 + 1e-3
  mid = (hi + lo) / 2
  return (mid[0] - span, mid[0] + span), (mid[1] - span, mid[1] + span)


def scatter_plot(samples: np.ndarray, reference: np.ndarray | None = None,
                 title: str = '', size: float = 3.2,
                 trajectories: np.ndarray | None = None) -> np.ndarray:
  """2-D samples as a uint8 [H, W, 3] picture: panels data | samples [| trajectories].

  reference: data points (left panel; omitted when None). trajectories: [T, n, 2]
  states of n points along a sampler's path (first state dot, path line, last state
  dot), drawn over the data in grey. All panels share the axes.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  panels = (['data'] if reference is not None else []) + ['samples'] + (
      ['trajectories'] if trajectories is not None else [])
  fig = Figure(figsize=(size * len(panels), size + 0.3), dpi=80)
  canvas = FigureCanvasAgg(fig)
  limits = _limits(samples, reference)
  for k, panel in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    if panel == 'data':
      ax.scatter(reference[:, 0], reference[:, 1], s=1, c='tab:gray', alpha=0.6)
    elif panel == 'samples':
      ax.scatter(samples[:, 0], samples[:, 1], s=1, c='tab:blue', alpha=0.6)
    else:
      if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c='tab:gray', alpha=0.25)
      traj = np.asarray(trajectories)
      for j in range(traj.shape[1]):
        ax.plot(traj[:, j, 0], traj[:, j, 1], lw=0.6, c='tab:orange', alpha=0.8)
      ax.scatter(traj[0, :, 0], traj[0, :, 1], s=3, c='k')
      ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, c='tab:blue')
    if limits is not None:
      ax.set_xlim(*limits[0])
      ax.set_ylim(*limits[1])
    ax.set_aspect('equal')
    ax.set_title(panel if not title else f'{panel} ({title})' if panel == 'samples' else panel,
                 fontsize=9)
    ax.tick_params(labelsize=7)
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def titled(image: np.ndarray, text: str) -> np.ndarray:
  """`image` (uint8 [H, W, 3]) with `text` centred in a strip above it."""
  strip = _label_strip(text, image.shape[1])
  return np.concatenate([np.repeat(strip[..., None], 3, axis=-1), image], axis=0)


def side_by_side(images, gap: int = 8) -> np.ndarray:
  """uint8 [H, W, 3] pictures in one row, top-aligned, `gap` px of white between them."""
  height = max(im.shape[0] for im in images)
  parts = []
  for k, im in enumerate(images):
    pad = np.full((height - im.shape[0], im.shape[1], 3), 255, np.uint8)
    parts.append(np.concatenate([im, pad], axis=0))
    if k < len(images) - 1:
      parts.append(np.full((height, gap, 3), 255, np.uint8))
  return np.concatenate(parts, axis=1)


def line_plot(curves, xlabel: str = '', ylabel: str = '', title: str = '',
              logy: bool = False, size=(5.0, 3.4), hlines=None) -> np.ndarray:
  """Lines with markers as uint8 [H, W, 3]: `curves` is {label: (xs, ys)} for one
  panel (y axis `ylabel`), or a list of (ylabel, {label: (xs, ys)}) for panels side by
  side sharing `xlabel`; `title` goes over the first panel; `hlines` {label: y} are
  dashed reference levels on the first panel."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  panels = [(ylabel, curves)] if isinstance(curves, dict) else list(curves)
  fig = Figure(figsize=(size[0] * len(panels), size[1]), dpi=100)
  canvas = FigureCanvasAgg(fig)
  for k, (label_y, panel) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    for label, (xs, ys) in panel.items():
      ax.plot(xs, ys, marker='o', ms=3, lw=1.2, label=label)
    for label, y in (hlines or {}).items() if k == 0 else ():
      ax.axhline(y, ls='--', lw=1.0, c='k', alpha=0.6, label=label)
    if logy:
      ax.set_yscale('log')
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(label_y, fontsize=9)
    if k == 0 and title:
      ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, which='both')
    if len(panel) + (len(hlines or {}) if k == 0 else 0) > 1:
      ax.legend(fontsize=8)
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(path: str, image: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
