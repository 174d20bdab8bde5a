"""Learning rate x seed grid for flow matching.

  gensuite sweep --config=configs/flow_matching/toy2d.py --sweep=experiments/sweeps/fm_lr.py \
      --workdir=runs/sweep_fm_lr
"""
from gensuite import sweep


def get_sweep():
  return sweep.product(**{'optim.lr': [1e-3, 3e-3], 'seed': [0, 1]})
