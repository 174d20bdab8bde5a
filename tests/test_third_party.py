"""third_party/: the record of what gensuite takes from others stays true of the repository.

Every path a manifest entry names exists, every reference file in tests/data/ and every
requirement in setup.cfg has an entry, and the index links every page. Standard library
only (no JAX).
"""
import configparser
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIRD_PARTY = os.path.join(REPO, 'third_party')
FIELDS = ('name', 'kind', 'uses', 'where', 'upstream', 'version', 'licence')
DEPENDENCY_KINDS = ('runtime_dependency', 'optional_dependency', 'test_dependency')


def _manifest() -> dict:
  with open(os.path.join(THIRD_PARTY, 'manifest.json'), encoding='utf-8') as f:
    return json.load(f)


MANIFEST = _manifest()
ENTRIES = MANIFEST['entries']


def _normalized(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _setup_cfg_requirements() -> dict[str, str]:
  """{normalized requirement name: 'install_requires' or the extra's name}."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, 'setup.cfg'), encoding='utf-8')
  sources = {'install_requires': cfg.get('options', 'install_requires', fallback='')}
  if cfg.has_section('options.extras_require'):
    sources.update(cfg.items('options.extras_require'))
  out = {}
  for source, text in sources.items():
    for line in text.splitlines():
      match = re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', line)
      if match:
        out[_normalized(match.group(1))] = source
  return out


def test_entries_are_complete_and_names_unique():
  names = [e.get('name') for e in ENTRIES]
  assert len(names) == len(set(names)), 'duplicate manifest names'
  for entry in ENTRIES:
    missing = [k for k in FIELDS if not entry.get(k)]
    assert not missing, f'{entry.get("name")!r} lacks {missing}'
    assert entry['kind'] in MANIFEST['kinds'], f'{entry["name"]!r}: kind {entry["kind"]!r}'
    assert isinstance(entry['where'], list) and isinstance(entry['upstream'], list)


@pytest.mark.parametrize('entry', ENTRIES, ids=lambda e: e['name'])
def test_every_path_named_exists(entry):
  absent = [p for p in entry['where'] if not os.path.exists(os.path.join(REPO, p))]
  assert not absent, (f'third_party/manifest.json entry {entry["name"]!r} names paths '
                      f'that do not exist: {absent}; update the entry and its page')


def test_every_reference_file_in_tests_data_is_recorded():
  recorded = {p for e in ENTRIES if e['kind'] == 'reference_output' for p in e['where']}
  data = os.path.join(REPO, 'tests', 'data')
  files = sorted(f'tests/data/{n}' for n in os.listdir(data)
                 if os.path.isfile(os.path.join(data, n)))
  unrecorded = [f for f in files if f not in recorded]
  assert not unrecorded, (f'{unrecorded} have no reference_output entry in '
                          'third_party/manifest.json (say which program made them)')


def test_every_setup_cfg_requirement_is_recorded():
  recorded = {_normalized(e['name']) for e in ENTRIES if e['kind'] in DEPENDENCY_KINDS}
  requirements = _setup_cfg_requirements()
  assert requirements, 'no requirements parsed from setup.cfg'
  unrecorded = sorted(r for r in requirements if r not in recorded)
  assert not unrecorded, (f'setup.cfg requirements without an entry in '
                          f'third_party/manifest.json: {unrecorded}')


def test_index_links_every_page_and_every_link_resolves():
  with open(os.path.join(THIRD_PARTY, 'README.md'), encoding='utf-8') as f:
    links = set(re.findall(r'\]\(([^)#\s]+)\)', f.read()))
  local = {l for l in links if '://' not in l}
  assert not [l for l in local if not os.path.exists(os.path.join(THIRD_PARTY, l))]
  pages = {n for n in os.listdir(THIRD_PARTY)
           if n != 'README.md' and n.endswith(('.md', '.json'))}
  assert pages <= local, f'pages not linked from third_party/README.md: {pages - local}'
