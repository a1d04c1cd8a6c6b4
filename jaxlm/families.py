"""The model families, by model.kind: each one class that owns what differs between them, so that
nothing else compares the kind string.

A family owns: its config checks (`check`: a field of another family's `fields` must stay at its
default), what it can read (`reads`: the objectives it can train, by their own `reads`), its Flax
NNX module (`module`, imported when a model is built), its analytic parameter and FLOP counts
(metrics.py's MFU and the planner use them), what the memory planner counts of its activations,
whether XLA's cost model can time its step (compile), whether it has a transformers equivalent
(export-hf), and the auxiliary loss its forward pass adds to the objective (`aux_loss`: a Mixture-of-Experts load-balancing loss will come from here; None
adds nothing and leaves the step's program as it was).

This module imports no JAX: config validation uses it.
"""

from typing import Any, ClassVar

from ml_collections import ConfigDict

from jaxlm.errors import UserError, invalid_field


DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}

# Model fields only a Transformer has: the other families leave them at their defaults.
TRANSFORMER_FIELDS = ('num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim', 'norm', 'norm_eps',
                      'position', 'mlp', 'use_bias', 'rope_theta', 'rope_scaling',
                      'rope_scaling_factor', 'rope_low_freq_factor', 'rope_high_freq_factor',
                      'rope_original_max_len', 'qkv_bias', 'causal', 'attention', 'remat',
                      'scan_unroll', 'parametrization', 'base_width')

# What an objective needs its model to read (objectives.Objective.reads), in words.
READS = {'causal': 'predicts each token from those before it',
         'bidirectional': 'predicts tokens from both sides of them',
         'prefix': 'reads an input whole and predicts its continuation'}


class Family:
  """A model family; the methods take a model config (`m`, resolved unless said otherwise)."""
  name: ClassVar[str]
  title: ClassVar[str]  # 'a Transformer': what error messages call it
  fields: ClassVar[tuple[str, ...]] = ()  # model fields only this family reads
  exports_hf: ClassVar[bool] = False  # has a transformers causal-LM equivalent (export-hf)
  no_estimate: ClassVar[str] = ''  # why XLA's cost model cannot time its step, if it cannot
  has_aux_loss: ClassVar[bool] = False  # aux_loss returns a term (logged as aux_loss)
  # features(mask=...) honours any [B, 1, L, S] attention mask (lm-eval scoring shares a
  # multiple-choice question's context among its answers through one)
  takes_masks: ClassVar[bool] = False

  @classmethod
  def check(cls, m: ConfigDict) -> None:
    """Raises UserError, in one sentence, for a model config (not yet resolved) it cannot build:
    by default, a field of another family's set away from its default."""
    from jaxlm.configs import base  # pylint: disable=import-outside-toplevel
    defaults = base.get_config().model
    for other in FAMILIES.values():
      for field in () if other is cls else other.fields:
        if field not in cls.fields and m.get(field, defaults[field]) != defaults[field]:
          raise UserError(f"config field model.{field}={m[field]!r} is {other.title}'s; "
                          f'{cls.title} (model.kind={cls.name!r}) has none, so leave it at '
                          f'{defaults[field]!r}.')

  @classmethod
  def reads(cls, m: ConfigDict) -> tuple[str, ...]:
    """What a model of config `m` reads: 'causal' (each position sees those before it),
    'bidirectional' (every position of its document), 'prefix' (an input whole, then its
    continuation left to right). Objectives need one of them (Objective.reads)."""
    raise NotImplementedError

  @classmethod
  def reader(cls, need: str) -> str:
    """The setting of this family that reads `need`, for error messages ('' if none does)."""
    return f'model.kind={cls.name!r}' if need in cls.reads(ConfigDict()) else ''

  @classmethod
  def setting(cls, m: ConfigDict) -> str:
    """The model config `m` in words, for error messages."""
    del m
    return f'model.kind={cls.name!r}'

  @classmethod
  def module(cls) -> type:
    """Its Flax NNX module class: module(m, rngs=rngs) builds the model of a resolved config."""
    raise NotImplementedError

  @classmethod
  def matmul_params(cls, m: ConfigDict) -> int:
    """Parameters that take part in a matmul per token."""
    raise NotImplementedError

  @classmethod
  def flops_per_token(cls, m: ConfigDict, seq_len: int) -> float:
    """Training FLOPs per token (forward and backward) at a context of seq_len tokens."""
    return 6 * cls.matmul_params(m)

  @classmethod
  def param_count(cls, m: ConfigDict) -> int:
    raise NotImplementedError

  @classmethod
  def activation_bytes(cls, m: ConfigDict, remat: str, fused: bool,
                       tensor: int) -> tuple[float, float, float]:
    """For the memory planner: (bytes kept per token and layer for the backward pass, bytes of
    one layer's full set per token, bytes per token pair and head of attention's kept scores)."""
    raise NotImplementedError

  @classmethod
  def aux_loss(cls, model: Any) -> Any:
    """The auxiliary loss of the forward pass just run on `model` (a scalar: its mean over the
    micro-batch, added to the objective's mean; the step averages it over micro-batches), or
    None for none (has_aux_loss False)."""
    del model
    return None


