"""Validation of a jaxlm ConfigDict: every mistake names the field and what it expects.

The defaults and their reasons live in `configs/base.py` (installed as `jaxlm.configs.base`); this
module checks a config against them and fills the derived model fields. It imports no JAX, so a bad
config fails in well under a second.
"""

import math
from typing import Any, Callable

from ml_collections import ConfigDict

from jaxlm import families, objectives, paths
from jaxlm.configs import base
from jaxlm.errors import UserError, invalid_field

MESH_AXES = ('dcn', 'data', 'fsdp', 'tensor')

_CHOICES = {
    'model.kind': tuple(families.FAMILIES),
    'model.norm': ('rmsnorm', 'layernorm'),
    'model.position': ('rope', 'learned'),
    'model.mlp': ('swiglu', 'gelu'),
    'model.rope_scaling': ('', 'llama3'),
    'model.dtype': ('float32', 'bfloat16', 'float16'),
    'model.remat': ('none', 'dots', 'dots_attention', 'full'),
    'model.attention': ('auto', 'xla', 'cudnn', 'splash'),
    'model.decoder_attention': ('', 'luong'),
    'model.parametrization': ('standard', 'mup'),
    'data.tokenizer': ('sentencepiece', 'char', 'byte', 'huggingface'),
    'data.packing': ('concat', 'pack'),
    'data.val_split': ('tail', 'documents'),
    'train.on_nonfinite': ('abort', 'skip'),
    'optim.name': ('adamw', 'muon', 'schedule_free_adamw'),
    'optim.schedule': ('cosine', 'constant', 'wsd'),
    'optim.decay_shape': ('linear', 'cosine', '1-sqrt'),
    'train.objective': tuple(objectives.REGISTRY),
    'train.loss_grad': ('blockwise', 'autodiff'),
}

_positive = (lambda v: v > 0, 'a positive number')
_non_negative = (lambda v: v >= 0, 'a number >= 0')
_fraction = (lambda v: 0 <= v < 1, 'a number in [0, 1)')
_share = (lambda v: 0 < v <= 1, 'a number in (0, 1]')
_ratio = (lambda v: 0 < v < 1, 'a number in (0, 1)')
_unit = (lambda v: 0 <= v <= 1, 'a number in [0, 1]')
_mesh_size = (lambda v: v == -1 or v >= 1, '-1 (the remaining devices) or a positive integer')

_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'workdir': (lambda v: bool(v.strip()), 'a directory (not empty)'),
    'seed': _non_negative,
    'cpu_devices': _non_negative,
    'model.scan_unroll': _non_negative,
    'model.vocab_size': _non_negative,
    'model.vocab_multiple': _positive,
    'model.num_layers': _positive,
    'model.embed_dim': _positive,
    'model.num_heads': _positive,
    'model.num_kv_heads': _non_negative,
    'model.head_dim': _non_negative,
    'model.mlp_dim': _non_negative,
    'model.max_seq_len': _positive,
    'model.norm_eps': _positive,
    'model.rope_theta': _positive,
    'model.rope_scaling_factor': (lambda v: v >= 1, 'a number >= 1'),
    'model.rope_low_freq_factor': _positive,
    'model.rope_high_freq_factor': _positive,
    'model.rope_original_max_len': _positive,
    'model.dropout': _fraction,
    'model.init_std': _positive,
    'model.base_width': _non_negative,
    'data.tokenizer_vocab_size': (lambda v: v >= 16, 'an integer >= 16'),
    'data.val_fraction': (lambda v: 0 < v < 1, 'a number strictly between 0 and 1'),
    'data.stride': _non_negative,
    'data.max_docs_per_row': _non_negative,
    'data.workers': _non_negative,
    'data.text_field': (lambda v: bool(v.strip()), 'a field name (not empty)'),
    'train.steps': _positive,
    'train.batch_size': _positive,
    'train.grad_accum': _positive,
    'train.z_loss': _non_negative,
    'train.loss_chunk': _non_negative,
    'train.profile_start': _non_negative,
    'train.profile_steps': _positive,
    'train.log_every': _positive,
    'train.eval_every': _positive,
    'train.eval_batches': _non_negative,
    'train.eval_tasks_every': _non_negative,
    'train.eval_tasks_limit': _non_negative,
    'train.sample_tokens': _non_negative,
    'train.eval_samples': _non_negative,
    'train.max_skips': _positive,
    'optim.lr': _positive,
    'optim.warmup_steps': _non_negative,
    'optim.min_lr': _non_negative,
    'optim.decay_steps': _non_negative,
    'optim.decay_fraction': _share,
    'optim.muon_momentum': _fraction,
    'optim.muon_ns_steps': _positive,
    'optim.muon_rms': _positive,
    'optim.schedule_free_power': _non_negative,
    'optim.b1': _fraction,
    'optim.b2': _fraction,
    'optim.eps': _positive,
    'optim.weight_decay': _non_negative,
    'optim.clip_norm': _non_negative,
    'optim.loss_scale_init': _positive,
    'optim.loss_scale_period': _positive,
    'mesh.dcn': _positive,
    'mesh.data': _mesh_size,
    'mesh.fsdp': _mesh_size,
    'mesh.tensor': _mesh_size,
    'checkpoint.every': _positive,
    'checkpoint.keep': _positive,
    'checkpoint.keep_period': _non_negative,
    'distributed.timeout': _positive,
    'distributed.coordinator_port': (lambda v: 0 <= v < 65536, 'a port in [1, 65535], or 0'),
    'distributed.local_device_ids': (
        lambda v: not v or all(i.strip().isdigit() for i in v.split(',')),
        "comma-separated device numbers such as '0,1', or ''"),
}
for _objective in objectives.REGISTRY.values():  # each objective's own settings
  _CHOICES.update(_objective.choices)
  _RANGES.update(_objective.ranges)


