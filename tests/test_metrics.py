"""FLOPs, MFU and the metric writers."""

import json

import pytest

from conftest import resolved_model
from jaxlm import metrics


class FakeDevice:
  def __init__(self, kind):
    self.device_kind = kind


def test_flops_per_token_gpt2_small():
  from jaxlm import config
  from jaxlm.configs import gpt2_124m
  m = config.resolve_model(gpt2_124m.get_config().model, 50257)
  n = metrics.matmul_params(m)
  assert n == 12 * (4 * 768 * 768 + 8 * 768 * 768) + 768 * 50304  # 123.6M (no wpe, tied wte)
  attention = 6 * 12 * 12 * 64 * 1024  # causal: half of nanoGPT's 12 * L * H * E * T
  assert metrics.flops_per_token(m) == 6 * n + attention


def test_flops_scale_with_sequence_length_only_through_attention():
  m = resolved_model('llama')
  a, b = metrics.flops_per_token(m, 16), metrics.flops_per_token(m, 32)
  assert b - a == 6 * m.num_layers * m.num_heads * m.head_dim * 16
  encoder = m.copy_and_resolve_references()
  encoder.unlock()
  encoder.causal = False  # every query sees the whole window: twice the causal attention
  assert (metrics.flops_per_token(encoder, 32) - metrics.flops_per_token(encoder, 16)
          == 2 * (b - a))
  assert metrics.flops_per_token(encoder, 16) - a == 6 * m.num_layers * m.num_heads * m.head_dim * 16


@pytest.mark.parametrize('kind,peak', [('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H200', 989e12),
                                       ('TPU v5 lite', 197e12), ('TPU v4', 275e12),
                                       ('TPU v5', 459e12), ('TPU v6 lite', 918e12),
                                       ('cpu', None)])
def test_peak_flops_table(kind, peak):
  assert metrics.peak_flops(FakeDevice(kind)) == peak


def test_mfu():
  assert metrics.mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
  assert metrics.mfu(1000.0, 1e9, 2, None) is None


def test_writer_skips_missing_and_non_finite(tmp_path):
  w = metrics.MetricWriter(tmp_path)
  w.write(3, {'loss': 1.5, 'mfu': None, 'grad_norm': float('nan')}, 'train')
  w.close()
  line = json.loads((tmp_path / 'metrics.jsonl').read_text())
  assert line == {'step': 3, 'split': 'train', 'loss': 1.5}
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))


def _scalars(tb_dir, tag):
  """(step, value) of `tag` in the TensorBoard event files of tb_dir (TFRecord framing: length,
  its CRC, the Event proto, its CRC)."""
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(tb_dir.iterdir()):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (n,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
  return out


def test_the_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch and the GCS client whenever they are installed (1-2 s in every
  training process); the writer keeps them out, and its event file still holds the scalars."""
  import importlib.util
  import os
  import subprocess
  import sys
  if importlib.util.find_spec('torch') is None:
    pytest.skip('torch is not installed here: nothing to keep out')
  code = ('import sys; from jaxlm import metrics; w = metrics.MetricWriter(sys.argv[1]); '
          "w.write(3, {'loss': 1.5}, 'train'); w.close(); "
          "print(sorted(m for m in ('torch', 'google.cloud.storage') if m in sys.modules))")
  result = subprocess.run([sys.executable, '-c', code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'
  assert _scalars(tmp_path / 'tb', 'train/loss') == [(3, 1.5)]
