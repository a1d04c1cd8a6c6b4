"""Compile the train step ahead of time for a TPU topology (or this host's devices) and report
whether it fits, before anyone rents the chips, as MaxText's train_compile.py does.

  python -m jaxlm.compile --config=configs/llama_1b.py --topology=v5p-8 [--config.x=y ...]
  python -m jaxlm.compile --config=configs/llama_1b.py --topology=v5p-256 --num_slices=2
  python -m jaxlm.compile --config=configs/llama_1b.py --topology=v6e-8 --plan   # no compiling
  python -m jaxlm.compile --config=configs/base.py        # this host's own devices

With --topology, JAX compiles for that many real TPU chips with libtpu alone (the `tpu` extra:
pip install -e '.[tpu]'); no TPU is needed. Printed per device: the arguments (parameters,
optimizer state, the batch), the temporaries and the outputs XLA's memory analysis reports,
against the chip's HBM; the compiler's FLOPs against jaxlm's analytic count; and, on a TPU
topology, the compiler's cost-model step time with the tokens/s and MFU it implies. These last are
the compiler's estimates, not measurements. A step that does not fit is an error that says what
to change. Topologies: v4-N, v5p-N (N TensorCores, two a chip), v5e-N and v6e-N (N chips), or a
shape such as v5p:2x2x1. --num_slices=N compiles for N such slices joined by the data-center
network, data parallel across them (mesh.dcn). Each report also prints the memory planner's
figures (jaxlm.plan) beside XLA's; --plan prints them alone, without compiling.
"""

from pathlib import Path

from absl import flags

from jaxlm import cli
from jaxlm.topology import CHIPS, GIB, topology_desc  # tests and launch/ read them here too

_CONFIG = cli.ConfigFlag()
_PLAN = flags.DEFINE_bool('plan', False, "Print the memory planner's figures per device only "
                          '(parameters, optimizer state, gradients, activations), without '
                          'compiling: seconds, where a compile takes minutes.')
_ESTIMATE = flags.DEFINE_bool('estimate', True, 'Where loops make the compiler undercount the '
                              'step, compile one micro-batch without loops for the step-time '
                              'estimate (a second compile; --noestimate skips it).')
_SLICES = flags.DEFINE_integer('num_slices', 1, 'Slices of --topology joined by the data-center '
                               'network (multi-slice): the mesh gets mesh.dcn of them.')
_TOPOLOGY = flags.DEFINE_string('topology', '', "A TPU slice to compile for ('v5p-8', 'v6e-256', "
                                "'v5p:2x2x1'); '' compiles for this host's devices.")

ADVICE = ("lower train.batch_size (or raise train.grad_accum), shard more (mesh.fsdp), or "
          "recompute more (model.remat='dots' or 'full').")


