"""The gallery: one picture per family from its default config, for the README.

  PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery --only=toy
  PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery --only=digits   # hours on CPU
  PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery --entries=meanflow_toy \
      --run meanflow_toy=/tmp/few_step/unequal8/budget120s/meanflow/seed0

Each entry names a config (its default variant, the full training it describes) and
how to draw it. The run lives in --workdir/<entry> and is trained there with
`gensuite.train.run` unless it is finished already (its checkpoint at the config's
train.num_steps) or `--run ENTRY=DIR` points at a finished run elsewhere; a run cut
short resumes. The picture goes to experiments/results/gallery/<entry>.png (--out_dir)
and a line per entry (the command that trains the run, the last eval metrics it
logged, the picture) to README.md there. Pictures are the project's own
(gensuite.pictures): 2-D samples next to the data (with a few ODE trajectories for the
flow-matching run), image grids at 32 px per digit. Sampling uses the config's
sampler and a fixed key, so a rerun over the same runs redraws the same pictures.

Entries (--only picks the toy or the digits ones, --entries any list):
  toy:    flow_matching_toy, diffusion_toy, distill_toy (one-step f-distill JS),
          meanflow_toy (1 and 2 NFE), ebm_toy, vae_toy
  digits: diffusion_digits (EDM, Heun 35 NFE), flow_matching_digits, vae_digits (prior
          samples), meanflow_digits (1 and 2 NFE)
"""
import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gensuite import config as config_lib  # pylint: disable=wrong-import-position
from gensuite import pictures  # pylint: disable=wrong-import-position
from gensuite import train  # pylint: disable=wrong-import-position
from gensuite.run import load_run  # pylint: disable=wrong-import-position

KEY = jax.random.PRNGKey(20261201)
# entry -> (config spec, kind, what to draw)
ENTRIES = {
    'flow_matching_toy': ('configs/flow_matching/toy2d.py', 'toy', 'trajectories'),
    'diffusion_toy': ('configs/diffusion/toy2d.py', 'toy', 'samples'),
    'distill_toy': ('configs/distill/toy2d.py', 'toy', 'samples'),
    'meanflow_toy': ('configs/flow_maps/toy2d.py:meanflow', 'toy', 'steps'),
    'ebm_toy': ('configs/ebm/toy2d.py', 'toy', 'samples'),
    'vae_toy': ('configs/vae/toy2d.py', 'toy', 'samples'),
    'diffusion_digits': ('configs/diffusion/digits.py', 'digits', 'samples'),
    'flow_matching_digits': ('configs/flow_matching/digits.py', 'digits', 'samples'),
    'vae_digits': ('configs/vae/digits.py', 'digits', 'samples'),
    'meanflow_digits': ('configs/flow_maps/digits.py:meanflow', 'digits', 'steps'),
}


def finished(workdir: str, num_steps: int) -> bool:
  path = os.path.join(workdir, 'checkpoints', str(num_steps))
  return os.path.isdir(path)


def last_eval(workdir: str) -> dict:
  rows = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in rows if any(k.startswith('eval/') for k in r)]
  if not evals:
    return {}
  keep = ('mmd', 'nll', 'on_mode', 'mode_mass_tv', 'fd_digits', 'nfe')
  return {'step': evals[-1]['step'],
          **{k[5:]: v for k, v in evals[-1].items() if k[5:] in keep}}


def draw(entry: str, run, what: str) -> np.ndarray:
  """The entry's picture from a loaded run."""
  data = run.experiment.data
  if what == 'steps':  # a flow map: the same noise at 1 and 2 network calls
    xs = [np.asarray(run.sample(KEY, 2000 if data.spec.kind == 'toy' else 64, steps=s))
          for s in (1, 2)]
    if data.spec.kind == 'toy':
      ref = np.asarray(data.reference(KEY, 2000))
      left = pictures.scatter_plot(xs[0], ref, title='1 NFE')
      right = pictures.scatter_plot(xs[1], None, title='2 NFE')
      return np.concatenate([left, right], axis=1)
    return np.concatenate([pictures.image_grid(xs[0]), pictures.image_grid(xs[1])], axis=1)
  if data.spec.kind == 'toy':
    x = np.asarray(run.sample(KEY, 2000))
    ref = np.asarray(data.reference(KEY, 2000))
    traj = None
    if what == 'trajectories':
      traj = np.asarray(run.method.sample(run.state, KEY, 24, return_trajectory=True))
    return pictures.scatter_plot(x, ref, title=entry.replace('_', ' '), trajectories=traj)
  return pictures.image_grid(np.asarray(run.sample(KEY, 64)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out_dir', default=os.path.join('experiments', 'results', 'gallery'))
  parser.add_argument('--only', choices=('toy', 'digits'), default=None)
  parser.add_argument('--entries', default='', help='comma-separated entry names')
  parser.add_argument('--run', action='append', default=[], help='ENTRY=DIR of a finished run')
  args = parser.parse_args()
  given = dict(item.split('=', 1) for item in args.run)
  names = [n for n in (args.entries.split(',') if args.entries else ENTRIES) if n]
  unknown = [n for n in names + list(given) if n not in ENTRIES]
  if unknown:
    parser.error(f'unknown entries {unknown}; known: {", ".join(ENTRIES)}')
  if args.only:
    names = [n for n in names if ENTRIES[n][1] == args.only]
  os.makedirs(args.out_dir, exist_ok=True)
  lines = []
  for name in names:
    spec, _, what = ENTRIES[name]
    workdir = given.get(name) or os.path.join(args.workdir, name)
    config = config_lib.from_file(spec)
    if name not in given and not finished(workdir, int(config.train.num_steps)):
      print(f'training {name}: {spec} -> {workdir}', flush=True)
      train.run(config, workdir)
    run = load_run(workdir)
    picture = draw(name, run, what)
    path = os.path.join(args.out_dir, f'{name}.png')
    pictures.save_png(path, picture)
    metrics = last_eval(workdir)
    size_kb = os.path.getsize(path) / 1024
    print(f'{name}: {path} ({size_kb:.0f} KB) {metrics}', flush=True)
    lines.append(f'| `{name}.png` | `gensuite train --config={spec} --workdir=DIR` | '
                 + ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                             for k, v in metrics.items()) + ' |')
  readme = os.path.join(args.out_dir, 'README.md')
  old = {}
  if os.path.exists(readme):
    with open(readme) as f:
      old = {line.split('`')[1]: line.rstrip('\n') for line in f if line.startswith('| `')}
  old.update({line.split('`')[1]: line for line in lines})
  with open(readme, 'w') as f:
    f.write('# Gallery\n\nOne picture per family from its default config, drawn by\n'
            '`PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery '
            '[--only=toy|digits] [--entries=...]`\n(from the runs it trains, or finds '
            'finished, in --workdir). Metrics: the last eval the run logged.\n\n'
            '| picture | trained by | last eval |\n|---|---|---|\n')
    for key in sorted(old):
      f.write(old[key] + '\n')


if __name__ == '__main__':
  main()
