"""FLOPs per token, model FLOPs utilisation (MFU), and the metric writers (JSONL and TensorBoard).

MFU = tokens/s x FLOPs per token / (devices x peak FLOP/s per device). FLOPs per token count the
matmuls only, for a training step (forward + backward = 3 x forward):
  6 * N_matmul + 6 * layers * H * E * L
where N_matmul is the parameters used in matmuls (every dense kernel and the output head; not the
input embedding lookup, not norms or biases) and the second term is attention's two matmuls
(QK^T and AV, 4 * L * H * E per token forward) halved because causal attention needs only the
lower triangle. nanoGPT's estimate differs: it counts attention in full (12 * layers * H * E * L).
"""

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxlm import families, paths
from jaxlm.errors import UserError

# Dense bf16 peak FLOP/s per device, from the vendors' datasheets. Matched against the lowercased
# `device_kind` in this order; a device not listed (a CPU, say) has no MFU.
PEAK_FLOPS = (
    ('h100', 989e12), ('h200', 989e12), ('gh200', 989e12), ('b200', 2237e12), ('a100', 312e12),
    ('tpu v5p', 459e12), ('tpu v5 lite', 197e12), ('tpu v5e', 197e12), ('tpu v6 lite', 918e12),
    ('tpu v6e', 918e12), ('tpu v4', 275e12),
    ('tpu v5', 459e12),  # a v5p reports itself as 'TPU v5' (after 'tpu v5 lite' in this order)
)


def matmul_params(m: ConfigDict) -> int:
  """Parameters that take part in a matmul per token, for a resolved model config."""
  return families.of(m).matmul_params(m)


def flops_per_token(m: ConfigDict, seq_len: int | None = None) -> float:
  """Training FLOPs per token (forward and backward) of a resolved model config: 6 per matmul
  parameter, plus a Transformer's attention scores and weighted sum, over the earlier tokens
  (about half the window) in a causal model and over all of it in an encoder."""
  return families.of(m).flops_per_token(m, seq_len or m.max_seq_len)


def param_count(m: ConfigDict) -> int:
  """The analytic number of parameters of a resolved model config (checked against the model)."""
  return families.of(m).param_count(m)


def devices_text() -> str:
  """'8 cpu device(s)': how many devices of which kind this run computes on."""
  return f'{jax.device_count()} {jax.devices()[0].device_kind} device(s)'


def peak_flops(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of one device, or None where unknown (a CPU)."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


def mfu(tokens_per_s: float, flops_per_tok: float, num_devices: int,
        peak: float | None) -> float | None:
  if peak is None:
    return None
  return tokens_per_s * flops_per_tok / (num_devices * peak)


def format_value(value: float | None) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float) and (abs(value) >= 1e4 or (value and abs(value) < 1e-3)):
    return f'{value:.3e}'
  return f'{value:.4g}' if isinstance(value, float) else str(value)


# Modules tensorboardX imports whenever they are installed, for what jaxlm never asks of it:
# torch (to accept its tensors; 1-2 s where the `hf` extras are installed), and the S3 and GCS
# clients (to write event files to buckets itself; jaxlm uploads its own copy). Kept out unless
# the process has already imported them.
_NOT_FOR_TENSORBOARD = ('torch', 'boto3', 'google.cloud.storage')


def _summary_writer():
  """tensorboardX's SummaryWriter, imported here (only the writing process needs it) without the
  modules above: a name set to None in sys.modules makes its import raise ImportError, which
  tensorboardX expects for each of them."""
  blocked = [m for m in _NOT_FOR_TENSORBOARD if m not in sys.modules]
  sys.modules.update(dict.fromkeys(blocked))
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    for name in blocked:
      del sys.modules[name]
  return SummaryWriter


