"""experiments/few_step.py on digits: each row's config and teacher, the scores, bad input."""
import os
import sys

import jax
import numpy as np
import pytest

from gensuite.metrics import features

from experiments import few_step  # pylint: disable=g-bad-import-order

TEACHERS = {'distill': '/runs/edm', 'scd': '/runs/edm_ts10'}


def test_digits_rows_distil_their_own_teacher_and_scale_to_the_budget():
  """The distilled rows read --teacher, sCD reads --scd_teacher, the flow maps from scratch
  read neither; the seed is the run's, and the LR warm-up shrinks to a fifth of a short
  run (sCM's tangent warm-up to its tenth)."""
  for row, (module, tokens, nfes) in few_step.DIGITS_TRAINED.items():
    c = few_step.make_config(row, 'digits', 2, False, 100, TEACHERS)
    assert c.seed == 2 and c.train.num_steps == 100 and c.data.name == 'digits'
    if row == 'scd':
      assert c.teacher.workdir == TEACHERS['scd'] and c.method.init_from_teacher
    elif module is few_step.distill_digits:
      assert c.teacher.workdir == TEACHERS['distill'] and c.method.name == 'distill'
    else:
      assert c.teacher.workdir not in TEACHERS.values()
    assert c.optim.get('warmup_steps', 0) <= 20
    assert (c.method.get('gen_steps', 1) == 4) == (row == 'dmd_4')
    assert nfes == ((1,) if module is few_step.distill_digits and row != 'dmd_4'
                    else (1, 2, 4))
  js = few_step.make_config('fdistill_js', 'digits', 0, False, None, TEACHERS)
  assert (js.method.objective, js.method.divergence) == ('f_distill', 'js')
  scm = few_step.make_config('scm', 'digits', 0, False, 100, TEACHERS)
  assert scm.method.tangent_warmup == 10  # a tenth of the 100 steps, as of the 3000
  assert 'dmd_4' not in few_step.DIGITS_DEFAULT_ROWS and 'data' not in few_step.DIGITS_ROWS


def test_digits_scores_are_zero_distance_on_the_reference_itself(tmp_path):
  """score_digits is `gensuite eval`'s metrics: the reference against itself has fd 0,
  precision = recall = 1 and class TV 0; a different set does not."""
  net = features.DigitsClassifier()
  params = net.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))['params']
  features._save(os.path.join(tmp_path, features.CLASSIFIER_FILE), params,  # pylint: disable=protected-access
                 accuracy=-1.0)
  images = np.clip(np.random.default_rng(0).normal(size=(300, 8, 8, 1)), -1, 1)
  images = images.astype(np.float32)
  key = jax.random.PRNGKey(0)
  same = few_step.score_digits(images, images, str(tmp_path), key)
  assert set(same) == set(few_step.DIGITS_METRICS)
  assert abs(same['fd_digits']) < 1e-6 and same['class_tv_digits'] == 0.0
  assert same['precision_digits'] == 1.0 and same['recall_digits'] == 1.0
  other = few_step.score_digits(-images, images, str(tmp_path), key)
  assert other['fd_digits'] > 1e-3


@pytest.mark.parametrize('argv, message', [
    (['--data=digits'], '--teacher=DIR'),
    (['--data=digits', '--teacher=/nonexistent/run'], '--teacher=DIR'),
    (['--data=digits', '--rows=data'], "unknown rows ['data'] for --data=digits"),
    (['--data=unequal8', '--rows=scd'], "unknown rows ['scd'] for --data=unequal8"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
  """A digits table without a teacher run, or a row the data has not: exit 2, one error
  line naming what is allowed, nothing written under --workdir."""
  workdir = tmp_path / 'few_step'
  monkeypatch.setattr(sys, 'argv', ['few_step.py', f'--workdir={workdir}'] + argv)
  with pytest.raises(SystemExit) as exit_info:
    few_step.main()
  assert exit_info.value.code == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
  assert len(errors) == 1 and message in errors[0], errors
  assert not workdir.exists()
