"""The one exception type for mistakes a user can fix.

A `UserError` carries one sentence that says what is wrong and what to change. The command-line
entry points print it without a traceback and exit with status 2; anything else is a bug and keeps
its traceback.
"""

import contextlib
import sys


class UserError(Exception):
  """A bad config value, a missing file, an unusable checkpoint: something the user can fix."""


@contextlib.contextmanager
def reported():
  """Turns a UserError raised inside into `error: <sentence>` on stderr and exit status 2."""
  try:
    yield
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
