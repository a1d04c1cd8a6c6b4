"""The minimal cleaning recipe: repair broken Unicode, then remove exact and near duplicates.

  python -m jaxlm.clean --input='corpus/*.jsonl.gz' --output=clean/corpus \
      --recipe=configs/clean/minimal.py [--recipe.minhash.num_buckets=20]

A recipe is an ordered list of steps (`steps`, comma-separated) and one field per step holding its
parameters; `python -m jaxlm.clean --helpfull` and jaxlm/clean/recipe.py list every step.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  r = ConfigDict()
  r.name = 'minimal'
  r.steps = 'ftfy,exact_dedup,minhash'
  r.ftfy = ConfigDict()  # datatrove's FTFYFormatter with its defaults: mojibake repaired
  r.exact_dedup = ConfigDict()  # the same text twice: the first in input order is kept
  # Near duplicates: 5-word shingles, 14 bands of 8 hashes (112 MinHashes). Two documents land in
  # one band with probability 1 - (1 - s^8)^14 for Jaccard similarity s: 50% at s = 0.68.
  r.minhash = ConfigDict(dict(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1))
  return r
