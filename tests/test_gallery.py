"""The gallery script's entries build valid configs, and its pictures stay small."""
import importlib.util
import os

import pytest

from conftest import REPO

GALLERY_DIR = os.path.join(REPO, 'experiments', 'results', 'gallery')


def _gallery():
  spec = importlib.util.spec_from_file_location(
      'gallery', os.path.join(REPO, 'experiments', 'gallery.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_every_entry_builds_a_valid_config_and_a_command(monkeypatch):
  monkeypatch.chdir(REPO)
  gallery = _gallery()
  workdirs = {name: f'/runs/{name}' for name in gallery.ENTRIES}
  for name, entry in gallery.ENTRIES.items():
    config, overrides = gallery.entry_config(name, workdirs)  # validates the config
    for field, other in entry.needs:
      assert other in gallery.ENTRIES and overrides[field] == workdirs[other]
    if entry.kind == 'digits':
      assert config.train.eval_every and 'fd_digits' in config.eval.metrics
    if entry.num_steps:
      assert config.train.num_steps == entry.num_steps
    command = gallery.command(entry, overrides)
    assert command.startswith(f'gensuite train --config={entry.spec} --workdir=DIR')
    assert '/runs/' not in command  # needed runs are named, not given as paths


@pytest.mark.parametrize('name', sorted(f for f in os.listdir(GALLERY_DIR)
                                        if f.endswith('.png')))
def test_gallery_pictures_are_under_200_kb_and_listed(name):
  assert os.path.getsize(os.path.join(GALLERY_DIR, name)) < 200 * 1024
  with open(os.path.join(GALLERY_DIR, 'README.md')) as f:
    assert f'`{name}`' in f.read()
