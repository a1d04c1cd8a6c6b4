"""Writes the example lm-eval tasks' data from the shipped corpus (public domain), reproducibly:

  python -m jaxlm.tasks.make

Speeches (blocks between blank lines) from the last tenth of tinyshakespeare.txt become:
  cloze.jsonl      a speech without its last word, and four candidate last words (the true one
                   and three other speeches' last words): multiple choice;
  last_word.jsonl  a speech, whose last word is to be predicted (LAMBADA's form);
  speeches.jsonl   whole speeches, for rolling word/byte perplexity;
  continue.jsonl   a speaker's name and first line, and the second line, to generate up to the
                   end of the line.
"""

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
CORPUS = HERE.parent / 'data' / 'tinyshakespeare.txt'
WORD = re.compile(r"[A-Za-z']+[.,;:!?]*$")


def speeches() -> list[str]:
  text = CORPUS.read_text(encoding='utf-8')
  blocks = [b.strip() for b in text.split('\n\n') if b.strip()]
  return blocks[int(len(blocks) * 0.9):]


def main() -> None:
  rng = random.Random(0)
  usable = [s for s in speeches() if len(s.split()) >= 12 and WORD.match(s.split()[-1])]
  rng.shuffle(usable)
  last_words = [s.split()[-1] for s in usable]
  cloze = []
  for speech in usable[:100]:
    true = speech.split()[-1]
    others = sorted({w for w in last_words if w != true})
    choices = [true] + rng.sample(others, 3)
    rng.shuffle(choices)
    cloze.append(dict(context=speech[:-len(true)].rstrip(), choices=choices,
                      label=choices.index(true)))
  lines = [s.split('\n') for s in usable if len(s.split('\n')) >= 3]
  rows = {
      'cloze.jsonl': cloze,
      'last_word.jsonl': [dict(text=' '.join(s.split())) for s in usable[100:200]],
      'speeches.jsonl': [dict(page=s) for s in usable[200:220]],
      'continue.jsonl': [dict(context=f'{l[0]}\n{l[1]}\n', target=l[2]) for l in lines[:50]],
  }
  for name, docs in rows.items():
    (HERE / name).write_text(''.join(json.dumps(d) + '\n' for d in docs), encoding='utf-8')


if __name__ == '__main__':
  main()
