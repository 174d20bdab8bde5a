"""Flow matching: CFM / rectified flow, VP and cosine paths, minibatch OT,
stochastic interpolants and contrastive flow matching.

  config.method = dict(name='flow_matching', path='linear', coupling='ot', ...)
  method = FlowMatching(config, data_spec)
  state = method.init(rng, batch); state, m = method.train_step(state, batch, rng)
  x = method.sample(state, rng, 2000, sampler='heun', steps=20)

Conventions (ALGORITHMS.md §0, §2): t = 0 is noise x0 ~ N(0, I), t = 1 is data x1.
Every path is an interpolant x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z, with alpha
and beta from gensuite.samplers.frames.FM_PATHS (their one definition):
  linear  alpha = 1 - (1 - sigma_min) t, beta = t   (CFM, Lipman et al.; sigma_min = 0
          is rectified flow, Liu et al.)
  vp      alpha = sqrt(1 - a(1-t)^2), beta = a(1-t), a(s) = exp(-T(s)/2),
          T(s) = s beta_min + s^2 (beta_max - beta_min)/2  (Lipman et al.'s VP path)
  cosine  alpha = cos(pi t / 2), beta = sin(pi t / 2)   (variance preserving, a^2+b^2=1)
gamma: 'none', 'sqrt' (sqrt(g t(1-t)), Albergo et al.) or 'quadratic' (g t(1-t)).
The network predicts the velocity b(t, x) = E[alpha' x0 + beta' x1 + gamma' z | x_t]
(squared-error loss, whose minimizer is that conditional mean); with
`denoiser_head` it also predicts eta(t, x) = E[z | x_t], and score = -eta / gamma.
Without one the score comes from the velocity on the frame a = beta,
b = sqrt(alpha^2 + gamma^2) (frames.score_from_velocity).

coupling='ot' pairs x0 and x1 by an assignment minimizing the squared distance over
the batch (Tong et al.'s OT-CFM). method.ot_solver picks how: 'exact' (default) is the
Hungarian solution of the batch plan on the host (scipy, through pure_callback);
'sinkhorn' stays on device: log-domain Sinkhorn with eps-scaling down to
sinkhorn_eps x the mean cost, sinkhorn_iters iterations, then rounds of proposals turn
the entropic plan into a permutation (`sinkhorn_assignment`); no host round trip, so
it also runs inside a GPU/TPU step, at a small transport-cost gap to the exact plan.
With class_conditional the plan is solved within each class (§2.3): the data and
labels stay, and each class's noise (a fresh N(0, I) draw, like the noise sampling
starts from for that label) is permuted onto that class's data.
contrastive_weight = lambda > 0 adds -lambda ||v - u~||^2 with u~ the target of another
batch element (Stoica et al.'s ΔFM); negatives='other_class' draws it from other classes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from gensuite import nets, samplers
from gensuite.errors import ConfigError, lookup
from gensuite.methods import defaults, rand
from gensuite.methods.base import choice, FieldSampling, Method, SingleNetMethod


GAMMAS = {
    'none': lambda g: (lambda t: jnp.zeros_like(t)),
    'sqrt': lambda g: (lambda t: jnp.sqrt(g * t * (1.0 - t))),
    'quadratic': lambda g: (lambda t: g * t * (1.0 - t)),
}
COUPLINGS = ('independent', 'ot')
OT_SOLVERS = ('exact', 'sinkhorn')
NEGATIVES = ('any', 'other_class')
TIME_SAMPLING = ('uniform', 'logit_normal')


def _value_and_derivative(fn, t):
  """fn(t) and dfn/dt for a batch of scalar times (fn acts elementwise)."""
  return jax.jvp(fn, (t,), (jnp.ones_like(t),))


def ot_assignment(x0: jax.Array, x1: jax.Array,
                  label: jax.Array | None = None) -> jax.Array:
  """perm with x1[perm] the exact squared-distance assignment to x0 (batch OT plan).

  The uniform-marginal OT plan between two equal-size point clouds is a permutation
  (Birkhoff), so the Hungarian solution is the exact minibatch plan. With `label`
  ([B] ints, one class per position of x0 and of x1) the plan is solved within each
  class: the rows of class c are assigned among the columns of class c only, so
  label[perm] == label. Jittable (a host callback with static shapes).
  """
  n = x0.shape[0]
  a = x0.reshape(n, -1)
  b = x1.reshape(n, -1)
  cost = (jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T)

  def solve(c, classes):
    c = np.asarray(c, np.float64)
    perm = np.empty(c.shape[0], np.int32)
    for k in np.unique(classes):
      idx = np.flatnonzero(classes == k)
      rows, cols = scipy.optimize.linear_sum_assignment(c[np.ix_(idx, idx)])
      perm[idx[rows]] = idx[cols]
    return perm

  classes = jnp.zeros((n,), jnp.int32) if label is None else label.astype(jnp.int32)
  return jax.pure_callback(solve, jax.ShapeDtypeStruct((n,), jnp.int32), cost, classes,
                           vmap_method='sequential')


def _sq_cost(x0: jax.Array, x1: jax.Array) -> jax.Array:
  """[n, n] squared distances |x0_i - x1_j|^2 (float32, HIGHEST-precision matmul)."""
  n = x0.shape[0]
  a = x0.reshape(n, -1).astype(jnp.float32)
  b = x1.reshape(n, -1).astype(jnp.float32)
  cross = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * cross,
                     0.0)


def sinkhorn_potentials(cost: jax.Array, eps: float, iters: int,
                        eps_start: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Sinkhorn for uniform marginals: potentials (f, g) of the entropic plan
  P_ij = exp((f_i + g_j - C_ij) / eps) (rows and columns summing to 1), in units of
  `cost`; entries C = +inf get no mass.

  `eps` and `eps_start` are relative to the cost scale s = mean of the finite entries.
  eps-scaling: eps halves from eps_start * s down to eps * s over S stages (the
  potentials of a blurrier plan warm-start the next, sharper one); about half of the
  `iters` updates are spent annealing, the other half at eps * s. Each stage is stabilised by absorption (Schmitzer's log-domain
  stabilisation): it forms K = exp((f + g - C) / e) once -- its entries are at most
  ~1 because the warm-start potentials already nearly balance the plan, so nothing
  overflows, and the halving keeps every row's largest entry above ~n^-2 -- then
  runs a few matrix-scaling updates u = 1 / (K v), v = 1 / (K^T u) (two
  matrix-vector products each, no exponentials) and folds them into the potentials,
  f += e log u, g += e log v. So a stage costs one pass of exponentials over the
  n x n matrix, where a pure log-domain iteration costs two; a fixed count (no
  tolerance) keeps the step's cost fixed and the loops `fori_loop`s.
  """
  finite = jnp.isfinite(cost)
  scale = jnp.sum(jnp.where(finite, cost, 0.0)) / jnp.maximum(jnp.sum(finite), 1)
  scale = jnp.maximum(scale, 1e-12)
  halvings = max(int(np.ceil(np.log2(eps_start / eps))), 0)
  # Half the updates anneal (spread over the halvings), half sharpen at the final eps,
  # re-absorbed every `inner` updates.
  inner = max(-(-iters // (2 * max(halvings, 1))), 1)
  final_stages = max(-(-(iters - inner * halvings) // inner), 1)
  tiny = 1e-30

  def stage(k, fg):
    f, g = fg
    e = scale * jnp.maximum(eps, eps_start * 0.5 ** k.astype(jnp.float32))
    kernel = jnp.exp((f[:, None] + g[None, :] - cost) / e)

    # K v and K^T u as a broadcast product and a sum: XLA fuses each into one
    # multithreaded pass over K, where its CPU matrix-vector dot ran 2.5x slower.
    def scaling(_, uv):
      _, v = uv
      u = 1.0 / jnp.maximum(jnp.sum(kernel * v[None, :], axis=1), tiny)
      return u, 1.0 / jnp.maximum(jnp.sum(kernel * u[:, None], axis=0), tiny)

    ones = (jnp.ones_like(f), jnp.ones_like(g))
    u, v = jax.lax.fori_loop(0, inner, scaling, ones)
    return f + e * jnp.log(u), g + e * jnp.log(v)

  n, m = cost.shape
  zeros = (jnp.zeros((n,), jnp.float32), jnp.zeros((m,), jnp.float32))
  return jax.lax.fori_loop(0, halvings + final_stages, stage, zeros)


def round_to_permutation(cost: jax.Array, f: jax.Array, g: jax.Array,
                         shrink: int = 4, min_rows: int = 16) -> jax.Array:
  """perm [n] (a permutation) from Sinkhorn potentials, by rounds of proposals.

  In each round every unmatched row i proposes to its best free column,
  argmax_j (g_j - C_ij) (the largest entry of its row of the plan among free
  columns; -g are the auction prices Sinkhorn found), and each proposed-to column
  accepts the proposal with the largest plan value f_i + g_j - C_ij (ties: the lowest
  row index). Every round matches at least one row, so at most n rounds; when the plan
  is close to a permutation most rows are matched in the first two rounds and the rest
  in a few more (about 8 rounds in all at n = 512 on the toys). Columns with C = +inf
  for a row are never proposed to while a finite one is free.

  Matched rows take no further part, so the rounds run on shrinking row blocks: once
  at most n / shrink rows are unmatched, those rows (and some matched ones, to keep
  the shape static) are gathered into an (n / shrink) x n block and the rounds go on
  there, and so on down to min_rows rows. The result is the same permutation as
  rounds over the whole matrix; at n = 512 on 2 CPU cores it took 1.2-1.6 ms against
  their 1.6-2.3 ms (experiments/ot_solvers.py --sweep_iters).
  """
  n = cost.shape[0]
  pref = g[None, :] - cost  # row i's value of column j, up to the constant f_i
  cols = jnp.arange(n)
  sizes = [n]
  while sizes[-1] // shrink >= min_rows:
    sizes.append(sizes[-1] // shrink)

  def rounds(row_to_col, taken, rows, stop):
    """Rounds on the block of `rows` until at most `stop` of them are unmatched."""
    block, f_rows = pref[rows], f[rows]
    mine = row_to_col[rows]

    def cond(state):
      return jnp.sum(state[0] < 0) > stop

    def body(state):
      mine, taken = state
      free = mine < 0
      masked = jnp.where(taken[None, :], -jnp.inf, block)
      top = jnp.max(masked, axis=1)
      # argmax as max + lowest index attaining it: two plain reductions, several times
      # faster than XLA's CPU argmax on an n x n matrix.
      prop = jnp.min(jnp.where(masked == top[:, None], cols[None, :], n), axis=1)
      prop = jnp.minimum(prop, n - 1)  # a row with no finite free column (never, see above)
      value = jnp.where(free, f_rows + top, -jnp.inf)
      best = jax.ops.segment_max(value, prop, num_segments=n)
      wins = free & (value == best[prop])
      first = jax.ops.segment_min(jnp.where(wins, rows, n), prop, num_segments=n)
      wins = wins & (rows == first[prop])
      mine = jnp.where(wins, prop, mine)
      taken = taken | (jax.ops.segment_max(wins.astype(jnp.int32), prop, num_segments=n) > 0)
      return mine, taken

    mine, taken = jax.lax.while_loop(cond, body, (mine, taken))
    return row_to_col.at[rows].set(mine), taken

  row_to_col = jnp.full((n,), -1, jnp.int32)
  taken = jnp.zeros((n,), bool)
  for level, size in enumerate(sizes):
    stop = sizes[level + 1] if level + 1 < len(sizes) else 0
    # The unmatched rows first (a stable sort keeps them in row order).
    rows = cols if level == 0 else jnp.argsort(row_to_col >= 0, stable=True)[:size]
    row_to_col, taken = rounds(row_to_col, taken, rows.astype(jnp.int32), stop)
  return row_to_col


def sinkhorn_assignment(x0: jax.Array, x1: jax.Array, label: jax.Array | None = None,
                        eps: float = 0.01, iters: int = 50) -> jax.Array:
  """perm with x1[perm] an approximately optimal squared-distance assignment to x0,
  computed on device (the contract of `ot_assignment`, without a host callback).

  Entropic OT (`sinkhorn_potentials`, eps relative to the mean cost) then a hard
  permutation (`round_to_permutation`). With `label` the cost between different
  classes is +inf, so label[perm] == label. Its transport cost is within a few
  percent of the exact assignment's on Gaussian batches (tests/test_flow_matching.py
  states the gap it checks).
  """
  cost = jax.lax.stop_gradient(_sq_cost(x0, x1))
  if label is not None:
    label = label.astype(jnp.int32)
    cost = jnp.where(label[:, None] == label[None, :], cost, jnp.inf)
  f, g = sinkhorn_potentials(cost, eps, iters)
  return round_to_permutation(cost, f, g)


def ot_permutation(x0: jax.Array, x1: jax.Array, label: jax.Array | None, solver: str,
                   eps: float, iters: int) -> jax.Array:
  """The minibatch OT permutation (x1[perm] paired with x0) of `solver` ('exact':
  `ot_assignment` on the host; 'sinkhorn': `sinkhorn_assignment` on device, eps and
  iters as there); within classes when `label` is given."""
  if solver == 'sinkhorn':
    return sinkhorn_assignment(x0, x1, label, eps=eps, iters=iters)
  return ot_assignment(x0, x1, label)


def _broadcast_t(t, x):
  return t.reshape((-1,) + (1,) * (x.ndim - 1))


class FlowMatching(SingleNetMethod, FieldSampling, Method):
  """The flow-matching family (see module docstring)."""
  field_kind = 'velocity'

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    mc = defaults.resolve(config.method)
    fm_paths = samplers.frames.FM_PATHS  # the one definition of alpha and beta
    self.alpha, self.beta = lookup('flow path', mc.path, fm_paths)(
        float(mc.sigma_min))
    self.gamma_kind = mc.gamma
    self.gamma = lookup('interpolant gamma', self.gamma_kind, GAMMAS)(
        float(mc.gamma_scale))
    self.coupling = choice(mc, 'coupling', COUPLINGS)
    self.ot_solver = choice(mc, 'ot_solver', OT_SOLVERS)
    self.sinkhorn_eps = float(mc.sinkhorn_eps)
    self.sinkhorn_iters = int(mc.sinkhorn_iters)
    if self.sinkhorn_eps <= 0 or self.sinkhorn_iters < 1:
      raise ConfigError('method.sinkhorn_eps must be > 0 and method.sinkhorn_iters >= 1, '
                        f'got {self.sinkhorn_eps}, {self.sinkhorn_iters}')
    self.denoiser_head = bool(mc.denoiser_head)
    if self.denoiser_head and self.gamma_kind == 'none':
      raise ConfigError("method.denoiser_head needs a stochastic interpolant: set "
                        "method.gamma to 'sqrt' or 'quadratic'")
    self.contrastive_weight = float(mc.contrastive_weight)
    if not 0.0 <= self.contrastive_weight < 1.0:
      raise ConfigError('method.contrastive_weight must be in [0, 1), got '
                        f'{self.contrastive_weight}')
    self.negatives = choice(mc, 'negatives', NEGATIVES)
    self.time_sampling = choice(mc, 'time_sampling', TIME_SAMPLING)
    self.t_eps = float(mc.t_eps)  # default: 1e-3 for gamma='sqrt', else 0 (defaults.py)
    self.conditional = bool(mc.class_conditional)
    if self.conditional and not data_spec.num_classes:
      raise ConfigError(f'method.class_conditional needs labelled data; '
                        f'data {data_spec.name!r} has no classes')
    if self.negatives == 'other_class' and not data_spec.num_classes:
      raise ConfigError("method.negatives='other_class' needs labelled data")
    self.label_dropout = float(mc.label_dropout)
    num_classes = data_spec.num_classes if self.conditional else None
    out = self.data_shape[-1] * (2 if self.denoiser_head else 1)
    self.net = nets.build(config.net, data_shape=self.data_shape, out_dim_or_channels=out,
                          num_classes=num_classes)
    self.path_kind = mc.path
    self.sigma_min = float(mc.sigma_min)
    self.independent_noise = self.coupling != 'ot'
    if self.grad_accum > 1 and self.coupling == 'ot':
      self.refuse_grad_accum("method.coupling='ot' pairs noise and data over the whole batch")
    if self.grad_accum > 1 and self.contrastive_weight > 0:
      self.refuse_grad_accum('method.contrastive_weight > 0 draws negatives from the whole '
                             'batch')
    self.check_sampler()

  # ---- pieces ------------------------------------------------------------------

  def _apply(self, params, x, t, label=None, train=False, rngs=None):
    out = self.net.apply({'params': params}, x, t, label=label, train=train,
                         rngs=rngs or {})
    if self.denoiser_head:
      c = self.data_shape[-1]
      return out[..., :c], out[..., c:]
    return out, None

  def _sample_t(self, rng, n):
    if self.time_sampling == 'logit_normal':
      t = jax.nn.sigmoid(rand.normal(rng, (n,)))
    else:
      t = rand.uniform(rng, (n,))
    return self.t_eps + (1.0 - 2.0 * self.t_eps) * t

  def interpolate(self, t, x0, x1, z):
    """x_t and the velocity target alpha' x0 + beta' x1 + gamma' z."""
    a, da = _value_and_derivative(self.alpha, t)
    b, db = _value_and_derivative(self.beta, t)
    g, dg = _value_and_derivative(self.gamma, t)
    bt = lambda v: _broadcast_t(v, x0)
    xt = bt(a) * x0 + bt(b) * x1 + bt(g) * z
    u = bt(da) * x0 + bt(db) * x1 + bt(dg) * z
    return xt, u

  def assignment(self, x0, x1, label=None):
    """The minibatch OT permutation (x1[perm] paired with x0) of method.ot_solver."""
    return ot_permutation(x0, x1, label, self.ot_solver, self.sinkhorn_eps,
                          self.sinkhorn_iters)

  def _negatives(self, rng, u, label):
    n = u.shape[0]
    if self.negatives == 'other_class':
      mask = label[:, None] != label[None, :]
      mask = jnp.where(mask.any(1, keepdims=True), mask, ~jnp.eye(n, dtype=bool))
      j = jax.random.categorical(rng, jnp.where(mask, 0.0, -jnp.inf), axis=1)
    else:  # uniformly among the other indices
      j = (jnp.arange(n) + jax.random.randint(rng, (n,), 1, n)) % n
    return u[j]

  def loss(self, params, batch, rng, train=True):
    x1 = batch['x']
    label = batch.get('label')
    n = x1.shape[0]
    k_x0, k_t, k_z, k_neg, k_drop, k_net = jax.random.split(rng, 6)
    x0 = rand.normal(k_x0, x1.shape, x1.dtype)
    if self.coupling == 'ot':  # the noise moves onto the data (within classes)
      x0 = x0[self.assignment(x1, x0, label if self.conditional else None)]
    t = self._sample_t(k_t, n)
    z = rand.normal(k_z, x1.shape, x1.dtype)
    xt, u = self.interpolate(t, x0, x1, z)
    net_label = None
    if self.conditional:
      net_label = label
      if self.label_dropout > 0:
        drop = rand.bernoulli(k_drop, self.label_dropout, (n,))
        net_label = jnp.where(drop, self.spec.num_classes, label)
    v, eta = self._apply(params, xt, t, net_label, train=train,
                         rngs={'dropout': rand.microbatch_key(k_net)})
    axes = tuple(range(1, x1.ndim))
    fm = jnp.mean((v - u)**2, axis=axes)
    metrics = {'fm_loss': jnp.mean(fm)}
    loss = fm
    if self.contrastive_weight > 0:
      neg = jnp.mean((v - self._negatives(k_neg, u, label))**2, axis=axes)
      loss = loss - self.contrastive_weight * neg
      metrics['contrastive_term'] = jnp.mean(neg)
    if eta is not None:
      den = jnp.mean((eta - z)**2, axis=axes)
      loss = loss + den
      metrics['denoiser_loss'] = jnp.mean(den)
    loss = jnp.mean(loss)
    metrics['loss'] = loss
    return loss, metrics

  # ---- the Method interface ----------------------------------------------------

  # init and train_step: SingleNetMethod (one network, one loss).

  def velocity_fn(self, params, label=None, cfg_scale: float = 1.0):
    """v(x, t) with scalar t, for the samplers; cfg_scale != 1 guides it by the null
    label at every t (config.sampler.guidance adds an interval and autoguidance)."""
    def velocity_for(lab):
      def velocity(x, t):
        v, _ = self._apply(params, x, jnp.full((x.shape[0],), t, x.dtype), lab)
        return v
      return velocity
    if not (self.conditional and label is not None and cfg_scale != 1.0):
      return velocity_for(label)
    null = jnp.full_like(label, self.spec.num_classes)
    return samplers.guidance.guided_velocity(velocity_for(label), velocity_for(null),
                                             cfg_scale, self.frame())

  def score_fn(self, params, label=None):
    """score(x, t) of x_t: -eta / gamma with the denoiser head, else from the velocity,
    (a D - x)/b^2 on this path's frame (a = beta, b = sqrt(alpha^2 + gamma^2), D the
    data estimate; frames.score_from_velocity). Both assume the noise independent of
    the data (not so with coupling='ot')."""
    if not self.denoiser_head:
      return samplers.frames.score_from_velocity(self.velocity_fn(params, label),
                                                 self.frame())

    def score(x, t):
      t = jnp.asarray(t, x.dtype)
      _, eta = self._apply(params, x, jnp.full((x.shape[0],), t, x.dtype), label)
      return -eta / self.gamma(t)
    return score

  def frame(self):
    """This path as a gensuite.samplers.frames.GaussianPath (a = beta, b = alpha or
    sqrt(alpha^2 + gamma^2) with the interpolant's gamma)."""
    gamma = None if self.gamma_kind == 'none' else self.gamma
    return samplers.frames.fm_path(self.path_kind, self.sigma_min, gamma)

  def denoiser_fn(self, params, label=None, cfg_scale: float = 1.0):
    """VE-frame denoiser D(x, sigma) = E[x1 | x1 + sigma eps = x] from the velocity.

    sigma = alpha(t)/beta(t) (ALGORITHMS.md §0 with a = beta, b = alpha) and x_t =
    beta(t) x; the conversion is gensuite.samplers.frames.denoiser_from_velocity.
    Guidance is linear in the velocity, so cfg_scale carries over unchanged.
    """
    return samplers.frames.denoiser_from_velocity(
        self.velocity_fn(params, label, cfg_scale), self.frame())

  def sigma_grid(self, steps: int, sigma_max: float = 80.0, rho: float = 7.0):
    """EDM's rho grid from sigma_max down to this path's sigma at t = 1 (0 unless the
    path has sigma_min > 0, when it ends there instead of at 0): `steps` steps."""
    with jax.ensure_compile_time_eval():  # a constant, also when traced under jit
      sigma_end = float(self.frame().sigma(1.0))
    if sigma_end <= 1e-6:  # 0 up to round-off (the cosine path gives ~4e-8 in float32)
      return samplers.karras_sigmas(steps, 0.002, sigma_max, rho)
    return samplers.karras_sigmas(steps + 1, sigma_end, sigma_max, rho, append_zero=False)

  def field(self, params, label=None, cfg_scale: float = 1.0) -> samplers.Field:
    """The velocity on this path, for FieldSampling.sample: ODE solvers integrate it in
    t from noise (t = 0) to data (t = 1); noise-ladder samplers run on its VE-frame
    denoiser over `sigma_grid(steps)` (config.sampler.sigma_max, else 80), starting
    from x_ve = sigma_0 z, where the data part is negligible. With OT coupling the
    noise is not independent of the data, so score-based samplers are refused."""
    sigma_max = float(self.config.sampler.get('sigma_max', 80.0))
    return samplers.Field.velocity(
        self.velocity_fn(params, label, cfg_scale), self.frame(),
        sigma_grid=lambda steps: self.sigma_grid(steps, sigma_max),
        independent_noise=self.coupling != 'ot')
