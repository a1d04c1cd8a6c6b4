"""Documents from a SeqIO task or mixture ('seqio:<name>') or a TFDS dataset ('tfds:<name>').

The TensorFlow stack is an optional extra (`pip install 'jaxlm[seqio]'`), imported here and only
here, lazily. Each example is one document, its text in the feature named by the text field. The
source's `train` split trains; its `validation` split, when it has one, validates (otherwise
jaxlm.prepare holds documents out of the training split by its usual rule). A split is read in
its own shards (a TFDS split's files, a SeqIO task's source shards), each a chunk that a worker,
a job array's task or a Beam worker prepares; a SeqIO mixture is one chunk a split. SeqIO tasks are
registered by importing the module named by seqio_module. TFDS datasets are read from data_dir
(TFDS's default when empty) and never downloaded: a dataset that is not there is an error.
"""

import importlib
import os
from typing import Iterator

from jaxlm.errors import UserError

PREFIXES = ('seqio:', 'tfds:')
SPLITS = ('train', 'validation')


def is_tf_source(source: str) -> bool:
  return source.startswith(PREFIXES)


def _seqio_task(name: str, seqio_module: str):
  try:
    import seqio  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"the corpus 'seqio:{name}' needs SeqIO, an optional extra: "
                    "pip install 'jaxlm[seqio]'.") from None
  if seqio_module:
    try:
      importlib.import_module(seqio_module)
    except ImportError as e:
      raise UserError(f'cannot import the SeqIO module {seqio_module!r} ({e}); give the module '
                      'that registers the task (data.seqio_module or --seqio_module).') from None
  try:
    return seqio.get_mixture_or_task(name)
  except (KeyError, ValueError):
    raise UserError(f'no SeqIO task or mixture is registered as {name!r}; set data.seqio_module '
                    '(or --seqio_module) to the module that registers it.') from None


def _tfds_builder(name: str, data_dir: str):
  os.environ.setdefault('NO_GCE_CHECK', 'true')  # no metadata-server probe on an offline host
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"the corpus 'tfds:{name}' needs TensorFlow Datasets, an optional extra: "
                    "pip install 'jaxlm[seqio]'.") from None
  where = data_dir or 'the default TFDS data_dir'
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except  # DatasetNotFoundError and kin
    raise UserError(f'the TFDS dataset {name!r} is not available offline in {where} '
                    f'({type(e).__name__}); build it there first (jaxlm never downloads), or set '
                    'the TFDS data_dir (data.tfds_data_dir or --tfds_data_dir).') from None
  if not builder.is_prepared():
    raise UserError(f'the TFDS dataset {name!r} is not prepared in {where}; jaxlm never '
                    'downloads: build it there first, or set the TFDS data_dir '
                    '(data.tfds_data_dir or --tfds_data_dir).')
  return builder


def splits(source: str, seqio_module: str = '', data_dir: str = '') -> list[str]:
  """Which of train and validation the source has; it must have train."""
  kind, name = source.split(':', 1)
  if kind == 'seqio':
    have = _seqio_task(name, seqio_module).splits
  else:
    have = _tfds_builder(name, data_dir).info.splits
  if 'train' not in have:
    raise UserError(f'the {kind} source {name!r} has no train split (it has '
                    f'{sorted(have)}); give a source with one.')
  return [s for s in SPLITS if s in have]


def shards(source: str, split: str, seqio_module: str = '', data_dir: str = '') -> int:
  """How many shards a split is read in: a TFDS split's files, a SeqIO task's source shards
  (1 for a mixture, or a source that cannot say)."""
  kind, name = source.split(':', 1)
  if kind == 'tfds':
    return max(_tfds_builder(name, data_dir).info.splits[split].num_shards, 1)
  task_source = getattr(_seqio_task(name, seqio_module), 'source', None)  # (a mixture has none)
  try:
    return max(len(task_source.list_shards(split)), 1)
  except Exception:  # pylint: disable=broad-except  # (a source without a shard listing)
    return 1


def documents(source: str, split: str, feature: str, seqio_module: str = '',
              data_dir: str = '', shard: int = 0, shards: int = 1) -> Iterator[str]:
  """The text of each example of one split (of shard `shard` of `shards` of it), in order."""
  kind, name = source.split(':', 1)
  if kind == 'seqio':
    import seqio  # pylint: disable=import-outside-toplevel
    dataset = _seqio_task(name, seqio_module).get_dataset(
        split=split, shuffle=False, sequence_length=None,
        shard_info=seqio.ShardInfo(index=shard, num_shards=shards) if shards > 1 else None)
  else:
    part = f'{split}[{shard}shard:{shard + 1}shard]' if shards > 1 else split
    dataset = _tfds_builder(name, data_dir).as_dataset(split=part, shuffle_files=False)
  for example in dataset.as_numpy_iterator():
    if feature not in example:
      raise UserError(f'the {kind} source {name!r} has no feature {feature!r} (it has '
                      f'{sorted(example)}); set the text field (data.text_field or --text_field).')
    value = example[feature]
    if isinstance(value, bytes):
      try:
        value = value.decode('utf-8')
      except UnicodeDecodeError as e:
        raise UserError(f'the {kind} source {name!r} has a {feature!r} that is not UTF-8 text '
                        f'({e.reason} at byte {e.start}); give a feature of UTF-8 text.') from None
    if not isinstance(value, str):
      raise UserError(f'the {kind} source {name!r} feature {feature!r} is not text but '
                      f'{_described(value)} (a preprocessor may have tokenized it); set the text '
                      f'field (data.text_field or --text_field) to an untokenized feature'
                      f'{_text_features(example)}.')
    yield value


def _described(value) -> str:
  import numpy as np  # pylint: disable=import-outside-toplevel
  array = np.asarray(value)
  if array.ndim:
    return f'{array.dtype} values of shape {array.shape}'
  return f'a number ({array.dtype})'


def _text_features(example: dict) -> str:
  """The features of an example that hold text, as a hint."""
  text = sorted(k for k, v in example.items() if isinstance(v, (bytes, str)))
  if text:
    return ': ' + ', '.join(repr(k) for k in text)
  return (" (this one has none: keep the text in the task, as SeqIO's '<feature>_pretokenized' "
          'features do)')