def tpu_devices(desc: str, num_slices: int = 1) -> list:
  import os  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  # Compiling needs no chip: let several such processes load libtpu at once (else its lockfile
  # refuses the second).
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jaxlm.mesh import tpu_chips  # pylint: disable=import-outside-toplevel
  if not tpu_chips():  # libtpu would ask a metadata server for the host's TPU, and print errors
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', desc.split(':')[0] + '-8')  # (what is
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')  # compiled does not change)
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    kwargs = dict(num_slices=num_slices) if num_slices > 1 else {}
    return list(topologies.get_topology_desc(desc, platform='tpu', **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except  # no libtpu, or a shape it refuses
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f'cannot describe the TPU topology {desc!r} ({reason}); compiling for a TPU '
                    "needs libtpu: pip install -e '.[tpu]'.") from None


def model_vocab(cfg) -> int:
  """The model's vocabulary without preparing any data: model.vocab_size, or what the tokenizer
  settings give (a SentencePiece vocabulary learnt on the corpus, bytes, or the characters of a
  text file)."""
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  if cfg.model.vocab_size:
    return cfg.model.vocab_size
  d = cfg.data
  if d.tokenizer == 'sentencepiece' and not d.tokenizer_path:
    return d.tokenizer_vocab_size
  if d.tokenizer == 'byte':
    return 257
  if d.tokenizer == 'char' and not d.mixture and (not d.corpus or Path(d.corpus).is_file()):
    # A character vocabulary is the corpus's distinct characters: one read of a small text file
    # (the shipped corpus when data.corpus is ''), rounded up as training rounds it.
    from jaxlm.data import sources  # pylint: disable=import-outside-toplevel
    chars = set()
    for path in sources.corpus_files(d.corpus):
      chars |= set(sources.read_text(path))
    return len(chars)
  raise UserError(f'jaxlm.compile prepares no data, so it cannot know the vocabulary of '
                  f'data.tokenizer={d.tokenizer!r} here; set model.vocab_size.')


def built_for(cfg, devices):
  """The step training would run (jaxlm.build), for `devices`. No data is read: the tokenizer's
  size comes from model_vocab, with no end-of-sequence id (the same shapes, so the same program)."""
  from jaxlm import build  # pylint: disable=import-outside-toplevel
  vocab = model_vocab(cfg)
  return build.build(cfg, build.vocab_of_model(cfg, 0 if cfg.model.vocab_size else vocab),
                     devices)


def _compile(cfg, devices, which: str = 'train', built=None):
  """The train step (or the eval step) of `cfg` compiled for `devices`; a step the compiler
  cannot fit in memory is one sentence."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlm import objectives, sharding  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  built = built or built_for(cfg, devices)
  B, L = cfg.train.batch_size, objectives.window_length(cfg)
  batch_sh = sharding.batch_sharding(built.mesh, built.rules)
  if which == 'eval':  # evaluation runs a micro-batch at a time
    B //= cfg.train.grad_accum
  shape = lambda k, n: jax.ShapeDtypeStruct((B, n), 'float32' if k == 'mask' else 'int32',
                                            sharding=batch_sh)
  batch = {k: shape(k, L) for k in ('inputs', 'targets', 'mask')}
  if which == 'train':
    step, args = built.train_step, (built.setup.abstract, batch)
  else:  # evaluation: the forward pass and the loss over a batch
    if built.objective.eval_rows:  # as data.eval_batches gives them: each row's index, extent
      batch.update(segment_ids=shape('segment_ids', L), input_mask=shape('mask', L),
                   index=shape('index', 1))
    step, args = built.eval_step, (built.abstract_params, batch)
  try:
    return step.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'out of memory' not in text.lower():
      raise
    reason = next((line.strip() for line in text.splitlines() if 'memory' in line.lower()),
                  text.splitlines()[0])
    raise UserError(f'the {which} step does not fit ({reason[:300]}); {ADVICE}') from None


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else (cost or {})


def loop_free(cfg):
  """One micro-batch of `cfg` with nothing in a loop that XLA's cost analysis would count once:
  the layers unrolled, no micro-batch loop, the loss in one chunk."""
  variant = cfg.copy_and_resolve_references()
  t = variant.train
  t.batch_size, t.grad_accum, t.loss_chunk = t.batch_size // t.grad_accum, 1, 0
  variant.model.scan_unroll = 0
  return variant


def _device_total(memory) -> int:
  """Bytes per device of a compiled step. Donated arguments are updated in place: their outputs
  take no memory of their own."""
  return (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
          memory.output_size_in_bytes - memory.alias_size_in_bytes)


def _ratio_ok(flops, analytic) -> bool:
  """Whether the compiler's FLOPs agree with jaxlm's count: within 0.8-1.3, the spread of the
  loop-free steps of every preset (the count leaves out norms, softmax and the optimizer). A
  chunked loss counted once already brings GPT-2 124M to 0.72."""
  return bool(flops) and 0.8 <= flops / analytic <= 1.3


def compile_step(cfg, devices, hbm: int | None, plan_only: bool = False,
                 estimate: bool = True, with_eval: bool = True) -> dict:
  """Compiles the train step for `devices`; returns the report's figures (with plan_only, the
  memory planner's alone, without compiling).

  The step-time estimate is the cost model's for the whole step when its FLOPs agree with
  jaxlm's count (within 0.8-1.3). XLA counts one trip of each loop, so when they do not
  (a layer scan, micro-batches, a chunked loss) the estimate is grad_accum times that of one
  micro-batch compiled without loops (`loop_free`), if that one agrees; else none is given.
  estimate=False skips that second compile (minutes for a large model); with_eval=False skips
  compiling the eval step, whose per-device memory is 'eval_total'."""
  from jaxlm import families, metrics, objectives, plan  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  from jaxlm.model import attention_kernels  # pylint: disable=import-outside-toplevel
  built = built_for(cfg, devices)
  model_cfg, mesh, rules, setup = built.model_cfg, built.mesh, built.rules, built.setup
  # A prefix LM (span corruption) attends through a dense mask, which only the reference takes.
  kernel = attention_kernels.kernel_for(
      model_cfg.attention, devices[0].platform, masked=built.objective.prefix_lm,
      length=model_cfg.max_seq_len, head_dim=model_cfg.head_dim, dtype=model_cfg.dtype)
  n, B, L = len(devices), cfg.train.batch_size, objectives.window_length(cfg)
  out = dict(planned=plan.plan(cfg, model_cfg, mesh, rules, setup.abstract, kernel != 'xla'),
             mesh=dict(mesh.shape), devices=n, device_kind=devices[0].device_kind, hbm=hbm,
             params=metrics.param_count(model_cfg), tokens_per_step=B * L)
  if plan_only:
    return out
  compiled = _compile(cfg, devices, built=built)
  memory, cost = compiled.memory_analysis(), _cost(compiled)
  flops_per_token = metrics.flops_per_token(model_cfg)
  out.update(arguments=memory.argument_size_in_bytes, temporaries=memory.temp_size_in_bytes,
             outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes,
             analytic_flops=flops_per_token * B * L / n, compiler_flops=cost.get('flops'))
  out['total'] = _device_total(memory)
  if with_eval:
    out['eval_total'] = _device_total(_compile(cfg, devices, 'eval', built).memory_analysis())
  if not cost.get('optimal_seconds'):
    return out  # a host without a cost model (a CPU)
  whole = cost['optimal_seconds'] > 0  # a negative time: the cost model could not time the step
  if whole and _ratio_ok(out['compiler_flops'], out['analytic_flops']):
    out.update(seconds=cost['optimal_seconds'], estimate_from='the whole step')
  elif families.of(model_cfg).no_estimate:
    out['no_estimate'] = families.of(model_cfg).no_estimate
  elif not estimate:
    out['no_estimate'] = ('the cost model cannot time the whole step, and the loop-free estimate '
                          'was not asked for (--noestimate)')
  else:
    variant = loop_free(cfg)
    try:
      variant_cost = _cost(_compile(variant, devices))
    except UserError as e:
      out['no_estimate'] = f'one micro-batch without loops does not compile: {e}'
    else:
      micro = variant.train.batch_size
      if variant_cost.get('optimal_seconds', -1) <= 0:
        out['no_estimate'] = 'the cost model gives no time for this step, even without loops'
      elif _ratio_ok(variant_cost.get('flops'), flops_per_token * micro * L / n):
        out.update(seconds=cfg.train.grad_accum * variant_cost['optimal_seconds'],
                   estimate_from=f'{cfg.train.grad_accum} x one micro-batch of {micro} compiled '
                                 'without loops')
      else:
        out['no_estimate'] = "even without loops the compiler's FLOPs disagree with jaxlm's"
  if out.get('seconds'):
    out['tokens_per_s'] = B * L / out['seconds']
    out['mfu'] = metrics.mfu(out['tokens_per_s'], flops_per_token, n,
                             metrics.peak_flops(devices[0]))
  return out


def report(r: dict) -> str:
  from jaxlm import plan  # pylint: disable=import-outside-toplevel
  gib = lambda x: f'{x / GIB:,.2f} GiB'
  head = (f'{r["devices"]} x {r["device_kind"]} | {r["params"] / 1e6:,.1f}M parameters | '
          f'{r["tokens_per_step"]:,} tokens/step | mesh ' +
          ' x '.join(f'{axis} {size}' for axis, size in r['mesh'].items() if size > 1 or
                     axis != 'dcn'))
  # ' of <HBM> HBM: fits' (or DOES NOT FIT) for a per-device figure, where the chip is known.
  fits = lambda x: (f' of {gib(r["hbm"])} HBM: {"fits" if x <= r["hbm"] else "DOES NOT FIT"}'
                    if r['hbm'] else '')
  if 'total' not in r:  # the plan alone
    total = r['planned']['total']
    return '\n'.join([head, plan.report(r['planned']) + fits(total) +
                       (' (planned)' if r['hbm'] else '')])
  lines = [head,
           f'per device: arguments {gib(r["arguments"])} + temporaries {gib(r["temporaries"])} + '
           f'outputs {gib(r["outputs"])} - donated {gib(r["aliased"])} = {gib(r["total"])}' +
           fits(r['total']),
           plan.report(r['planned'], r['total'])]
  if r.get('eval_total') is not None:
    lines.append(f'eval step per device: {gib(r["eval_total"])}' + fits(r['eval_total']))
  if r.get('compiler_flops'):
    lines.append(f'FLOPs per device and step: compiler {r["compiler_flops"]:.3e}, jaxlm analytic '
                 f'{r["analytic_flops"]:.3e} (ratio {r["compiler_flops"] / r["analytic_flops"]:.2f})')
  if r.get('no_estimate'):
    lines.append(f'no step-time estimate: {r["no_estimate"]}.')
  elif r.get('tokens_per_s'):
    mfu = 'n/a' if r.get('mfu') is None else f'{100 * r["mfu"]:.1f}%'
    lines.append(f'compiler estimate (cost model, not a measurement; from {r["estimate_from"]}): '
                 f'step {1e3 * r["seconds"]:.1f} ms, {r["tokens_per_s"]:,.0f} tokens/s, MFU {mfu}')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlm.config import validate  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  from jaxlm.mesh import configure_backend  # pylint: disable=import-outside-toplevel
  cfg = _CONFIG.value
  cli.require(_SLICES, _SLICES.value >= 1, 'a number of slices >= 1')
  if _SLICES.value > 1:
    cli.require(_SLICES, bool(_TOPOLOGY.value), 'with a --topology (the slices are TPU slices)')
    cli.require(_SLICES, cfg.mesh.dcn in (1, _SLICES.value),
                f'equal to config field mesh.dcn={cfg.mesh.dcn}, or leave mesh.dcn at 1')
    cfg.mesh.dcn = _SLICES.value
  validate(cfg)
  configure_backend(cfg)
  hbm = None
  if _TOPOLOGY.value:
    kind, desc = topology_desc(_TOPOLOGY.value)
    devices, hbm = tpu_devices(desc, _SLICES.value), CHIPS[kind][0]
  else:
    devices = jax.devices()
  r = compile_step(cfg, devices, hbm, _PLAN.value, _ESTIMATE.value)
  print(report(r))
  if _PLAN.value:
    if hbm and r['planned']['total'] > hbm:
      raise UserError(f'the planner puts the train step at {r["planned"]["total"] / GIB:,.1f} GiB '
                      f'per device, more than the {hbm / GIB:.0f} GiB of a {_TOPOLOGY.value} chip; '
                      f'{ADVICE}')
    return
  need = max(r['total'], r.get('eval_total', 0))
  if hbm and need > hbm:
    which = 'train' if r['total'] > hbm else 'eval'
    raise UserError(f'the {which} step needs {need / GIB:,.1f} GiB per device, more than the '
                    f'{hbm / GIB:.0f} GiB of a {_TOPOLOGY.value} chip; {ADVICE}')


if __name__ == '__main__':
  cli.run(main, config=_CONFIG)
