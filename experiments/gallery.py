"""The gallery: one picture per family from its default config, for the README.

  PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery --only=toy
  PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery --only=digits   # ~2 h on 2 CPU cores
  PYTHONPATH=. python experiments/gallery.py --workdir=runs/gallery --entries=meanflow_toy \
      --run meanflow_toy=/tmp/few_step/unequal8/budget120s/meanflow/seed0

Each entry names a config (its default variant, the full training it describes) and
how to draw it. The run lives in --workdir/<entry> and is trained there with
`gensuite.train.run` unless it is finished already (its checkpoint at the config's
train.num_steps) or `--run ENTRY=DIR` points at a finished run elsewhere; a run cut
short resumes. An entry that needs another run (a distilled student its teacher, latent
flow matching its VAE) trains that one first, in --workdir/<needed entry>.

Digits runs are the default configs with two evaluation settings added so that their
curves can be drawn: an eval every 500 steps and `fd_digits` among the metrics (and the
toy student an eval every 250 steps). The
loop's evaluations draw from their own key, so the trained weights are those of the
plain config (the command listed for each entry spells the settings out).

The picture goes to experiments/results/gallery/<entry>.png (--out_dir) and a line per
entry (the command that trains the run, the last eval metrics it logged, the picture)
to README.md there; `digits_fd_curves.png` draws fd_digits against the training step
for every digits run, `distill_digits_curve.png` the digits students' fd_digits against
distillation steps (with the teacher's), and `distill_toy_curve.png` the toy one-step
student's mode-mass error and sliced Wasserstein distance against distillation steps. Pictures are the project's own (gensuite.pictures): 2-D samples next
to the data (with a few ODE trajectories for the flow-matching run), image grids at
32 px per digit. Sampling uses the config's sampler and a fixed key, so a rerun over the
same runs redraws the same pictures.

Entries (--only picks the toy or the digits ones, --entries any list):
  toy:    flow_matching_toy, diffusion_toy, distill_toy (one-step f-distill JS),
          meanflow_toy (1 and 2 NFE), ebm_toy, vae_toy
  digits: diffusion_digits (EDM, Heun 35 NFE), flow_matching_digits, vae_digits (prior
          samples, and data next to reconstructions), latent_fm_digits (flow matching
          in vae_digits' latent space), distill_digits (one-step DMD student of
          diffusion_digits, 400 steps), distill4_digits (a 4-step DMD student, at 1 and
          4 NFE, 400 steps), meanflow_digits (1 and 2 NFE, 1500 of the config's 3000
          steps), ebm_digits (Jarzynski walkers, the config's 10000 steps; samples by
          ULA from the walkers, Tweedie-denoised)
Shorter trainings than the config's are named in the entry and in the listed command.
"""
import argparse
import dataclasses
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
DIGITS_EVAL_EVERY = 500


@dataclasses.dataclass(frozen=True)
class Entry:
  spec: str                       # config file[:variant]
  kind: str                       # 'toy' or 'digits'
  draw: str = 'samples'           # samples | trajectories | steps | vae
  steps: tuple[int, ...] = ()     # NFEs drawn side by side ('steps')
  needs: tuple[tuple[str, str], ...] = ()  # (config field, entry whose workdir it takes)
  eval_every: int | None = None   # an eval cadence for the curves (None: the config's)
  num_steps: int | None = None    # a shorter training than the config's (None: its own)


ENTRIES = {
    'flow_matching_toy': Entry('configs/flow_matching/toy2d.py', 'toy', 'trajectories'),
    'diffusion_toy': Entry('configs/diffusion/toy2d.py', 'toy'),
    'distill_toy': Entry('configs/distill/toy2d.py', 'toy', eval_every=250),
    'meanflow_toy': Entry('configs/flow_maps/toy2d.py:meanflow', 'toy', 'steps', (1, 2)),
    'ebm_toy': Entry('configs/ebm/toy2d.py', 'toy'),
    'vae_toy': Entry('configs/vae/toy2d.py', 'toy'),
    'diffusion_digits': Entry('configs/diffusion/digits.py', 'digits'),
    'flow_matching_digits': Entry('configs/flow_matching/digits.py', 'digits'),
    'vae_digits': Entry('configs/vae/digits.py', 'digits', 'vae'),
    'latent_fm_digits': Entry('configs/flow_matching/latent_digits.py', 'digits',
                              needs=(('data.vae_workdir', 'vae_digits'),)),
    # Distilled students: DMD, whose step costs about a fifth of the default f-distill's
    # (four fake-score and discriminator updates per step) on a CPU; 400 steps.
    'distill_digits': Entry('configs/distill/digits.py:dmd', 'digits', eval_every=100,
                            num_steps=400, needs=(('teacher.workdir', 'diffusion_digits'),)),
    'distill4_digits': Entry('configs/distill/digits.py:dmd,multistep', 'digits', 'steps',
                             (1, 4), eval_every=100, num_steps=400,
                             needs=(('teacher.workdir', 'diffusion_digits'),)),
    # MeanFlow's step (a JVP) is about 1.5 steps/s here: the gallery trains half of the
    # config's 3000 steps.
    'meanflow_digits': Entry('configs/flow_maps/digits.py:meanflow', 'digits', 'steps', (1, 2),
                             num_steps=1500, eval_every=250),
    # The config's 10000 steps (about 45 minutes here); samples by ULA from the walkers,
    # Tweedie-denoised.
    'ebm_digits': Entry('configs/ebm/digits.py', 'digits', eval_every=1000),
}


