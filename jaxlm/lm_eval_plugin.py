"""Makes lm-eval's own command line know jaxlm's model: `lm_eval --model jaxlm ...`.

lm-eval (0.4.x) resolves `--model` in its registry before any code of the user's runs, and reads
no plugin entry points, so an installed package cannot add a model to it. This module adds
'jaxlm' the moment lm-eval's registry is imported, as a lazy entry (`jaxlm.harness:JaxLM`: jaxlm
and JAX are imported only if the jaxlm model is asked for). It runs from a one-line .pth file in
site-packages, `jaxlm-lm-eval.pth`, which a regular install of jaxlm puts there (setup.py) and

  python -m jaxlm.lm_eval_plugin install      # (make setup-test runs it)

writes for an editable install. The line imports nothing but this module (standard library only).
`python -m jaxlm.lm_eval_plugin remove` takes it out.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import sysconfig
from pathlib import Path

REGISTRY = 'lm_eval.api.registry'
PTH = 'jaxlm-lm-eval.pth'
# (jaxlm uninstalled, the line does nothing)
LINE = ("import importlib.util as u; u.find_spec('jaxlm') and "
        "__import__('jaxlm.lm_eval_plugin').lm_eval_plugin.watch()\n")


def offline() -> None:
  """What jaxlm's commands set before they import lm-eval (and with it `datasets` and the Hub
  client, which read these once): nothing is downloaded, a task's data comes from disk."""
  os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
  os.environ.setdefault('HF_HUB_OFFLINE', '1')


def register(registry) -> None:
  """Adds the lazy 'jaxlm' entry to lm-eval's model registry (if it has none by that name)."""
  if 'jaxlm' not in registry.model_registry:
    registry.model_registry.register('jaxlm', target='jaxlm.harness:JaxLM')


class _Registering(importlib.abc.Loader):
  """lm-eval's own loader of its registry module, then register()."""

  def __init__(self, loader):
    self.loader = loader

  def create_module(self, spec):
    return self.loader.create_module(spec)

  def exec_module(self, module):
    self.loader.exec_module(module)
    try:
      register(module)
    except Exception as e:  # pylint: disable=broad-except  # never break lm-eval itself
      print(f'jaxlm: could not add the jaxlm model to lm-eval ({e})', file=sys.stderr)


class _Watch(importlib.abc.MetaPathFinder):
  """Finds lm-eval's registry module as the path finder does, with _Registering as its loader."""

  def find_spec(self, name, path, target=None):
    if name != REGISTRY:
      return None
    sys.meta_path.remove(self)  # once
    spec = importlib.machinery.PathFinder.find_spec(name, path, target)
    if spec is not None and spec.loader is not None:
      spec.loader = _Registering(spec.loader)
    return spec


def watch() -> None:
  """Registers 'jaxlm' when lm-eval's registry is imported (now, if it already is)."""
  if REGISTRY in sys.modules:
    register(sys.modules[REGISTRY])
  elif not any(isinstance(f, _Watch) for f in sys.meta_path):
    sys.meta_path.insert(0, _Watch())


def _site_packages() -> Path:
  return Path(sysconfig.get_paths()['purelib'])


def main(argv: list[str]) -> int:
  if argv[1:] not in (['install'], ['remove']):
    print('usage: python -m jaxlm.lm_eval_plugin install|remove', file=sys.stderr)
    return 2
  path = _site_packages() / PTH
  if argv[1] == 'install':
    path.write_text(LINE)
    print(f'wrote {path}: lm_eval --model jaxlm works in this environment')
  else:
    path.unlink(missing_ok=True)
    print(f'removed {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
