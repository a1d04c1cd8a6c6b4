"""Config validation: every preset builds; every bad value stops with a sentence naming the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from jaxlm import config as jaxlm_config
from jaxlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / 'configs').glob('*.py') if p.stem != '__init__')


def load_preset(name):
  import importlib
  return importlib.import_module(f'jaxlm.configs.{name}').get_config()


def test_presets_exist():
  assert {'base', 'gpt2_124m', 'llama_1b', 'shakespeare_char'} <= set(PRESETS)


@pytest.mark.parametrize('name', PRESETS)
def test_every_preset_validates_and_builds_abstractly(name):
  import jax
  from flax import nnx
  from jaxlm import metrics
  from jaxlm.state import abstract_model
  cfg = load_preset(name)
  jaxlm_config.validate(cfg)
  model_cfg = jaxlm_config.resolve_model(cfg.model, cfg.model.vocab_size or 1000)
  model = abstract_model(model_cfg)  # Shapes only: a 1B model costs no memory here.
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == metrics.param_count(model_cfg)


def test_shakespeare_char_is_nanogpts_cpu_recipe():
  c = load_preset('shakespeare_char')
  m = c.model
  assert (m.num_layers, m.num_heads, m.embed_dim, m.max_seq_len) == (4, 4, 128, 64)
  assert (c.train.batch_size, c.train.steps, m.dropout, m.use_bias) == (12, 2000, 0.0, False)
  assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps, c.optim.clip_norm) == (
      1e-3, 1e-4, 100, 1.0)
  assert c.data.tokenizer == 'char' and c.optim.schedule == 'cosine'


def test_llama_1b_is_the_llama_3_2_1b_shape():
  c = load_preset('llama_1b')
  assert c.model.tie_embeddings and c.model.vocab_size == 128_256
  from jaxlm import metrics
  m = jaxlm_config.resolve_model(c.model, c.data.tokenizer_vocab_size)
  assert metrics.param_count(m) == 1_235_814_400  # Meta's count for Llama 3.2 1B


def test_gpt2_124m_parameter_count():
  c = load_preset('gpt2_124m')
  m = jaxlm_config.resolve_model(c.model, 50257)
  from jaxlm import metrics
  # 124.44M with the padded 50304 vocabulary (nanoGPT reports 124.44M as well, counting wpe).
  assert abs(metrics.param_count(m) - 124_475_904) < 1


BAD = [
    ('model.num_heads', 0, 'model.num_heads=0'),
    ('model.num_heads', 3, 'must divide model.embed_dim'),
    ('model.num_kv_heads', 3, 'model.num_kv_heads=3 must divide model.num_heads'),
    ('optim.lr', -1e-3, 'optim.lr=-0.001'),
    ('optim.min_lr', 1.0, 'optim.min_lr=1.0'),
    ('model.dropout', 1.0, 'model.dropout=1.0'),
    ('model.norm', 'batchnorm', "one of 'rmsnorm', 'layernorm'"),
    ('model.dtype', 'float64', 'model.dtype'),
    ('train.grad_accum', 3, 'divisible by train.grad_accum=3'),
    ('train.steps', 0, 'train.steps=0'),
    ('data.val_fraction', 0.0, 'data.val_fraction'),
    ('mesh.rules.embed', 'fsdp,model', 'mesh.rules.embed'),
    ('mesh.tensor', 0, 'mesh.tensor=0'),
]


@pytest.mark.parametrize('field,value,message', BAD)
def test_bad_values_name_the_field(field, value, message):
  cfg = tiny_config()
  node = cfg
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace('?', r'\?')):
    jaxlm_config.validate(cfg)


def test_unknown_and_mistyped_fields():
  cfg = tiny_config()
  cfg.model.num_layer = 3  # a typo for num_layers
  with pytest.raises(UserError, match='model.num_layer is unknown'):
    jaxlm_config.validate(cfg)
  cfg = tiny_config()
  cfg.model.unlock()
  del cfg.model['num_layers']
  cfg.model.num_layers = '4'
  with pytest.raises(UserError, match='expected a int'):
    jaxlm_config.validate(cfg)


def test_two_free_mesh_axes_rejected():
  cfg = tiny_config()
  cfg.mesh.fsdp = -1
  with pytest.raises(UserError, match='at most one of'):
    jaxlm_config.validate(cfg)


def test_resolve_fills_derived_fields():
  m = jaxlm_config.resolve_model(tiny_config().model, 61)
  assert m.vocab_size == 64 and m.head_dim == 8 and m.num_kv_heads == 2
  assert m.mlp_dim == 128  # SwiGLU: 8/3 * 32 = 85.3, rounded up to a multiple of 64.
  with pytest.raises(UserError, match='smaller than the tokenizer'):
    cfg = tiny_config().model
    cfg.vocab_size = 32
    jaxlm_config.resolve_model(cfg, 61)


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, '-m', 'jaxlm.train', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('args,message', [
    (['--config.model.num_layerz=2'], "unknown field 'num_layerz' (did you mean num_layers?)"),
    (['--config=jaxlm/errors.py'], 'does not define get_config()'),
    (['--config.model.num_layers=two'], 'num_layers'),
    (['--config=configs/does_not_exist.py'], 'does_not_exist.py'),
    (['--config.optim.lr=-1'], 'optim.lr=-1'),
])
def test_cli_rejects_bad_flags_without_traceback(args, message, tmp_path):
  result = _cli(*args, f'--config.workdir={tmp_path}/run')
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()
