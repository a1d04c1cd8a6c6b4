"""Cleaning recipes: an ordered list of named steps, each with its parameters, checked up front.

A recipe is an ml_collections config (configs/clean/*.py): `name`, `steps` (comma-separated, in
the order they run) and one field per step with its parameters. The steps:

  extract            trafilatura on the HTML of web-archive records (datatrove's Trafilatura)
  language           fastText language identification from a model file (lid.176 or GlotLID)
  gopher_repetition  datatrove's GopherRepetitionFilter
  gopher_quality     datatrove's GopherQualityFilter
  c4_quality         datatrove's C4QualityFilter (drops lines, then documents)
  c4_paragraphs      datatrove's C4ParagraphFilter
  fineweb_quality    datatrove's FineWebQualityFilter
  regex              datatrove's RegexFilter (regex_exp: documents that match are removed)
  ftfy               datatrove's FTFYFormatter (Unicode repair)
  pii                datatrove's PIIFormatter (e-mail and IP addresses)
  symbol_lines       datatrove's SymbolLinesFormatter
  exact_dedup        the same text twice
  minhash            near duplicates: datatrove's MinHash signatures, LSH buckets and clusters
  decontaminate      documents sharing an n-gram with an evaluation task (--decontaminate)

Each parameter is checked against the datatrove class it is passed to, so a misspelt one is an
error before anything runs, not a surprise in a worker.
"""

import dataclasses
import inspect
from typing import Any, Callable

from ml_collections import ConfigDict

from jaxlm.errors import UserError

