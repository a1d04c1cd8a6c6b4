"""The muP coordinate check (jaxlm/mup.py), drawn as Tensor Programs V's figure: for each
parametrisation, the mean |x| of each layer's output against the width, one line per training
step, printed as a table and saved as a PNG.

  python launch/coord_check.py --widths=64,128,256,512 --steps=4 --out=docs/coord_check.png

The model is configs/base.py's Transformer (4 layers; 4 heads, so that 64 is a width) at each
width, trained with AdamW at --lr (constant, no warm-up, no clipping or decay, as the paper's
check) on byte windows of the shipped corpus; --optimizer=muon checks Muon instead.
"""

from absl import flags

from jaxlm import cli
from jaxlm.errors import UserError

_WIDTHS = flags.DEFINE_list('widths', ['64', '128', '256', '512'], 'Widths (model.embed_dim).')
_STEPS = flags.DEFINE_integer('steps', 4, 'Training steps after initialisation.')
_LR = flags.DEFINE_float('lr', 1e-2, 'The learning rate (high enough to show the growth).')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'adamw', ['adamw', 'muon'], 'optim.name.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Rows a step.')
_LENGTH = flags.DEFINE_integer('seq_len', 64, 'model.max_seq_len.')
_OUT = flags.DEFINE_string('out', 'coord_check.png', 'The PNG to write.')


def main(argv: list[str]) -> None:
  del argv
  try:
    widths = [int(w) for w in _WIDTHS.value]
  except ValueError:
    raise UserError(f'--widths={",".join(_WIDTHS.value)} is not a list of integers; give e.g. '
                    '--widths=64,128,256.') from None
  cli.require(_WIDTHS, len(widths) >= 2 and all(w > 0 and w % 8 == 0 for w in widths),
              'at least two positive widths, each a multiple of 8 (4 heads of an even size)')
  cli.require(_STEPS, _STEPS.value >= 1, 'at least 1')
  cli.require(_LR, _LR.value > 0, 'a positive rate')
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  from jaxlm.configs import base  # pylint: disable=import-outside-toplevel
  from jaxlm.mup import coordinate_check  # pylint: disable=import-outside-toplevel
  cfg = base.get_config()
  cfg.model.max_seq_len, cfg.train.batch_size = _LENGTH.value, _BATCH.value
  cfg.optim.name, cfg.optim.lr, cfg.optim.schedule = _OPTIMIZER.value, _LR.value, 'constant'
  cfg.optim.warmup_steps, cfg.optim.clip_norm, cfg.optim.weight_decay = 0, 0.0, 0.0
  cfg.model.num_heads, cfg.model.base_width = 4, widths[0]
  results = {}
  for parametrization in ('standard', 'mup'):
    cfg.model.parametrization = parametrization
    results[parametrization] = coordinate_check(cfg, widths, _STEPS.value)
  layers = list(results['mup'][widths[0]])
  fig, axes = plt.subplots(2, len(layers), figsize=(3 * len(layers), 6), squeeze=False)
  for row, (parametrization, sizes) in enumerate(results.items()):
    print(f'{parametrization}: mean |x| at widths {widths} (init, then after each step)')
    for col, layer in enumerate(layers):
      ax = axes[row][col]
      for t in range(_STEPS.value + 1):
        ys = [sizes[w][layer][t] for w in widths]
        ax.plot(widths, ys, marker='o', label=f't={t}')
        print(f'  {layer:>10} t={t}: ' + ' '.join(f'{y:9.4f}' for y in ys))
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_title(f'{parametrization}: {layer}', fontsize=9)
      ax.set_xlabel('width')
  axes[0][0].set_ylabel('mean |x|')
  axes[1][0].set_ylabel('mean |x|')
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(f'Coordinate check: {_OPTIMIZER.value}, lr {_LR.value:g}, base width '
               f'{widths[0]}', fontsize=10)
  fig.tight_layout()
  fig.savefig(_OUT.value, dpi=110)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
