"""Networks: shapes, conditioning on t and label, jit, and build's config checks.

  pytest -q tests/test_nets.py -s     # -s shows the parameter counts
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gensuite import nets
from gensuite.errors import ConfigError
from gensuite.nets import embeddings


def _cfg(**fields):
  return ml_collections.ConfigDict(fields)


def _random_params(net, *args, **kwargs):
  """Random parameters without running init (whose RNG-heavy graph is slow to compile).

  Kernels get N(0, 1/fan_in), norm scales 1 + noise, everything else small noise, so
  zero-initialised output layers, which would hide conditioning, are nonzero too.
  """
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), *args, **kwargs))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    value = rng.normal(size=leaf.shape) / np.sqrt(fan_in)
    if len(leaf.shape) == 1:
      value = 0.1 * value + (1.0 if 'scale' in name else 0.0)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes['params'])


def test_sinusoidal_embedding_separates_both_input_ranges():
  for t in (jnp.linspace(0.0, 1.0, 11), jnp.linspace(-5.0, 5.0, 11)):
    e = embeddings.sinusoidal_embedding(t, 64)
    assert e.shape == (11, 64)
    np.testing.assert_allclose(jnp.sum(e**2, -1), 32.0, rtol=1e-5)  # sin^2 + cos^2
    # Neighbouring inputs stay distinguishable: distinct rows, no aliasing.
    d = jnp.linalg.norm(e[:, None] - e[None], axis=-1) + 1e3 * jnp.eye(11)
    assert float(d.min()) > 0.5
  assert embeddings.sinusoidal_embedding(jnp.zeros(3), 7).shape == (3, 7)


def test_mlp_shapes_time_and_label():
  net = nets.build(_cfg(name='mlp', hidden=32, depth=3, emb_dim=16), data_shape=(2,),
                   out_dim_or_channels=2, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  t = jnp.full((5,), 0.3)
  label = jnp.array([0, 1, 2, 0, 1])
  params = _random_params(net, x, t, label=label)
  print(f'mlp hidden=32 depth=3: {nets.param_count(params)} params')
  apply = jax.jit(lambda p, x, t, y: net.apply({'params': p}, x, t, label=y))
  out = apply(params, x, t, label)
  assert out.shape == (5, 2) and bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.abs(out - apply(params, x, t + 0.5, label)).max()) > 1e-4
  assert float(jnp.abs(out - apply(params, x, t, (label + 1) % 3)).max()) > 1e-4
  # label=None is the null label (index num_classes), for classifier-free guidance.
  null = net.apply({'params': params}, x, t)
  np.testing.assert_allclose(null, apply(params, x, t, jnp.full((5,), 3)), atol=1e-6)
  # A scalar t is broadcast over the batch, as the samplers pass it.
  np.testing.assert_allclose(net.apply({'params': params}, x, 0.3, label=label), out,
                             rtol=1e-6)


def test_mlp_unconditional_and_dropout():
  net = nets.TimeMLP(out_dim=3, hidden=16, depth=2, emb_dim=8, dropout=0.5,
                     activation='relu')
  x = jnp.ones((4, 3))
  params = _random_params(net, x, jnp.zeros(4))
  a = net.apply({'params': params}, x, jnp.zeros(4), train=True,
                rngs={'dropout': jax.random.PRNGKey(1)})
  b = net.apply({'params': params}, x, jnp.zeros(4), train=True,
                rngs={'dropout': jax.random.PRNGKey(2)})
  assert a.shape == (4, 3) and not np.allclose(a, b)
  with pytest.raises(ConfigError, match='silu'):
    nets.TimeMLP(out_dim=1, activation='sigmoidish').init(
        jax.random.PRNGKey(0), x, jnp.zeros(4))


def test_unet_init_zero_output():
  """The real init: zero-initialised output conv gives the zero function."""
  net = nets.UNet(out_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attn_resolutions=(4,))
  x, t = jnp.ones((2, 8, 8, 1)), jnp.array([0.1, 0.9])
  # An rbg key: threefry's init graph takes several times longer to compile on CPU.
  init = jax.jit(lambda x, t: net.init_with_output(jax.random.key(0, impl='unsafe_rbg'),
                                                   x, t))
  out, variables = init(x, t)
  np.testing.assert_array_equal(variables['params']['conv_out']['kernel'], 0.0)
  np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize('shape,kw', [
    ((8, 8, 1), dict(channels=8, channel_mult=(1, 2), attn_resolutions=(4,))),
    ((32, 32, 3), dict(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attn_resolutions=(16,))),
    # 28 -> 14 -> 7 -> 7: the last level cannot halve an odd size and must not try.
    ((28, 28, 1), dict(channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1,
                       attn_resolutions=(7,))),
])
def test_unet_shapes_and_time(shape, kw):
  net = nets.build(_cfg(name='unet', **kw), data_shape=shape,
                   out_dim_or_channels=shape[-1], num_classes=None)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + shape)
  t = jnp.array([0.1, 0.9])
  params = _random_params(net, x, t)
  print(f'unet {shape} {kw}: {nets.param_count(params)} params')
  # Both time orders in one jitted call: one compile per configuration.
  apply = jax.jit(lambda p: (net.apply({'params': p}, x, t),
                             net.apply({'params': p}, x, t[::-1])))
  out, swapped = apply(params)
  assert out.shape == (2,) + shape
  assert bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.abs(out - swapped).max()) > 1e-4


def test_unet_class_conditional_and_dropout():
  shape = (8, 8, 1)
  net = nets.build(_cfg(name='unet', channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=(), dropout=0.1),
                   data_shape=shape, out_dim_or_channels=2, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (3,) + shape)
  t = jnp.full((3,), 0.5)
  label = jnp.array([0, 4, 9])
  params = _random_params(net, x, t, label=label)
  assert params['label_emb']['Embed_0']['embedding'].shape[0] == 11  # + null label

  @jax.jit
  def outputs(p):
    apply = lambda **kw: net.apply({'params': p}, x, t, **kw)
    return (apply(label=label), apply(label=jnp.array([1, 5, 10])), apply(),
            apply(label=jnp.full((3,), 10)),
            apply(label=label, train=True, rngs={'dropout': jax.random.PRNGKey(4)}))

  out, other, null, null_index, train_out = outputs(params)
  assert out.shape == (3, 8, 8, 2)
  assert float(jnp.abs(out - other).max()) > 1e-4
  # label=None is the null label (index num_classes), for classifier-free guidance.
  np.testing.assert_allclose(null, null_index, atol=1e-5)
  assert not np.allclose(train_out, out)


def test_unet_cifar_size_param_count():
  """Counts only (eval_shape): the CIFAR-sized net is too slow to run in a unit test."""
  for kw, shape in [(dict(channels=32, channel_mult=(1, 2)), (8, 8, 1)),
                    (dict(channels=128, channel_mult=(1, 2, 2, 2)), (32, 32, 3))]:
    net = nets.UNet(out_channels=shape[-1], **kw)
    shapes = jax.eval_shape(lambda n=net, s=shape: n.init(
        jax.random.PRNGKey(0), jnp.zeros((1,) + s), jnp.zeros(1)))
    count = nets.param_count(shapes['params'])
    print(f'unet {shape} {kw}: {count:,} params')
    assert count > 0
  assert 30e6 < count < 45e6  # DDPM's CIFAR-10 model has 35.7M


def test_groups_divide_channels():
  for c in (1, 4, 8, 12, 24, 32, 64, 96, 128, 256, 384):
    g = nets.unet.default_groups(c)
    assert c % g == 0 and 1 <= g <= 32
  assert nets.unet.default_groups(128) == 32 and nets.unet.default_groups(12) == 3


def test_build_rejects_bad_configs():
  with pytest.raises(ConfigError, match=r"needs image data \[H, W, C\].*moons.*\(2,\).*mlp"):
    nets.build(_cfg(name='unet'), data_shape=(2,), out_dim_or_channels=2,
               num_classes=None, data_name='moons')
  with pytest.raises(ConfigError, match=r"needs vector data.*\(8, 8, 1\).*unet"):
    nets.build(_cfg(name='mlp'), data_shape=(8, 8, 1), out_dim_or_channels=1,
               num_classes=None)
  with pytest.raises(ConfigError, match='unknown net name.*mlp.*unet'):
    nets.build(_cfg(name='resnet'), data_shape=(2,), out_dim_or_channels=2,
               num_classes=None)
  with pytest.raises(ConfigError, match='widht.*allowed: .*hidden'):
    nets.build(_cfg(name='mlp', widht=3), data_shape=(2,), out_dim_or_channels=2,
               num_classes=None)
  # Fields the data decides may not be set in the net section.
  with pytest.raises(ConfigError, match='out_channels'):
    nets.build(_cfg(name='unet', out_channels=3), data_shape=(8, 8, 1),
               out_dim_or_channels=1, num_classes=None)
  # JSON round trips turn tuples into lists; build accepts them.
  net = nets.build(_cfg(name='unet', channel_mult=[1, 2], attn_resolutions=[]),
                   data_shape=(8, 8, 1), out_dim_or_channels=1, num_classes=None)
  assert net.channel_mult == (1, 2)
  assert 'num_classes' not in nets.allowed_fields('unet')


def test_dit_zero_init_shapes_conditioning_and_features():
  """DiT: the real init is the zero function (adaLN-Zero gates and output); with random
  params the output depends on t, the second time and the label; the features are the
  last tokens as a [B, H/p, W/p, hidden] map; jax.jvp through it matches finite
  differences (flow maps differentiate their net in t)."""
  net = nets.build(_cfg(name='dit', patch_size=2, hidden=32, depth=2, num_heads=4,
                        time_scale=1.0),  # smooth in t: a finite difference can follow it
                   data_shape=(8, 8, 3), out_dim_or_channels=3, num_classes=10,
                   second_time=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  t, r, label = jnp.array([0.1, 0.9]), jnp.array([0.0, 0.5]), jnp.array([3, 10])
  init = jax.jit(lambda: net.init_with_output(jax.random.key(0, impl='unsafe_rbg'), x, t,
                                              label=label, second_time=r))
  out, variables = init()
  np.testing.assert_array_equal(out, 0.0)
  assert 'time2_emb' in variables['params']
  params = _random_params(net, x, t, label=label, second_time=r)
  print(f'dit (8, 8, 3): {nets.param_count(params)} params')

  def f(p, x, t, r, label):
    return net.apply({'params': p}, x, t, label=label, second_time=r)
  out = jax.jit(f)(params, x, t, r, label)
  assert out.shape == (2, 8, 8, 3) and bool(jnp.all(jnp.isfinite(out)))
  for other in ((x, t[::-1], r, label), (x, t, r[::-1], label), (x, t, r, label[::-1])):
    assert float(jnp.abs(jax.jit(f)(params, *other) - out).max()) > 1e-4
  _, features = net.apply({'params': params}, x, t, label=label, second_time=r,
                          return_features=True)
  assert features.shape == (2, 4, 4, 32)
  fn = lambda t_: f(params, x, t_, r, label)
  _, tangent = jax.jvp(fn, (t,), (jnp.ones_like(t),))
  h = 1e-2
  fd = (fn(t + h) - fn(t - h)) / (2 * h)
  np.testing.assert_allclose(tangent, fd, rtol=0.05, atol=0.02 * float(jnp.abs(fd).max()))
  with pytest.raises(ValueError, match='patch_size=3 does not divide the image size 8x8'):
    nets.build(_cfg(name='dit', patch_size=3, hidden=32, depth=1, num_heads=4),
               data_shape=(8, 8, 3), out_dim_or_channels=3, num_classes=None).init(
                   jax.random.PRNGKey(0), x, t)
  with pytest.raises(ConfigError, match="net 'dit' needs image data"):
    nets.build(_cfg(name='dit'), data_shape=(2,), out_dim_or_channels=2, num_classes=None)
