"""TPU slices by name: 'v5p-8' -> the generation and libtpu's topology string, and each
generation's HBM. Shared by jaxlm.compile, the GKE manifests and the TPU VM launcher."""

import re

from jaxlm.errors import UserError

GIB = 2**30
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
  raise UserError(f'--topology={name!r} is not a TPU slice jaxlm knows; give v4-N or v5p-N (N '
                  'TensorCores: 8, 16, ... 8192), v5e-N or v6e-N (N chips: 1, 4, 8, ... 256), or a '
                  "shape such as 'v5p:2x2x1'.")
