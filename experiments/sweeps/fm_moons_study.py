"""Optuna search of learning rate, EMA decay and warm-up for flow matching on moons.

  gensuite sweep --config=configs/flow_matching/toy2d.py:moons --sweep=experiments/sweeps/fm_moons_study.py \
      --workdir=runs/study_fm_moons --parallel=2 --config.train.num_steps=600 \
      --config.train.eval_every=600 --config.eval.metrics="('mmd',)"

Needs `pip install -e '.[optuna]'`. The EMA decay is searched as 1 - decay on a log
scale (0.9 ... 0.999) and handed to the config as optim.ema_decays=(decay,).
experiments/optuna_vs_random.py runs this space against a random search.
"""
from gensuite import sweep

SPACE = {'optim.lr': ('log', 1e-4, 3e-2), 'ema_one_minus': ('log', 1e-3, 1e-1),
         'optim.warmup_steps': ('int', 0, 300)}


def overrides(params):
  return {'optim.lr': params['optim.lr'], 'optim.warmup_steps': params['optim.warmup_steps'],
          'optim.ema_decays': (round(1.0 - params['ema_one_minus'], 6),)}


def get_study(num_trials=16, sampler='tpe', seed=0):
  return sweep.Study(metric='eval/mmd', direction='minimize', num_trials=num_trials,
                     space=SPACE, overrides=overrides, sampler=sampler, seed=seed)
