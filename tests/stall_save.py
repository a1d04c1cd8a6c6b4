"""`python -m jaxlm.train`, except that the save of step $JAXLM_TEST_STALL_SAVE never completes.

Orbax writes a step into a temporary directory and renames it at the end; this holds back that
rename, so a test can SIGKILL the process while the save is in flight.
"""

import asyncio
import os
import sys

from orbax.checkpoint._src.path import atomicity

STALL = os.environ['JAXLM_TEST_STALL_SAVE']
_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def finalize(self):
  if self._final_path.name == STALL:  # pylint: disable=protected-access
    print(f'stalling the save of step {STALL}', file=sys.stderr, flush=True)
    await asyncio.sleep(3600)
  return await _finalize(self)


atomicity.AtomicRenameTemporaryPath.finalize = finalize

from jaxlm import train  # noqa: E402  (after the patch)

train.command()
