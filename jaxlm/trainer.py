"""The training loop: the only module that does I/O, timing and host syncs.

run(cfg): validate -> mesh -> prepared data and tokenizer -> state (restored or fresh) -> loop of
[batch -> jitted step -> every log_every: metrics -> every eval_every: validation and samples ->
every checkpoint.every: Orbax save] -> final checkpoint and a generated sample.

What it promises (docs/RELIABILITY.md has the tests): a resumed run is the same run; SIGTERM or
SIGINT stops after the current step with a checkpoint; a non-finite loss or gradient is never
applied and never checkpointed; a mistake stops with one sentence and loses nothing written.
"""

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from jaxlm import data, metrics, objectives, paths, sharding, warmstart
from jaxlm.checkpoint import Checkpointer
from jaxlm.build import build
from jaxlm.config import validate
from jaxlm.errors import UserError, recording_signals
from jaxlm.evaluation import bits_per_byte, continuations, loss_over, sync_each_step, to_global
from jaxlm.mesh import configure_backend, initialize_distributed, make_mesh
from jaxlm.objectives import Vocab
from jaxlm.optim import LossScale, eval_params
from jaxlm.state import SKIP_CAUSES
from jaxlm.workdir import WorkdirLock, prepare_workdir, run_differences


def open_data_once(cfg: ConfigDict, workdir: Path) -> data.RunData:
  """Process 0 prepares the data (when the config names a source not prepared yet) while the
  other hosts wait; then every host opens it."""
  if jax.process_count() == 1:
    return data.open_run_data(cfg, workdir)
  run_data = data.open_run_data(cfg, workdir) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('jaxlm: data ready')
  return run_data or data.open_run_data(cfg, workdir)


class StopRequest:
  """SIGTERM or SIGINT asks the loop to stop after the current step, with a checkpoint.

  With several processes, JAX's own preemption notice (it handles SIGTERM there) is consulted
  through Orbax, so that every host stops and saves at the same step.
  """

  def __init__(self):
    self.signal_name: str | None = None

  @contextlib.contextmanager
  def installed(self) -> Iterator['StopRequest']:
    if jax.process_count() > 1:  # JAX's preemption notice, through Orbax (see requested)
      yield self
      return
    with recording_signals(lambda name: setattr(self, 'signal_name', name)):
      yield self

  def requested(self, step: int, ckpt: Checkpointer) -> bool:
    if jax.process_count() > 1:
      if ckpt.reached_preemption(step):
        self.signal_name = self.signal_name or 'a preemption notice'
      return self.signal_name is not None
    return self.signal_name is not None


def check_skipped(cfg: ConfigDict, state: Any, seen: int, log) -> int:
  """Acts on updates skipped since the last check (a host sync): aborts, or reports them.

  Returns the number of skipped updates so far. A float16 run skips an update whenever its loss
  scale overflows and goes on (with half the scale); any run aborts once train.max_skips updates
  in a row were skipped, and with on_nonfinite=abort (float32 and bfloat16) at the first skip.
  """
  s = jax.device_get(state.skipped)
  count, last, longest = int(s.count), int(s.last), int(s.longest)
  if count == seen:
    return count
  what = SKIP_CAUSES.get(int(s.cause), 'update')
  float16 = state.loss_scale is not None
  if longest >= cfg.train.max_skips:
    hint = ('lower optim.loss_scale_init or use model.dtype=bfloat16'
            if float16 and what == 'gradient norm' else 'lower optim.lr')
    raise UserError(
        f'{longest} updates in a row were skipped (the {what} was non-finite, last at step '
        f'{last}; no checkpoint holds them); {hint} (train.max_skips={cfg.train.max_skips}).')
  if cfg.train.on_nonfinite == 'abort' and not float16:
    raise UserError(
        f'the {what} became non-finite at step {last} (that update was not applied and no '
        'checkpoint holds it); lower optim.lr, or set train.on_nonfinite=skip to skip such steps.')
  scale = f'; loss scale now {float(state.loss_scale.scale):g}' if float16 else ''
  log(f'step {last}: the {what} was non-finite; the update was skipped '
      f'({count} skipped so far{scale})')
  return count


def evaluated(state: Any) -> Any:
  """The parameters that validation, task evaluation and samples use (optim.eval_params: the
  schedule-free average, or the parameters themselves)."""
  return eval_params(state.opt_state, state.params)