class TransformerFamily(Family):
  """GPT-2 and Llama-style decoders, and the bidirectional encoder (model.causal=False)."""
  name = 'transformer'
  title = 'a Transformer'
  fields = TRANSFORMER_FIELDS
  exports_hf = True
  takes_masks = True

  @classmethod
  def reads(cls, m: ConfigDict) -> tuple[str, ...]:
    """A decoder reads left to right, or a prefix LM through its attention mask; an encoder
    (model.causal=False) both ways."""
    return ('causal', 'prefix') if m.get('causal', True) else ('bidirectional',)

  @classmethod
  def reader(cls, need: str) -> str:
    return ("model.kind='transformer' with model.causal=False" if need == 'bidirectional' else
            "model.kind='transformer' (model.causal=True)")

  @classmethod
  def setting(cls, m: ConfigDict) -> str:
    return f"model.kind='transformer' with model.causal={m.get('causal', True)}"

  @classmethod
  def check(cls, m: ConfigDict) -> None:
    super().check(m)
    if m.head_dim == 0 and m.embed_dim % m.num_heads:
      raise UserError(
          f'config field model.num_heads={m.num_heads} must divide model.embed_dim={m.embed_dim} '
          '(or set model.head_dim explicitly).')
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
      raise UserError(
          f'config field model.num_kv_heads={kv} must divide model.num_heads={m.num_heads} '
          '(each key/value head serves a whole group of query heads).')
    if m.attention == 'splash' and m.max_seq_len % 128:
      raise UserError(f'config field model.attention=\'splash\' needs model.max_seq_len '
                      f'(now {m.max_seq_len}) to be a multiple of 128, the kernel\'s block; use '
                      '\'xla\' or change the length.')
    if m.position == 'rope' and (m.head_dim or m.embed_dim // m.num_heads) % 2:
      raise UserError('RoPE rotates pairs of channels, so the head dimension '
                      '(model.head_dim, or model.embed_dim // model.num_heads) must be even.')
    if m.get('parametrization') == 'mup' and not m.base_width > 0:
      raise invalid_field('model.base_width', m.base_width,
                          "the width muP's hyperparameters were tuned at (e.g. 64) with "
                          "model.parametrization='mup'")
    if m.rope_scaling and m.position != 'rope':
      raise invalid_field('model.rope_scaling', m.rope_scaling, "'' unless model.position='rope'")
    if m.rope_scaling and m.rope_high_freq_factor <= m.rope_low_freq_factor:
      raise invalid_field('model.rope_high_freq_factor', m.rope_high_freq_factor,
                          f'a number above model.rope_low_freq_factor={m.rope_low_freq_factor}')

  @classmethod
  def module(cls) -> type:
    from jaxlm.model.transformer import Transformer  # pylint: disable=import-outside-toplevel
    return Transformer

  @classmethod
  def matmul_params(cls, m: ConfigDict) -> int:
    D, H, K, E, F = m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim
    attention = D * H * E * 2 + D * K * E * 2
    mlp = D * F * (3 if m.mlp == 'swiglu' else 2)
    return m.num_layers * (attention + mlp) + D * m.vocab_size

  @classmethod
  def flops_per_token(cls, m: ConfigDict, seq_len: int) -> float:
    """Plus attention's scores and weighted sum, over the earlier tokens (about half the window)
    in a causal model and over all of it in an encoder."""
    attention = 6 if m.get('causal', True) else 12
    return 6 * cls.matmul_params(m) + attention * m.num_layers * m.num_heads * m.head_dim * seq_len

  @classmethod
  def param_count(cls, m: ConfigDict) -> int:
    D, H, K, E, F, V = (m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim,
                        m.vocab_size)
    norm = D * (2 if m.use_bias and m.norm == 'layernorm' else 1)
    bias = m.use_bias
    attention = D * H * E + 2 * D * K * E + H * E * D + bias * (H * E + 2 * K * E + D)
    mats = 3 if m.mlp == 'swiglu' else 2
    mlp = mats * D * F + bias * ((mats - 1) * F + D)
    per_layer = attention + mlp + 2 * norm
    embed = V * D + (m.max_seq_len * D if m.position == 'learned' else 0)
    head = 0 if m.tie_embeddings else D * V
    return m.num_layers * per_layer + embed + norm + head

  @classmethod
  def activation_bytes(cls, m: ConfigDict, remat: str, fused: bool,
                       tensor: int) -> tuple[float, float, float]:
    """Each tensor a layer keeps in the compute dtype; the reference attention also keeps its
    float32 scores and its probabilities per head (when nothing recomputes them), the fused
    kernels none."""
    p = DTYPE_BYTES[m.dtype]
    D, E = m.embed_dim, m.head_dim
    H, K, F = m.num_heads / tensor, m.num_kv_heads / tensor, m.mlp_dim / tensor
    ups = 2 if m.mlp == 'swiglu' else 1
    qkv = (H + 2 * K) * E
    attention_out = H * E + (H * 4 / p if fused else 0)  # the output, and the kernel's logsumexp
    every = (4 * D  # block input, the two norms' outputs, the attention projection's output
             + qkv + (H + K) * E * (m.position == 'rope')  # projections, rotated queries and keys
             + attention_out + (ups + 1) * F)  # the MLP's up projections and activation
    if remat == 'none':
      kept = every
    elif remat in ('dots', 'dots_attention'):
      kept = D + qkv + D + ups * F + D  # block input and every matmul's output
      if remat == 'dots_attention' and fused:
        kept += qkv + attention_out  # the kernel's inputs and output
    else:  # full
      kept = D
    scores = 0 if fused else H * (4 + p)
    return kept * p, every * p, scores


LSTM_NO_ESTIMATE = "the LSTM's time steps are a loop, which XLA's cost model counts once"


def lstm_layer_params(D: int) -> int:
  """One LSTM layer of width D: input and recurrent weights of four gates, and their biases."""
  return 8 * D * D + 4 * D


def embedding_params(m: ConfigDict) -> int:
  """The embedding table, and the output head unless it is tied to it."""
  return m.vocab_size * m.embed_dim * (1 if m.tie_embeddings else 2)


class LSTMFamily(Family):
  """The LSTM language model of the case study: left to right, no attention."""
  name = 'lstm'
  title = 'an LSTM'
  no_estimate = LSTM_NO_ESTIMATE

  @classmethod
  def reads(cls, m: ConfigDict) -> tuple[str, ...]:
    return ('causal',)

  @classmethod
  def module(cls) -> type:
    from jaxlm.model.lstm import LSTM  # pylint: disable=import-outside-toplevel
    return LSTM

  @classmethod
  def matmul_params(cls, m: ConfigDict) -> int:
    """Input and recurrent weights, 4 gates each, and the head."""
    D = m.embed_dim
    return m.num_layers * 8 * D * D + D * m.vocab_size

  @classmethod
  def param_count(cls, m: ConfigDict) -> int:
    return m.num_layers * lstm_layer_params(m.embed_dim) + embedding_params(m)

  @classmethod
  def activation_bytes(cls, m: ConfigDict, remat: str, fused: bool,
                       tensor: int) -> tuple[float, float, float]:
    """Inputs, gates, and the float32 states, per token and layer."""
    del remat, fused, tensor
    kept = (m.embed_dim * 6 + 4 * m.embed_dim) * DTYPE_BYTES[m.dtype]
    return kept, kept, 0


class BiLSTMFamily(Family):
  """The bidirectional LSTM encoder (model/bilstm.py): a forward and a backward LSTM a layer,
  their outputs concatenated and projected back to the width; trained with masked LM."""
  name = 'bilstm'
  title = 'a bidirectional LSTM'
  no_estimate = LSTM_NO_ESTIMATE

  @classmethod
  def reads(cls, m: ConfigDict) -> tuple[str, ...]:
    return ('bidirectional',)

  @classmethod
  def module(cls) -> type:
    from jaxlm.model.bilstm import BiLSTM  # pylint: disable=import-outside-toplevel
    return BiLSTM

  @classmethod
  def matmul_params(cls, m: ConfigDict) -> int:
    """Two directions' input and recurrent weights and the [2D, D] projection a layer; the head."""
    D = m.embed_dim
    return m.num_layers * 18 * D * D + D * m.vocab_size

  @classmethod
  def param_count(cls, m: ConfigDict) -> int:
    D = m.embed_dim
    layer = 2 * lstm_layer_params(D) + 2 * D * D
    return m.num_layers * layer + embedding_params(m)

  @classmethod
  def activation_bytes(cls, m: ConfigDict, remat: str, fused: bool,
                       tensor: int) -> tuple[float, float, float]:
    """Each direction's inputs, gates and states, and the projection's input, per token and
    layer."""
    del remat, fused, tensor
    kept = (2 * (m.embed_dim * 6 + 4 * m.embed_dim) + 2 * m.embed_dim) * DTYPE_BYTES[m.dtype]
    return kept, kept, 0


class LSTMSeq2SeqFamily(Family):
  """The encoder-decoder (model/lstm_seq2seq.py): the bidirectional encoder reads a row's prefix,
  its final states start a multilayer LSTM decoder (optionally with Luong attention over the
  encoder's outputs); trained with span corruption or prefix -> continuation."""
  name = 'lstm_seq2seq'
  title = 'an LSTM encoder-decoder'
  fields = ('decoder_attention',)
  no_estimate = LSTM_NO_ESTIMATE

  @classmethod
  def reads(cls, m: ConfigDict) -> tuple[str, ...]:
    return ('prefix',)

  @classmethod
  def module(cls) -> type:
    from jaxlm.model.lstm_seq2seq import LSTMSeq2Seq  # pylint: disable=import-outside-toplevel
    return LSTMSeq2Seq

  @classmethod
  def matmul_params(cls, m: ConfigDict) -> int:
    """Per token: the encoder's and the decoder's layers both run over the whole row (each
    position belongs to one of them, but both are computed); attention's two projections. The
    bridges run once a row, not a token."""
    D = m.embed_dim
    attention = 3 * D * D if m.decoder_attention else 0
    return m.num_layers * (18 + 8) * D * D + attention + D * m.vocab_size

  @classmethod
  def flops_per_token(cls, m: ConfigDict, seq_len: int) -> float:
    """Plus attention's scores and weighted sum over the row's positions."""
    scores = 12 * m.embed_dim * seq_len if m.decoder_attention else 0
    return 6 * cls.matmul_params(m) + scores

  @classmethod
  def param_count(cls, m: ConfigDict) -> int:
    D = m.embed_dim
    encoder = 2 * lstm_layer_params(D) + 2 * D * D
    decoder = lstm_layer_params(D) + 2 * 2 * D * D  # and the two bridges from [2D] to [D]
    attention = 3 * D * D if m.decoder_attention else 0  # W_a [D, D], W_c [2D, D]
    return m.num_layers * (encoder + decoder) + attention + embedding_params(m)

  @classmethod
  def activation_bytes(cls, m: ConfigDict, remat: str, fused: bool,
                       tensor: int) -> tuple[float, float, float]:
    """The encoder's and the decoder's layers per token and layer; attention's float32 scores and
    probabilities once (not per layer: divided by the layers the planner multiplies by)."""
    del remat, fused, tensor
    D, p = m.embed_dim, DTYPE_BYTES[m.dtype]
    kept = (3 * (D * 6 + 4 * D) + 2 * D) * p
    return kept, kept, ((4 + p) / m.num_layers if m.decoder_attention else 0)


FAMILIES: dict[str, type[Family]] = {
    cls.name: cls for cls in (TransformerFamily, LSTMFamily, BiLSTMFamily, LSTMSeq2SeqFamily)}


def of(m: ConfigDict) -> type[Family]:
  """The family of a model config (configs older than model.kind are Transformers)."""
  return FAMILIES[m.get('kind', 'transformer')]


def readers(need: str) -> str:
  """Every family's setting that reads `need`, for error messages."""
  return ' or '.join(r for r in (f.reader(need) for f in FAMILIES.values()) if r)
