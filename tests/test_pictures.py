"""Pictures: grids scaled for looking (the arrays themselves untouched), 2-D panels."""
import numpy as np

from gensuite import pictures


def test_small_images_are_scaled_by_whole_pixels_with_a_border_and_labels():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (12, 8, 8, 1)).astype(np.float32)
  before = x.copy()
  grid = pictures.image_grid(x, ncols=4, labels=list(range(12)))
  np.testing.assert_array_equal(x, before)  # the samples are not changed
  cell_h, cell_w = 32 + pictures.LABEL_H + 2, 32 + 2
  assert grid.shape == (3 * cell_h + 2, 4 * cell_w + 2, 3) and grid.dtype == np.uint8
  pixels = np.clip((x + 1) * 127.5, 0, 255).astype(np.uint8)
  for i in (0, 5, 11):
    r, q = divmod(i, 4)
    top, left = 2 + r * cell_h, 2 + q * cell_w
    block = grid[top:top + 32, left:left + 32, 0]
    np.testing.assert_array_equal(block, np.kron(pixels[i, :, :, 0], np.ones((4, 4), np.uint8)))
    strip = grid[top + 32:top + 32 + pictures.LABEL_H, left:left + 32, 0]
    assert strip.max() > 200 and strip.min() == 0  # white text on black
  assert np.all(grid[0] == pictures.BORDER) and np.all(grid[:, 0] == pictures.BORDER)
  big = pictures.image_grid(rng.uniform(-1, 1, (4, 32, 32, 3)))
  assert big.shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # already 32 px: not scaled


def test_scatter_plot_draws_data_samples_and_trajectories_side_by_side():
  rng = np.random.default_rng(0)
  data, samples = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 3.0
  two = pictures.scatter_plot(samples, data, title='step 1')
  three = pictures.scatter_plot(samples, data,
                                trajectories=np.cumsum(rng.normal(size=(5, 8, 2)), 0))
  one = pictures.scatter_plot(samples)
  assert two.shape[0] == three.shape[0] == one.shape[0]
  assert abs(two.shape[1] / one.shape[1] - 2) < 0.05
  assert abs(three.shape[1] / one.shape[1] - 3) < 0.05
  # The data panel (left half) holds no sample colour, the samples panel no data grey.
  left, right = two[:, : two.shape[1] // 2], two[:, two.shape[1] // 2:]
  blue = lambda im: np.sum((im[..., 2] > 150) & (im[..., 0] < 120))
  assert blue(left) == 0 and blue(right) > 100


def test_titled_side_by_side_and_line_plot_shapes():
  a = pictures.image_grid(np.zeros((4, 8, 8, 1)))           # 2x2 digits at 32 px
  b = pictures.image_grid(np.zeros((9, 8, 8, 1)))           # 3x3
  ta = pictures.titled(a, '1 NFE')
  assert ta.shape == (a.shape[0] + pictures.LABEL_H, a.shape[1], 3)
  np.testing.assert_array_equal(ta[pictures.LABEL_H:], a)   # the grid itself is untouched
  row = pictures.side_by_side([ta, b], gap=8)
  assert row.shape == (max(ta.shape[0], b.shape[0]), a.shape[1] + 8 + b.shape[1], 3)
  assert np.all(row[:, a.shape[1]:a.shape[1] + 8] == 255)   # a white gap between them
  one = pictures.line_plot({'x': ([1, 2, 3], [3.0, 2.0, 1.0])}, logy=True,
                           hlines={'ref': 1.5})
  two = pictures.line_plot([('a', {'x': ([1, 2], [1.0, 2.0])}),
                            ('b', {'y': ([1, 2], [2.0, 1.0])})])
  assert one.dtype == np.uint8 and one.shape[-1] == 3
  assert two.shape[1] == 2 * one.shape[1] and two.shape[0] == one.shape[0]