def _flatten(cfg: ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    name = f'{prefix}{key}'
    if isinstance(value, ConfigDict):
      out.update(_flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def _fail(field: str, value: Any, expected: str) -> None:
  raise invalid_field(field, value, expected)


# Fields that name a location: local paths or gs:// URLs (see paths.py), checked before anything
# is written (an unreadable scheme, or gs:// without its client, is one sentence).
_LOCATIONS = ('workdir', 'data.corpus', 'data.tokenizer_path')


def validate(cfg: ConfigDict) -> None:
  """Raises UserError naming the first field that is unknown, mistyped or out of range."""
  reference = _flatten(base.get_config())
  values = _flatten(cfg)
  for field, value in values.items():
    if field not in reference:
      close = [k for k in reference if k.split('.')[-1] == field.split('.')[-1]]
      hint = f' (did you mean {close[0]}?)' if close else ''
      raise UserError(f'config field {field} is unknown{hint}; see configs/base.py for the fields.')
    want = type(reference[field])
    if want is float and type(value) is int:
      continue
    if type(value) is not want:
      _fail(field, value, f'a {want.__name__} like the default {reference[field]!r}')
  for field in reference:
    if field not in values:
      raise UserError(f'config field {field} is missing; start presets from configs/base.py.')
  for field, choices in _CHOICES.items():
    if values[field] not in choices:
      _fail(field, values[field], 'one of ' + ', '.join(repr(c) for c in choices))
  for field, (ok, expected) in _RANGES.items():
    if not ok(values[field]):
      _fail(field, values[field], expected)
  for field in _LOCATIONS:
    paths.check(f'config field {field}', values[field])
  for stage in values['data.mixture'].split(';'):  # (a stage ends in @<step>)
    for item in (stage.rpartition('@')[0] if '@' in stage else stage).split(','):
      paths.check('config field data.mixture', item.strip().rpartition(':')[0])
  paths.check_local('config field data.tfds_data_dir', values['data.tfds_data_dir'])
  paths.check_local('config field init_from', values['init_from'])
  check_model(cfg.model)
  _check_cross_fields(cfg)


def check_model(m: ConfigDict) -> None:
  """The model config against its family (families.py)."""
  families.of(m).check(m)


def _check_cross_fields(cfg: ConfigDict) -> None:
  t, o = cfg.train, cfg.optim
  if t.batch_size % t.grad_accum:
    raise UserError(
        f'config field train.batch_size={t.batch_size} must be divisible by '
        f'train.grad_accum={t.grad_accum}, the number of micro-batches per step.')
  if t.loss_chunk and cfg.model.max_seq_len % t.loss_chunk:
    raise UserError(f'config field train.loss_chunk={t.loss_chunk} must divide '
                    f'model.max_seq_len={cfg.model.max_seq_len}.')
  if o.min_lr > o.lr:
    _fail('optim.min_lr', o.min_lr, f'at most optim.lr={o.lr}')
  if o.name == 'schedule_free_adamw' and cfg.model.get('parametrization') == 'mup':
    raise UserError("config field model.parametrization='mup' sets per-layer rates, which "
                    "optim.name='schedule_free_adamw' does not take (its averaging weighs each "
                    "step by one rate); use optim.name='adamw' or 'muon' with muP.")
  if o.name == 'schedule_free_adamw' and o.schedule != 'constant':
    raise UserError(f"config field optim.schedule={o.schedule!r} decays the rate, which "
                    "optim.name='schedule_free_adamw' replaces (it averages the iterates "
                    "instead); set optim.schedule='constant' (its warm-up is optim.warmup_steps).")
  check_objective(cfg)
  if t.eval_tasks and objectives.of(cfg).reads != objectives.Objective.reads:
    raise UserError(f'config field train.eval_tasks={t.eval_tasks!r} scores next-token '
                    f'predictions, which a model trained with train.objective='
                    f'{t.objective!r} does not make; leave it empty.')
  for field in ('eval_tasks_every', 'eval_tasks_limit', 'eval_tasks_include'):
    if t[field] and not t.eval_tasks:
      _fail(f'train.{field}', t[field], 'its default with train.eval_tasks empty (it sets how '
            'the tasks run)')
  d = cfg.data
  if d.tokenizer == 'huggingface' and not d.tokenizer_path:
    _fail('data.tokenizer_path', '', "a tokenizer.json (or a Hugging Face model directory holding "
          "one) with data.tokenizer='huggingface'")
  if d.mixture and d.corpus:
    raise UserError(f'config fields data.corpus={d.corpus!r} and data.mixture={d.mixture!r} are '
                    'both set; give one (a mixture names its prepared datasets itself).')
  if d.packing == 'pack' and d.stride:
    _fail('data.stride', d.stride, "0 with data.packing='pack' (strides are for concat windows)")
  if d.packing == 'concat' and d.max_docs_per_row:
    _fail('data.max_docs_per_row', d.max_docs_per_row,
          "0 with data.packing='concat' (it limits packed rows)")
  if [cfg.mesh[a] for a in MESH_AXES].count(-1) > 1:
    raise UserError('at most one of config fields mesh.data, mesh.fsdp, mesh.tensor may be -1.')
  for logical, axes in cfg.mesh.rules.items():
    for axis in filter(None, axes.split(',')):
      if axis.strip() not in MESH_AXES:
        _fail(f'mesh.rules.{logical}', axes, 'a comma-separated list of ' + ', '.join(MESH_AXES))


def check_objective(cfg: ConfigDict) -> None:
  """train.objective against the model and data (checked again once config.init_from has set the
  model's architecture: a masked-LM encoder cannot become a causal LM silently, nor the reverse).
  The model must read what the objective needs (families.Family.reads); each objective checks the
  rest of what it needs (objectives/)."""
  objective, family = objectives.of(cfg), families.of(cfg.model)
  if objective.reads not in family.reads(cfg.model):
    raise UserError(f'config field train.objective={objective.name!r} '
                    f'{families.READS[objective.reads]}, which {family.setting(cfg.model)} '
                    f'cannot; use {families.readers(objective.reads)}, or another objective.')
  objective.check(cfg)


# What a run started from trained weights (config.init_from) keeps from its own model config: how
# it computes, and the context (max_seq_len: learned positions beyond it are dropped).
RUN_MODEL_FIELDS = ('dtype', 'remat', 'scan_unroll', 'attention', 'dropout', 'init_std',
                    'max_seq_len', 'vocab_multiple')


def adopt_architecture(model: ConfigDict, fields: dict, where: str) -> None:
  """Sets the fields of the run's model config `model` to the trained model's `fields`, except
  RUN_MODEL_FIELDS; a context longer than the learned positions of `where` is an error."""
  if fields['position'] == 'learned' and model.max_seq_len > fields['max_seq_len']:
    raise UserError(f'config field model.max_seq_len={model.max_seq_len} is longer than the '
                    f'{fields["max_seq_len"]} positions the model in {where} learned; set it to '
                    'at most that.')
  for key, value in fields.items():
    if key not in RUN_MODEL_FIELDS and key in model:
      model[key] = value


def resolve_model(m: ConfigDict, tokenizer_vocab: int) -> ConfigDict:
  """Returns a copy of the model config with every derived field (the zeros) filled in.

  The vocabulary is the tokenizer's, rounded up to `vocab_multiple`, unless set explicitly, in
  which case it must hold every token id the tokenizer produces.
  """
  # Fields added since a checkpoint was written take their defaults, which keep the old behaviour.
  m = ConfigDict({**base.get_config().model.to_dict(), **m.to_dict()})
  if m.vocab_size == 0:
    m.vocab_size = math.ceil(tokenizer_vocab / m.vocab_multiple) * m.vocab_multiple
  elif m.vocab_size < tokenizer_vocab:
    raise UserError(
        f'config field model.vocab_size={m.vocab_size} is smaller than the tokenizer\'s '
        f'vocabulary of {tokenizer_vocab}; set it to 0 to follow the tokenizer.')
  m.num_kv_heads = m.num_kv_heads or m.num_heads
  m.head_dim = m.head_dim or m.embed_dim // m.num_heads
  if m.mlp_dim == 0:
    if m.mlp == 'gelu':
      m.mlp_dim = 4 * m.embed_dim
    else:  # Llama: two thirds of 4D, since SwiGLU has three matrices instead of two.
      m.mlp_dim = math.ceil(8 * m.embed_dim / 3 / 64) * 64
  m.lock()
  return m
