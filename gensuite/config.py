"""The config every experiment starts from, its checks, and its JSON form.

  config = gensuite.config.base()       # in configs/<family>/<name>.py: get_config(arg)
  gensuite.config.validate(config)      # types and values of the shared fields
  gensuite.config.check_section(config.method, {'path': str, 'steps': int}, 'method')
  gensuite.config.check_resume(workdir, config)   # same run, or ConfigError

Names in `base()` are a contract with scripts and sweeps: keep their spellings.
"""
import json
import os
from typing import Any, Mapping

import ml_collections

from gensuite.errors import ConfigError

# Fields that may change between an interrupted run and its resumption: they alter
# when things happen or how samples are drawn, never what is being trained.
# Post-hoc EMA (EDM2): the largest relative std of a power-function profile with
# exponent gamma >= 0, 1/sqrt(12) (gamma = 0, the uniform average; ALGORITHMS.md §11.3).
PHEMA_MAX_STD = 12.0**-0.5
# The mesh and gradient accumulation change how a step is computed, not its result (a
# checkpoint restores onto any mesh; k microbatches give the update of one batch).
RESUMABLE_CHANGES = ('train.num_steps', 'train.log_every', 'train.eval_every',
                     'train.ckpt_every', 'train.keep_checkpoints', 'train.log_images',
                     'train.skip_nonfinite', 'sampler.', 'eval.', 'data.data_dir',
                     'train.grad_accum', 'mesh.')
# config.train.precision: the compute dtype of the nets (gensuite.nets.PRECISIONS).
PRECISIONS = ('float32', 'bfloat16')


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(name='8gaussians', params={}, split='train',
                                          data_dir=''))
  c.net = ml_collections.ConfigDict(dict(name='mlp'))
  c.method = ml_collections.ConfigDict(dict(name='flow_matching'))
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, schedule='constant', warmup_steps=0, final_lr_fraction=0.0,
      grad_clip=1.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, ema_decays=(0.999,),
      phema_stds=()))
  # precision: the nets' compute dtype (state, losses, samplers stay float32);
  # grad_accum: microbatches per step, averaged into one update (gensuite.methods.base).
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000, batch_size=256, log_every=100, eval_every=0, ckpt_every=1000,
      keep_checkpoints=3, log_images=True, skip_nonfinite=False, phema_every=0,
      precision='float32', grad_accum=1))
  # Devices form a mesh data x fsdp; params, EMA and optimizer state are sharded over
  # the fsdp axis (gensuite.train.parallel). fsdp = 1: replicated, pure data parallel.
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  # guidance: gensuite.samplers.guidance (sigma_hi >= 1e9 means no upper bound).
  c.sampler = ml_collections.ConfigDict(dict(
      name='euler', steps=100,
      guidance=ml_collections.ConfigDict(dict(
          kind='none', weight=1.0, sigma_lo=0.0, sigma_hi=1e9, guide_workdir='',
          guide_step=0, guide_ema=''))))
  # ais_*: an energy model's annealed-importance-sampling log Z at eval (ais_temps > 0;
  # gensuite.samplers.ais; ais_step_size 0: the sampler's step size; ais_base 'prior':
  # N(0, prior_std^2 I), 'data': a Gaussian fitted to the data).
  c.eval = ml_collections.ConfigDict(dict(
      num_samples=1000, metrics=('mmd', 'sliced_wasserstein', 'energy_distance', 'nll'),
      use_ema=True, sample_batch=0, inception_weights='', fid_stats='',
      inception_resize='tf', ais_temps=0, ais_chains=256, ais_mala_steps=1,
      ais_step_size=0.0, ais_base='prior'))
  return c


def _get(config, path):
  node = config
  for part in path.split('.'):
    node = node[part]
  return node


# Sections whose every field is shared by all families: unknown names are errors.
# The others (data, net, method, sampler, eval) also carry family-specific fields,
# checked by the data source, net, method or sampler that reads them.
_CLOSED_SECTIONS = ('optim', 'train', 'mesh')
# Sections a config may lack (runs made before they joined base() read as defaults).
_OPTIONAL_SECTIONS = ('mesh',)
# Fields whose allowed types are wider than their default's, or absent from base().
_FIELD_TYPES: dict[str, Any] = {
    'eval.use_ema': (bool, str),      # True/False or an EMA's name: '0.999', 'phema_0.05'
    'optim.momentum': (float, type(None)),
    'data.params': dict,
}
_TYPE_NAMES = {bool: 'a bool', int: 'an integer', float: 'a number', str: 'a string',
               tuple: 'a tuple', dict: 'a dict', type(None): 'None'}


