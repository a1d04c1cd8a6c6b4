"""The checkpointer's own quieting of Orbax is scoped to its lifetime, and drops only Orbax's."""

import logging
import sys

from absl import logging as absl_logging

from jaxlm import checkpoint


def _filters():
  return [f for f in absl_logging.get_absl_logger().filters
          if isinstance(f, checkpoint._NoOrbaxTracebacks)]


def _record(filename):
  try:
    raise RuntimeError('boom')
  except RuntimeError:
    record = logging.LogRecord('x', logging.ERROR, filename, 1, 'failed', None, sys.exc_info())
  return record


def test_quieting_exists_only_while_a_checkpointer_is_open(tmp_path):
  assert not _filters()  # importing jaxlm changed nothing
  if checkpoint._Quiet.previous_hook is None:  # (no Checkpointer yet in this process)
    assert sys.unraisablehook is not checkpoint._quiet_abandoned_reads
  a = checkpoint.Checkpointer(tmp_path / 'a', keep=1, async_save=False)
  b = checkpoint.Checkpointer(tmp_path / 'b', keep=1, async_save=False)
  assert len(_filters()) == 1 and sys.unraisablehook is checkpoint._quiet_abandoned_reads
  a.close()
  assert len(_filters()) == 1  # b is still open
  b.close()
  b.close()  # closing twice is harmless and does not unbalance the count
  assert not _filters()


def test_the_unraisable_hook_drops_only_orbaxs_abandoned_reads(monkeypatch):
  seen = []
  monkeypatch.setattr(checkpoint._Quiet, 'previous_hook', seen.append)

  class Unraisable:
    def __init__(self, exc, obj=None):
      self.exc_value, self.object = exc, obj
  checkpoint._quiet_abandoned_reads(Unraisable(RuntimeError('Event loop is closed')))
  checkpoint._quiet_abandoned_reads(Unraisable(ValueError('a real error')))
  assert [str(u.exc_value) for u in seen] == ['a real error']


def test_only_records_from_orbax_are_dropped():
  quiet = checkpoint._NoOrbaxTracebacks()
  assert quiet.filter(_record(__file__))  # an error of anyone else's shows
  orbax_file = '/site-packages/orbax/checkpoint/async_checkpointer.py'
  assert not quiet.filter(_record(orbax_file))
  assert quiet.filter(logging.LogRecord('x', logging.INFO, orbax_file, 1, 'saved', None, None))
  # asyncio's copy of an abandoned array read's error, whose frames are the reads' own
  for reader in ('/site-packages/jax/experimental/array_serialization/serialization.py',
                 '/site-packages/tensorstore/__init__.py'):
    assert not quiet.filter(_record(reader))
  assert quiet.filter(_record('/site-packages/jax/_src/api.py'))
  # asyncio's copy of an abandoned TensorStore future's error: native code, so only asyncio's
  # own frames (a frame of anyone else's keeps it)
  asyncio = '/lib/python3.11/asyncio/'
  code = compile('def wrap():\n  try:\n    raise ValueError("torn")\n  except ValueError:\n'
                 '    return sys.exc_info()\n', asyncio + 'tasks.py', 'exec')
  scope = {'sys': sys}
  exec(code, scope)  # pylint: disable=exec-used
  never = lambda exc_info: logging.LogRecord('asyncio', logging.ERROR, asyncio + 'base_events.py',
                                             1, 'Task exception was never retrieved', None,
                                             exc_info)
  assert not quiet.filter(never(scope['wrap']()))
  assert quiet.filter(never(_record(__file__).exc_info))
