"""Estimator x training seed grid for the digits EBM (configs/ebm/digits.py defaults).

  gensuite sweep --config=configs/ebm/digits.py --sweep=experiments/sweeps/ebm_digits.py \
      --workdir=runs/sweep_ebm_digits --parallel=2

Jarzynski, PCD and CD with the same energy net, data noise, step size and optimiser;
the table it writes gives each run's last fd_digits, precision and recall.
"""
from gensuite import sweep


def get_sweep():
  return sweep.product(**{'method.estimator': ['jarzynski', 'pcd', 'cd'], 'seed': [0, 1, 2]})
