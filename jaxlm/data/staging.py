"""Prepared datasets on a bucket. ArrayRecord reads local files only, so a gs:// dataset is read
through a local copy in jaxlm's cache (paths.local_mirror), and `prepare_to` a gs:// output
prepares in that same local directory and then uploads.

The bucket's manifest.json decides: a local copy whose manifest has the same bytes is used as it
is; otherwise every file the manifest names is copied again, the manifest last (a copy killed
half-way has no manifest, so it is never used). Uploads are ordered the same way: settings.json
first, so that a different preparation is never written into that location, the manifest last.
A lock file serialises processes of one host that stage the same dataset.
"""

import contextlib
import fcntl
import json
import shutil
from pathlib import Path

from jaxlm import paths
from jaxlm.data.prepare import SPLITS, Settings, prepare, settings_record
from jaxlm.data.tokenizers import TOKENIZER_FILES, atomic_write
from jaxlm.errors import UserError


@contextlib.contextmanager
def _locked(local: Path):
  with open(local.with_name(local.name + '.lock'), 'a', encoding='utf-8') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
    yield


def _read(path) -> bytes | None:
  try:
    return path.read_bytes()
  except FileNotFoundError:
    return None


def dataset_files(manifest: dict) -> list[str]:
  """The files a reader needs, relative to the dataset directory, the manifest not included."""
  names = [TOKENIZER_FILES[manifest['tokenizer']['kind']]] if (
      manifest['tokenizer']['kind'] in TOKENIZER_FILES) else []
  names = [f'tokenizer/{n}' for n in names]
  for split in SPLITS:
    names += manifest['splits'][split]['shards'] + manifest['splits'][split]['lengths']
  if 'token_counts' in manifest:  # (preparations before token counts have none)
    names.append(manifest['token_counts'])
  return names


def local_copy(url: str) -> Path:
  """The local copy of the prepared dataset at `url`, made or refreshed first if needed."""
  remote = paths.path(url)
  raw = _read(remote / 'manifest.json')
  if raw is None:
    raise UserError(f'{url} is not a prepared dataset (it has no manifest.json); prepare it with '
                    f'python -m jaxlm.prepare --output={url}, or finish that run.')
  local = paths.local_mirror('prepared', url)
  with _locked(local):
    if _read(local / 'manifest.json') == raw:
      return local
    try:
      names = dataset_files(json.loads(raw))
    except (ValueError, KeyError, TypeError):
      raise UserError(f'{url}/manifest.json is not a jaxlm manifest; prepare the data '
                      'again.') from None
    (local / 'manifest.json').unlink(missing_ok=True)
    print(f'Copying the prepared dataset {url} to {local} (ArrayRecord reads local files)',
          flush=True)
    for name in names:
      if not (remote / name).exists():
        raise UserError(f'{url}/{name} is missing from the prepared dataset {url}; run '
                        'jaxlm.prepare again with the same flags to complete it.')
      paths.copy(remote / name, local / name)
    atomic_write(local / 'manifest.json', raw)
  return local


def prepare_to(s: Settings, output: str, workers: int = 0, progress: bool = True) -> dict:
  """jaxlm.prepare into `output`, a local directory or a gs:// URL (see the module docstring)."""
  if not paths.is_url(output):
    return prepare(s, Path(output), workers, progress)
  remote = paths.path(output)
  wanted = settings_record(s)
  settings = _read(remote / 'settings.json')
  if settings is not None and json.loads(settings) != wanted:
    raise UserError(f'{output} already holds a preparation with other settings (see '
                    f'{output}/settings.json); give a new --output, or the same settings to '
                    'resume it.')
  raw = _read(remote / 'manifest.json')
  if settings is not None and raw is not None:
    return json.loads(raw)  # done before
  local = paths.local_mirror('prepared', output)
  with _locked(local):
    old = _read(local / 'settings.json')
    if old is not None and json.loads(old) != wanted:
      shutil.rmtree(local)  # left by another preparation for this URL, which never finished
    manifest = prepare(s, local, workers, progress)
    paths.copy(local / 'settings.json', remote / 'settings.json')
    for name in dataset_files(manifest):
      paths.copy(local / name, remote / name)
    paths.copy(local / 'manifest.json', remote / 'manifest.json')
  return manifest