def _is_a(value, kind) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is tuple:
    return isinstance(value, (tuple, list))
  if kind is dict:
    return isinstance(value, (dict, ml_collections.ConfigDict))
  if kind is type(None):
    return value is None
  return isinstance(value, kind)


def _type_name(kind) -> str:
  kinds = kind if isinstance(kind, tuple) else (kind,)
  return ' or '.join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def check_section(section, allowed: Mapping[str, Any], where: str, *,
                  closed: bool = True) -> None:
  """Checks a config section against {field: type or tuple of types}.

  Raises ConfigError for a field of the wrong type (bool is not an int; an int is a
  valid float; a list is a valid tuple) or, when `closed`, for a field not in
  `allowed`, listing the allowed names. Fields absent from `section` are not
  required. Methods call it for their own section:
    check_section(config.method, {'name': str, 'path': str, 'sigma_min': float}, 'method')
  """
  if not isinstance(section, (dict, ml_collections.ConfigDict)):
    raise ConfigError(f'config.{where} must be a section (ConfigDict), got {section!r}')
  for name in section.keys():
    value = section[name]
    if name not in allowed:
      if closed:
        raise ConfigError(f'config.{where} has no field {name!r}; allowed: '
                          f'{", ".join(sorted(allowed))}')
      continue
    kind = allowed[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not any(_is_a(value, k) for k in kinds):
      raise ConfigError(f'config.{where}.{name} must be {_type_name(kind)}, got {value!r}')
    if tuple in kinds and isinstance(value, (tuple, list)) and name in ('ema_decays',
                                                                        'phema_stds'):
      if not all(_is_a(v, float) for v in value):
        raise ConfigError(f'config.{where}.{name} must hold numbers, got {value!r}')


def kind_of(value):
  """The type check_section expects for a field whose default is `value`."""
  if isinstance(value, ml_collections.ConfigDict):
    return dict
  for kind in (bool, int, float, str, tuple, dict):
    if _is_a(value, kind):
      return kind
  return type(value)


def shared_field_types() -> dict[str, dict[str, Any]]:
  """{section: {field: allowed type(s)}} from base() and _FIELD_TYPES."""
  ref = base()
  table = {}
  for section in ('data', 'net', 'method', 'optim', 'train', 'sampler', 'eval', 'mesh'):
    fields = {k: kind_of(ref[section][k]) for k in ref[section].keys()}
    for path, kind in _FIELD_TYPES.items():
      sec, _, name = path.partition('.')
      if sec == section:
        fields[name] = kind
    table[section] = fields
  return table


def validate(config) -> None:
  """Raises ConfigError for a missing section or a bad type or value of a shared field."""
  for section in ('data', 'net', 'method', 'optim', 'train', 'sampler', 'eval'):
    if section not in config:
      raise ConfigError(f'config has no {section!r} section; start configs from '
                        'gensuite.config.base()')
  if not isinstance(config.seed, int) or isinstance(config.seed, bool):
    raise ConfigError(f'config.seed must be an integer, got {config.seed!r}')
  for section, fields in shared_field_types().items():
    if section in _OPTIONAL_SECTIONS and section not in config:
      continue
    check_section(config[section], fields, section, closed=section in _CLOSED_SECTIONS)
  for path in ('train.num_steps', 'train.batch_size', 'sampler.steps', 'eval.num_samples'):
    v = _get(config, path)
    if v <= 0:
      raise ConfigError(f'config.{path} must be a positive integer, got {v!r}')
  for path in ('train.log_every', 'train.eval_every', 'train.ckpt_every'):
    v = _get(config, path)
    if v < 0:
      raise ConfigError(f'config.{path} must be an integer >= 0 (0 = never), got {v!r}')
  precision = config.train.get('precision', 'float32')
  if precision not in PRECISIONS:
    raise ConfigError(f'unknown train.precision {precision!r}; allowed: '
                      + ', '.join(PRECISIONS))
  for path, v in (('train.grad_accum', config.train.get('grad_accum', 1)),
                  ('mesh.fsdp', mesh_fsdp(config))):
    if v < 1:
      raise ConfigError(f'config.{path} must be a positive integer, got {v!r}')
  if config.eval.get('sample_batch', 0) < 0:
    raise ConfigError(f'config.eval.sample_batch must be an integer >= 0 (0 = all samples '
                      f'in one call), got {config.eval.sample_batch!r}')
  for path in ('data.name', 'net.name', 'method.name', 'sampler.name', 'optim.name'):
    if not isinstance(_get(config, path), str):
      raise ConfigError(f'config.{path} must be a string, got {_get(config, path)!r}')
  decays = tuple(config.optim.get('ema_decays', ()))
  if any(not 0.0 <= float(d) < 1.0 for d in decays):
    raise ConfigError(f'config.optim.ema_decays must lie in [0, 1), got {decays}')
  stds = tuple(config.optim.get('phema_stds', ()))
  if any(not 0.0 < float(s) < PHEMA_MAX_STD for s in stds):
    raise ConfigError(f'config.optim.phema_stds must lie in (0, {PHEMA_MAX_STD:.4f}) (the '
                      f'relative std of a power-function EMA with exponent >= 0), got {stds}')
  if len({f'{float(s):g}' for s in stds}) != len(stds):
    raise ConfigError(f'config.optim.phema_stds must be distinct, got {stds}')
  every = config.train.get('phema_every', 0)
  if every < 0 or (stds and every == 0):
    raise ConfigError('config.train.phema_every must be a positive number of steps when '
                      f'config.optim.phema_stds is set (snapshots for gensuite phema), got '
                      f'{every!r}')


def mesh_fsdp(config) -> int:
  """config.mesh.fsdp, or 1 for a run made before the mesh section existed."""
  return config.mesh.get('fsdp', 1) if 'mesh' in config else 1


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
  # A field added to base() after the run was made reads as its default there.
  defaults = _flatten(to_dict(base()))
  old.update({k: defaults[k] for k in set(new) - set(old) if k in defaults})
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


def _parse_value(text: str, current, where: str):
  """`text` read as the type of `current` (a new field: a Python literal, else a string)."""
  import ast  # pylint: disable=g-import-not-at-top
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ('true', '1', 'yes'):
      return True
    if low in ('false', '0', 'no'):
      return False
    wider = _FIELD_TYPES.get(where, ())
    if str in (wider if isinstance(wider, tuple) else (wider,)):
      return text  # e.g. eval.use_ema: True/False or an EMA's name
    raise ConfigError(f'--config.{where} must be true or false, got {text!r}')
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ConfigError(f'--config.{where} must be {_type_name(kind_of(current))}, '
                      f'got {text!r}') from None
  if current is not None:
    kind = kind_of(current)
    if not _is_a(value, kind):
      raise ConfigError(f'--config.{where} must be {_type_name(kind)}, got {text!r}')
    if kind is float:
      value = float(value)
    if kind is tuple:
      value = tuple(value)
  return value


def apply_overrides(config, overrides: Mapping[str, str],
                    allowed_prefixes: tuple[str, ...]) -> None:
  """Sets {'eval.num_samples': '500', ...} (text, as typed on a command line) on a
  loaded run's config. Only fields under `allowed_prefixes` may change (sampling and
  evaluation, never what was trained); a field the section lacks is added (a
  sampler option such as sampler.eta), an existing one keeps its type."""
  for path, text in overrides.items():
    if not path.startswith(allowed_prefixes):
      raise ConfigError(f'--config.{path} cannot change a trained run; allowed here: '
                        + ', '.join(f'--config.{p}*' for p in allowed_prefixes))
    *parents, last = path.split('.')
    node, ref = config, base()
    for part in parents:
      ref = ref[part] if isinstance(ref, ml_collections.ConfigDict) and part in ref else None
      if part not in node and isinstance(ref, ml_collections.ConfigDict):
        with config.unlocked():  # a section added to base() after the run was made
          node[part] = ml_collections.ConfigDict(ref.to_dict())
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f'--config.{path}: config has no section {part!r}')
      node = node[part]
    current = node[last] if last in node else None
    value = _parse_value(text, current, path)
    with config.unlocked():
      if current is not None and type(value) is not type(current):
        del node[last]  # a wider field (eval.use_ema: a bool, or an EMA's name)
      node[last] = value
  validate(config)

