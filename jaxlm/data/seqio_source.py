"""Text from a SeqIO task or mixture (and through it TFDS): `data.corpus = 'seqio:<name>'`.

The TensorFlow stack is an optional extra (`pip install 'jaxlm[seqio]'`), imported here and only
here, lazily. The task's `train` and `validation` splits give the training and validation text
(a task without a validation split is split by data.val_fraction like a text file); the feature
named by data.seqio_feature holds the text, and each example is one document. Tasks are
registered by importing the Python module named in data.seqio_module.
"""

import importlib

from ml_collections import ConfigDict

from jaxlm.errors import UserError

PREFIX = 'seqio:'


def is_seqio(corpus: str) -> bool:
  return corpus.startswith(PREFIX)


def load_texts(data_cfg: ConfigDict) -> dict[str, list[str]]:
  """{'train': [...], 'validation': [...]} (validation only if the task has it)."""
  name = data_cfg.corpus[len(PREFIX):]
  try:
    import seqio  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f'data.corpus={data_cfg.corpus!r} needs SeqIO, an optional extra: '
                    "pip install 'jaxlm[seqio]'.") from None
  if data_cfg.seqio_module:
    try:
      importlib.import_module(data_cfg.seqio_module)
    except ImportError as e:
      raise UserError(f'cannot import data.seqio_module={data_cfg.seqio_module!r} ({e}); give '
                      'the module that registers the SeqIO task.') from None
  try:
    task = seqio.get_mixture_or_task(name)
  except (KeyError, ValueError):
    raise UserError(f'no SeqIO task or mixture is registered as {name!r}; set data.seqio_module '
                    'to the module that registers it.') from None
  texts = {}
  for split in ('train', 'validation'):
    if split not in task.splits:
      continue
    dataset = task.get_dataset(split=split, shuffle=False, sequence_length=None)
    texts[split] = [_text(example, data_cfg.seqio_feature, name)
                    for example in dataset.as_numpy_iterator()]
  if not texts.get('train'):
    raise UserError(f'the SeqIO task {name!r} has no training examples.')
  return texts


def _text(example: dict, feature: str, name: str) -> str:
  if feature not in example:
    raise UserError(f'the SeqIO task {name!r} has no feature {feature!r} (it has '
                    f'{sorted(example)}); set data.seqio_feature.')
  value = example[feature]
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)