def run(cfg: ConfigDict) -> dict[str, Any]:
  """Trains (or resumes) the run `cfg` describes; returns the final metrics."""
  validate(cfg)
  configure_backend(cfg)
  initialize_distributed(cfg)
  trainer = Trainer(cfg)
  try:
    return trainer.train()
  finally:
    trainer.close()


class Trainer:
  """One training run: everything built from the config, the loop, and what it reports."""

  def __init__(self, cfg: ConfigDict):
    # config.init_from: the architecture is the trained model's (and so must the tokenizer be).
    self.cfg, self.init_from = warmstart.resolved(cfg)
    cfg = self.cfg
    self.workdir = prepare_workdir(cfg.workdir)
    # What must be written locally (a profile trace) goes to a local mirror of a bucket workdir.
    self.local_dir = paths.local_dir(cfg.workdir)
    self.lock = WorkdirLock(self.workdir)  # before anything is written into the workdir
    self.ckpt: Checkpointer | None = None
    self.writer: metrics.MetricWriter | None = None  # opened after a successful restore
    try:
      self._build(cfg)
    except BaseException:
      self.close()  # a failed start-up leaves the workdir unlocked
      raise

  def _build(self, cfg: ConfigDict) -> None:
    t = cfg.train
    mesh = make_mesh(cfg)  # a mesh this machine cannot hold fails before any data is prepared
    self.run_data = open_data_once(cfg, self.workdir)
    self.tokenizer = self.run_data.tokenizer
    self.tokenizer.encode(t.sample_prompt)  # a prompt it cannot encode fails now, not at the end
    if self.init_from:
      self.init_from.check_tokenizer(self.tokenizer, cfg.model)
    built = build(cfg, Vocab.of(self.tokenizer, self.run_data.token_frequencies()),
                  mesh=mesh)
    self.mesh, self.rules, self.model_cfg = built.mesh, built.rules, built.model_cfg
    self.setup, self.train_step, self.eval_step = built.setup, built.train_step, built.eval_step
    self.objective = built.objective
    self.tasks = None  # train.eval_tasks (jaxlm/harness_tasks.py), set up before any step
    if t.eval_tasks:
      from jaxlm import lm_eval_plugin  # pylint: disable=import-outside-toplevel
      lm_eval_plugin.offline()
      try:
        from jaxlm import harness_tasks  # pylint: disable=import-outside-toplevel
      except ImportError:
        raise UserError('config field train.eval_tasks needs EleutherAI\'s lm-evaluation-harness: '
                        'pip install "jaxlm[eval]" (or -e ".[eval]"), or leave it empty.') from None
      self.tasks = harness_tasks.LiveTasks(cfg, self.model_cfg, self.tokenizer,
                                           self.setup.graphdef, self.mesh, self.rules,
                                           self.workdir)
    self.is_main = jax.process_index() == 0
    self.log(f'jaxlm | {metrics.param_count(self.model_cfg) / 1e6:.2f}M parameters | mesh '
             f'{dict(self.mesh.shape)} on {metrics.devices_text()} | '
             f'{sum(d.train.tokens for d in self.run_data.datasets):,} train / '
             f'{sum(d.validation.tokens for d in self.run_data.datasets):,} val tokens '
             f'({cfg.data.packing}) | vocab {self.tokenizer.vocab_size} '
             f'(model {self.model_cfg.vocab_size})')
    total = sum(self.run_data.weights)
    if len(self.run_data.weights) > 1 and abs(total - 1) > 1e-9:
      self.log(f'note: data.mixture weights add up to {total:g}; mixing them as ' + ', '.join(
          f'{ds.name} {w / total:.4g}' for ds, w in zip(self.run_data.datasets,
                                                          self.run_data.weights)))
    if self.setup.undivided:
      self.log('note: these parameter dimensions are replicated, not sharded as mesh.rules ask, '
               'because the mesh does not divide them (change the sizes or the mesh to shard '
               'them): ' + '; '.join(self.setup.undivided))
    self.ckpt = Checkpointer(self.workdir / 'checkpoints', keep=cfg.checkpoint.keep,
                             keep_period=cfg.checkpoint.keep_period,
                             async_save=cfg.checkpoint.async_save)
    self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    self.data = data.train_batches(self.run_data, cfg, objectives.window_length(cfg),
                                   sharding.host_rows(self.batch_sharding, t.batch_size))
    self.mixed = np.zeros(len(self.run_data.datasets), np.int64)  # rows read per dataset
    self.val_streams: list[tuple[str, data.EvalStream, int]] | None = None  # at the first
    self.meta = dict(config=cfg.to_dict(), model=self.model_cfg.to_dict(),
                     tokenizer=self.tokenizer.fingerprint,
                     data=self.run_data.record(self.workdir))
    # Samples continue a prompt: a masked LM's model does not.
    self.sample_tokens = t.sample_tokens if self.objective.generates else 0
    self.tokens_per_step = t.batch_size * self.model_cfg.max_seq_len
    self.flops_per_token, self.peak = metrics.flops_per_token(self.model_cfg), metrics.peak_flops()
    self.result: dict[str, Any] = {}

  def log(self, text: str) -> None:
    if self.is_main:
      tqdm.write(text)

  def close(self) -> None:
    if getattr(self, 'data', None) is not None:
      self.data.close()
    if self.writer is not None:
      self.writer.close()
    if self.ckpt is not None:
      self.ckpt.close()
    self.lock.release()

  def restore_or_init(self) -> Any:
    """The newest readable checkpoint of this run (with the data position), or a fresh state."""
    def same_run(saved: dict, step: int) -> None:
      if saved.get('data') == []:
        raise UserError(f'checkpoint {step} in {self.ckpt.directory} is a model imported by '
                        'jaxlm.convert import-hf; train from it in a new workdir with '
                        f'config.init_from={str(self.workdir)!r}.')
      if saved.get('tokenizer') != self.tokenizer.fingerprint:
        raise UserError(
            f'checkpoint {step} in {self.ckpt.directory} was trained with a different tokenizer '
            f'({saved.get("tokenizer")}, now {self.tokenizer.fingerprint}); use the same data '
            'settings or a new workdir.')
      changed = run_differences(saved, self.meta)
      if changed:
        raise UserError(
            f'checkpoint {step} in {self.ckpt.directory} was trained with {", ".join(changed)}; '
            'a resumed run must keep the model and the data settings: use the config it was '
            'trained with, or a new workdir.')
      trained_on = [d['fingerprint'] for d in saved.get('data', [])]
      if trained_on != [d['fingerprint'] for d in self.meta['data']]:
        raise UserError(
            f'checkpoint {step} in {self.ckpt.directory} was trained on other prepared data '
            f'({", ".join(d["path"] for d in saved.get("data", [])) or "an older format"}); a '
            'resumed run must read the same data: use its data settings, or a new workdir.')
    restored = self.ckpt.restore_latest(self.setup.abstract, same_run)
    if restored is None:
      state = self.setup.init()
      if self.init_from:
        state = state.replace(params=self.init_from.params(
            self.model_cfg, self.mesh, self.rules, self.setup.shardings.params))
        which = '' if self.init_from.kind == 'huggingface' else f' (checkpoint {self.init_from.step})'
        self.log(f'Starting from the weights of {self.cfg.init_from}{which}')
      return state
    state, data_state, step = restored
    if self.setup.abstract.loss_scale is not None and state.loss_scale is None:
      state = state.replace(loss_scale=jax.device_put(LossScale.create(self.cfg),
                                                      self.setup.shardings.loss_scale))
      self.log(f'model.dtype is float16 now (checkpoint {step} was not): the loss scale starts '
               f'at optim.loss_scale_init={self.cfg.optim.loss_scale_init:g}')
    self.data.set_state(data_state)
    self.log(f'Resuming from step {step} in {self.ckpt.directory}')
    return state

  def train(self) -> dict[str, Any]:
    """The loop. Host syncs happen only to log, evaluate and save (and, on a multi-device CPU,
    after each step; see sync_each_step)."""
    cfg, t = self.cfg, self.cfg.train
    state = self.restore_or_init()
    self.writer = metrics.MetricWriter(self.workdir, enabled=self.is_main)
    start = int(state.step)
    skipped = int(jax.device_get(state.skipped.count))
    bar = tqdm(total=t.steps, initial=start, disable=not self.is_main, dynamic_ncols=True,
               unit='step', leave=True)
    sync = sync_each_step()
    clock, window, done = time.perf_counter(), 0, start
    stop, profiling = StopRequest(), False
    with stop.installed(), contextlib.closing(bar):
      for step in range(start, t.steps):
        host_batch = next(self.data)
        np.add.at(self.mixed, host_batch.pop('source'), 1)
        batch = to_global(host_batch, self.batch_sharding, t.batch_size)
        state, step_metrics = self.train_step(state, batch)
        if sync:
          jax.block_until_ready(step_metrics)
        window, done = window + 1, step + 1
        if step == start:  # The first step includes compilation: time from the end of it.
          jax.block_until_ready(state)
          self.log(f'compiled the train step in {time.perf_counter() - clock:.1f}s')
          clock, window = time.perf_counter(), 0
        bar.update(1)
        stopping = stop.requested(done, self.ckpt)
        if done == t.profile_start or (profiling and (
            done in (t.profile_start + t.profile_steps, t.steps) or stopping)):
          profiling = _profile(not profiling, self.local_dir / 'profile', self.log)
          clock, window = time.perf_counter(), 0
        if done % t.log_every == 0 or done == t.steps:
          seconds = time.perf_counter() - clock
          skipped = check_skipped(cfg, state, skipped, self.log)
          values = self.log_step(done, step_metrics, seconds / window if window else None,
                                 skipped)
          bar.set_postfix(loss=f'{values["loss"]:.4f}', refresh=False)
          clock, window = time.perf_counter(), 0
        if done % t.eval_every == 0 or done == t.steps:
          self.validate(done, evaluated(state))
          clock, window = time.perf_counter(), 0
        if self.tasks and (done % (t.eval_tasks_every or t.eval_every) == 0 or done == t.steps):
          self.evaluate_tasks(done, evaluated(state))
          clock, window = time.perf_counter(), 0
        if done % cfg.checkpoint.every == 0 or done == t.steps or stopping:
          skipped = check_skipped(cfg, state, skipped, self.log)  # never save past an abort
          self.ckpt.save(done, state, self.data.get_state(), self.meta)
          clock, window = time.perf_counter(), 0
        if stopping:
          break
      self.ckpt.wait()  # (still inside: a signal now only asks to stop, which is under way)
    self.report_end(stop, start, done, evaluated(state))
    return self.result

  def log_step(self, step: int, step_metrics: Any, step_time: float | None,
               skipped: int) -> dict[str, float]:
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items() if k != 'finite'}
    if step_time is not None:
      values['step_time'] = step_time
      values['tokens_per_s'] = self.tokens_per_step / step_time
      values['mfu'] = metrics.mfu(values['tokens_per_s'], self.flops_per_token,
                                  jax.device_count(), self.peak)
    values['skipped_steps'] = float(skipped)
    if len(self.mixed) > 1:  # the realised mixture (this host's rows since this process began)
      for ds, n in zip(self.run_data.datasets, self.mixed):
        values[f'mix/{ds.name}'] = float(n / self.mixed.sum())
    self.writer.write(step, values, 'train')
    self.log(_format_line(step, values))
    self.result['train'] = values
    return values

  def validation_streams(self) -> list[tuple[str, data.EvalStream, int]]:
    """(name, stream, micro-batches) of each dataset's validation split. With train.eval_batches,
    each dataset of a mixture gets its weight's share of them (at least one micro-batch)."""
    t, run = self.cfg.train, self.run_data
    total = t.eval_batches * t.grad_accum  # in micro-batches; 0: every split whole
    window = objectives.window_length(self.cfg)
    out = []
    for i, (ds, weight) in enumerate(zip(run.datasets, run.weights)):
      batches = max(1, round(total * weight / sum(run.weights))) if total else 0
      limit = batches * (t.batch_size // t.grad_accum) * window + 1 if total else 0
      out.append((ds.name, data.validation_stream(run, self.cfg, self.model_cfg.max_seq_len,
                                                  limit, dataset=i), batches))
    return out

  def validate(self, step: int, params: Any) -> None:
    """Validation loss and perplexity, and a few samples to read. A mixture's datasets are scored
    each on its own (val/<name>/loss); its val/loss is their mean weighted as in training."""
    t = self.cfg.train
    if self.val_streams is None:
      self.val_streams = self.validation_streams()
    scores = {name: loss_over(self.eval_step, params, stream, self.cfg, self.batch_sharding,
                              max_batches=batches) for name, stream, batches in self.val_streams}
    weights = np.asarray(self.run_data.weights) / sum(self.run_data.weights)
    mean = lambda key: float(sum(w * s[key] for w, s in zip(weights, scores.values())))
    loss = mean('loss')
    val = dict(loss=loss, perplexity=float(np.exp(min(loss, 80.0))),
               tokens=sum(s['tokens'] for s in scores.values()))
    # Bits per byte where the whole validation split was scored, every token (its bytes known).
    if self.objective.every_token and all(stream.bytes for _, stream, _ in self.val_streams):
      for s, (_, stream, _) in zip(scores.values(), self.val_streams):
        s['bits_per_byte'] = bits_per_byte(s['nats'], stream.bytes)
      val['bits_per_byte'] = mean('bits_per_byte')
    views = [k for k in next(iter(scores.values())) if k.endswith('_loss')]  # the objective's
    for k in views:
      tokens = k[:-len('loss')] + 'tokens'
      val.update({k: mean(k), tokens: sum(s[tokens] for s in scores.values())})
    shown = ''
    if len(scores) > 1:
      for name, s in scores.items():
        val.update({f'{name}/loss': s['loss'], f'{name}/tokens': s['tokens']})
      shown = ' (' + ', '.join(f'{name} {s["loss"]:.4f}' for name, s in scores.items()) + ')'
    self.writer.write(step, val, 'val')
    shown += ''.join(f' | val {k.replace("_", " ")} {val[k]:.4f}' for k in views)
    self.log(f'step {step:>6} | val loss {val["loss"]:.4f}{shown} | '
             f'val perplexity {val["perplexity"]:.2f}')
    self.result['val'] = val
    if t.eval_samples and self.sample_tokens:
      samples = self.samples(params, t.eval_samples)
      self.writer.write_text(step, 'samples', samples)
      self.log('\n'.join(f'sample {i}: {s[:200]!r}' for i, s in enumerate(samples)))

  def evaluate_tasks(self, step: int, params: Any) -> None:
    """train.eval_tasks on the live parameters: each task's metrics to metrics.jsonl and
    TensorBoard (tasks/<task>), beside validation loss, and one line per task."""
    for task, values in self.tasks(params).items():
      self.writer.write(step, values, f'tasks/{task}')
      self.log(f'step {step:>6} | {task} | ' + ' | '.join(f'{k} {v:.4f}'
                                                         for k, v in values.items()))
      self.result.setdefault('tasks', {})[task] = values

  def report_end(self, stop: StopRequest, start: int, done: int, params: Any) -> None:
    t = self.cfg.train
    if stop.signal_name:
      self.log(f'Stopped by {stop.signal_name} after step {done}; checkpoint '
               f'{self.ckpt.latest_step()} is in {self.ckpt.directory}. Run the same command '
               'to resume.')
      self.result['stopped_at'] = done
    elif start >= t.steps:
      self.log(f'Training already reached step {t.steps}; nothing to do (raise train.steps '
               'to go on).')
    else:
      self.log(f'Saved checkpoint {self.ckpt.latest_step()} in {self.ckpt.directory}')
      if self.sample_tokens:
        self.result['sample'] = self.samples(params, 1)[0]
        self.log('--- sample ---\n' + t.sample_prompt + self.result['sample'] +
                 '\n--------------')

  def samples(self, params: Any, n: int) -> list[str]:
    """n sampled continuations (temperature 0.8) of train.sample_prompt, or of the corpus's
    first token when the prompt is empty (that token is then shown as part of the sample)."""
    cfg, tok = self.cfg, self.tokenizer
    first = self.run_data.datasets[0].train.doc(0)[:1]
    prompt = cfg.train.sample_prompt or tok.decode([int(i) for i in first])
    new = min(cfg.train.sample_tokens, self.model_cfg.max_seq_len - 1)
    texts = continuations(self.setup.graphdef, params, self.model_cfg, tok, [prompt] * n,
                          max_new_tokens=new, batch_size=n, temperature=0.8, seed=cfg.seed,
                          prefix_lm=self.objective.prefix_lm)
    return [('' if cfg.train.sample_prompt else prompt) + text for text in texts]


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
  mix = ''.join(f' {k[4:]} {x:.2f}' for k, x in v.items() if k.startswith('mix/'))
  ratio = f' | mask ratio {v["mask_ratio"]:.3f}' if 'mask_ratio' in v else ''
  return (f'step {step:>6} | loss {v["loss"]:.4f} | lr {v["lr"]:.2e} | '
          f'grad norm {v["grad_norm"]:.3f}{ratio}{timing}' + (f' | mix{mix}' if mix else ''))
