"""What the peer comparison relies on: net.conditioning ('film' | 'concat') and the
on-device OT coupling (method.ot_solver='sinkhorn'); experiments/compare_peers.py."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flow_matching import toy2d
from gensuite import data as data_lib
from gensuite import nets
from gensuite.errors import ConfigError
from gensuite.methods import defaults
from gensuite.methods import flow_matching as fm
from gensuite.metrics import distances
from gensuite.nets.embeddings import (LabelEmbedding, TimeEmbedding, broadcast_time,
                                      get_activation)
from gensuite.nets.mlp import TimeMLP

# Transport cost of the sinkhorn plan over the exact one, minus 1, at the default
# sinkhorn_eps / sinkhorn_iters (30): measured 1.5-5.5% on these batches; allowed:
SINKHORN_GAP = 0.10


class _FilmReference(nn.Module):
  """TimeMLP's FiLM forward pass as it was before `conditioning` existed (the same
  submodules and names), to check that 'film' is bitwise unchanged."""
  out_dim: int
  hidden: int = 32
  depth: int = 3
  emb_dim: int = 16
  num_classes: int | None = None

  @nn.compact
  def __call__(self, x, t, label=None, second_time=None):
    act = get_activation('silu')
    batch = x.shape[0]
    c = TimeEmbedding(self.hidden, sinusoid_dim=self.emb_dim, scale=1000.0,
                      activation='silu', name='time_emb')(broadcast_time(t, batch))
    if second_time is not None:
      c = c + TimeEmbedding(self.hidden, sinusoid_dim=self.emb_dim, scale=1000.0,
                            activation='silu', name='time2_emb')(
                                broadcast_time(second_time, batch))
    if self.num_classes:
      c = c + LabelEmbedding(self.num_classes, self.hidden, name='label_emb')(label, batch)
    c = act(c)
    h = x.reshape(batch, -1)
    for i in range(self.depth):
      z = nn.Dense(self.hidden, name=f'dense_{i}')(h)
      scale, shift = jnp.split(nn.Dense(2 * self.hidden, name=f'film_{i}')(c), 2, axis=-1)
      z = act(z * (1.0 + scale) + shift)
      h = z if i == 0 else h + z
    return nn.Dense(self.out_dim, name='out')(h).astype(jnp.float32)


@pytest.mark.parametrize('num_classes, two_times', [(None, False), (3, False), (None, True)])
def test_film_is_bitwise_unchanged(num_classes, two_times):
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  t = jax.random.uniform(jax.random.PRNGKey(1), (16,))
  label = jnp.arange(16) % 3 if num_classes else None
  kw = dict(label=label, second_time=0.5 * t if two_times else None)
  ref = _FilmReference(out_dim=2, num_classes=num_classes)
  net = TimeMLP(out_dim=2, hidden=32, depth=3, emb_dim=16, num_classes=num_classes)
  assert net.conditioning == 'film'  # the default
  p_ref = ref.init(jax.random.PRNGKey(2), x, t, **kw)['params']
  p_net = net.init(jax.random.PRNGKey(2), x, t, **kw)['params']
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_net)
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_net)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ref.apply({'params': p_ref}, x, t, **kw),
                                net.apply({'params': p_ref}, x, t, **kw))


def test_concat_param_tree_is_a_plain_mlp_on_x_and_t():
  x, t = jnp.ones((4, 2)), jnp.full((4,), 0.3)
  film = TimeMLP(out_dim=2, hidden=32, depth=4).init(jax.random.PRNGKey(0), x, t)['params']
  net = TimeMLP(out_dim=2, hidden=32, depth=4, conditioning='concat')
  params = net.init(jax.random.PRNGKey(0), x, t)['params']
  assert set(params) == {'dense_0', 'dense_1', 'dense_2', 'dense_3', 'out'}
  assert {'time_emb', 'film_0'} <= set(film) and not {'time_emb', 'film_0'} & set(params)
  assert params['dense_0']['kernel'].shape == (3, 32)  # [x, t]
  # torchcfm's 4 x 256 MLP on [x, t] has this many parameters; concat matches it.
  big = TimeMLP(out_dim=2, hidden=256, depth=4, conditioning='concat')
  count = nets.param_count(big.init(jax.random.PRNGKey(0), x, t)['params'])
  assert count == (3 * 256 + 256) + 3 * (256 * 256 + 256) + (256 * 2 + 2)
  # The output depends on t (it is an input), and a scalar t broadcasts.
  out_a, out_b = net.apply({'params': params}, x, 0.1), net.apply({'params': params}, x, 0.9)
  assert out_a.shape == (4, 2) and not np.allclose(out_a, out_b)
  labelled = TimeMLP(out_dim=2, hidden=32, depth=2, conditioning='concat', num_classes=3)
  p = labelled.init(jax.random.PRNGKey(0), x, t, label=jnp.arange(4) % 3)['params']
  assert p['dense_0']['kernel'].shape == (3 + 32, 32) and 'label_emb' in p


def test_concat_is_a_config_token_and_bad_values_are_config_errors():
  c = toy2d.get_config('moons,concat,smoke')
  assert c.net.conditioning == 'concat' and toy2d.get_config().net.conditioning == 'film'
  c.net.conditioning = 'cross'
  with pytest.raises(ConfigError, match='conditioning'):
    nets.build(c.net, data_shape=(2,), out_dim_or_channels=2, num_classes=None)
  section = defaults.SECTIONS['flow_matching']
  assert section['ot_solver'] == 'exact' and section['sinkhorn_eps'] > 0
  c = toy2d.get_config('ot,smoke')
  c.method.ot_solver = 'auction'
  spec = data_lib.build(c.data, seed=0, global_batch_size=8).spec
  with pytest.raises(ConfigError, match='ot_solver'):
    fm.FlowMatching(c, spec)


def _sinkhorn(x0, x1, label=None):
  d = defaults.SECTIONS['flow_matching']
  fn = jax.jit(lambda a, b, lab: fm.sinkhorn_assignment(
      a, b, lab, eps=d['sinkhorn_eps'], iters=d['sinkhorn_iters']))
  return np.asarray(fn(x0, x1, label))


@pytest.mark.parametrize('kind, n, dim', [('8gaussians', 256, 2), ('gauss', 256, 2),
                                          ('gauss', 128, 5)])
def test_sinkhorn_gives_a_permutation_near_the_exact_cost(kind, n, dim):
  dist = data_lib.toy.get('8gaussians')
  gaps = []
  for seed in range(3):
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    x0 = jax.random.normal(k0, (n, dim))
    x1 = (dist.sample(k1, n) if kind == '8gaussians'
          else 1.0 + jax.random.normal(k1, (n, dim)))
    perm = _sinkhorn(x0, x1)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    cost = lambda p: float(jnp.sum((x0 - x1[p])**2))
    exact = cost(np.asarray(fm.ot_assignment(x0, x1)))
    gaps.append(cost(perm) / exact - 1)
    assert cost(perm) < cost(np.arange(n))
  print(f'{kind} n={n} d={dim}: sinkhorn cost / exact cost - 1 = {np.round(gaps, 4)}')
  assert max(gaps) <= SINKHORN_GAP, gaps


def test_sinkhorn_with_labels_stays_within_classes():
  label = jnp.asarray(np.random.RandomState(1).randint(0, 3, 60), jnp.int32)  # unequal
  a = jax.random.normal(jax.random.PRNGKey(0), (60, 1))
  b = 4.0 * label[:, None] + jax.random.normal(jax.random.PRNGKey(1), (60, 1))
  perm = _sinkhorn(a, b, label)
  np.testing.assert_array_equal(np.sort(perm), np.arange(60))
  np.testing.assert_array_equal(np.asarray(label)[perm], label)


@pytest.mark.parametrize('n, labelled', [(300, False), (130, True), (9, False)])
def test_blockwise_rounding_equals_rounds_over_the_whole_matrix(n, labelled):
  """round_to_permutation's shrinking row blocks give the permutation that rounds over
  the whole matrix give (min_rows above n: no block ever shrinks), with and without
  classes (+inf costs between them)."""
  k0, k1, k2 = jax.random.split(jax.random.PRNGKey(n), 3)
  cost = fm._sq_cost(jax.random.normal(k0, (n, 2)), 1.0 + jax.random.normal(k1, (n, 2)))
  if labelled:
    label = jax.random.randint(k2, (n,), 0, 3)
    cost = jnp.where(label[:, None] == label[None, :], cost, jnp.inf)
  f, g = fm.sinkhorn_potentials(cost, 0.01, 30)
  blocks = np.asarray(jax.jit(fm.round_to_permutation)(cost, f, g))
  whole = np.asarray(jax.jit(lambda c, f, g: fm.round_to_permutation(
      c, f, g, min_rows=n + 1))(cost, f, g))
  np.testing.assert_array_equal(blocks, whole)
  np.testing.assert_array_equal(np.sort(blocks), np.arange(n))
  if labelled:
    np.testing.assert_array_equal(np.asarray(label)[blocks], label)


def test_sinkhorn_coupling_is_used_by_the_loss():
  """ot_solver='sinkhorn' pairs the noise by the on-device plan (no host callback)."""
  c = toy2d.get_config('8gaussians,ot,sinkhorn,smoke')
  spec = data_lib.build(c.data, seed=0, global_batch_size=8).spec
  method = fm.FlowMatching(c, spec)
  x1 = jax.random.normal(jax.random.PRNGKey(3), (64, 2)) + 4.0
  x0 = jax.random.normal(jax.random.PRNGKey(4), (64, 2))
  np.testing.assert_array_equal(method.assignment(x1, x0), _sinkhorn(x1, x0))
  text = jax.jit(method.loss).lower(jax.tree.map(
      jnp.asarray, method.init(jax.random.PRNGKey(0), {'x': x1}).params),
      {'x': x1}, jax.random.PRNGKey(0)).as_text()
  assert 'callback' not in text
  c.method.ot_solver = 'exact'  # the check can see a callback: the exact solver's
  exact = fm.FlowMatching(c, spec)
  assert 'callback' in jax.jit(exact.loss).lower(jax.tree.map(
      jnp.asarray, exact.init(jax.random.PRNGKey(0), {'x': x1}).params),
      {'x': x1}, jax.random.PRNGKey(0)).as_text()


def _train_to_criterion(conditioning, max_steps, null95, data):
  c = toy2d.get_config(f'8gaussians,{conditioning}')
  c.net.update(hidden=128, depth=3)
  c.optim.update(lr=2e-3, schedule='constant', warmup_steps=0, ema_decays=())
  method = fm.FlowMatching(c, data.spec)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  step = jax.jit(method.train_step, donate_argnums=0)
  for i in range(max_steps):
    state, _ = step(state, data.batch(i), jax.random.PRNGKey(i))
    if (i + 1) % 250 == 0:
      x = method.sample(state, jax.random.PRNGKey(i), 2000, sampler='euler', steps=50,
                        use_ema=False)
      mmd = distances.mmd2_unbiased(x, data.reference(jax.random.PRNGKey(10_000 + i), 2000))
      if mmd < null95:
        return i + 1
  return None


@pytest.mark.slow
@pytest.mark.parametrize('conditioning', ['film', 'concat'])
def test_both_nets_reach_the_null_criterion(conditioning):
  c = toy2d.get_config('8gaussians')
  data = data_lib.build(c.data, seed=0, global_batch_size=512)
  null95 = distances.mmd2_null_quantile(data.dist.sample, jax.random.PRNGKey(1), 2000,
                                        num_pairs=30)
  assert _train_to_criterion(conditioning, 3000, null95, data) is not None
