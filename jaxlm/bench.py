"""Benchmark: step time, tokens/s and MFU of the train step, the eval forward pass and decoding.

  python -m jaxlm.bench --config=configs/shakespeare_char.py [--steps=100] [--json=out.json]
  python -m jaxlm.bench --config=configs/gpt2_124m.py --what=data --config.data.corpus=prep/web

Batches are random token ids of the config's shape (no corpus is read when model.vocab_size is
set; otherwise the corpus's tokenizer gives the vocabulary). Every timed step ends with a host sync,
so a step's time is its full latency; the first `--warmup` steps (compilation included) are not
timed. MFU is against the dense bf16 peak of the device (see jaxlm.metrics), 'n/a' on a CPU.

`--what=data` times the input pipeline alone (no model, no devices): `--steps` global batches of
the config's data (prepared first if needed) as one host reading every row, with
data.packing and data.workers as configured; it prints batches/s, tokens/s (rows x L, padding
included) and the fraction of those tokens that are targets (packing's fill).
"""

import json
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags
from ml_collections import ConfigDict

from jaxlm import cli

_CONFIG = cli.ConfigFlag()
_STEPS = flags.DEFINE_integer('steps', 50, 'Timed steps of each benchmark.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed steps first (compilation included).')
_WHAT = flags.DEFINE_list('what', ['train', 'eval', 'decode'],
                          'Which benchmarks to run: train, eval, decode, data.')
_JSON = flags.DEFINE_string('json', '', 'Also write the figures to this JSON file.')


def _timed(fn, steps: int, warmup: int) -> np.ndarray:
  """Seconds per call of fn() (which must return something to block on), after warm-up."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return np.array(times)


def _summary(times: np.ndarray, tokens: int, flops_per_token: float | None) -> dict:
  from jaxlm import metrics
  median = float(np.median(times))
  tps = tokens / median
  mfu = metrics.mfu(tps, flops_per_token, jax.device_count(), metrics.peak_flops()) \
      if flops_per_token else None
  return dict(step_ms_median=1e3 * median, step_ms_p10=1e3 * float(np.percentile(times, 10)),
              step_ms_p90=1e3 * float(np.percentile(times, 90)), tokens_per_s=tps, mfu=mfu)


def _peak_memory() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return peak / 2**30 if peak else None


def data_benchmark(cfg: ConfigDict, run_data, steps: int, warmup: int) -> dict:
  """The input pipeline's throughput for the config's batch shape (see the module docstring)."""
  from jaxlm import data
  B, L = cfg.train.batch_size, cfg.model.max_seq_len
  batches = data.train_batches(run_data, cfg, L, range(B))
  try:
    for _ in range(warmup):
      next(batches)
    start, targets = time.perf_counter(), 0.0
    for _ in range(steps):
      targets += float(next(batches)['mask'].sum())
    seconds = time.perf_counter() - start
  finally:
    batches.close()
  return dict(batches_per_s=steps / seconds, tokens_per_s=steps * B * L / seconds,
              fill=targets / (steps * B * L), batch=B, seq_len=L, packing=cfg.data.packing,
              workers=cfg.data.workers)


def open_data(cfg: ConfigDict):
  """The config's data, prepared if needed, with the workdir locked meanwhile."""
  from jaxlm import data
  from jaxlm.workdir import WorkdirLock, prepare_workdir
  workdir = prepare_workdir(cfg.workdir)
  lock = WorkdirLock(workdir)  # it may prepare the data there
  try:
    return data.open_run_data(cfg, workdir)
  finally:
    lock.release()


