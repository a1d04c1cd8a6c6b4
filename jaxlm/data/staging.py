"""Prepared datasets on a bucket. ArrayRecord reads local files only, so a gs:// dataset that no
gcsfuse mount serves (paths.mounted) is read through a local copy in jaxlm's cache
(paths.local_mirror), and `prepare_to` a gs:// output prepares in that same local directory and
then uploads.

The steps of a preparation across machines (`plan`, `task`, `finalize`, used by jaxlm.prepare's
--plan/--task/--finalize and by the Beam pipeline) take a local directory or a gs:// location.
On a bucket, the plan is made locally and uploaded (settings.json first); a task copies the plan
and the tokenizer down, prepares each chunk locally, uploads it (its record last: the mark of a
complete chunk) and deletes the local copy; finalize reads the records on the bucket and writes
the token counts and the manifest there.

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
from jaxlm.data import prepare as steps
from jaxlm.data.chunk import SPLITS, Settings, complete, shard_path
from jaxlm.data.prepare import PLAN, prepare, settings_record
from jaxlm.data.sources import Chunk
from jaxlm.data.tokenizers import TOKENIZER_FILES, Tokenizer, atomic_write, open_tokenizer
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
    print(f'Copying the prepared dataset {url} to {local} (ArrayRecord reads local files; '
          'with a gcsfuse mount of the bucket, each host would read only its share)', flush=True)
    for name in names:
      if not (remote / name).exists():
        raise UserError(f'{url}/{name} is missing from the prepared dataset {url}; run '
                        'jaxlm.prepare again with the same flags to complete it.')
      paths.copy(remote / name, local / name)
    for name in sorted(set(_tokenizer_files(remote)) - set(names)):  # (a Hugging Face
      paths.copy(remote / name, local / name)  # tokenizer's config: its end-of-sequence choice)
    atomic_write(local / 'manifest.json', raw)
  return local


def _check_remote_settings(s: Settings, output: str) -> bytes | None:
  """The bucket's settings.json, which must be the settings of `s` (or absent)."""
  settings = _read(paths.path(output) / 'settings.json')
  if settings is not None and json.loads(settings) != settings_record(s):
    raise UserError(f'{output} already holds a preparation with other settings (see '
                    f'{output}/settings.json); give a new --output, or the same settings to '
                    'resume it.')
  return settings


def _fresh_mirror(s: Settings, local: Path) -> None:
  """Clears a local mirror left by another preparation for the same URL that never finished."""
  old = _read(local / 'settings.json')
  if old is not None and json.loads(old) != settings_record(s):
    shutil.rmtree(local)
    local.mkdir(parents=True)


def prepare_to(s: Settings, output: str, workers: int = 0, progress: bool = True) -> dict:
  """jaxlm.prepare into `output`, a local directory or a gs:// URL (see the module docstring)."""
  if not paths.is_url(output):
    return prepare(s, Path(output), workers, progress)
  remote = paths.path(output)
  settings = _check_remote_settings(s, output)
  raw = _read(remote / 'manifest.json')
  if settings is not None and raw is not None:
    return json.loads(raw)  # done before
  local = paths.local_mirror('prepared', output)
  with _locked(local):
    _fresh_mirror(s, local)
    manifest = prepare(s, local, workers, progress)
    # Everything a preparation holds, as the steps across machines leave it: settings first,
    # manifest last.
    names = sorted(str(p.relative_to(local)) for p in local.rglob('*') if p.is_file())
    names = [n for n in names if n not in ('settings.json', 'manifest.json')]
    for name in ['settings.json', *names, 'manifest.json']:
      paths.copy(local / name, remote / name)
  return manifest


def _tokenizer_files(directory) -> list[str]:
  """The files of a preparation's tokenizer/ directory (a Hugging Face tokenizer's config too)."""
  folder = directory / 'tokenizer'
  return sorted(f'tokenizer/{p.name}' for p in folder.iterdir()) if folder.exists() else []


def plan(s: Settings, output: str) -> list[Chunk]:
  """The first step: settings, tokenizer and plan.json in `output` (made locally and uploaded, the
  settings first and the plan last, for a bucket)."""
  if not paths.is_url(output):
    return steps.make_plan(s, Path(output))
  _check_remote_settings(s, output)
  remote, local = paths.path(output), paths.local_mirror('prepared', output)
  with _locked(local):
    _fresh_mirror(s, local)
    chunks = steps.make_plan(s, local)
    for name in ['settings.json', *_tokenizer_files(local), PLAN]:
      paths.copy(local / name, remote / name)
  return chunks


def planned(s: Settings, output: str) -> tuple[Path, list[Chunk], Tokenizer]:
  """The local directory a task or finalize step works in, the plan's chunks and its tokenizer:
  for a bucket, its local mirror, where the plan and the tokenizer are copied down first."""
  if not paths.is_url(output):
    chunks = steps.read_plan(s, Path(output))
    return Path(output), chunks, open_tokenizer(Path(output) / 'tokenizer', s.tokenizer)
  _check_remote_settings(s, output)  # (before the local mirror of another one is cleared)
  remote, local = paths.path(output), paths.local_mirror('prepared', output)
  with _locked(local):
    if _read(remote / PLAN) is None:
      raise UserError(f'{output} has no chunk plan ({PLAN}); run the same command with --plan '
                      'first (once, before the tasks).')
    _fresh_mirror(s, local)
    for name in ['settings.json', *_tokenizer_files(remote), PLAN]:
      paths.copy(remote / name, local / name)
  return local, steps.read_plan(s, local), open_tokenizer(local / 'tokenizer', s.tokenizer)


def upload_chunk(local: Path, output: str, index: int) -> None:
  """A chunk prepared in `local` copied to the bucket, its record last, then deleted locally."""
  remote = paths.path(output)
  names = [shard_path(local, split, index, suffix).name for split in SPLITS
           for suffix in ('.arrayrecord', '.lengths.npy')]
  names += [f'chunks/{index:05d}.counts.npy', f'chunks/{index:05d}.json']
  for name in names:
    paths.copy(local / name, remote / name)
  for name in names:
    (local / name).unlink(missing_ok=True)


def task(s: Settings, output: str, i: int, n: int, workers: int = 0,
         progress: bool = True) -> list[Chunk]:
  """Task i of n: prepares the chunks whose index is i modulo n, those not complete yet."""
  local, chunks, _ = planned(s, output)
  mine = steps.task_chunks(chunks, i, n)
  if not paths.is_url(output):
    steps.run_chunks(s, local, mine, workers, progress)
    return mine
  todo = [c for c in mine if complete(output, c) is None]
  steps.run_chunks(s, local, todo, workers, progress,
                   done=lambda record: upload_chunk(local, output, record['chunk']['index']))
  return mine


def finalize(s: Settings, output: str) -> dict:
  """The last step: checks every chunk of the plan and writes the manifest (see
  prepare.finalize), in `output` itself, local or on a bucket."""
  _, chunks, tok = planned(s, output)
  return steps.finalize(s, output, chunks, tok)
