"""Loaders of the example tasks' data (lm-eval `custom_dataset` functions): the JSONL files
beside this module, read offline, as a `test` split."""

import json
from pathlib import Path

HERE = Path(__file__).parent


def _load(name: str, **kwargs):
  del kwargs  # lm-eval passes the task's metadata
  import datasets  # pylint: disable=import-outside-toplevel
  rows = [json.loads(line) for line in (HERE / name).read_text(encoding='utf-8').splitlines()]
  return datasets.DatasetDict({'test': datasets.Dataset.from_list(rows)})


def cloze(**kwargs):
  return _load('cloze.jsonl', **kwargs)


def last_word(**kwargs):
  return _load('last_word.jsonl', **kwargs)


def speeches(**kwargs):
  return _load('speeches.jsonl', **kwargs)


def continuation(**kwargs):
  return _load('continue.jsonl', **kwargs)


def rolling_results(doc, results):
  """wikitext's: the summed log-likelihood with the text's words and bytes, for lm-eval's
  word_perplexity, byte_perplexity and bits_per_byte."""
  import re  # pylint: disable=import-outside-toplevel
  (loglikelihood,) = results
  words = len(re.split(r'\s+', doc['page']))
  n_bytes = len(doc['page'].encode('utf-8'))
  return {'word_perplexity': (loglikelihood, words), 'byte_perplexity': (loglikelihood, n_bytes),
          'bits_per_byte': (loglikelihood, n_bytes)}
