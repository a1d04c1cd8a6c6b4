"""Compile the train step ahead of time for a TPU topology (or this host's devices) and report
whether it fits, before anyone rents the chips, as MaxText's train_compile.py does.

  python -m jaxlm.compile --config=configs/llama_1b.py --topology=v5p-8 [--config.x=y ...]
  python -m jaxlm.compile --config=configs/base.py        # this host's own devices

With --topology, JAX compiles for that many real TPU chips with libtpu alone (the `tpu` extra:
pip install -e '.[tpu]'); no TPU is needed. Printed per device: the arguments (parameters,
optimizer state, the batch), the temporaries and the outputs XLA's memory analysis reports,
against the chip's HBM; the compiler's FLOPs against jaxlm's analytic count; and, on a TPU
topology, the compiler's cost-model step time with the tokens/s and MFU it implies. These last are
the compiler's estimates, not measurements. A step that does not fit is an error that says what
to change. Topologies: v4-N, v5p-N (N TensorCores, two a chip), v5e-N and v6e-N (N chips), or a
shape such as v5p:2x2x1.
"""

import re

from absl import flags

from jaxlm import cli

_CONFIG = cli.define_config()
_TOPOLOGY = flags.DEFINE_string('topology', '', "A TPU slice to compile for ('v5p-8', 'v6e-256', "
                                "'v5p:2x2x1'); '' compiles for this host's devices.")

GIB = 2**30
ADVICE = ("lower train.batch_size (or raise train.grad_accum), shard more (mesh.fsdp), or "
          "recompute more (model.remat='dots' or 'full').")
# HBM per chip and the chip's topology name in libtpu, per TPU generation.
CHIPS = {'v4': (32 * GIB, 'v4'), 'v5p': (95 * GIB, 'v5p'), 'v5e': (16 * GIB, 'v5e'),
         'v6e': (32 * GIB, 'v6e')}
_SHAPES_3D = {1: '1x1x1', 2: '1x2x1', 4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4',
              64: '4x4x4', 128: '4x4x8', 256: '4x8x8', 512: '8x8x8', 1024: '8x8x16',
              2048: '8x16x16', 4096: '16x16x16'}
_SHAPES_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
              256: '16x16'}


def topology_desc(name: str) -> tuple[str, str]:
  """'v5p-8' -> ('v5p', 'v5p:2x2x1'): the generation and libtpu's topology string; a shape
  ('v5p:2x2x1') is taken as it is. An unknown name is one sentence."""
  name = name.strip().lower()
  shape = re.fullmatch(r'(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})', name)
  if shape:
    return shape.group(1), name
  match = re.fullmatch(r'(v4|v5p|v5e|v6e)-(\d+)', name)
  if match:
    kind, n = match.group(1), int(match.group(2))
    chips = n // 2 if kind in ('v4', 'v5p') else n  # v4 and v5p count TensorCores, two a chip
    table = _SHAPES_3D if kind in ('v4', 'v5p') else _SHAPES_2D
    if (kind not in ('v4', 'v5p') or n % 2 == 0) and chips in table:
      return kind, f'{kind}:{table[chips]}'
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  raise UserError(f'--topology={name!r} is not a TPU slice jaxlm knows; give v4-N or v5p-N (N '
                  'TensorCores: 8, 16, ... 8192), v5e-N or v6e-N (N chips: 1, 4, 8, ... 256), or a '
                  "shape such as 'v5p:2x2x1'.")


def tpu_devices(desc: str) -> list:
  import os  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  # Compiling needs no chip: let several such processes load libtpu at once (else its lockfile
  # refuses the second).
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    return list(topologies.get_topology_desc(desc, platform='tpu').devices)
  except Exception as e:  # pylint: disable=broad-except  # no libtpu, or a shape it refuses
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f'cannot describe the TPU topology {desc!r} ({reason}); compiling for a TPU '
                    "needs libtpu: pip install -e '.[tpu]'.") from None


def model_vocab(cfg) -> int:
  """The model's vocabulary without reading any data: model.vocab_size, or what the tokenizer
  settings give (a SentencePiece vocabulary learnt on the corpus, or bytes)."""
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  if cfg.model.vocab_size:
    return cfg.model.vocab_size
  d = cfg.data
  if d.tokenizer == 'sentencepiece' and not d.tokenizer_path:
    return d.tokenizer_vocab_size
  if d.tokenizer == 'byte':
    return 257
  raise UserError(f'jaxlm.compile reads no data, so it cannot know the vocabulary of '
                  f'data.tokenizer={d.tokenizer!r}; set model.vocab_size.')


