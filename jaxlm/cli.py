"""What every jaxlm command shares: flag parsing with one-line errors, quiet logs, UserError exits.

A mistake on the command line (an unknown config field, a value of the wrong type, a config file
that does not exist or has no get_config) prints `error: <what to change>` and exits with status 2,
never a traceback.
"""

import re
import sys
from pathlib import Path
from typing import Callable

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from jaxlm import paths
from jaxlm.errors import UserError, exit_on_signals, reported


def _one_line(e: BaseException) -> str:
  text = str(e.args[0] if len(e.args) == 1 else e).replace('\\n', '\n').replace("\\'", "'")
  return ' '.join(line.strip() for line in text.splitlines() if line.strip())


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _flag_error(e: BaseException) -> str:
  """One sentence for an error that absl or config_flags raised while reading the flags."""
  text = _one_line(e)
  unknown = re.search(r"'(\w+)'.*Did you mean \"(\w+)\"", text)
  if unknown:
    return (f"a --config override names an unknown field '{unknown[1]}' (did you mean "
            f'{unknown[2]}?); the fields are in configs/base.py.')
  if 'get_config' in text:
    return ('the --config file does not define get_config(); a config file returns a '
            'ConfigDict from get_config(), see configs/base.py.')
  loading = re.search(r'Attempted \[Relative path\]: (\S+)', text)
  if loading:
    return (f'cannot load the config file {loading[1]}; give --config=<path to a .py file with '
            'get_config()>, e.g. --config=configs/base.py.')
  if isinstance(e, AttributeError) and isinstance(e.args[0] if e.args else None, KeyError):
    e = e.args[0]  # config_flags wraps the KeyError of an unknown field without a suggestion
    text = _one_line(e).strip('"')
  if isinstance(e, KeyError):
    return f'a --config override names an unknown field {text}; the fields are in configs/base.py.'
  return f'{text.rstrip(".")}; check the flag against --help (config fields: configs/base.py).'


def require(flag: flags.FlagHolder, ok: bool, expected: str) -> None:
  """A flag whose value is not what the command can use: one sentence naming it."""
  if not ok:
    value = ','.join(flag.value) if isinstance(flag.value, list) else repr(flag.value)
    raise UserError(f'--{flag.name}={value} is invalid: expected {expected}.')


def require_sampling(max_new_tokens: flags.FlagHolder, temperature: flags.FlagHolder,
                     top_k: flags.FlagHolder, top_p: flags.FlagHolder,
                     seed: flags.FlagHolder) -> None:
  """The decoding flags a command that generates takes (jaxlm.generate, jaxlm.rate generate)."""
  require(max_new_tokens, max_new_tokens.value >= 1, 'at least 1 token')
  require(temperature, temperature.value >= 0, 'a number >= 0 (0 is greedy)')
  require(top_k, top_k.value >= 0, '0 (all tokens) or a positive number')
  require(top_p, 0 < top_p.value <= 1, 'a number in (0, 1]')
  require(seed, seed.value >= 0, 'a number >= 0')


def require_location(*holders: flags.FlagHolder) -> None:
  """Flags that name a location: a local path, or a gs:// URL whose client is installed."""
  for flag in holders:
    paths.check(f'--{flag.name}', flag.value or '')


def require_local(*holders: flags.FlagHolder) -> None:
  """Flags that name a location that must be a local (or mounted) path."""
  for flag in holders:
    paths.check_local(f'--{flag.name}', flag.value or '')


def require_output(flag: flags.FlagHolder, *, is_file: bool = False) -> None:
  """A local output a command will write (a directory, or a file with is_file): not an existing
  file where a directory goes (nor a directory where a file goes), not below a file, and in a
  place that can be written; checked before any work, with nothing created. (A gs:// output is
  checked when it is written.)"""
  import tempfile  # pylint: disable=import-outside-toplevel
  value = (flag.value or '').strip()
  if not value or paths.is_url(value):
    return
  path = Path(value).expanduser()
  if path.exists() and path.is_dir() == is_file:
    what = 'an existing directory' if is_file else 'an existing file'
    raise UserError(f'--{flag.name}={value} is {what}; give a '
                    f'{"file path" if is_file else "directory"} there instead.')
  existing = path.parent if is_file else path
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise UserError(f'--{flag.name}={value} lies below {existing}, which is a file, not a '
                    'directory; give a path in a directory.')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise UserError(f'--{flag.name}={value} cannot be written ({e.strerror or e} in {existing}); '
                    'give a path you can write to.') from None


def _parse(argv: list[str], config: 'ConfigFlag | None' = None) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    message = _flag_error(e)
    _fail(config._named(message) if config else message)  # pylint: disable=protected-access


def _config_argument(argv: list[str], default: str, name: str = 'config') -> str:
  """The value of --<name> on the command line (absl's `--config=x` or `--config x` forms)."""
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return default


