"""A web-like corpus made from the shipped (public-domain) Shakespeare, with planted duplicates and
junk: for trying jaxlm.clean, its README chain and its benchmark (launch/bench_clean.py).

  python launch/web_corpus.py --out=crawl/sample.warc.gz --size_mb=2   # HTML pages in a WARC
  python launch/web_corpus.py --out=web/sample.jsonl.gz --size_mb=64   # JSONL documents

Every document is an article of four to eight speeches (verse lines joined into paragraphs). Of
the documents, 8% repeat an earlier one exactly, 6% nearly (every 25th word changed), and 6% are
junk a quality filter removes (a line repeated, a few words, a list of short lines). In a WARC
each document is an HTML page with navigation, a script and a footer around it. The same size
and seed give the same bytes.
"""

import argparse
import gzip
import io
import json
import random
import uuid
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / 'jaxlm' / 'data' / 'tinyshakespeare.txt'


def _speeches() -> list[str]:
  blocks = SHIPPED.read_text().split('\n\n')
  return [' '.join(b.split('\n')[1:]) for b in blocks if '\n' in b and len(b.split()) >= 25]


def documents(size_mb: float, seed: int = 0):
  """(kind, text) pairs up to about size_mb of text: kind is 'article', 'exact', 'near' or
  'junk'."""
  rng = random.Random(seed)
  speeches = _speeches()
  made: list[str] = []
  total, limit = 0, size_mb * 2**20
  while total < limit:
    roll = rng.random()
    if made and roll < 0.08:
      kind, text = 'exact', rng.choice(made)
    elif made and roll < 0.14:
      words = rng.choice(made).split(' ')
      kind, text = 'near', ' '.join(w.upper() if i % 25 == 7 else w for i, w in enumerate(words))
    elif roll < 0.20:
      kind, text = 'junk', _junk(rng, speeches)
    else:
      kind = 'article'
      text = '\n\n'.join(rng.choice(speeches) for _ in range(rng.randint(4, 8)))
      if len(made) < 20000:
        made.append(text)
    total += len(text.encode())
    yield kind, text


def _junk(rng: random.Random, speeches: list[str]) -> str:
  choice = rng.randrange(3)
  if choice == 0:
    return '\n'.join(['Buy now, the best deals of the season are here!'] * 20)
  if choice == 1:
    return ' '.join(rng.choice(speeches).split()[:12])
  return '\n'.join(' '.join(rng.choice(speeches).split()[:3]) for _ in range(40))


def page(text: str, title: str) -> str:
  body = ''.join(f'<p>{p}</p>' for p in text.split('\n\n'))
  return (f'<html><head><title>{title}</title><script>var tracking = 1;</script></head><body>'
          '<nav><a href="/">Home</a> | <a href="/plays">Plays</a> | <a href="/about">About</a>'
          f'</nav><article><h1>{title}</h1>{body}</article><footer>Copyright The Globe '
          'Archive. All rights reserved.</footer></body></html>')


def write(out: Path, size_mb: float, seed: int = 0) -> dict:
  """Writes the corpus as a WARC (.warc.gz) or JSONL (.jsonl or .jsonl.gz); returns the counts
  of each kind."""
  counts: dict[str, int] = {}
  out.parent.mkdir(parents=True, exist_ok=True)
  docs = list(documents(size_mb, seed))
  for kind, _ in docs:
    counts[kind] = counts.get(kind, 0) + 1
  if out.name.endswith(('.warc.gz', '.warc')):
    from warcio.statusandheaders import StatusAndHeaders  # pylint: disable=import-outside-toplevel
    from warcio.warcwriter import WARCWriter  # pylint: disable=import-outside-toplevel
    with open(out, 'wb') as f:
      writer = WARCWriter(f, gzip=out.name.endswith('.gz'))
      for i, (_, text) in enumerate(docs):
        headers = StatusAndHeaders('200 OK', [('Content-Type', 'text/html; charset=utf-8')],
                                   protocol='HTTP/1.1')
        html = page(text, f'Page {i}').encode()
        record = writer.create_warc_record(
            f'https://globe.example/page/{i}', 'response', payload=io.BytesIO(html),
            http_headers=headers, warc_headers_dict={
                'WARC-Date': '2026-01-01T00:00:00Z',
                'WARC-Record-ID': f'<urn:uuid:{uuid.UUID(int=i)}>'})
        writer.write_record(record)
  else:
    data = ''.join(json.dumps({'text': t, 'kind': k}) + '\n' for k, t in docs).encode()
    out.write_bytes(gzip.compress(data, mtime=0) if out.name.endswith('.gz') else data)
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='.warc.gz, .warc, .jsonl or .jsonl.gz')
  parser.add_argument('--size_mb', type=float, default=2.0)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  out = Path(args.out)
  if not out.name.endswith(('.warc.gz', '.warc', '.jsonl', '.jsonl.gz')):
    parser.error(f'--out={args.out} must end in .warc.gz, .warc, .jsonl or .jsonl.gz.')
  if args.size_mb <= 0:
    parser.error(f'--size_mb={args.size_mb} must be positive.')
  counts = write(out, args.size_mb, args.seed)
  print(f'wrote {out}: ' + ', '.join(f'{n:,} {k}' for k, n in sorted(counts.items())))


if __name__ == '__main__':
  main()