class MetricWriter:
  """Appends metrics to <workdir>/metrics.jsonl and TensorBoard event files in <workdir>/tb.

  Only process 0 writes; the others get a writer that does nothing. Object storage cannot append,
  so for a workdir on a bucket both are written to a local mirror (paths.local_mirror) and
  uploaded at most every UPLOAD_SECONDS and when the writer closes; metrics.jsonl starts from the
  bucket's copy, which a resumed run appends to.
  """
  UPLOAD_SECONDS = 30.0

  def __init__(self, workdir, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    SummaryWriter = _summary_writer()  # pylint: disable=invalid-name
    self.remote = paths.path(workdir) if paths.is_url(workdir) else None
    self.local = paths.local_dir(workdir)
    if self.remote:
      (self.local / 'metrics.jsonl').unlink(missing_ok=True)  # the bucket's copy is the record
      if (self.remote / 'metrics.jsonl').exists():
        paths.copy(self.remote / 'metrics.jsonl', self.local / 'metrics.jsonl')
    self.jsonl = open(self.local / 'metrics.jsonl', 'a', encoding='utf-8')
    self.tb = SummaryWriter(str(self.local / 'tb'))
    self.uploaded: dict[str, int] = {}  # file -> the size uploaded
    self.last_upload = time.monotonic()

  def write(self, step: int, metrics: Mapping[str, float | None], prefix: str) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    self.jsonl.write(json.dumps({'step': step, 'split': prefix, **values}) + '\n')
    self.jsonl.flush()
    for k, v in values.items():
      self.tb.add_scalar(f'{prefix}/{k}', v, step)
    self.tb.flush()
    self._upload()

  def write_text(self, step: int, tag: str, texts: list[str]) -> None:
    """Generated samples, to the JSONL file and TensorBoard's text tab."""
    if not self.enabled:
      return
    self.jsonl.write(json.dumps({'step': step, 'split': tag, 'texts': texts}) + '\n')
    self.jsonl.flush()
    for i, text in enumerate(texts):
      self.tb.add_text(f'{tag}/{i}', text, step)
    self.tb.flush()
    self._upload()

  def _upload(self, force: bool = False) -> None:
    """A bucket workdir: copies up the files that grew since their last upload."""
    if self.remote is None or not force and (
        time.monotonic() - self.last_upload < self.UPLOAD_SECONDS):
      return
    files = [self.local / 'metrics.jsonl'] + sorted((self.local / 'tb').glob('*'))
    for f in files:
      name = str(f.relative_to(self.local))
      if f.is_file() and self.uploaded.get(name) != f.stat().st_size:
        self.uploaded[name] = f.stat().st_size
        paths.copy(f, self.remote / name)
    self.last_upload = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tb.close()
      self._upload(force=True)


def training_seconds(train: dict[str, list[tuple[int, float]]]) -> dict[int, float]:
  """{step: seconds spent in training steps up to it}, from a run's logged step times (each
  line's step time covers the steps since the line before): compilation, evaluation and
  checkpoints are left out, so runs of different speeds compare at equal compute time."""
  elapsed, total, previous = {0: 0.0}, 0.0, 0
  for step, seconds in train.get('step_time', []):
    total += seconds * (step - previous)
    elapsed[step], previous = total, step
  return elapsed


def at_training_time(points: list[tuple[int, float]],
                     elapsed: dict[int, float]) -> list[tuple[float, float]]:
  """(step, value) points as (training seconds at that step, interpolated, value)."""
  steps = sorted(elapsed)
  return [(float(np.interp(s, steps, [elapsed[k] for k in steps])), v) for s, v in points]


def read_metrics(workdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{split: {metric: [(step, value), ...]}} from <workdir>/metrics.jsonl; a resumed run's
  repeated steps keep their last value."""
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    raise UserError(f'{path} does not exist; give the --workdir of a training run.')
  series: dict[str, dict[str, dict[int, float]]] = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:  # a line cut short when a run was killed
      continue
    split, step = record.pop('split'), record.pop('step')
    for key, value in record.items():
      if isinstance(value, (int, float)):
        series.setdefault(split, {}).setdefault(key, {})[step] = value
  return {split: {k: sorted(v.items()) for k, v in metrics.items()}
          for split, metrics in series.items()}