def finished(workdir: str, num_steps: int) -> bool:
  return os.path.isdir(os.path.join(workdir, 'checkpoints', str(num_steps)))


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def eval_rows(workdir: str) -> list[dict]:
  """The run's eval rows, {'step': s, name: value} with the 'eval/' prefix dropped; a
  run resumed over an eval step keeps its last row for that step."""
  rows = {}
  for r in read_metrics(workdir):
    if any(k.startswith('eval/') for k in r):
      rows[r['step']] = {'step': r['step'],
                         **{k[5:]: v for k, v in r.items() if k.startswith('eval/')}}
  return [rows[s] for s in sorted(rows)]


def last_eval(workdir: str) -> dict:
  rows = eval_rows(workdir)
  keep = ('mmd', 'nll', 'on_mode', 'mode_mass_tv', 'fd_digits', 'precision_digits',
          'recall_digits', 'nfe', 'elbo')
  return {'step': rows[-1]['step'], **{k: v for k, v in rows[-1].items() if k in keep}} \
      if rows else {}


def entry_config(name: str, workdirs: dict[str, str]):
  """(config, command-line overrides) of an entry: its config file and variant, the
  workdirs of the runs it needs, and for digits the gallery's evaluation settings."""
  entry = ENTRIES[name]
  config = config_lib.from_file(entry.spec)
  overrides = {}
  for field, other in entry.needs:
    overrides[field] = workdirs[other]
  if entry.num_steps:
    overrides['train.num_steps'] = entry.num_steps
  if entry.eval_every or entry.kind == 'digits':
    overrides['train.eval_every'] = entry.eval_every or DIGITS_EVAL_EVERY
  if entry.kind == 'digits':
    metrics = tuple(config.eval.metrics)
    if 'fd_digits' not in metrics:
      overrides['eval.metrics'] = metrics + ('fd_digits',)
  with config.unlocked():
    for path, value in overrides.items():
      *parents, last = path.split('.')
      node = config
      for part in parents:
        node = node[part]
      node[last] = value
  config_lib.validate(config)
  return config, overrides


def command(entry: Entry, overrides: dict) -> str:
  text = f'gensuite train --config={entry.spec} --workdir=DIR'
  for path, value in overrides.items():
    if isinstance(value, tuple):
      value = f'"{value!r}"'
    elif isinstance(value, str) and os.path.isabs(value):
      value = f'<{os.path.basename(value)} run>'
    text += f' --config.{path}={value}'
  return text


def draw(name: str, run) -> np.ndarray:
  """The entry's picture from a loaded run."""
  entry = ENTRIES[name]
  data = run.experiment.data
  toy = data.spec.kind == 'toy'
  if entry.draw == 'steps':  # a few-step generator: the same noise at each NFE
    xs = [np.asarray(run.sample(KEY, 2000 if toy else 64, steps=s)) for s in entry.steps]
    if toy:
      ref = np.asarray(data.reference(KEY, 2000))
      return np.concatenate(
          [pictures.scatter_plot(x, ref if i == 0 else None, title=f'{s} NFE')
           for i, (x, s) in enumerate(zip(xs, entry.steps))], axis=1)
    return pictures.side_by_side([pictures.titled(pictures.image_grid(x), f'{s} NFE')
                                  for x, s in zip(xs, entry.steps)])
  if entry.draw == 'vae' and not toy:
    method, params = run.method, run.state.eval_params(True)
    prior = pictures.titled(pictures.image_grid(np.asarray(run.sample(KEY, 64))),
                            'prior samples')
    x = np.asarray(data.reference(KEY, 32), np.float32)
    mu, _ = method.encode(params, x)
    recon = np.asarray(method.decode(params, mu))
    pairs = np.stack([x, recon], 1).reshape((-1,) + x.shape[1:])
    return pictures.side_by_side([prior, pictures.titled(
        pictures.image_grid(pairs, ncols=8), 'data | reconstruction (posterior mean)')])
  if toy:
    x = np.asarray(run.sample(KEY, 2000))
    ref = np.asarray(data.reference(KEY, 2000))
    traj = None
    if entry.draw == 'trajectories':
      traj = np.asarray(run.method.sample(run.state, KEY, 24, return_trajectory=True))
    return pictures.scatter_plot(x, ref, title=name.replace('_', ' '), trajectories=traj)
  return pictures.image_grid(np.asarray(run.sample(KEY, 64)))


