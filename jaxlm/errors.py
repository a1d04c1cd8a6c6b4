"""The one exception type for mistakes a user can fix.

A `UserError` carries one sentence that says what is wrong and what to change. The command-line
entry points print it without a traceback and exit with status 2; anything else is a bug and keeps
its traceback.
"""

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable


class UserError(Exception):
  """A bad config value, a missing file, an unusable checkpoint: something the user can fix."""


STOPPED = ('error: stopped by {} before the command finished; what was already saved is kept: '
           'run the same command again to resume (or redo) it.')


def invalid_field(field: str, value: Any, expected: str) -> UserError:
  """The one sentence for a config field outside what it allows."""
  return UserError(f'config field {field}={value!r} is invalid: expected {expected}.')


def exit_on_signals(before_exit: Callable[[], None] | None = None) -> None:
  """From now on SIGINT and SIGTERM end the process at once with one sentence and status
  128 + the signal's number (the training loop swaps in its own handler, which stops after a step
  with a checkpoint).

  Ending at once is safe outside the loop: everything jaxlm writes is written to a temporary name
  and renamed, so nothing already on disk is lost. Raising an exception instead would not be: it
  can land inside a garbage-collection callback, which ignores it, or leave threads behind.
  """
  if threading.current_thread() is not threading.main_thread():
    return

  def handler(signum, frame):
    del frame
    if before_exit is not None:
      before_exit()
    try:
      sys.stdout.flush()
    except (OSError, RuntimeError, ValueError):  # a write the signal interrupted
      pass
    os.write(2, (STOPPED.format(signal.Signals(signum).name) + '\n').encode())
    os._exit(128 + signum)
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, handler)


@contextlib.contextmanager
def _handling(handler: Callable[[int, Any], None]):
  """Inside: `handler` for SIGINT and SIGTERM (in the main thread; elsewhere nothing changes);
  the handlers in place before are restored afterwards."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  for s in previous:
    signal.signal(s, handler)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def exiting_with(cleanup: Callable[[], None]):
  """Inside: SIGINT and SIGTERM run `cleanup` (stop a pool of worker processes, say), print the
  one line of exit_on_signals and end the command with 128 + the signal's number through a
  normal interpreter exit (SystemExit), so that multiprocessing releases its semaphores. For a
  main thread that only waits on its workers there, where the exception can land safely."""

  def handler(signum, frame):
    del frame
    for s in (signal.SIGINT, signal.SIGTERM):  # a second signal while cleaning up changes nothing
      signal.signal(s, signal.SIG_IGN)
    cleanup()
    print(STOPPED.format(signal.Signals(signum).name), file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)
  return _handling(handler)


def stopping_children():
  """Inside: SIGINT and SIGTERM kill this process's child processes (the task processes of
  jaxlm.clean's stages), print the one line of exit_on_signals and end at once with 128 + the
  signal's number. A child forked inside inherits the handler and ends without a word (a Ctrl-C
  reaches the whole process group): one line in all."""
  parent = os.getpid()

  def handler(signum, frame):
    del frame
    if os.getpid() != parent:
      os._exit(128 + signum)
    import psutil  # pylint: disable=import-outside-toplevel
    for child in psutil.Process().children(recursive=True):
      with contextlib.suppress(psutil.Error):
        child.kill()
    os.write(2, (STOPPED.format(signal.Signals(signum).name) + '\n').encode())
    os._exit(128 + signum)
  return _handling(handler)


def recording_signals(record: Callable[[str], None]):
  """Inside: SIGTERM and SIGINT only call record(<the signal's name>) (the training loop stops
  after its step, with a checkpoint)."""
  return _handling(lambda signum, frame: record(signal.Signals(signum).name))


@contextlib.contextmanager
def interrupts_ignored():
  """Inside, SIGINT is ignored: processes started there inherit that (exec keeps it), so that a
  Ctrl-C, which reaches the whole process group, is handled by this process alone."""
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def worker_signals() -> None:
  """For a worker process of the data pipeline: SIGINT ignored (the process that started it
  stops it), SIGTERM its default action."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def reported():
  """Turns a UserError raised inside into `error: <sentence>` on stderr and exit status 2, and an
  interruption into one sentence and 128 + the signal's number."""
  try:
    yield
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except KeyboardInterrupt:  # a SIGINT before exit_on_signals was in place
    print(STOPPED.format('SIGINT'), file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGINT)
