"""Every preset compiled ahead of time for TPU slices on this host (libtpu, the `tpu` extra): the
markdown table of docs/BENCHMARKS.md. Compiler figures and cost-model estimates, not measurements.

  python launch/tpu_presets.py [--topologies=v5p-8,v6e-8,v5p-256] [--presets=base,llama_1b]

A preset runs as configured except where the slice calls for a change, which its row names: a batch
that does not divide over the chips is rounded up to a multiple of them; gpt2_124m's 20
micro-batches (sized for one GPU) become 5 on 4 or 8 chips and 1 on 128; and llama_1b's batch of
512 x 2048 tokens takes micro-batches on 4 or 8 chips (16 on v5p-8, 32 on v6e-8).
"""

import importlib.util
import time

from absl import flags

from jaxlm import cli

_TOPOLOGIES = flags.DEFINE_list('topologies', ['v5p-8', 'v6e-8', 'v5p-256'], 'TPU slices.')
_PRESETS = flags.DEFINE_list('presets', ['base', 'shakespeare_char', 'lstm_char', 'mlm_base',
                                         'span_base', 'gpt2_124m', 'llama_1b'], 'Presets.')
# Micro-batches where the preset's own default does not suit the slice: gpt2_124m's 20 are for one
# GPU (its docstring: divide them by the devices), llama_1b's single batch fits 128 chips, not 4-8.
ACCUM = {('gpt2_124m', 'v5p-8'): 5, ('gpt2_124m', 'v6e-8'): 5, ('gpt2_124m', 'v5p-256'): 1,
         ('llama_1b', 'v5p-8'): 16, ('llama_1b', 'v6e-8'): 32}


def for_slice(name: str, topology: str, chips: int):
  """The preset `name` as compiled for `chips` chips of `topology`, and the changes made: the
  micro-batches of ACCUM, and a micro-batch rounded up to a multiple of the chips."""
  cfg = importlib.import_module(f'jaxlm.configs.{name}').get_config()
  changed = []
  if (name, topology) in ACCUM:
    cfg.train.grad_accum = ACCUM[name, topology]
    changed.append(f'grad_accum={cfg.train.grad_accum}')
  accum = cfg.train.grad_accum
  if (cfg.train.batch_size // accum) % chips:
    cfg.train.batch_size = -(-cfg.train.batch_size // accum // chips) * chips * accum
    changed.append(f'batch_size={cfg.train.batch_size}')
  return cfg, changed


def main(argv):
  del argv
  unknown = [n for n in _PRESETS.value if importlib.util.find_spec(f'jaxlm.configs.{n}') is None]
  cli.require(_PRESETS, not unknown, 'names of files in configs/ (base, gpt2_124m, llama_1b, ...)')
  from jaxlm import compile as aot  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  gib = lambda x: f'{x / 2**30:.2f}'
  print('| preset | slice | changed | per device (XLA) | planned (ratio) | HBM | FLOPs ratio '
        '| eval step | est. step | est. tokens/s | est. MFU | estimate from | compile s |')
  print('|' + ' --- |' * 13)
  for topology in _TOPOLOGIES.value:
    kind, desc = aot.topology_desc(topology)
    devices, hbm = aot.tpu_devices(desc), aot.CHIPS[kind][0]
    chips = len(devices)
    for name in _PRESETS.value:
      cfg, changed = for_slice(name, topology, chips)
      start = time.perf_counter()
      try:
        r = aot.compile_step(cfg, devices, hbm)
      except UserError as e:
        print(f'| {name} | {topology} | {", ".join(changed)} | {e} |' + ' |' * 9, flush=True)
        continue
      seconds = time.perf_counter() - start
      est = (f'{1e3 * r["seconds"]:.1f} ms', f'{r["tokens_per_s"]:,.0f}',
             f'{100 * r["mfu"]:.1f}%', r['estimate_from']) if r.get('seconds') else \
          ('-', '-', '-', f'none: {r.get("no_estimate", "")}')
      print(f'| {name} | {topology} | {", ".join(changed) or "-"} | {gib(r["total"])} GiB '
            f'| {gib(r["planned"]["total"])} GiB ({r["planned"]["total"] / r["total"]:.2f}) '
            f'| {hbm / 2**30:.0f} GiB | {r["compiler_flops"] / r["analytic_flops"]:.2f} '
            f'| {gib(r["eval_total"])} GiB '
            f'| {" | ".join(est)} | {seconds:.0f} |', flush=True)


if __name__ == '__main__':
  cli.run(main)