DEDUP = ('exact_dedup', 'minhash')  # steps that compare documents with each other


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of a recipe: its name (the recipe's field) and its parameters."""
  name: str
  params: dict

  @property
  def is_dedup(self) -> bool:
    return self.name in DEDUP


def _classes() -> dict[str, Callable]:
  """The datatrove class behind each document-by-document step (imported when a recipe is read)."""
  # pylint: disable=import-outside-toplevel
  from datatrove.pipeline import filters, formatters
  from datatrove.pipeline.extractors import Trafilatura
  return dict(extract=Trafilatura, gopher_repetition=filters.GopherRepetitionFilter,
              gopher_quality=filters.GopherQualityFilter, c4_quality=filters.C4QualityFilter,
              c4_paragraphs=filters.C4ParagraphFilter,
              fineweb_quality=filters.FineWebQualityFilter, regex=filters.RegexFilter,
              ftfy=formatters.FTFYFormatter, pii=formatters.PIIFormatter,
              symbol_lines=formatters.SymbolLinesFormatter)


# The parameters of the steps that jaxlm assembles itself, with their defaults.
OWN_PARAMS = {
    'language': dict(model='', languages='en', language_threshold=0.65),
    'exact_dedup': {},
    'minhash': dict(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1),
    'decontaminate': dict(n_grams=13, find_query_ngrams=True),
}
NAMES = ('extract', 'language', 'gopher_repetition', 'gopher_quality', 'c4_quality',
         'c4_paragraphs', 'fineweb_quality', 'regex', 'ftfy', 'pii', 'symbol_lines',
         'exact_dedup', 'minhash', 'decontaminate')
# Parameters jaxlm sets itself (where removed documents go; their language is English).
_RESERVED = ('exclusion_writer', 'self', 'kwargs')


def parameters(name: str) -> dict[str, Any]:
  """The parameters a step takes, with their defaults (inspect.Parameter.empty: required)."""
  if name in OWN_PARAMS:
    return dict(OWN_PARAMS[name])
  signature = inspect.signature(_classes()[name].__init__)
  found = {p.name: p.default for p in signature.parameters.values()
           if p.name not in _RESERVED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
  return {**found, **_DEFAULTS.get(name, {})}


# Where jaxlm's default differs from datatrove's (see _check_values).
_DEFAULTS = {'extract': dict(deduplicate=False)}


def minhash_threshold(num_buckets: int, hashes_per_bucket: int) -> float:
  """The Jaccard similarity at which two documents share a band with probability 1/2 (the usual
  approximation (1/b)^(1/r) is close; this solves 1 - (1 - s^r)^b = 1/2 exactly)."""
  return (1 - 0.5 ** (1 / num_buckets)) ** (1 / hashes_per_bucket)


def read(recipe: ConfigDict, decontaminate: tuple[str, ...] = ()) -> tuple[str, list[Step]]:
  """The recipe's name and its steps in order; one sentence for an unknown step or parameter.
  --decontaminate adds the step `decontaminate` at the end unless the recipe has it."""
  values = recipe.to_dict()
  name = values.pop('name', '') or 'unnamed'
  order = [s.strip() for s in str(values.pop('steps', '')).split(',') if s.strip()]
  if decontaminate and 'decontaminate' not in order:
    order.append('decontaminate')
  if not order:
    raise UserError('the recipe has no steps; set recipe.steps to a comma-separated list of '
                    f'steps ({", ".join(NAMES)}).')
  steps = []
  for step in order:
    if step not in NAMES:
      raise UserError(f'the recipe names an unknown step {step!r} in recipe.steps; the steps are '
                      f'{", ".join(NAMES)}.')
    if order.count(step) > 1:
      raise UserError(f'the recipe names the step {step!r} twice in recipe.steps; a step runs '
                      'once (give its parameters in recipe.' + step + ').')
    given = values.get(step) or {}
    if not isinstance(given, dict):
      raise UserError(f'recipe.{step} is {given!r}; it holds the parameters of the step, a '
                      'ConfigDict (empty for the defaults).')
    known = parameters(step)
    for key in given:
      if key not in known:
        raise UserError(f'recipe.{step} has an unknown parameter {key!r}; {step} takes '
                        f'{", ".join(sorted(known)) or "no parameters"}.')
    missing = [k for k, v in known.items() if v is inspect.Parameter.empty and k not in given]
    if missing:
      raise UserError(f'recipe.{step} needs {", ".join(missing)}; set it in the recipe or with '
                      f'--recipe.{step}.{missing[0]}=...')
    params = {k: _plain(v) for k, v in {**known, **given}.items()
              if v is not inspect.Parameter.empty}
    steps.append(Step(step, params))
  unused = sorted(set(values) - set(order) - set(NAMES))
  if unused:
    raise UserError(f'the recipe has a field {unused[0]!r} that is no step; the steps are '
                    f'{", ".join(NAMES)}.')
  for step in steps:
    _check_values(step)
  return name, steps


def _plain(value):
  """Defaults and config values as JSON keeps them (tuples as lists, enums as their value)."""
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _check_values(step: Step) -> None:
  p = step.params
  if step.name == 'minhash':
    for key in ('n_grams', 'num_buckets', 'hashes_per_bucket'):
      if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 1:
        raise UserError(f'recipe.minhash.{key}={p[key]!r} is invalid: expected a whole number '
                        '>= 1.')
  if step.name == 'decontaminate' and (not isinstance(p['n_grams'], int) or p['n_grams'] < 1):
    raise UserError(f'recipe.decontaminate.n_grams={p["n_grams"]!r} is invalid: expected a '
                    'whole number >= 1 (13 is GPT-3\'s).')
  if step.name == 'extract' and p.get('deduplicate'):
    raise UserError('recipe.extract.deduplicate=True makes trafilatura drop the paragraphs it has '
                    'seen earlier in the same process, so what is kept would depend on how the '
                    'pages are split into tasks; set it False (exact_dedup and minhash remove '
                    'duplicates).')
  if step.name == 'language':
    threshold = p['language_threshold']
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
      raise UserError(f'recipe.language.language_threshold={threshold!r} is invalid: expected '
                      'a score in [0, 1].')


def describe(step: Step) -> str:
  """One line per step for --dry_run and the report."""
  p = step.params
  if step.name == 'minhash':
    s = minhash_threshold(p['num_buckets'], p['hashes_per_bucket'])
    return (f'minhash: {p["n_grams"]}-word shingles, {p["num_buckets"]} bands x '
            f'{p["hashes_per_bucket"]} hashes: pairs with Jaccard similarity {s:.2f} are found '
            'half of the time')
  changed = ', '.join(f'{k}={v!r}' for k, v in p.items())
  return f'{step.name}' + (f': {changed}' if changed else '')
