"""Throughput of jaxlm's lm-eval model against lm-eval's own `hf` backend, side by side in one
run, on the same random tiny GPT-2 and the same requests (this CPU, or whatever JAX and torch see).

  python launch/bench_harness.py [--docs=100] [--repeats=3] [--layers=4 --width=256]

A GPT-2 of --layers x --width (random weights, a byte-level BPE vocabulary of 1024 trained on the
shipped corpus, a context of 256) is saved with transformers and imported with jaxlm.convert
import-hf. Each backend runs the multiple-choice example task (jaxlm/tasks shakespeare_cloze:
--docs documents, four choices each) through lm_eval.simple_evaluate, --repeats times after one
untimed run (its compilation and model load); the figures are the median: requests/s
(loglikelihood requests) and tokens/s (their context and continuation tokens). The hf backend
runs at its best batch size of those tried (--hf_batch_sizes); jaxlm at --batch_size packed rows.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--docs', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--hf_batch_sizes', default='8,32')
  args = parser.parse_args()
  from jaxlm import lm_eval_plugin  # pylint: disable=import-outside-toplevel
  lm_eval_plugin.offline()
  import lm_eval  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from jaxlm.harness import task_manager  # pylint: disable=import-outside-toplevel
  tmp = Path(tempfile.mkdtemp(prefix='bench_harness_'))
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([(ROOT / 'jaxlm' / 'data' / 'tinyshakespeare.txt').read_text()],
                          trainers.BpeTrainer(vocab_size=1024, special_tokens=['<|endoftext|>'],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=1024, n_positions=256, n_embd=args.width,
                                   n_layer=args.layers, n_head=max(args.width // 64, 1))
  transformers.GPT2LMHeadModel(config).eval().save_pretrained(tmp / 'gpt2')
  tok.save(str(tmp / 'gpt2' / 'tokenizer.json'))
  subprocess.run([sys.executable, '-m', 'jaxlm.convert', 'import-hf', f'--hf_dir={tmp / "gpt2"}',
                  f'--workdir={tmp / "jaxlm"}'], check=True, cwd=ROOT, capture_output=True)
  tasks = ['shakespeare_cloze']
  manager = task_manager('', tasks)
  backends = [(f'hf (batch {b})', 'hf', dict(pretrained=str(tmp / 'gpt2'), dtype='float32',
                                             device='cpu', batch_size=int(b)))
              for b in args.hf_batch_sizes.split(',')]
  backends.append((f'jaxlm ({args.batch_size} packed rows)', 'jaxlm',
                   dict(workdir=str(tmp / 'jaxlm'), batch_size=args.batch_size)))
  rows = []
  for name, model, model_args in backends:
    lm = lm_eval.api.registry.get_model(model).create_from_arg_obj(model_args)
    times = []
    for repeat in range(args.repeats + 1):
      start = time.perf_counter()
      out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=args.docs,
                                    bootstrap_iters=0, log_samples=True)
      if repeat:  # the first: compilation, warm-up
        times.append(time.perf_counter() - start)
    samples = out['samples'][tasks[0]]
    requests = sum(len(s['arguments']) for s in samples)
    tokens = sum(len(tok.encode(context + continuation).ids)
                 for s in samples for context, continuation in s['arguments'])
    seconds = statistics.median(times)
    rows.append((name, requests, tokens, seconds, out['results'][tasks[0]]['acc,none']))
    print(f'{name}: {requests} requests in {seconds:.2f} s', flush=True)
  print('\n| backend | requests | seconds (median of %d) | requests/s | tokens/s | acc |'
        % args.repeats)
  print('| --- | --- | --- | --- | --- | --- |')
  for name, requests, tokens, seconds, acc in rows:
    print(f'| {name} | {requests} | {seconds:.2f} | {requests / seconds:,.0f} | '
          f'{tokens / seconds:,.0f} | {acc:.3f} |')


if __name__ == '__main__':
  main()
