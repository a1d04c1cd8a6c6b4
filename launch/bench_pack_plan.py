"""Benchmark the packing plan of one epoch (data.packing='pack'): time and peak memory for N
synthetic documents, the vectorised planner (rows.first_fit_blocks) beside the Python loop it
replaced (rows.first_fit over a list), each in a fresh process.

  python launch/bench_pack_plan.py --docs=1000000,10000000 --seq_len=2048

Document lengths are drawn log-normally (median 400 tokens, a long tail; seed 0); documents
longer than seq_len become several pieces, as PackedRows cuts them. The printed peak is the
process's maximum resident memory (ru_maxrss), the interpreter and numpy included.
"""

import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from jaxlm import cli

_DOCS = flags.DEFINE_list('docs', ['1000000', '10000000'], 'Document counts.')
_LEN = flags.DEFINE_integer('seq_len', 2048, 'Row length L.')
_WAYS = flags.DEFINE_list('ways', ['python', 'blocks'], 'Planners: python (the loop it replaced), '
                          'blocks (first_fit_blocks).')
_ONE = flags.DEFINE_string('one', '', 'Internal: plan once in this process (way:docs).')


class _Lengths:  # what PackedRows reads of a split
  def __init__(self, n: int):
    rng = np.random.default_rng(0)
    self.lengths = np.maximum(rng.lognormal(np.log(400), 1.0, n), 1).astype(np.int32)
    self.directory = 'synthetic'


def plan_once(way: str, n: int, length: int) -> None:
  from jaxlm.data import rows  # pylint: disable=import-outside-toplevel
  packed = rows.PackedRows(_Lengths(n), eos=0, length=length, seed=0)
  start = time.perf_counter()
  if way == 'blocks':
    order, starts = packed.plan(0)
  else:  # the plan as it was computed before first_fit_blocks
    order = np.random.default_rng([packed.seed, 0]).permutation(len(packed.piece_doc))
    packed_rows = rows.first_fit(packed.piece_len[order].tolist(), length, packed.bins)
    starts = np.cumsum([0] + [len(r) for r in packed_rows])
    order = order[np.concatenate([np.asarray(r) for r in packed_rows])]
  seconds = time.perf_counter() - start
  fill = packed.piece_len.sum() / ((len(starts) - 1) * length)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'{way:>6} | {n:>11,} documents | {len(order):>11,} pieces | {len(starts) - 1:>10,} rows '
        f'| {seconds:6.2f} s | fill {fill:.4f} | peak RSS {peak:,.0f} MiB', flush=True)


def main(argv: list[str]) -> None:
  del argv
  if _ONE.value:
    way, n = _ONE.value.split(':')
    plan_once(way, int(n), _LEN.value)
    return
  cli.require(_DOCS, all(d.isdigit() and int(d) > 0 for d in _DOCS.value),
              'comma-separated positive document counts')
  cli.require(_WAYS, set(_WAYS.value) <= {'python', 'blocks'}, 'python and/or blocks')
  for n in _DOCS.value:
    for way in _WAYS.value:
      subprocess.run([sys.executable, __file__, f'--one={way}:{n}', f'--seq_len={_LEN.value}'],
                     check=True)


if __name__ == '__main__':
  cli.run(main)
