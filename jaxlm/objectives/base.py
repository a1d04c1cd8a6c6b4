"""What every training objective is: one class, a value the builder hands to the step.

An objective owns everything that differs between objectives, so that the step, the trainer,
evaluation and the commands ask it instead of comparing names:

- its settings' allowed values (`choices`, `ranges`) and config checks (`check`, no JAX: a bad
  config fails in well under a second), the ids it reserves past the tokenizer's vocabulary, the
  window of tokens a data row gives it, and the settings a resumed run must keep
  (`resume_fields`);
- inside the jitted step, how a training batch of plain token rows becomes what the model reads
  (`train_batch`: keys from fold_in(seed, step) and each row's global index, so the draws do not
  depend on the mesh, the hosts or gradient accumulation, and a resumed run repeats them);
- how an evaluation batch is scored (`eval_views`: one or more named batches from the same rows,
  drawn from a fixed seed so that every checkpoint is scored on the same tokens), and what
  validation and jaxlm.eval report of the sums (`report`);
- what the model must read (`reads`: 'causal' left to right, 'bidirectional' both ways, or
  'prefix', an input read whole and a continuation predicted; a model family says which it can,
  families.Family.reads), whether its model continues text (`generates`: samples,
  jaxlm.generate, BLEU, export-hf, the decode benchmark), and whether it is a prefix LM
  (`prefix_lm`: its batches carry `prefix`, each row's input length, and a prompt is generated
  from as a whole input).

A new objective is one module with one subclass, and one line in objectives/__init__.py's REGISTRY.
Shape letters: B batch, L length.
"""

from typing import Any, Callable, ClassVar, NamedTuple

from etils import epy
from ml_collections import ConfigDict

with epy.lazy_imports():
  import jax

Batch = dict[str, Any]  # [B, L] arrays: inputs, targets, mask (and segment_ids, positions, ...)


class Vocab(NamedTuple):
  """What an objective (and the step) needs of the tokenizer and of the data."""
  size: int  # its ids are 0 .. size - 1; the objective's reserved ids come after
  eos: int | None = None  # end-of-sequence: ends span corruption's input and target
  start: int | None = None  # what each document starts with (never masked)
  word_starts: Any = None  # bool [size]: the ids that begin a word (whole-word masking)
  frequencies: Any = None  # float64 [size]: each id's share of the training tokens, if counted

  @classmethod
  def of(cls, tokenizer, frequencies=None) -> 'Vocab':
    # pylint: disable-next=import-outside-toplevel
    from jaxlm.data.tokenizers import document_start, word_starts
    return cls(tokenizer.vocab_size, tokenizer.eos_id, document_start(tokenizer),
               word_starts(tokenizer), frequencies)


class Objective:
  """The default, next-token prediction on plain rows; subclasses change what they need."""
  name: ClassVar[str]
  section: ClassVar[str] = ''  # its config section (mlm, span, fim), if it has settings
  resume_fields: ClassVar[tuple[str, ...]] = ()  # of the section: a resume may not change them
  # Its settings' allowed values, checked by config.validate with every other field's:
  choices: ClassVar[dict[str, tuple]] = {}  # field -> the values allowed
  ranges: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {}  # field -> (ok, expected)
  reads: ClassVar[str] = 'causal'  # what its model must read: causal, bidirectional or prefix
  generates: ClassVar[bool] = True  # its model continues a prompt
  prefix_lm: ClassVar[bool] = False  # its batches carry `prefix` [B, 1]: the rows' input lengths
  every_token: ClassVar[bool] = True  # its evaluation scores every token (bits per byte)
  eval_rows: ClassVar[bool] = False  # its evaluation batches carry each row's index and extent

  def __init__(self, cfg: ConfigDict, vocab: Vocab, model_vocab: int):
    """cfg: the run's config; vocab: the tokenizer's; model_vocab: the model's ids (the
    tokenizer's, the reserved ids after them, rounded up). Subclasses keep what they need."""
    del vocab, model_vocab
    self.seed = cfg.seed

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    """Raises UserError, in one sentence, if `cfg` cannot train this objective."""

  @classmethod
  def reserved_ids(cls, cfg: ConfigDict) -> int:
    """Ids it needs past the tokenizer's vocabulary (the model's must hold them)."""
    del cfg
    return 0

  @classmethod
  def window_length(cls, cfg: ConfigDict) -> int:
    """The tokens a data row gives as inputs (one more is its last target)."""
    return cfg.model.max_seq_len

  def train_batch(self, batch: Batch, key: 'jax.Array', step: 'jax.Array',
                  rows: 'jax.Array') -> tuple[Batch, dict[str, 'jax.Array']]:
    """Inside the train step, before the micro-batch split: a batch of data rows -> what the
    model reads and is scored on, and metrics of its own. key: fold_in(seed, step); rows [B]:
    each row's global index."""
    del key, step, rows
    return batch, {}

  def eval_views(self, batch: Batch) -> dict[str, Batch]:
    """An evaluation batch of data rows -> the batches scored, by name: '' is the loss validation
    and jaxlm.eval report as `loss`; another name n adds `n_loss` and `n_tokens`."""
    return {'': batch}

  def report(self, result: dict[str, float], text_bytes: int) -> dict[str, float]:
    """What jaxlm.eval reports of a stream's sums (`loss`, `perplexity`, `tokens`, `nats`, and
    each view's): bits per byte when every token was scored (`every_token`), which it needs."""
    from jaxlm.evaluation import bits_per_byte  # pylint: disable=import-outside-toplevel
    result = dict(result)
    nats = result.pop('nats')
    if self.every_token:
      result['bits_per_byte'] = bits_per_byte(nats, text_bytes)
      result['bytes'] = text_bytes
    return result


def windows(batch: Batch) -> 'jax.Array':
  """A batch's rows as the token windows they were cut from: [B, L + 1], the inputs and the last
  target (what span corruption and FIM rearrange)."""
  return jax.numpy.concatenate([batch['inputs'], batch['targets'][:, -1:]], axis=1)


def stream_key(key: 'jax.Array', name: str) -> 'jax.Array':
  """key folded with a fixed 24-bit id of `name` (its first three bytes): an objective's draws
  get a stream of their own, sharing no bits with dropout's key or another objective's."""
  return jax.random.fold_in(key, int.from_bytes(name.encode()[:3].ljust(3, b'\0'), 'big'))