def check_config_file(value: str) -> None:
  """Loads `<file>[:<argument>]` as config_flags will, and turns each way it can fail into one
  sentence: a missing file, a syntax error, an error while importing it, no get_config, a
  get_config that raises or takes another argument, a result that is not a ConfigDict."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel
  path, _, argument = value.partition(':')
  if not Path(path).is_file():
    raise UserError(f'cannot load the config file {path}: it does not exist; give --config=<path '
                    'to a .py file with get_config()>, e.g. --config=configs/base.py.')
  try:
    spec = importlib.util.spec_from_file_location('jaxlm_config_file', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f'the config file {path} has a syntax error at line {e.lineno} '
                    f'({e.msg}); fix that line.') from None
  except Exception as e:  # pylint: disable=broad-except  # whatever the file's own code raises
    raise UserError(f'the config file {path} fails while it is imported ({type(e).__name__}: '
                    f'{_one_line(e)}); fix the file or what it imports.') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise UserError(f'the config file {path} does not define get_config(); a config file returns '
                    'a ConfigDict from get_config(), see configs/base.py.')
  takes = len(inspect.signature(get_config).parameters)
  if argument and not takes:
    raise UserError(f'--config={value} passes {argument!r} to get_config(), but get_config() in '
                    f'{path} takes no argument; drop the ":{argument}".')
  try:
    result = get_config(argument) if argument else get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'get_config() in {path} raised {type(e).__name__}: {_one_line(e)}; fix the '
                    'config file.') from None
  if not isinstance(result, ConfigDict):
    raise UserError(f'get_config() in {path} returned a {type(result).__name__}, not an '
                    'ml_collections ConfigDict; return one (start from configs/base.py).')


class ConfigFlag:
  """`--config=<file>` plus its `--config.x.y=v` overrides (ml_collections.config_flags), declared
  by a command at import and defined by `run`: importing a command runs no config file, installs
  no signal handler and cannot exit the process.

  `run` checks the file first (check_config_file), then config_flags reads the overrides from
  sys.argv as the flag is defined, so an unknown field is reported at start-up, as one line."""

  def __init__(self, default: str = 'configs/base.py', name: str = 'config'):
    self.default, self.name = default, name
    self.given = default  # the file on the command line, once defined
    self.holder: flags.FlagHolder | None = None

  def _named(self, message: str) -> str:
    """The sentences speak of --config and configs/base.py; another flag (jaxlm.clean's
    --recipe) gets its own name and default in them."""
    if self.name == 'config':
      return message
    return message.replace('--config', f'--{self.name}').replace('configs/base.py', self.given)

  def define(self, argv: list[str]) -> None:
    if self.name in flags.FLAGS:  # another jaxlm command defined it in this process (tests)
      self.holder = flags.FlagHolder(flags.FLAGS, flags.FLAGS[self.name])
      return
    self.given = _config_argument(argv, self.default, self.name).partition(':')[0]
    try:
      check_config_file(_config_argument(argv, self.default, self.name))
    except UserError as e:
      raise UserError(self._named(str(e))) from None
    try:
      self.holder = config_flags.DEFINE_config_file(
          self.name, self.default, 'Config file with a get_config(); override fields with '
          f'--{self.name}.field=value.', lock_config=True)
    except (AttributeError, KeyError) as e:
      raise UserError(self._named(_flag_error(e))) from None

  @property
  def value(self) -> ConfigDict:
    """The config loaded, or a UserError saying why not."""
    try:
      value = self.holder.value
      if not isinstance(value, ConfigDict):  # config_flags defers load errors to first use
        value.to_dict()
      return value
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
      raise UserError(self._named(_flag_error(e))) from None


def run(main: Callable[[list[str]], None], commands: tuple[str, ...] = (),
        positional: bool = False, config: ConfigFlag | None = None) -> None:
  """app.run(main) with friendly flag errors, absl INFO logs hidden unless --verbosity is given,
  a UserError turned into a one-line message and exit status 2, and SIGINT/SIGTERM into one line
  and 128 + the signal's number (errors.reported). `commands` are the allowed positional
  sub-commands (main gets argv with the chosen one at argv[1]); positional=True passes
  any positional arguments on (launch/local.py's training flags after `--`). `config`, the
  command's ConfigFlag, is defined here, after the signal handlers and before the flags are
  parsed."""
  exit_on_signals()  # the one process-wide installation (errors.py holds every handler)
  paths.without_tensorflow()
  if config is not None:
    try:
      config.define(sys.argv)
    except UserError as e:
      _fail(str(e))

  def wrapped(argv: list[str]) -> None:
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
    if commands and (len(argv) != 2 or argv[1] not in commands):
      _fail(f'give one command: {" or ".join(commands)} (then --flags).')
    if not commands and not positional and len(argv) > 1:
      _fail(f'unexpected arguments {argv[1:]}; flags take the form --name=value.')
    with reported():
      main(argv)
  app.run(wrapped, flags_parser=lambda argv: _parse(argv, config))
