"""The training loop: the only module that does I/O, timing and host syncs.

run(cfg): validate -> mesh -> corpus and tokenizer -> state (restored or fresh) -> loop of
[batch -> jitted step -> every log_every: metrics -> every eval_every: validation and samples ->
every checkpoint.every: Orbax save] -> final checkpoint and a generated sample.

What it promises (docs/RELIABILITY.md has the tests): a resumed run is the same run; SIGTERM or
SIGINT stops after the current step with a checkpoint; a non-finite loss or gradient is never
applied and never checkpointed; a mistake stops with one sentence and loses nothing written.
"""

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from jaxlm import data, metrics, sharding
from jaxlm.checkpoint import Checkpointer
from jaxlm.config import resolve_model, validate
from jaxlm.errors import UserError
from jaxlm.evaluation import continuations, loss_over, sync_each_step, to_global
from jaxlm.mesh import configure_backend, initialize_distributed, make_mesh
from jaxlm.optim import make_optimizer
from jaxlm.state import SKIP_CAUSES, setup_train_state
from jaxlm.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step


def prepare_workdir(path: str) -> Path:
  """Creates the workdir and checks that it is writable, before any work is done."""
  workdir = Path(path).expanduser()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write-test-{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise UserError(f'the workdir {workdir} is not writable ({e.strerror}); set config field '
                    'workdir to a directory you can write to.') from None
  return workdir


def load_corpus_once(cfg: ConfigDict, workdir: Path) -> data.Corpus:
  """Process 0 builds the tokenizer and token cache first; the other hosts then read them."""
  if jax.process_count() == 1:
    return data.load_corpus(cfg, workdir)
  corpus = data.load_corpus(cfg, workdir) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('jaxlm: corpus ready')
  return corpus or data.load_corpus(cfg, workdir)


class StopRequest:
  """SIGTERM or SIGINT asks the loop to stop after the current step, with a checkpoint.

  With several processes, JAX's own preemption notice (it handles SIGTERM there) is consulted
  through Orbax, so that every host stops and saves at the same step.
  """

  def __init__(self):
    self.signal_name: str | None = None

  @contextlib.contextmanager
  def installed(self) -> Iterator['StopRequest']:
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
      del frame
      self.signal_name = signal.Signals(signum).name
    for s in previous:
      signal.signal(s, handler)
    try:
      yield self
    finally:
      for s, h in previous.items():
        signal.signal(s, h)

  def requested(self, step: int, ckpt: Checkpointer) -> bool:
    if jax.process_count() > 1:
      if ckpt.reached_preemption(step):
        self.signal_name = self.signal_name or 'a preemption notice'
      return self.signal_name is not None
    return self.signal_name is not None


def check_skipped(cfg: ConfigDict, state: Any, seen: int, log) -> int:
  """Acts on updates skipped since the last check (a host sync): aborts, or reports them.

  Returns the number of skipped steps so far. With float16 compute, skipped steps are how
  dynamic loss scaling works and never abort.
  """
  count, last, cause = (int(x) for x in jax.device_get(state.skipped))
  if count == seen:
    return count
  what = SKIP_CAUSES.get(cause, 'update')
  if cfg.train.on_nonfinite == 'abort' and state.loss_scale is None:
    raise UserError(
        f'the {what} became non-finite at step {last} (that update was not applied and no '
        'checkpoint holds it); lower optim.lr, or set train.on_nonfinite=skip to skip such steps.')
  if state.loss_scale is None:
    log(f'step {last}: the {what} was non-finite; the update was skipped '
        f'({count} skipped so far)')
  return count


def run(cfg: ConfigDict) -> dict[str, Any]:
  """Trains (or resumes) the run `cfg` describes; returns the final metrics."""
  validate(cfg)
  configure_backend(cfg)
  initialize_distributed(cfg)
  workdir = prepare_workdir(cfg.workdir)
  mesh = make_mesh(cfg)
  rules = sharding.rules_from_config(cfg.mesh)
  corpus = load_corpus_once(cfg, workdir)
  tokenizer = corpus.tokenizer
  tokenizer.encode(cfg.train.sample_prompt)  # a prompt it cannot encode fails now, not at the end
  model_cfg = resolve_model(cfg.model, tokenizer.vocab_size)
  tx, schedule = make_optimizer(cfg)
  setup = setup_train_state(cfg, model_cfg, tx, mesh, rules)
  is_main = jax.process_index() == 0
  log = (lambda *a: tqdm.write(' '.join(map(str, a)))) if is_main else (lambda *a: None)
  log(f'jaxlm | {metrics.param_count(model_cfg) / 1e6:.2f}M parameters | mesh '
      f'{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].device_kind} device(s) | '
      f'{len(corpus.train):,} train / {len(corpus.val):,} val tokens | '
      f'vocab {tokenizer.vocab_size} (model {model_cfg.vocab_size})')

  ckpt = Checkpointer(workdir / 'checkpoints', keep=cfg.checkpoint.keep,
                      keep_period=cfg.checkpoint.keep_period,
                      async_save=cfg.checkpoint.async_save)
  data_it = data.train_iterator(
      corpus.train, model_cfg.max_seq_len, cfg.train.batch_size // jax.process_count(),
      stride=cfg.data.stride, seed=cfg.seed, host_index=jax.process_index(),
      host_count=jax.process_count())
  meta = dict(config=cfg.to_dict(), model=model_cfg.to_dict(), tokenizer=tokenizer.fingerprint)

  def same_tokenizer(saved: dict, step: int) -> None:
    if saved.get('tokenizer') != tokenizer.fingerprint:
      raise UserError(
          f'checkpoint {step} in {ckpt.directory} was trained with a different tokenizer '
          f'({saved.get("tokenizer")}, now {tokenizer.fingerprint}); use the same data settings '
          'or a new workdir.')

  restored = ckpt.restore_latest(setup.abstract, same_tokenizer)
  if restored is None:
    state = setup.init()
  else:
    state, data_state, step = restored
    data_it.set_state(data_state)
    log(f'Resuming from step {step} in {ckpt.directory}')

  t = cfg.train
  batch_sh = sharding.batch_sharding(mesh, rules)
  train_step = jit_train_step(make_train_step(cfg, setup.graphdef, tx, schedule, mesh, rules),
                              setup.shardings, mesh, rules)
  eval_step = jit_eval_step(make_eval_step(setup.graphdef, mesh, rules, t.loss_chunk),
                            setup.shardings.params, mesh, rules)
  writer = metrics.MetricWriter(workdir, enabled=is_main)
  flops, peak = metrics.flops_per_token(model_cfg), metrics.peak_flops()
  tokens_per_step = cfg.train.batch_size * model_cfg.max_seq_len
  start = int(state.step)
  skipped = int(jax.device_get(state.skipped)[0])
  result: dict[str, Any] = {}

  def validation(step: int) -> None:
    val = loss_over(eval_step, state.params, corpus.val, cfg, batch_sh,
                    max_batches=t.eval_batches)
    del val['nats']
    writer.write(step, val, 'val')
    log(f'step {step:>6} | val loss {val["loss"]:.4f} | val perplexity {val["perplexity"]:.2f}')
    result['val'] = val
    if t.eval_samples and t.sample_tokens:
      samples = _samples(setup.graphdef, state.params, model_cfg, tokenizer, corpus, cfg,
                         t.eval_samples)
      writer.write_text(step, 'samples', samples)
      log('\n'.join(f'sample {i}: {s[:200]!r}' for i, s in enumerate(samples)))

  bar = tqdm(total=t.steps, initial=start, disable=not is_main, dynamic_ncols=True,
             unit='step', leave=True)
  sync = sync_each_step()
  clock, window, step = time.perf_counter(), 0, start
  stop, profiling = StopRequest(), False
  with stop.installed(), contextlib.closing(bar):
    for step in range(start, t.steps):
      state, step_metrics = train_step(state, to_global(next(data_it), batch_sh))
      if sync:
        jax.block_until_ready(step_metrics)
      window += 1
      done = step + 1
      if step == start:  # The first step includes compilation: time from the end of it.
        jax.block_until_ready(state)
        log(f'compiled the train step in {time.perf_counter() - clock:.1f}s')
        clock, window = time.perf_counter(), 0
      bar.update(1)
      stopping = stop.requested(done, ckpt)
      if done == t.profile_start or (profiling and (
          done in (t.profile_start + t.profile_steps, t.steps) or stopping)):
        profiling = _profile(not profiling, workdir / 'profile', log)
        clock, window = time.perf_counter(), 0
      if done % t.log_every == 0 or done == t.steps:
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        del values['finite']
        now = time.perf_counter()
        if window:
          values['step_time'] = (now - clock) / window
          values['tokens_per_s'] = tokens_per_step / values['step_time']
          values['mfu'] = metrics.mfu(values['tokens_per_s'], flops, jax.device_count(), peak)
        clock, window = now, 0
        skipped = check_skipped(cfg, state, skipped, log)
        values['skipped_steps'] = float(skipped)
        writer.write(done, values, 'train')
        bar.set_postfix(loss=f'{values["loss"]:.4f}', refresh=False)
        log(_format_line(done, values))
        result['train'] = values
      if done % t.eval_every == 0 or done == t.steps:
        validation(done)
        clock, window = time.perf_counter(), 0
      if done % cfg.checkpoint.every == 0 or done == t.steps or stopping:
        skipped = check_skipped(cfg, state, skipped, log)  # never save past an abort
        ckpt.save(done, state, data_it.get_state(), meta)
        clock, window = time.perf_counter(), 0
      if stopping:
        break
  ckpt.wait()
  if stop.signal_name:
    log(f'Stopped by {stop.signal_name} after step {step + 1}; checkpoint {ckpt.latest_step()} '
        f'is in {ckpt.directory}. Run the same command to resume.')
    result['stopped_at'] = step + 1
  elif start >= t.steps:
    log(f'Training already reached step {t.steps}; nothing to do (raise train.steps to go on).')
  else:
    log(f'Saved checkpoint {ckpt.latest_step()} in {ckpt.directory}')
    if t.sample_tokens:
      result['sample'] = _samples(setup.graphdef, state.params, model_cfg, tokenizer, corpus,
                                  cfg, 1)[0]
      log('--- sample ---\n' + t.sample_prompt + result['sample'] + '\n--------------')
  writer.close()
  ckpt.close()
  return result


def _profile(start: bool, directory: Path, log) -> bool:
  """Starts or stops a jax.profiler trace (view it in TensorBoard's profile tab or Perfetto);
  returns whether one is running."""
  if start:
    jax.profiler.start_trace(str(directory))
  else:
    jax.profiler.stop_trace()
    log(f'wrote a profile of the last steps to {directory}')
  return start


def _format_line(step: int, v: dict[str, float]) -> str:
  mfu = 'n/a' if v.get('mfu') is None else f'{100 * v["mfu"]:.1f}%'
  timing = ''
  if 'step_time' in v:
    timing = f' | {1e3 * v["step_time"]:.1f} ms/step | {v["tokens_per_s"]:,.0f} tok/s | MFU {mfu}'
  return (f'step {step:>6} | loss {v["loss"]:.4f} | lr {v["lr"]:.2e} | '
          f'grad norm {v["grad_norm"]:.3f}{timing}')


def _samples(graphdef, params, model_cfg, tokenizer, corpus: data.Corpus, cfg: ConfigDict,
             n: int) -> list[str]:
  """n sampled continuations (temperature 0.8) of train.sample_prompt, or of the corpus's first
  token when the prompt is empty (that token is then shown as part of the sample)."""
  prompt = cfg.train.sample_prompt or tokenizer.decode([int(corpus.train[0])])
  new = min(cfg.train.sample_tokens, model_cfg.max_seq_len - 1)
  texts = continuations(graphdef, params, model_cfg, tokenizer, [prompt] * n, max_new_tokens=new,
                        batch_size=n, temperature=0.8, seed=cfg.seed)
  return [('' if cfg.train.sample_prompt else prompt) + t for t in texts]
