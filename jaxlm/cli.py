"""What every jaxlm command shares: flag parsing with one-line errors, quiet logs, UserError exits.

A mistake on the command line (an unknown config field, a value of the wrong type, a config file
that does not exist or has no get_config) prints `error: <what to change>` and exits with status 2,
never a traceback.
"""

import re
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from jaxlm.errors import UserError, reported


def _one_line(e: BaseException) -> str:
  text = str(e.args[0] if len(e.args) == 1 else e).replace('\\n', '\n').replace("\\'", "'")
  return ' '.join(line.strip() for line in text.splitlines() if line.strip())


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_one_line(e))
  except AttributeError as e:
    if 'get_config' in str(e):
      _fail('the --config file does not define get_config(); a config file returns a '
            'ConfigDict from get_config(), see configs/base.py.')
    _fail(f'bad command-line flag: {_one_line(e)}')
  except (KeyError, OSError, TypeError, ValueError) as e:
    _fail(f'bad command-line flag: {_one_line(e)}')


def define_config(default: str = 'configs/base.py') -> flags.FlagHolder:
  """`--config=<file>` plus its `--config.x.y=v` overrides (ml_collections.config_flags).

  config_flags reads the overrides from sys.argv as the flag is defined, so an unknown field is
  reported here, at start-up, as one line.
  """
  try:
    return config_flags.DEFINE_config_file(
        'config', default, 'Config file with a get_config(); override fields with '
        '--config.field=value.', lock_config=True)
  except (AttributeError, KeyError) as e:
    match = re.search(r"'(\w+)'.*Did you mean \"(\w+)\"", _one_line(e))
    what = f"'{match[1]}' (did you mean {match[2]}?)" if match else _one_line(e)
    _fail(f'a --config override names an unknown field {what}; the fields are in '
          'configs/base.py.')


def config_value(holder: flags.FlagHolder) -> ConfigDict:
  """The config a `define_config` flag loaded, or a UserError saying why not."""
  path = flags.FLAGS[holder.name].config_filename if holder.name in flags.FLAGS else '?'
  try:
    value = holder.value
    if not isinstance(value, ConfigDict):  # config_flags defers load errors to first use
      value.to_dict()
    return value
  except AttributeError as e:
    if 'get_config' in str(e):
      raise UserError(f'the config file {path} does not define get_config(); presets return a '
                      'ConfigDict from get_config(), see configs/base.py.') from None
    raise UserError(f'bad config override: {_one_line(e)} (see configs/base.py).') from None
  except OSError:
    raise UserError(f'cannot load the config file {path}; give --config=<path to a .py file '
                    'with get_config()>, e.g. --config=configs/base.py.') from None
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f'bad config override: {_one_line(e)} (see configs/base.py).') from None


def run(main: Callable[[list[str]], None], commands: tuple[str, ...] = ()) -> None:
  """app.run(main) with friendly flag errors, absl INFO logs hidden unless --verbosity is given,
  and UserError turned into a one-line message and exit status 2. `commands` are the allowed
  positional sub-commands (main gets argv with the chosen one at argv[1])."""
  def wrapped(argv: list[str]) -> None:
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
    if commands and (len(argv) != 2 or argv[1] not in commands):
      _fail(f'give one command: {" or ".join(commands)} (then --flags).')
    if not commands and len(argv) > 1:
      _fail(f'unexpected arguments {argv[1:]}; flags take the form --name=value.')
    with reported():
      main(argv)
  app.run(wrapped, flags_parser=_parse)
