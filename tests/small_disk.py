"""`python -m jaxlm.train` on a "disk" where every file write beyond 16 KiB fails (EFBIG),
as writes do when a disk fills up."""

import resource
import signal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

from jaxlm import train  # noqa: E402

train.command()
