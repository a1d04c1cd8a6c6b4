"""Throughput of jaxlm's lm-eval model against lm-eval's own `hf` backend, side by side in one
run, on the same random tiny GPT-2 and the same requests (this CPU, or whatever JAX and torch see).

  python launch/bench_harness.py [--docs=100] [--repeats=3] [--layers=4 --width=256]

A GPT-2 of --layers x --width (random weights, a byte-level BPE vocabulary of 1024 trained on the
shipped corpus, a context of 256) is saved with transformers and imported with jaxlm.convert
import-hf. Each backend runs the multiple-choice example task (jaxlm/tasks shakespeare_cloze:
--docs documents, four choices each) through lm_eval.simple_evaluate, --repeats times after one
untimed run (its compilation and model load); the figures are the median: requests/s
(loglikelihood requests) and tokens/s (their context and continuation tokens), end to end (the
whole simple_evaluate call, lm-eval's own work included: building the task, the documents,
collecting the environment, the metrics) and in the backend (the time inside the model's
loglikelihood method, the part a backend decides). The hf backend runs at each batch size of
--hf_batch_sizes; jaxlm at --batch_size packed rows. Each backend runs in a process of its own,
one after another (torch's idle OpenMP threads spin for a while and slowed JAX in the same
process by a factor of five).
"""

import argparse
import json
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
  parser.add_argument('--only', type=int, default=-1, help=argparse.SUPPRESS)  # (a child)
  parser.add_argument('--dir', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  from jaxlm import lm_eval_plugin  # pylint: disable=import-outside-toplevel
  lm_eval_plugin.offline()
  import lm_eval  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from jaxlm.harness_tasks import task_manager  # pylint: disable=import-outside-toplevel
  tmp = Path(args.dir or tempfile.mkdtemp(prefix='bench_harness_'))
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([(ROOT / 'jaxlm' / 'data' / 'tinyshakespeare.txt').read_text()],
                          trainers.BpeTrainer(vocab_size=1024, special_tokens=['<|endoftext|>'],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if args.only < 0:  # the parent: the model, then a child process per backend
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=1024, n_positions=256, n_embd=args.width,
                                     n_layer=args.layers, n_head=max(args.width // 64, 1))
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(tmp / 'gpt2')
    tok.save(str(tmp / 'gpt2' / 'tokenizer.json'))
    subprocess.run([sys.executable, '-m', 'jaxlm.convert', 'import-hf',
                    f'--hf_dir={tmp / "gpt2"}', f'--workdir={tmp / "jaxlm"}'], check=True,
                   cwd=ROOT, capture_output=True)
  tasks = ['shakespeare_cloze']
  manager = task_manager('', tasks)
  backends = [(f'hf (batch {b})', 'hf', dict(pretrained=str(tmp / 'gpt2'), dtype='float32',
                                             device='cpu', batch_size=int(b)))
              for b in args.hf_batch_sizes.split(',')]
  backends.append((f'jaxlm ({args.batch_size} packed rows)', 'jaxlm',
                   dict(workdir=str(tmp / 'jaxlm'), batch_size=args.batch_size)))
  rows = []
  if args.only < 0:
    for i, (name, _, _) in enumerate(backends):
      child = subprocess.run([sys.executable, __file__, *sys.argv[1:], f'--only={i}',
                              f'--dir={tmp}'], cwd=ROOT, capture_output=True, text=True,
                             check=False)
      if child.returncode:
        raise SystemExit(f'the {name} run failed:\n{child.stderr[-3000:]}')
      rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
      print(f'{name}: {rows[-1][1]} requests in {rows[-1][3]:.2f} s ({rows[-1][4]:.2f} s in the '
            'backend)', flush=True)
    backends = []
  for name, model, model_args in backends[args.only:args.only + 1]:
    lm = lm_eval.api.registry.get_model(model).create_from_arg_obj(model_args)
    inside = [0.0]
    scoring = lm.loglikelihood

    def timed(requests, *a, **k):
      start = time.perf_counter()
      try:
        return scoring(requests, *a, **k)
      finally:
        inside[0] += time.perf_counter() - start

    lm.loglikelihood = timed
    times, backend = [], []
    for repeat in range(args.repeats + 1):
      start, inside[0] = time.perf_counter(), 0.0
      out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=args.docs,
                                    bootstrap_iters=0, log_samples=True)
      if repeat:  # the first: compilation, warm-up
        times.append(time.perf_counter() - start)
        backend.append(inside[0])
    samples = out['samples'][tasks[0]]
    requests = sum(len(s['arguments']) for s in samples)
    tokens = sum(len(tok.encode(context + continuation).ids)
                 for s in samples for context, continuation in s['arguments'])
    seconds, spent = statistics.median(times), statistics.median(backend)
    print(json.dumps((name, requests, tokens, seconds, spent,
                      out['results'][tasks[0]]['acc,none'])))
    return
  print(f'\n| backend | requests | seconds, end to end / in the backend (median of '
        f'{args.repeats}) | requests/s end to end | requests/s in the backend | tokens/s in '
        'the backend | acc |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name, requests, tokens, seconds, spent, acc in rows:
    print(f'| {name} | {requests} | {seconds:.2f} / {spent:.2f} | {requests / seconds:,.0f} | '
          f'{requests / spent:,.0f} | {tokens / spent:,.0f} | {acc:.3f} |')


if __name__ == '__main__':
  main()
