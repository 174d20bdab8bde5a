"""User-facing errors.

`ConfigError` marks a mistake in a config, an override or a CLI argument. The CLI
prints it as one line and exits with code 2, before anything is written.

  from gensuite.errors import ConfigError, lookup
  builder = lookup('net', config.net.name, NETS)   # unknown name -> ConfigError
"""
from typing import Mapping, TypeVar

T = TypeVar('T')


class ConfigError(ValueError):
  """Bad user input: the message says what was wrong and what is allowed."""


def lookup(kind: str, name: str, table: Mapping[str, T]) -> T:
  """Returns table[name], or raises ConfigError listing the known names."""
  if name not in table:
    allowed = ', '.join(sorted(table))
    raise ConfigError(f'unknown {kind} name {name!r}; allowed: {allowed}')
  return table[name]
