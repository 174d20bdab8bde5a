"""The config every experiment starts from, its checks, and its JSON form.

  config = gensuite.config.base()       # in configs/<family>/<name>.py: get_config(arg)
  gensuite.config.validate(config)      # types and values of the shared fields
  gensuite.config.check_resume(workdir, config)   # same run, or ConfigError

Names in `base()` are a contract with scripts and sweeps: keep their spellings.
"""
import json
import os

import ml_collections

from gensuite.errors import ConfigError

# Fields that may change between an interrupted run and its resumption: they alter
# when things happen or how samples are drawn, never what is being trained.
RESUMABLE_CHANGES = ('train.num_steps', 'train.log_every', 'train.eval_every',
                     'train.ckpt_every', 'train.keep_checkpoints', 'train.log_images',
                     'sampler.', 'eval.', 'data.data_dir')


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(name='8gaussians', params={}, split='train',
                                          data_dir=''))
  c.net = ml_collections.ConfigDict(dict(name='mlp'))
  c.method = ml_collections.ConfigDict(dict(name='flow_matching'))
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, schedule='constant', warmup_steps=0, final_lr_fraction=0.0,
      grad_clip=1.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, ema_decays=(0.999,)))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000, batch_size=256, log_every=100, eval_every=0, ckpt_every=1000,
      keep_checkpoints=3, log_images=True))
  c.sampler = ml_collections.ConfigDict(dict(name='euler', steps=100))
  c.eval = ml_collections.ConfigDict(dict(
      num_samples=1000, metrics=('mmd', 'sliced_wasserstein', 'energy_distance', 'nll'),
      use_ema=True))
  return c


def _get(config, path):
  node = config
  for part in path.split('.'):
    node = node[part]
  return node


def validate(config) -> None:
  """Raises ConfigError for a missing section or a bad value of a shared field."""
  for section in ('data', 'net', 'method', 'optim', 'train', 'sampler', 'eval'):
    if section not in config:
      raise ConfigError(f'config has no {section!r} section; start configs from '
                        'gensuite.config.base()')
  for path in ('train.num_steps', 'train.batch_size', 'sampler.steps', 'eval.num_samples'):
    v = _get(config, path)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise ConfigError(f'config.{path} must be a positive integer, got {v!r}')
  for path in ('train.log_every', 'train.eval_every', 'train.ckpt_every'):
    v = _get(config, path)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
      raise ConfigError(f'config.{path} must be an integer >= 0 (0 = never), got {v!r}')
  if not isinstance(config.seed, int):
    raise ConfigError(f'config.seed must be an integer, got {config.seed!r}')
  for path in ('data.name', 'net.name', 'method.name', 'sampler.name', 'optim.name'):
    if not isinstance(_get(config, path), str):
      raise ConfigError(f'config.{path} must be a string, got {_get(config, path)!r}')
  decays = tuple(config.optim.get('ema_decays', ()))
  if any(not 0.0 <= float(d) < 1.0 for d in decays):
    raise ConfigError(f'config.optim.ema_decays must lie in [0, 1), got {decays}')


def to_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def check_resume(workdir: str, config) -> bool:
  """True if workdir already holds this run; ConfigError if it holds another one."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(to_dict(config))
  diff = sorted(k for k in set(old) | set(new)
                if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
  if diff:
    shown = ', '.join(f'{k} ({old.get(k)!r} -> {new.get(k)!r})' for k in diff[:4])
    more = f' and {len(diff) - 4} more' if len(diff) > 4 else ''
    raise ConfigError(f'workdir {workdir} holds a run of a different config: {shown}{more}; '
                      f'use a new --workdir (only {", ".join(RESUMABLE_CHANGES)} may change '
                      'on resume)')
  return True


def write(workdir: str, config) -> None:
  path = config_path(workdir)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def load(workdir: str) -> ml_collections.ConfigDict:
  path = config_path(workdir)
  if not os.path.exists(path):
    raise ConfigError(f'no run in {workdir}: {path} does not exist')
  with open(path) as f:
    d = json.load(f)
  return ml_collections.ConfigDict(_tuples(d))


def _tuples(d):
  """JSON turns tuples into lists; configs use tuples for fixed-length fields."""
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


def from_file(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:variant]' as the CLI does (for scripts and notebooks)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise ConfigError(f'config file {path} does not exist')
  module_spec = importlib.util.spec_from_file_location('_gensuite_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config
