"""Hugging Face checkpoints <-> jaxlm parameters: GPT-2, Llama, Mistral and Qwen2.

jaxlm's layouts (see model/): the fused query/key/value kernel is [D, K, G + 2, E] (for each
key/value head k its G = H / K query heads, then its key, then its value; query head h = k * G + g,
which is the head transformers' repeat_kv pairs with key/value head h // G), the attention output
kernel [H, E, D], dense kernels [in, out], and every block parameter stacked over a leading layers
axis. RoPE uses the rotate-half layout of transformers' Llama, so no row permutation is needed.
GPT-2's Conv1D weights are already [in, out]; its fused c_attn holds q, k, v one after the other.

Conversion is one tensor at a time (`get` reads one Hugging Face tensor, `leaves` yields one jaxlm
parameter at a time), so peak memory stays near one copy of the model plus one stacked parameter.
The files themselves (reading a model directory, writing safetensors shards and tokenizer files)
are in hf_files.py.
"""

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from flax import traverse_util
from ml_collections import ConfigDict

from jaxlm import families
from jaxlm.config import RUN_MODEL_FIELDS, adopt_architecture, resolve_model
from jaxlm.configs import base
from jaxlm.errors import UserError
from jaxlm.hf_files import Checkpoint, write_checkpoint

FAMILIES = ('gpt2', 'llama', 'mistral', 'qwen2')
ARCHITECTURES = {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM',
                 'mistral': 'MistralForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}
Get = Callable[[str], np.ndarray]


def _rope_settings(hf: dict) -> dict:
  """rope_theta and Llama 3.1 scaling from either schema: the classic top-level rope_theta and
  rope_scaling, or transformers 5's rope_parameters."""
  params = hf.get('rope_parameters') or {}
  scaling = hf.get('rope_scaling') or (params if params.get('rope_type', 'default') != 'default'
                                        else None)
  out = dict(rope_theta=float(hf.get('rope_theta', params.get('rope_theta', 10000.0))))
  if scaling:
    kind = scaling.get('rope_type', scaling.get('type'))
    if kind != 'llama3':
      raise UserError(f'RoPE scaling of type {kind!r} is not one jaxlm implements (llama3); '
                      'convert a model without it.')
    out.update(rope_scaling='llama3', rope_scaling_factor=float(scaling['factor']),
               rope_low_freq_factor=float(scaling['low_freq_factor']),
               rope_high_freq_factor=float(scaling['high_freq_factor']),
               rope_original_max_len=int(scaling['original_max_position_embeddings']))
  return out


def checkpoint_fields(ckpt: Checkpoint) -> tuple[str, dict]:
  """model_fields of a model directory's config.json; a needed field that is missing, or not a
  number where one goes, is one sentence naming the file and the field."""
  try:
    return model_fields(ckpt.config)
  except KeyError as e:
    raise UserError(f'{ckpt.directory / "config.json"} lacks the field {e.args[0]!r} that a '
                    f'{ckpt.config.get("model_type")} model needs; save the model again '
                    '(save_pretrained) or add it.') from None
  except (TypeError, ValueError) as e:
    raise UserError(f'{ckpt.directory / "config.json"} holds a value of the wrong type ({e}); '
                    'save the model again (save_pretrained) or fix it.') from None


def model_fields(hf: dict) -> tuple[str, dict]:
  """(family, jaxlm model fields) for a transformers config.json dict; one sentence if jaxlm
  cannot represent the model exactly."""
  family = hf.get('model_type')
  if family not in FAMILIES:
    raise UserError(f'the model_type {family!r} in config.json is not one jaxlm converts '
                    f'({", ".join(FAMILIES)}).')
  if family == 'gpt2':
    if hf.get('activation_function', 'gelu_new') not in ('gelu_new', 'gelu_pytorch_tanh'):
      raise UserError(f'GPT-2 with activation {hf["activation_function"]!r} is not supported '
                      '(jaxlm uses the tanh GELU, gelu_new).')
    if hf.get('scale_attn_by_inverse_layer_idx') or not hf.get('scale_attn_weights', True):
      raise UserError('GPT-2 with other attention scaling than 1/sqrt(head_dim) is not supported.')
    return family, dict(
        vocab_size=hf['vocab_size'], num_layers=hf['n_layer'], embed_dim=hf['n_embd'],
        num_heads=hf['n_head'], num_kv_heads=0, head_dim=0,
        mlp_dim=hf.get('n_inner') or 4 * hf['n_embd'], max_seq_len=hf['n_positions'],
        norm='layernorm', position='learned', mlp='gelu', use_bias=True, qkv_bias=False,
        tie_embeddings=True, norm_eps=float(hf.get('layer_norm_epsilon', 1e-5)))
  if hf.get('hidden_act', 'silu') != 'silu':
    raise UserError(f'{family} with activation {hf["hidden_act"]!r} is not supported (SwiGLU '
                    'uses silu).')
  if hf.get('mlp_bias'):
    raise UserError(f'{family} with MLP biases (mlp_bias) is not supported.')
  if family == 'llama' and hf.get('attention_bias'):
    raise UserError('llama with attention biases on the output projection (attention_bias) is not '
                    'supported.')
  context = hf['max_position_embeddings']
  window = hf.get('sliding_window') if (
      family == 'mistral' or hf.get('use_sliding_window')) else None
  if window:  # within one window, sliding-window attention is full causal attention
    context = min(context, window)
  heads = hf['num_attention_heads']
  fields = dict(
      vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
      embed_dim=hf['hidden_size'], num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
      mlp_dim=hf['intermediate_size'], max_seq_len=context, norm='rmsnorm', position='rope',
      mlp='swiglu', use_bias=False, qkv_bias=family == 'qwen2',
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      norm_eps=float(hf.get('rms_norm_eps', 1e-6)), **_rope_settings(hf))
  return family, fields


def family_of(m: ConfigDict) -> str:
  """The transformers family that represents the jaxlm model `m` exactly, or one sentence."""
  family = families.of(m)
  if not family.exports_hf:
    raise UserError(f'{family.title} (model.kind={m.kind!r}) has no transformers equivalent; '
                    'only Transformers export.')
  if not m.causal:
    raise UserError('a bidirectional jaxlm model (model.causal=False) has no transformers '
                    'causal-LM equivalent; only causal models export.')
  if (m.norm, m.position, m.mlp) == ('layernorm', 'learned', 'gelu'):
    if not (m.use_bias and m.tie_embeddings and m.num_kv_heads == m.num_heads
            and m.head_dim * m.num_heads == m.embed_dim):
      raise UserError('a GPT-2-style jaxlm model exports only with biases, tied embeddings, no '
                      'grouped-query attention and head_dim * num_heads == embed_dim.')
    return 'gpt2'
  if (m.norm, m.position, m.mlp) == ('rmsnorm', 'rope', 'swiglu') and not m.use_bias:
    return 'qwen2' if m.qkv_bias else 'llama'
  raise UserError(f'a jaxlm model with norm={m.norm}, position={m.position}, mlp={m.mlp}, '
                  f'use_bias={m.use_bias} has no transformers equivalent; GPT-2 (layernorm, '
                  'learned, gelu, biases) and Llama (rmsnorm, rope, swiglu, no biases) export.')


def hf_config(m: ConfigDict, family: str) -> dict:
  """config.json for the jaxlm model `m`, with the classic top-level keys (rope_theta,
  rope_scaling, num_key_value_heads, tie_word_embeddings) that old and new transformers read."""
  common = dict(architectures=[ARCHITECTURES[family]], model_type=family, vocab_size=m.vocab_size,
                tie_word_embeddings=m.tie_embeddings, torch_dtype='float32', use_cache=True)
  if family == 'gpt2':
    return dict(common, n_layer=m.num_layers, n_embd=m.embed_dim, n_head=m.num_heads,
                n_inner=m.mlp_dim, n_positions=m.max_seq_len, n_ctx=m.max_seq_len,
                activation_function='gelu_new', layer_norm_epsilon=m.norm_eps,
                scale_attn_weights=True, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
  scaling = None
  if m.rope_scaling == 'llama3':
    scaling = dict(rope_type='llama3', type='llama3', factor=m.rope_scaling_factor,
                   low_freq_factor=m.rope_low_freq_factor,
                   high_freq_factor=m.rope_high_freq_factor,
                   original_max_position_embeddings=m.rope_original_max_len)
  out = dict(common, num_hidden_layers=m.num_layers, hidden_size=m.embed_dim,
             num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
             head_dim=m.head_dim, intermediate_size=m.mlp_dim,
             max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps,
             rope_theta=m.rope_theta, rope_scaling=scaling, hidden_act='silu',
             attention_dropout=0.0)
  if family == 'llama':
    out.update(attention_bias=False, mlp_bias=False)
  if family == 'qwen2':
    out.update(use_sliding_window=False, sliding_window=None)
  return out


# --- tensors ---------------------------------------------------------------------------------
# Each leaf of a block: (jaxlm path, to_jaxlm(get, prefix, m) -> array, to_hf(array, prefix, m)
# -> {name: array}). `prefix` is the layer's name prefix in the Hugging Face checkpoint.


def _qkv_in(get: Get, p: str, m: ConfigDict, part: str) -> np.ndarray:
  """Llama-style q/k/v projections (weights [out, D], or biases [out]) -> [.., K, G + 2, E]."""
  K, G, E = m.num_kv_heads, m.num_heads // m.num_kv_heads, m.head_dim
  q, k, v = (get(f'{p}self_attn.{n}_proj.{part}') for n in 'qkv')
  if part == 'weight':
    q, k, v = q.T, k.T, v.T  # [D, out]
  lead = q.shape[:-1]
  return np.concatenate([q.reshape(*lead, K, G, E), k.reshape(*lead, K, 1, E),
                         v.reshape(*lead, K, 1, E)], axis=-2)


def _qkv_out(x: np.ndarray, p: str, m: ConfigDict, part: str) -> dict:
  K, G, E = m.num_kv_heads, m.num_heads // m.num_kv_heads, m.head_dim
  lead = x.shape[:-3]
  q = x[..., :G, :].reshape(*lead, K * G * E)
  k, v = x[..., G, :].reshape(*lead, K * E), x[..., G + 1, :].reshape(*lead, K * E)
  if part == 'weight':
    q, k, v = q.T, k.T, v.T
  return {f'{p}self_attn.{n}_proj.{part}': t for n, t in zip('qkv', (q, k, v))}


def _t(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


LLAMA_BLOCK = [
    ('attn_norm/scale', lambda g, p, m: g(f'{p}input_layernorm.weight'),
     lambda x, p, m: {f'{p}input_layernorm.weight': x}),
    ('attn/qkv/kernel', lambda g, p, m: _qkv_in(g, p, m, 'weight'),
     lambda x, p, m: _qkv_out(x, p, m, 'weight')),
    ('attn/qkv/bias', lambda g, p, m: _qkv_in(g, p, m, 'bias'),
     lambda x, p, m: _qkv_out(x, p, m, 'bias')),
    ('attn/o/kernel', lambda g, p, m: _t(g(f'{p}self_attn.o_proj.weight')).reshape(
        m.num_heads, m.head_dim, m.embed_dim),
     lambda x, p, m: {f'{p}self_attn.o_proj.weight': _t(x.reshape(-1, m.embed_dim))}),
    ('mlp_norm/scale', lambda g, p, m: g(f'{p}post_attention_layernorm.weight'),
     lambda x, p, m: {f'{p}post_attention_layernorm.weight': x}),
    *[(f'mlp/{n}/kernel', lambda g, p, m, n=n: _t(g(f'{p}mlp.{n}_proj.weight')),
       lambda x, p, m, n=n: {f'{p}mlp.{n}_proj.weight': _t(x)}) for n in ('gate', 'up', 'down')],
]


def _gpt2_qkv_in(x: np.ndarray, m: ConfigDict) -> np.ndarray:
  """c_attn [.., 3D] (q, k, v) -> [.., H, 3, E]."""
  lead = x.shape[:-1]
  return np.moveaxis(x.reshape(*lead, 3, m.num_heads, m.head_dim), -3, -2)


def _gpt2_qkv_out(x: np.ndarray) -> np.ndarray:
  lead = x.shape[:-3]
  return np.ascontiguousarray(np.moveaxis(x, -2, -3)).reshape(*lead, -1)


GPT2_BLOCK = [
    *[(f'{ours}/{kind}', lambda g, p, m, t=f'{theirs}.{hf_kind}': g(p + t),
       lambda x, p, m, t=f'{theirs}.{hf_kind}': {p + t: x})
      for ours, theirs in (('attn_norm', 'ln_1'), ('mlp_norm', 'ln_2'), ('mlp/up', 'mlp.c_fc'),
                           ('mlp/down', 'mlp.c_proj'))
      for kind, hf_kind in (('scale' if 'norm' in ours else 'kernel', 'weight'),
                            ('bias', 'bias'))],
    ('attn/qkv/kernel', lambda g, p, m: _gpt2_qkv_in(g(f'{p}attn.c_attn.weight'), m),
     lambda x, p, m: {f'{p}attn.c_attn.weight': _gpt2_qkv_out(x)}),
    ('attn/qkv/bias', lambda g, p, m: _gpt2_qkv_in(g(f'{p}attn.c_attn.bias'), m),
     lambda x, p, m: {f'{p}attn.c_attn.bias': _gpt2_qkv_out(x)}),
    ('attn/o/kernel', lambda g, p, m: g(f'{p}attn.c_proj.weight').reshape(
        m.num_heads, m.head_dim, m.embed_dim),
     lambda x, p, m: {f'{p}attn.c_proj.weight': x.reshape(-1, m.embed_dim)}),
    ('attn/o/bias', lambda g, p, m: g(f'{p}attn.c_proj.bias'),
     lambda x, p, m: {f'{p}attn.c_proj.bias': x}),
]


def _names(family: str, prefix: str) -> dict[str, str]:
  """The Hugging Face names of the non-block parameters, and the layer prefix."""
  if family == 'gpt2':
    return dict(embed=f'{prefix}wte.weight', pos=f'{prefix}wpe.weight',
                norm_scale=f'{prefix}ln_f.weight', norm_bias=f'{prefix}ln_f.bias',
                layer=f'{prefix}h.{{}}.')
  return dict(embed=f'{prefix}embed_tokens.weight', norm_scale=f'{prefix}norm.weight',
              head='lm_head.weight', layer=f'{prefix}layers.{{}}.')


def _block(family: str, m: ConfigDict) -> list:
  table = GPT2_BLOCK if family == 'gpt2' else LLAMA_BLOCK
  return [leaf for leaf in table if leaf[0] != 'attn/qkv/bias' or m.qkv_bias or m.use_bias]


def hf_prefix(names: set[str], family: str) -> str:
  """'transformer.' or '' for GPT-2 (GPT2LMHeadModel or GPT2Model); 'model.' for the others."""
  if family == 'gpt2':
    return 'transformer.' if 'transformer.wte.weight' in names else ''
  return 'model.'


def leaves(get: Get, m: ConfigDict, family: str, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
  """('blocks/attn/qkv/kernel', array), ... : the jaxlm parameters, one at a time, float32."""
  n = _names(family, prefix)
  f32 = lambda x: np.asarray(x, np.float32)
  yield 'embed/table', f32(get(n['embed']))
  if family == 'gpt2':
    yield 'pos_embed', f32(get(n['pos']))
    yield 'final_norm/bias', f32(get(n['norm_bias']))
  yield 'final_norm/scale', f32(get(n['norm_scale']))
  if not m.tie_embeddings:
    yield 'head/kernel', _t(f32(get(n['head'])))
  for path, to_jaxlm, _ in _block(family, m):
    yield f'blocks/{path}', np.stack([
        f32(to_jaxlm(get, n['layer'].format(i), m)) for i in range(m.num_layers)])


def hf_tensors(params: Callable[[str], np.ndarray], m: ConfigDict,
               family: str) -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face name, array), ...: the inverse of `leaves`, in a GPT2LMHeadModel or
  <Family>ForCausalLM layout; `params('blocks/attn/o/kernel')` reads one jaxlm parameter."""
  prefix = 'transformer.' if family == 'gpt2' else 'model.'
  n = _names(family, prefix)
  yield n['embed'], params('embed/table')
  if family == 'gpt2':
    yield n['pos'], params('pos_embed')
    yield n['norm_bias'], params('final_norm/bias')
  yield n['norm_scale'], params('final_norm/scale')
  if not m.tie_embeddings:
    yield n['head'], _t(params('head/kernel'))
  for path, _, to_hf in _block(family, m):
    stacked = params(f'blocks/{path}')
    for i in range(m.num_layers):
      yield from to_hf(stacked[i], n['layer'].format(i), m).items()


def hf_shapes(m: ConfigDict, family: str, prefix: str) -> Iterator[tuple[str, tuple]]:
  """(name, shape) of every tensor a Hugging Face checkpoint of `m` holds."""
  D, H, K, E, F, V = (m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim,
                      m.vocab_size)
  n = _names(family, prefix)
  yield n['embed'], (V, D)
  yield n['norm_scale'], (D,)
  if not m.tie_embeddings:
    yield n['head'], (V, D)
  for i in range(m.num_layers):
    p = n['layer'].format(i)
    if family == 'gpt2':
      yield from [(f'{p}ln_1.weight', (D,)), (f'{p}ln_1.bias', (D,)), (f'{p}ln_2.weight', (D,)),
                  (f'{p}ln_2.bias', (D,)), (f'{p}attn.c_attn.weight', (D, 3 * D)),
                  (f'{p}attn.c_attn.bias', (3 * D,)), (f'{p}attn.c_proj.weight', (D, D)),
                  (f'{p}attn.c_proj.bias', (D,)), (f'{p}mlp.c_fc.weight', (D, F)),
                  (f'{p}mlp.c_fc.bias', (F,)), (f'{p}mlp.c_proj.weight', (F, D)),
                  (f'{p}mlp.c_proj.bias', (D,))]
      continue
    out = dict(q=H * E, k=K * E, v=K * E)
    for x in 'qkv':
      yield f'{p}self_attn.{x}_proj.weight', (out[x], D)
      if m.qkv_bias:
        yield f'{p}self_attn.{x}_proj.bias', (out[x],)
    yield from [(f'{p}self_attn.o_proj.weight', (D, H * E)), (f'{p}input_layernorm.weight', (D,)),
                (f'{p}post_attention_layernorm.weight', (D,)), (f'{p}mlp.gate_proj.weight', (F, D)),
                (f'{p}mlp.up_proj.weight', (F, D)), (f'{p}mlp.down_proj.weight', (D, F))]
  if family == 'gpt2':
    yield n['pos'], (m.max_seq_len, D)
    yield n['norm_bias'], (D,)


def check_tensors(shapes: dict[str, tuple], m: ConfigDict, family: str, prefix: str,
                  where: str) -> None:
  """Every tensor the model needs is there with its shape: else one sentence naming it."""
  for name, shape in hf_shapes(m, family, prefix):
    if name not in shapes:
      raise UserError(f'{where} has no tensor {name}, which a {family} model of this config.json '
                      'has; the checkpoint is incomplete or of another architecture.')
    if tuple(shapes[name]) != tuple(shape):
      raise UserError(f'the tensor {name} in {where} has shape {tuple(shapes[name])}, but '
                      f'config.json implies {tuple(shape)}; the config and the weights disagree.')


def init_fields(directory: str, model: ConfigDict) -> str:
  """Sets the architecture fields of the run's model config `model` to those of the Hugging Face
  model in `directory` (config.init_from); returns its family."""
  family, fields = checkpoint_fields(Checkpoint(directory))
  adopt_architecture(model, dict(fields, kind='transformer'), directory)
  return family


def init_params(directory: str, m: ConfigDict) -> dict:
  """The parameters of the Hugging Face model in `directory` for the run's resolved model `m`
  (learned positions cropped to m.max_seq_len)."""
  _, imported, params = import_model(directory)
  differ = [f'{k}={m[k]!r} (the model has {imported[k]!r})' for k in imported
            if k not in RUN_MODEL_FIELDS and m[k] != imported[k]]
  if differ:
    raise UserError(f'the run\'s model differs from the one in {directory}: {", ".join(differ)}; '
                    'leave those fields to config.init_from.')
  if 'pos_embed' in params:
    params['pos_embed'] = params['pos_embed'][:m.max_seq_len]
  return params


def import_model(directory: str) -> tuple[str, ConfigDict, dict]:
  """(family, resolved jaxlm model config, parameters as a nested dict of float32 arrays)."""
  ckpt = Checkpoint(directory)
  family, fields = checkpoint_fields(ckpt)
  m = base.get_config().model
  m.update(fields)
  m = resolve_model(m, m.vocab_size)
  prefix = hf_prefix(set(ckpt.files), family)
  check_tensors(ckpt.shapes(), m, family, prefix, str(ckpt.directory))
  params = traverse_util.unflatten_dict(dict(leaves(ckpt.get, m, family, prefix)), sep='/')
  return family, m, params


def _host_copy(x) -> np.ndarray:
  """A host copy of a (possibly sharded) array that the array does not keep: np.asarray(x) caches
  its result on x, which would hold a second copy of the model until the export ends."""
  if isinstance(x, np.ndarray):
    return x
  out = np.empty(x.shape, x.dtype)
  for shard in x.addressable_shards:
    out[shard.index] = np.asarray(shard.data)
  return out


def export_model(m: ConfigDict, params: dict, out: Path, max_shard_bytes: int = 2 * 2**30,
                 dtype: str = 'float32') -> tuple[str, list[str]]:
  """Writes the jaxlm parameters `params` (a nested dict of arrays, host or device) as a
  transformers checkpoint in `out`; returns (family, files written)."""
  family = family_of(m)
  flat = traverse_util.flatten_dict(params, sep='/')
  get = lambda path: np.asarray(_host_copy(flat[path]), np.float32)

  files = write_checkpoint(hf_tensors(get, m, family), hf_config(m, family), out,
                           max_shard_bytes, dtype)
  return family, files