def fd_curves(workdirs: dict[str, str], path: str) -> bool:
  """fd_digits against the training step for every digits run with evals; False if none."""
  curves = {}
  for name, workdir in workdirs.items():
    if ENTRIES[name].kind != 'digits' or name.startswith('distill'):
      continue
    rows = [r for r in eval_rows(workdir) if 'fd_digits' in r]
    if rows:
      curves[name.replace('_digits', '')] = ([r['step'] for r in rows],
                                             [r['fd_digits'] for r in rows])
  if not curves:
    return False
  pictures.save_png(path, pictures.line_plot(
      curves, xlabel='training step', ylabel='fd_digits (500 samples; lower is better)',
      logy=True, title='digits: fd_digits during training'))
  return True


def distill_curve(workdir: str, path: str) -> bool:
  """The one-step student's mode-mass TV and sliced Wasserstein distance to the data
  against the distillation step; False if the run logged neither."""
  rows = [r for r in eval_rows(workdir) if 'mode_mass_tv' in r]
  if not rows:
    return False
  steps = [r['step'] for r in rows]
  panels = [('mode-mass TV (1 NFE)', {'student': (steps, [r['mode_mass_tv'] for r in rows])})]
  if 'sliced_wasserstein' in rows[0]:
    panels.append(('sliced Wasserstein to the data (1 NFE)',
                   {'student': (steps, [r['sliced_wasserstein'] for r in rows])}))
  pictures.save_png(path, pictures.line_plot(
      panels, xlabel='distillation step', logy=True,
      title='toy one-step student during distillation (lower is better)'))
  return True


def distill_digits_curve(workdirs: dict[str, str], path: str) -> bool:
  """fd_digits of the digits students against distillation step, with the teacher's."""
  curves = {}
  for name, label in (('distill_digits', '1-step student'),
                      ('distill4_digits', '4-step student (4 NFE)')):
    rows = [r for r in eval_rows(workdirs.get(name, '')) if 'fd_digits' in r]
    if rows:
      curves[label] = ([r['step'] for r in rows], [r['fd_digits'] for r in rows])
  if not curves:
    return False
  teacher = [r for r in eval_rows(workdirs.get('diffusion_digits', '')) if 'fd_digits' in r]
  hlines = {f'teacher, 35 NFE (step {teacher[-1]["step"]})': teacher[-1]['fd_digits']} \
      if teacher else {}
  pictures.save_png(path, pictures.line_plot(
      curves, xlabel='distillation step', ylabel='fd_digits (500 samples)', logy=True,
      title='digits students during distillation (lower is better)', hlines=hlines))
  return True


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
    names = [n for n in names if ENTRIES[n].kind == args.only]
  workdirs = {n: os.path.abspath(given.get(n) or os.path.join(args.workdir, n))
              for n in ENTRIES}
  order = []  # what the chosen entries need comes first
  for name in names:
    for _, other in ENTRIES[name].needs:
      if other not in order:
        order.append(other)
    if name not in order:
      order.append(name)
  os.makedirs(args.out_dir, exist_ok=True)
  lines = []
  for name in order:
    config, overrides = entry_config(name, workdirs)
    workdir = workdirs[name]
    if name not in given and not finished(workdir, int(config.train.num_steps)):
      print(f'training {name}: {ENTRIES[name].spec} -> {workdir}', flush=True)
      train.run(config, workdir)
    if name not in names:
      continue
    picture = draw(name, load_run(workdir))
    path = os.path.join(args.out_dir, f'{name}.png')
    pictures.save_png(path, picture)
    metrics = last_eval(workdir)
    size_kb = os.path.getsize(path) / 1024
    print(f'{name}: {path} ({size_kb:.0f} KB) {metrics}', flush=True)
    lines.append(f'| `{name}.png` | `{command(ENTRIES[name], overrides)}` | '
                 + ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                             for k, v in metrics.items()) + ' |')
  have = {n: w for n, w in workdirs.items() if os.path.exists(os.path.join(w, 'metrics.jsonl'))}
  curves = {
      'digits_fd_curves.png': lambda p: fd_curves(have, p),
      'distill_digits_curve.png': lambda p: distill_digits_curve(have, p),
      'distill_toy_curve.png': lambda p: 'distill_toy' in have and distill_curve(
          have['distill_toy'], p),
  }
  for fname, make in curves.items():
    if make(os.path.join(args.out_dir, fname)):
      print(f'curve: {os.path.join(args.out_dir, fname)}', flush=True)
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
            'finished, in --workdir). Metrics: the last eval the run logged.\n'
            'Digits runs add an eval every 500 steps with fd_digits (evaluation draws '
            'from its own key; the weights are the plain config\'s).\n'
            '`digits_fd_curves.png`: fd_digits against training step for the digits '
            'runs; `distill_digits_curve.png`: the digits students\' fd_digits against '
            'distillation steps; `distill_toy_curve.png`: the toy one-step student '
            'against distillation steps.\n\n'
            '| picture | trained by | last eval |\n|---|---|---|\n')
    for key in sorted(old):
      f.write(old[key] + '\n')


if __name__ == '__main__':
  main()
