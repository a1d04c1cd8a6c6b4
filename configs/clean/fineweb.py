"""FineWeb's published cleaning chain (Penedo et al. 2024, datatrove's examples/fineweb.py).

  python -m jaxlm.clean --input='crawl/*.warc.gz' --output=clean/crawl \
      --recipe=configs/clean/fineweb.py --recipe.language.model=lid.176.bin

HTML from web archives is extracted with trafilatura (text and JSONL documents pass through), then
language identification (a fastText model given by path; nothing is downloaded), Gopher
repetition and quality, C4 quality, FineWeb's own quality filters, MinHash near deduplication and
PII masking (e-mail and IP addresses). FineWeb deduplicated each crawl on its own with 5-word
shingles and 14 bands of 8 hashes; its URL and C4 bad-words filters need lists that datatrove
downloads and are left out. To run it without a language model, drop the step:
--recipe.steps=extract,gopher_repetition,gopher_quality,c4_quality,fineweb_quality,minhash,pii
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  r = ConfigDict()
  r.name = 'fineweb'
  r.steps = ('extract,language,gopher_repetition,gopher_quality,c4_quality,fineweb_quality,'
             'minhash,pii')
  # (trafilatura's own deduplicate drops paragraphs it saw earlier in the same process, which
  # would make the output depend on how the pages are split into tasks: jaxlm refuses it and
  # deduplicates in its own steps.)
  r.extract = ConfigDict(dict(favour_precision=True, timeout=1.0, deduplicate=False))
  # FineWeb kept English with a score of at least 0.65 (lid.176; GlotLID works as well).
  r.language = ConfigDict(dict(model='', languages='en', language_threshold=0.65))
  r.gopher_repetition = ConfigDict()  # Gopher's thresholds (Rae et al. 2021, table A1)
  r.gopher_quality = ConfigDict()
  # FineWeb's C4 filter kept lines without terminal punctuation (filter_no_terminal_punct=False).
  r.c4_quality = ConfigDict(dict(filter_no_terminal_punct=False))
  r.fineweb_quality = ConfigDict()
  r.minhash = ConfigDict(dict(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1))
  r.pii = ConfigDict()  # e-mail and public IP addresses replaced by fixed stand-ins
  return r