def run(cfg: ConfigDict, what: list[str], steps: int, warmup: int,
        emit=lambda results, name: None) -> dict:
  """The benchmarks in `what`; emit(results, name) is called as soon as each is measured (and
  with name 'config' once the model is built), so a run cut short keeps what it measured."""
  from jaxlm import metrics, objectives, sampling, sharding
  from jaxlm.build import build, vocab_of_model
  from jaxlm.objectives import Vocab
  from jaxlm.errors import UserError
  from jaxlm.config import validate
  from jaxlm.mesh import configure_backend

  validate(cfg)
  configure_backend(cfg)  # before anything starts JAX (opening data asks for the process index)
  run_data = open_data(cfg) if 'data' in what or not cfg.model.vocab_size else None
  if what == ['data']:
    return dict(data=data_benchmark(cfg, run_data, steps, warmup))
  vocab = (Vocab.of(run_data.tokenizer, run_data.token_frequencies()) if run_data else
           vocab_of_model(cfg))
  if not objectives.of(cfg).generates and 'decode' in what:
    raise UserError(f'a model trained with train.objective={cfg.train.objective!r} does not '
                    'decode; leave decode out of --what.')
  built = build(cfg, vocab)  # the step training would run
  model_cfg, setup = built.model_cfg, built.setup
  state = setup.init()
  # Rows as the data pipeline gives them (span corruption reads raw windows, a little shorter).
  B, L, W = cfg.train.batch_size, model_cfg.max_seq_len, objectives.window_length(cfg)
  rng = np.random.default_rng(cfg.seed)
  tokens = rng.integers(0, vocab.size, (B, W + 1), dtype=np.int32)
  batch_sh = sharding.batch_sharding(built.mesh, built.rules)
  batch = {k: jax.device_put(v, batch_sh) for k, v in dict(
      inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=np.ones((B, W), np.float32)).items()}
  eval_batch = batch  # most objectives draw on each row's index and extent there
  if built.objective.eval_rows:
    put = lambda x: jax.device_put(x, batch_sh)
    eval_batch = dict(batch, index=put(np.arange(B, dtype=np.int32)[:, None]),
                      segment_ids=put(np.ones((B, W), np.int32)),
                      input_mask=put(np.ones((B, W), np.float32)))
  flops = metrics.flops_per_token(model_cfg)
  results = dict(
      config=dict(layers=model_cfg.num_layers, width=model_cfg.embed_dim,
                  heads=model_cfg.num_heads, kv_heads=model_cfg.num_kv_heads,
                  seq_len=L, batch=B, vocab=model_cfg.vocab_size, dtype=model_cfg.dtype,
                  attention=model_cfg.attention, remat=model_cfg.remat),
      params=metrics.param_count(model_cfg), flops_per_token=flops,
      device=f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      jax=jax.__version__)
  emit(results, 'config')

  if 'train' in what:
    train_step = built.train_step
    holder = [state]

    def one_step():
      holder[0], m = train_step(holder[0], batch)
      return m['loss']
    results['train'] = _summary(_timed(one_step, steps, warmup), B * L, flops)
    results['peak_memory_gib'] = _peak_memory()
    emit(results, 'train')
    state = holder[0]
  if 'eval' in what:
    eval_step = built.eval_step
    results['eval'] = _summary(_timed(lambda: eval_step(state.params, eval_batch), steps, warmup),
                               B * L, flops / 3)  # forward only: a third of the train FLOPs
    emit(results, 'eval')
  if 'decode' in what:
    new = L // 2
    prompts = tokens[:, :min(L - new, W)].tolist()
    decode = lambda: sampling.generate(setup.graphdef, state.params, model_cfg, prompts,
                                       max_new_tokens=new, temperature=1.0, seed=0,
                                       prefix_lm=objectives.of(cfg).prefix_lm)
    results['decode'] = _summary(_timed(decode, max(steps // 10, 3), 1), B * new, None)
    emit(results, 'decode')
  results['peak_memory_gib'] = _peak_memory()
  if 'data' in what:
    results['data'] = data_benchmark(cfg, run_data, steps, warmup)
  return results


def print_data(r: dict) -> None:
  print(f'data | {r["packing"]} | {r["workers"]} worker(s) | batch {r["batch"]} x '
        f'{r["seq_len"]} | {r["batches_per_s"]:.2f} batches/s | {r["tokens_per_s"]:,.0f} '
        f'tokens/s | fill {100 * r["fill"]:.1f}%')


def print_header(results: dict) -> None:
  c = results['config']
  print(f'{results["device"]} | jax {results["jax"]} | {results["params"] / 1e6:.2f}M params | '
        f'{c["layers"]}L {c["width"]}D {c["heads"]}H/{c["kv_heads"]}KV | batch {c["batch"]} x '
        f'{c["seq_len"]} | vocab {c["vocab"]} | {c["dtype"]} | attention {c["attention"]} | '
        f'remat {c["remat"]}')
  print(f'{"benchmark":<10}{"median ms":>12}{"p10-p90 ms":>16}{"tokens/s":>14}{"MFU":>9}',
        flush=True)


def print_row(name: str, r: dict) -> None:
  mfu = 'n/a' if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%'
  spread = f'{r["step_ms_p10"]:.1f}-{r["step_ms_p90"]:.1f}'
  print(f'{name:<10}{r["step_ms_median"]:>12.2f}{spread:>16}{r["tokens_per_s"]:>14,.0f}'
        f'{mfu:>9}', flush=True)


def main(argv: list[str]) -> None:
  cli.require(_STEPS, _STEPS.value >= 1, 'at least 1 timed step')
  cli.require(_WARMUP, _WARMUP.value >= 0, 'a number of steps >= 0')
  cli.require(_WHAT, bool(_WHAT.value) and set(_WHAT.value) <= {'train', 'eval', 'decode', 'data'},
              'a comma-separated list of train, eval, decode, data')
  cli.require(_JSON, not _JSON.value or Path(_JSON.value).parent.is_dir(),
              'a file in an existing directory')

  def emit(results: dict, name: str) -> None:  # each figure printed and written as measured
    if name == 'config':
      print_header(results)
    else:
      print_row(name, results[name])
    if _JSON.value:
      Path(_JSON.value).write_text(json.dumps(results, indent=2))

  results = run(_CONFIG.value, _WHAT.value, _STEPS.value, _WARMUP.value, emit)
  if 'data' in results:
    print_data(results['data'])
  if results.get('peak_memory_gib') is not None:
    print(f'peak device memory {results["peak_memory_gib"]:.2f} GiB')
  if _JSON.value:
    Path(_JSON.value).write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
  cli.run(main, config=_CONFIG)
