"""Locations: a local path, or a Google Cloud Storage URL (gs://bucket/...) read and written through
`etils.epath`, the path library Orbax uses, with fsspec's gcsfs client (the `gcs` extra).

What works on a bucket: the workdir (checkpoints through Orbax and TensorStore; config, metrics,
TensorBoard events, eval results), text and JSONL sources, prepared datasets, and a SentencePiece
model. Two things need local files, so jaxlm keeps a local copy of them in its cache directory
(JAXLM_CACHE, default ~/.cache/jaxlm):

- ArrayRecord reads local files only. A prepared dataset on a bucket is read through a gcsfuse
  mount of its bucket when this host has one (`mounted`: each host then reads only the records of
  its own rows, by ranged reads); without one it is copied whole into the cache (data/staging.py)
  and read from there. `jaxlm.prepare --output=gs://...` prepares into the cache and uploads.
- Object storage cannot append: metrics.jsonl and TensorBoard's event files are written to a
  local mirror of the workdir and uploaded every 30 seconds (metrics.MetricWriter) and at close.

Without gcsfs a gs:// location is one sentence before anything is written; other schemes are
refused the same way. TensorFlow is not used for file access (EPATH_USE_TF=false by default):
importing it for every path costs seconds.
"""

import hashlib
import importlib
import os
import re
import secrets
import shutil
from pathlib import Path

from jaxlm.errors import UserError


def without_tensorflow() -> None:
  """Has etils.epath (and Orbax through it) read files without TensorFlow, unless EPATH_USE_TF
  says otherwise: importing it for every path costs seconds. Called before the first epath use
  (by the commands at start-up, by `path` and the Checkpointer), not at import."""
  os.environ.setdefault('EPATH_USE_TF', 'false')

SCHEMES = {'gs': 'gcsfs'}  # URL scheme -> the Python package that reads it


def is_url(value) -> bool:
  return '://' in str(value)


def check(name: str, value: str) -> None:
  """A URL must be gs:// and its client importable: else one sentence naming `name`."""
  if not is_url(value):
    return
  scheme = str(value).split('://', 1)[0]
  if scheme not in SCHEMES:
    raise UserError(f'{name}={value!r} uses the {scheme}:// scheme, which jaxlm does not read; '
                    'give a gs:// URL or a local (or mounted) path.')
  try:
    importlib.import_module(SCHEMES[scheme])
  except ImportError:
    raise UserError(f'{name}={value!r} needs the {SCHEMES[scheme]} package to reach {scheme}:// '
                    'paths; install it (pip install "jaxlm[gcs]") or give a local path.') from None


def check_local(name: str, value: str) -> None:
  """For locations that must be local files (a TFDS data_dir, a tokenizer being trained)."""
  if is_url(value):
    raise UserError(f'{name}={value!r} is a URL, but this location must be a local or mounted '
                    'path (gcsfuse, for instance).')


def path(value):
  """A pathlib.Path (with ~ expanded) for a local path, an epath.Path for a gs:// URL."""
  if is_url(value):
    without_tensorflow()
    from etils import epath  # pylint: disable=import-outside-toplevel
    return epath.Path(str(value))
  return Path(value).expanduser()


def cache_dir(*parts: str) -> Path:
  """A directory under jaxlm's local cache (JAXLM_CACHE, default ~/.cache/jaxlm), created."""
  root = Path(os.environ.get('JAXLM_CACHE') or '~/.cache/jaxlm').expanduser()
  directory = root.joinpath(*parts)
  directory.mkdir(parents=True, exist_ok=True)
  return directory


MOUNTS = '/proc/mounts'  # the mount table `mounted` reads


def mounted(url: str) -> Path | None:
  """Where gs://bucket/rest is on this host through a gcsfuse mount of the bucket (its mount
  table names the bucket as the source of a fuse.gcsfuse file system: `gcsfuse bucket dir`, and
  GKE's Cloud Storage FUSE CSI driver), or None."""
  if not str(url).startswith('gs://'):
    return None
  bucket, _, rest = str(url)[len('gs://'):].partition('/')
  try:
    with open(MOUNTS, encoding='utf-8', errors='replace') as table:
      lines = table.read().splitlines()
  except OSError:
    return None
  for line in lines:
    fields = line.split()
    if len(fields) >= 3 and fields[2] == 'fuse.gcsfuse' and fields[0] == bucket:
      point = re.sub(r'\\([0-7]{3})', lambda m: chr(int(m[1], 8)), fields[1])  # (\040: a space)
      return Path(point) / rest.strip('/')
  return None


def local_mirror(kind: str, url: str) -> Path:
  """The local directory (created) that stands for the bucket location `url` (see the module
  docstring)."""
  name = ''.join(c if c.isalnum() or c in '-_.' else '-' for c in str(url).rstrip('/')
                 .rsplit('/', 1)[-1])[:40] or 'root'
  return cache_dir(kind, f'{name}-{hashlib.sha256(str(url).encode()).hexdigest()[:12]}')


def local_dir(workdir) -> Path:
  """Where a run writes what must be local (metrics before upload, profiles, process logs): the
  workdir itself, or the local mirror of a workdir on a bucket."""
  return local_mirror('runs', workdir) if is_url(workdir) else Path(workdir).expanduser()


def copy(source, target) -> None:
  """Copies one file between any two locations, streaming. A GCS object appears whole or not at
  all; a local target is written to a temporary name and renamed, so it is never partial."""
  final = target
  if not is_url(target):
    target.parent.mkdir(parents=True, exist_ok=True)
    target = target.with_name(f'{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
  with source.open('rb') as src, target.open('wb') as dst:
    shutil.copyfileobj(src, dst, 16 * 2**20)
  if target is not final:
    os.replace(target, final)


def move(source, target) -> None:
  """Moves a file or directory (a local rename, or a copy and delete on a bucket)."""
  if not is_url(source):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    return
  import fsspec  # pylint: disable=import-outside-toplevel
  fs, _ = fsspec.core.url_to_fs(str(source))
  fs.mv(str(source), str(target), recursive=True)
