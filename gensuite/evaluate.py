"""The one evaluator: samples, metrics, the method's own scalars, pictures.

  results = gensuite.evaluate.evaluate(exp, state, step, writer, workdir)

The loop calls it every config.train.eval_every steps, `Run.evaluate` in notebooks,
and `gensuite eval` on a finished run; all three read the same config.eval fields
(num_samples, metrics, use_ema, sample_batch, the fid options) and config.sampler
(name, steps, options), which `gensuite eval --config.eval.*/--config.sampler.*`
overrides. Scalars are returned as {'eval/<name>': float} and, with a writer, logged
to TensorBoard and metrics.jsonl; pictures go to TensorBoard and DIR/samples/.
"""
import os
import time

import jax
import numpy as np

from gensuite import metrics as metrics_lib
from gensuite import pictures


def evaluate(exp, state, step: int, writer=None,
             workdir: str | None = None, **sample_kw) -> dict[str, float]:
  """Samples with the configured sampler, computes the eval metrics, logs them."""
  ec = exp.config.eval
  k_sample, k_ref, k_metric = jax.random.split(exp.eval_rng, 3)
  kw = dict(sampler=exp.config.sampler.name, steps=exp.config.sampler.steps,
            use_ema=ec.get('use_ema', True))
  kw.update({k: v for k, v in sample_kw.items() if v is not None})
  t0 = time.time()
  chunk = ec.get('sample_batch', 0) or ec.num_samples
  if chunk >= ec.num_samples:
    samples = exp.sample(state, k_sample, ec.num_samples, **kw)
  else:  # bounded memory for large evals (FID over 50k images)
    samples = np.concatenate([
        exp.sample(state, jax.random.fold_in(k_sample, i),
                   min(chunk, ec.num_samples - i * chunk), **kw)
        for i in range(-(-ec.num_samples // chunk))])
  sample_time = time.time() - t0
  reference = exp.data.reference(k_ref, ec.num_samples)
  results = metrics_lib.evaluate(tuple(ec.metrics), k_metric, samples, reference,
                                 log_prob=exp.data.log_prob, workdir=workdir,
                                 mixture=getattr(exp.data, 'dist', None),
                                 **metrics_lib.eval_options(ec))
  results = {f'eval/{k}': float(v) for k, v in results.items()}
  results['eval/sample_seconds'] = sample_time
  images = {}
  # Optional per-method evaluation (ELBO, log Z, a student's teacher gap, ...): the
  # method returns scalars and, optionally, named pictures of its own.
  method_eval = getattr(exp.method, 'evaluate', None)
  if method_eval is not None:
    scalars, images = method_eval(state, jax.random.fold_in(k_metric, 1), exp.data,
                                  workdir=workdir)
    results.update({f'eval/{k}': float(v) for k, v in scalars.items()})
  if writer is not None:
    writer.write_scalars(step, results)
    if exp.config.train.get('log_images', True):
      image = samples_picture(exp, samples, reference, step, state=state,
                              rng=jax.random.fold_in(k_sample, 10**6), sample_kw=kw)
      if image is not None:
        images = {'samples': image, **images}
      for name, picture in images.items():
        writer.write_image(step, name, picture)
        if workdir and jax.process_index() == 0:
          sub = os.path.join(workdir, 'samples' if name == 'samples' else name)
          os.makedirs(sub, exist_ok=True)
          pictures.save_png(os.path.join(sub, f'step_{step:08d}.png'), picture)
  return results


def samples_picture(exp, samples, reference, step, state=None, rng=None, sample_kw=None):
  """The samples as an image grid (images) or data | samples panels (2-D).

  A class-conditional image model (with `state` given) draws its grid afresh, with the
  labels 0, 1, ..., C-1, 0, ... in reading order, written under each image; the
  samples the metrics saw are not changed.
  """
  if exp.data.spec.kind == 'image' or samples.ndim == 4:  # 4: decoded latents
    classes = exp.data.spec.num_classes
    if state is not None and classes and getattr(exp.method, 'conditional', False):
      n = exp.mesh.size * int(np.ceil(64 / exp.mesh.size))
      labels = tuple(int(i) % classes for i in range(n))
      grid = exp.sample(state, rng, n, label=labels, **(sample_kw or {}))
      return pictures.image_grid(grid[:64], ncols=classes if classes <= 16 else None,
                                 labels=labels[:64])
    return pictures.image_grid(samples[:64])
  if samples.shape[-1] >= 2:
    return pictures.scatter_plot(samples[:, :2], reference[:, :2], title=f'step {step}')
  return None
