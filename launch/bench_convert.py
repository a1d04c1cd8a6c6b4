"""Time jaxlm.convert on a GPT-2 124M-shaped random checkpoint: import-hf, then export-hf.

  python launch/bench_convert.py [--workdir=/tmp/jaxlm_bench_convert] [--keep]

Builds the model with transformers (GPT2Config's defaults: 12 layers, width 768, vocabulary 50257,
1024 positions; random weights, nothing downloaded) and a small byte-level BPE tokenizer.json, then
runs each command as a user would, in its own process, and prints its wall time and peak resident
memory (the child's ru_maxrss). export-hf runs twice: with the default shard size (one 475 MiB
file) and with 100 MiB shards, since it holds one shard, and its serialized bytes, at a time.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/jaxlm_bench_convert', 'Scratch directory.')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the scratch directory.')
_MAKE = flags.DEFINE_bool('make', False, 'Only make the checkpoint (the child process).')


def timed(cmd: list[str]) -> tuple[float, float]:
  """(seconds, peak RSS in MiB) of one command, which must succeed."""
  start = time.perf_counter()
  process = subprocess.Popen(cmd)
  _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f'failed: {" ".join(cmd)}')
  return seconds, usage.ru_maxrss / 1024


def make_checkpoint(root: Path) -> None:
  """The random GPT-2 124M and a tokenizer.json in root/gpt2 (run in a child process: see main)."""
  import torch
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
  model.save_pretrained(root / 'gpt2')
  n_params = sum(p.numel() for p in model.parameters())
  del model
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  shipped = Path(__file__).resolve().parents[1] / 'jaxlm' / 'data' / 'tinyshakespeare.txt'
  tok.train_from_iterator([shipped.read_text()], trainers.BpeTrainer(
      vocab_size=1000, special_tokens=['<|endoftext|>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(root / 'gpt2' / 'tokenizer.json'))
  size = sum(f.stat().st_size for f in (root / 'gpt2').iterdir()) / 2**20
  print(f'GPT-2 124M-shaped random checkpoint: {n_params / 1e6:.1f}M parameters, {size:.0f} MiB')


def main(argv: list[str]) -> None:
  del argv
  root = Path(_WORKDIR.value)
  if _MAKE.value:
    make_checkpoint(root)
    return
  shutil.rmtree(root, ignore_errors=True)
  # Linux keeps a process's peak RSS across exec, so a child forked from a parent that had loaded
  # torch and the model would report the parent's peak: this process stays small, and the model
  # is made in a child of its own.
  subprocess.run([sys.executable, __file__, f'--workdir={root}', '--make'], check=True)
  py = [sys.executable, '-m', 'jaxlm.convert']
  for name, cmd in [
      ('import-hf', py + ['import-hf', f'--hf_dir={root / "gpt2"}', f'--workdir={root / "run"}']),
      ('export-hf', py + ['export-hf', f'--workdir={root / "run"}', f'--out={root / "export"}']),
      ('export-hf --max_shard_mb=100', py + ['export-hf', f'--workdir={root / "run"}',
                                            f'--out={root / "export-sharded"}',
                                            '--max_shard_mb=100'])]:
    seconds, rss = timed(cmd)
    print(f'{name}: {seconds:.1f} s wall, peak RSS {rss:,.0f} MiB', flush=True)
  baseline = timed([sys.executable, '-c', 'import jax, jaxlm.convert, jaxlm.restore, jaxlm.hf; '
                    'jax.devices()'])[1]
  print(f'for reference, Python with JAX and jaxlm imported: peak RSS {baseline:,.0f} MiB')
  if not _KEEP.value:
    shutil.rmtree(root)


if __name__ == '__main__':
  app.run(main)
