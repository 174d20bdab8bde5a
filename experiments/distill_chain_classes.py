"""Where a few-step digits student's class proportions go wrong, step by step.

  PYTHONPATH=. python experiments/distill_chain_classes.py --workdir=runs/distill_ms \
      --step=2500 --num=4000 [--fake_copies | --chain_only] [--out=report.md]

For a `method.gen_steps` = K student of a digits run (configs/distill/digits.py:
multistep) it draws one chain of K steps (the sampler's: the same noise and the same
re-noising draws for every prefix of the chain, so the output after step k is the
(k+1)-NFE sample) and reports, with the digits classifier's labels:
  after step k   the class proportions of the chain's output after each step, their
                 total variation from the data's, and the fraction of labels step k
                 changed (among samples the classifier was sure of, p > 0.9, and the
                 rest), with each class's net gain;
  the teacher    for each step k >= 1, from the very inputs step k saw (step k-1's
                 outputs re-noised to sigma_k, fresh draws), the teacher's Heun ODE
                 (--teacher_steps Karras levels from sigma_k down to 0) next to
                 the student's step: their proportions, how often each keeps the input's
                 label, and how often they agree;
  (--chain_only stops here.)
  fake copies    with --fake_copies, each per-step fake-score copy sampled as a
                 diffusion model (--fake_num samples, Heun 35 NFE from sigma_max; the
                 weights the DMD gradient reads, not an EMA): the class proportions
                 that copy believes its step puts out.
A step whose output proportions drift from the teacher's on the same inputs is a step
whose map moved class mass; a fake copy whose proportions are far from its step's
cannot correct that mass through the DMD gradient.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import run as run_lib
from gensuite.methods import teachers
from gensuite.metrics import features


def chain_outputs(method, gen_params, z, rng, label=None):
  """[K, B, ...]: the output after each step of one K-step chain (the sampler's draws)."""
  return jnp.stack([method.generate(gen_params, z, rng, k, label)
                    for k in range(len(method.gen_sigmas))])


def label_changes(before, after, sure):
  """(changed fraction, among sure, among unsure, net gain per class) of a step."""
  changed = before != after
  frac = lambda m: float(changed[m].mean()) if m.any() else float('nan')
  gain = (np.bincount(after[changed], minlength=10) -
          np.bincount(before[changed], minlength=10))
  return float(changed.mean()), frac(sure), frac(~sure), gain


class Printed(list):
  """A list of report lines that prints each line as it is added."""

  def __init__(self, lines):
    super().__init__()
    self += lines

  def append(self, line):
    print(line, flush=True)
    super().append(line)

  def __iadd__(self, lines):
    for line in lines:
      self.append(line)
    return self

  def write(self, path):
    if path:
      with open(path, 'w') as f:
        f.write('\n'.join(self) + '\n')


def proportions(labels):
  return np.bincount(labels, minlength=10) / len(labels)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--step', type=int, default=None)
  p.add_argument('--num', type=int, default=4000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--teacher_steps', type=int, default=18)
  p.add_argument('--chain_only', action='store_true',
                 help='only the proportions after each step and the label changes')
  p.add_argument('--fake_copies', action='store_true')
  p.add_argument('--fake_num', type=int, default=2000)
  p.add_argument('--out', default='')
  a = p.parse_args()
  run = run_lib.load_run(a.workdir, a.step)
  m = run.method
  if getattr(m, 'gen_steps', 1) < 2 or m.conditional:
    raise SystemExit('distill_chain_classes.py: needs an unconditional distilled student '
                     'with method.gen_steps >= 2')
  params = m.generator_params(run.state, True)
  ex = features.digits_extractor()

  def classify(x):
    logits = features.DigitsClassifier().apply(
        {'params': ex.params}, jnp.asarray(x, jnp.float32).reshape((-1, 8, 8, 1)))
    prob = np.asarray(jax.nn.softmax(logits, -1))
    return prob.argmax(-1), prob.max(-1) > 0.9

  data, _ = features._load_digits('train')  # pylint: disable=protected-access
  ref = proportions(classify(data)[0])
  tv = lambda q: 0.5 * float(np.abs(q - ref).sum())
  fmt = lambda q: ' | '.join(f'{v:.3f}' for v in q)
  sig = np.asarray(m.gen_sigmas)
  lines = Printed([
      f'`{a.workdir}` at step {run.step}, {a.num} samples, EMA params; levels '
      f'{", ".join(f"{s:.3g}" for s in sig)}. Classes 0..9 by the digits classifier.',
      '', '| outputs | ' + ' | '.join(str(c) for c in range(10)) + ' | TV |',
      '|---|' + '---|' * 11, f'| data | {fmt(ref)} | 0 |'])
  k_z, k_sim, k_in = jax.random.split(jax.random.PRNGKey(a.seed), 3)
  z = jax.random.normal(k_z, (a.num,) + m.data_shape, jnp.float32)
  outs = np.asarray(chain_outputs(m, params, z, k_sim))
  labs = [classify(o) for o in outs]
  for k, (lab, _) in enumerate(labs):
    lines.append(f'| after step {k} (sigma {sig[k]:.3g}, {k + 1} NFE) | '
                 f'{fmt(proportions(lab))} | {tv(proportions(lab)):.3f} |')
  lines += ['', '| step | sigma | labels changed | of sure | of unsure | net gain per class |',
            '|---|---|---|---|---|---|']
  for k in range(1, len(sig)):
    c, cs, cu, gain = label_changes(labs[k - 1][0], labs[k][0], labs[k - 1][1])
    lines.append(f'| {k} | {sig[k]:.3g} | {c:.3f} | {cs:.3f} | {cu:.3f} | '
                 f'{" ".join(f"{g:+d}" for g in gain)} |')
  if a.chain_only:
    lines.write(a.out)
    return
  lines += ['', '| from step k-1 re-noised to sigma_k | ' + ' | '.join(
      str(c) for c in range(10)) + ' | TV | keeps input label | teacher = student |',
            '|---|' + '---|' * 13]
  teacher = jax.jit(lambda x, s: m.teacher.denoiser(x, s))
  student = jax.jit(lambda x, s: m.generator(params, x, s))
  for k in range(1, len(sig)):
    x_in = outs[k - 1] + sig[k] * np.asarray(
        jax.random.normal(jax.random.fold_in(k_in, k), outs[k - 1].shape))
    x_t, _ = teachers.pf_ode_sample(teacher, jnp.asarray(x_in / sig[k]), float(sig[k]),
                                    steps=a.teacher_steps)
    lt = classify(x_t)[0]
    ls = classify(student(jnp.asarray(x_in), float(sig[k])))[0]
    for who, lab in (('teacher ODE', lt), ('student step', ls)):
      q = proportions(lab)
      lines.append(f'| {who}, sigma {sig[k]:.3g} | {fmt(q)} | {tv(q):.3f} | '
                   f'{np.mean(lab == labs[k - 1][0]):.3f} | {np.mean(lt == ls):.3f} |')
  if a.fake_copies and m.fake_copies:
    fake = run.state.params['fake_score']
    lines += ['', '| fake copy sampled (Heun 35) | ' + ' | '.join(
        str(c) for c in range(10)) + ' | TV |', '|---|' + '---|' * 11]
    z_f = jax.random.normal(jax.random.fold_in(k_z, 1), (a.fake_num,) + m.data_shape)
    for k in range(len(sig)):
      den = jax.jit(lambda x, s, k=k: m.fake_denoiser(fake, x, s, k=k))
      q = proportions(classify(teachers.pf_ode_sample(den, z_f, m.sigma_max, steps=18)[0])[0])
      lines.append(f'| copy {k} (step {k}) | {fmt(q)} | {tv(q):.3f} |')
  lines.write(a.out)


if __name__ == '__main__':
  main()