def compile_step(cfg, devices, hbm: int | None) -> dict:
  """Lowers and compiles the train step for `devices`; returns the report's figures."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlm import metrics, objectives, sharding  # pylint: disable=import-outside-toplevel
  from jaxlm.config import resolve_model  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  from jaxlm.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  from jaxlm.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from jaxlm.state import setup_train_state  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from jaxlm.step import jit_train_step, make_train_step
  if objectives.objective(cfg) == 'span':
    raise UserError("jaxlm.compile checks causal and masked-LM steps; compile the same model with "
                    "--config.train.objective=causal (span corruption reads the same shapes).")
  vocab = model_vocab(cfg)
  model_cfg = resolve_model(cfg.model, vocab + (0 if cfg.model.vocab_size else
                                                objectives.reserved_ids(cfg)))
  mesh = make_mesh(cfg, devices)
  rules = sharding.rules_from_config(cfg.mesh)
  tx, schedule = make_optimizer(cfg)
  setup = setup_train_state(cfg, model_cfg, tx, mesh, rules)
  masking = objectives.masking(cfg, model_cfg.vocab_size - 1, None)
  step = jit_train_step(make_train_step(cfg, setup.graphdef, tx, schedule, mesh, rules, masking),
                        setup.shardings, mesh, rules)
  B, L = cfg.train.batch_size, model_cfg.max_seq_len
  batch_sh = sharding.batch_sharding(mesh, rules)
  batch = {k: jax.ShapeDtypeStruct((B, L), 'float32' if k == 'mask' else 'int32',
                                   sharding=batch_sh) for k in ('inputs', 'targets', 'mask')}
  try:
    compiled = step.lower(setup.abstract, batch).compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'out of memory' not in text.lower():
      raise
    reason = next((line.strip() for line in text.splitlines() if 'memory' in line.lower()),
                  text.splitlines()[0])
    raise UserError(f'the train step does not fit ({reason[:300]}); {ADVICE}') from None
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  n = len(devices)
  out = dict(devices=n, device_kind=devices[0].device_kind, params=metrics.param_count(model_cfg),
             arguments=memory.argument_size_in_bytes, temporaries=memory.temp_size_in_bytes,
             outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes,
             hbm=hbm, tokens_per_step=B * L,
             analytic_flops=metrics.flops_per_token(model_cfg) * B * L / n,
             compiler_flops=cost.get('flops'), seconds=cost.get('optimal_seconds'))
  # Donated arguments are updated in place: their outputs take no memory of their own.
  out['total'] = out['arguments'] + out['temporaries'] + out['outputs'] - out['aliased']
  peak = metrics.peak_flops(devices[0])
  if out['seconds'] and out['seconds'] > 0:
    out['tokens_per_s'] = B * L / out['seconds']
    out['mfu'] = metrics.mfu(out['tokens_per_s'], metrics.flops_per_token(model_cfg), n, peak)
  return out


def report(r: dict) -> str:
  gib = lambda x: f'{x / GIB:,.2f} GiB'
  lines = [f'{r["devices"]} x {r["device_kind"]} | {r["params"] / 1e6:,.1f}M parameters | '
           f'{r["tokens_per_step"]:,} tokens/step',
           f'per device: arguments {gib(r["arguments"])} + temporaries {gib(r["temporaries"])} + '
           f'outputs {gib(r["outputs"])} - donated {gib(r["aliased"])} = {gib(r["total"])}' +
           (f' of {gib(r["hbm"])} HBM: {"fits" if r["total"] <= r["hbm"] else "DOES NOT FIT"}'
            if r['hbm'] else '')]
  if r.get('compiler_flops'):
    lines.append(f'FLOPs per device and step: compiler {r["compiler_flops"]:.3e}, jaxlm analytic '
                 f'{r["analytic_flops"]:.3e} (ratio {r["compiler_flops"] / r["analytic_flops"]:.2f})')
  ratio = r['compiler_flops'] / r['analytic_flops'] if r.get('compiler_flops') else None
  if ratio is not None and not 0.5 <= ratio <= 2:
    # XLA's cost analysis counts one trip of each loop: the layer scan (model.scan_unroll below
    # the depth) and the micro-batch loop (train.grad_accum > 1) make it undercount.
    lines.append('no step-time estimate: the compiler counts one trip of each loop (the layer '
                 'scan with model.scan_unroll, train.grad_accum micro-batches), so its cost model '
                 'misses most of this step; compile with --config.model.scan_unroll=0 and '
                 '--config.train.grad_accum=1 for one.')
  elif r.get('tokens_per_s'):
    mfu = 'n/a' if r.get('mfu') is None else f'{100 * r["mfu"]:.1f}%'
    lines.append(f'compiler estimate (cost model, not a measurement): step '
                 f'{1e3 * r["seconds"]:.1f} ms, {r["tokens_per_s"]:,.0f} tokens/s, MFU {mfu}')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlm.config import validate  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  from jaxlm.mesh import configure_backend  # pylint: disable=import-outside-toplevel
  cfg = _CONFIG.value
  validate(cfg)
  configure_backend(cfg)
  hbm = None
  if _TOPOLOGY.value:
    kind, desc = topology_desc(_TOPOLOGY.value)
    devices, hbm = tpu_devices(desc), CHIPS[kind][0]
  else:
    devices = jax.devices()
  r = compile_step(cfg, devices, hbm)
  print(report(r))
  if hbm and r['total'] > hbm:
    raise UserError(f'the train step needs {r["total"] / GIB:,.1f} GiB per device, more than the '
                    f'{hbm / GIB:.0f} GiB of a {_TOPOLOGY.value} chip; {ADVICE}')


if __name__ == '__main__':
  cli.run(main)
