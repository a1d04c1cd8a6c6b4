"""The training objectives, by train.objective: each a class in a module of its own (see base.py
for what an objective owns). Adding one is a module and a line in REGISTRY."""

from ml_collections import ConfigDict

from jaxlm.objectives.base import Batch, Objective, Vocab
from jaxlm.objectives.causal import Causal
from jaxlm.objectives.fim import FillInTheMiddle
from jaxlm.objectives.mlm import MaskedLM
from jaxlm.objectives.prefix import PrefixLM
from jaxlm.objectives.span import SpanCorruption

REGISTRY: dict[str, type[Objective]] = {
    cls.name: cls for cls in (Causal, MaskedLM, SpanCorruption, FillInTheMiddle, PrefixLM)}


def of(cfg: ConfigDict) -> type[Objective]:
  """The objective of a run's config (configs older than train.objective are causal)."""
  return REGISTRY[cfg.train.get('objective', 'causal')]


def make(cfg: ConfigDict, vocab: Vocab, model_vocab: int) -> Objective:
  """The objective of `cfg` for a tokenizer `vocab` and a model of `model_vocab` ids."""
  return of(cfg)(cfg, vocab, model_vocab)


def generating() -> str:
  """The objectives whose models continue a prompt, for error messages."""
  names = [repr(name) for name, cls in REGISTRY.items() if cls.generates]
  return ', '.join(names[:-1]) + ' or ' + names[-1]


def reserved_ids(cfg: ConfigDict) -> int:
  return of(cfg).reserved_ids(cfg)


def window_length(cfg: ConfigDict) -> int:
  return of(cfg).window_length(cfg)


__all__ = ['REGISTRY', 'Batch', 'Objective', 'Vocab', 'generating', 'make', 'of', 'reserved_ids',
           'window_length']
