"""muP (model.parametrization='mup'): at its base width it is the standard model; wider, each
part scales as Tensor Programs V says; and the coordinate check is flat under muP where the
standard parametrisation grows with the width."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm.config import resolve_model
from jaxlm.model.transformer import Transformer
from jaxlm.optim import make_optimizer


def _model(width, parametrization='standard', base_width=0, variant='llama'):
  m = tiny_config(variant).model
  m.embed_dim, m.parametrization, m.base_width = width, parametrization, base_width
  return resolve_model(m, 61)


def _flat(tree):
  return {'/'.join(str(k.key) for k in path): np.asarray(v) for path, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('variant', ['llama', 'gpt2'])
def test_mup_at_its_base_width_is_the_standard_model(variant):
  """base_width = embed_dim: the same parameters, logits and optimizer update, bit for bit."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 16)))
  out = []
  for m in (_model(64, variant=variant), _model(64, 'mup', 64, variant)):
    model = Transformer(m, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    cfg = tiny_config(variant)
    tx, _ = make_optimizer(cfg, m)
    grads = jax.tree.map(jnp.ones_like, params)
    out.append((_flat(params), np.asarray(model(tokens)),
                _flat(tx.update(grads, tx.init(params), params)[0])))
  for a, b in zip(out[0], out[1]):
    if isinstance(a, dict):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('optimizer,hidden_rate', [('adamw', 1 / 4), ('muon', 1 / 2)])
def test_mup_four_times_wider_scales_init_scores_output_and_rates(optimizer, hidden_rate):
  """At 4x the base width: hidden matrices start at 1/2 the standard std (same draws), embeddings
  and norms as standard; the head reads h / 4; attention scores are divided by E, not sqrt(E);
  the update of a hidden matrix is 1/4 of the standard one under AdamW, 1/2 under Muon, and the
  rest's are the same."""
  std, mup = _model(128), _model(128, 'mup', 32)
  a = _flat(nnx.to_pure_dict(nnx.state(Transformer(std, rngs=nnx.Rngs(0)), nnx.Param)))
  b = _flat(nnx.to_pure_dict(nnx.state(Transformer(mup, rngs=nnx.Rngs(0)), nnx.Param)))
  hidden = {'blocks/attn/qkv/kernel', 'blocks/attn/o/kernel', 'blocks/mlp/gate/kernel',
            'blocks/mlp/up/kernel', 'blocks/mlp/down/kernel'}
  for k in a:
    np.testing.assert_allclose(b[k], a[k] / 2 if k in hidden else a[k], rtol=1e-6, err_msg=k)
  model = Transformer(mup, rngs=nnx.Rngs(0))
  assert model.output_mult == 0.25 and model.blocks.attn.q_scale == pytest.approx(0.5)
  E = mup.head_dim
  assert E == 32 and 1 / np.sqrt(E) * model.blocks.attn.q_scale == pytest.approx(1 / np.sqrt(E * 4))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 16)))
  logits = np.asarray(model(tokens))
  model.output_mult = 1.0  # the same model without the output multiplier
  np.testing.assert_allclose(logits, np.asarray(model(tokens)) / 4, rtol=1e-5, atol=1e-7)
  cfg = tiny_config()
  cfg.optim.name, cfg.optim.clip_norm = optimizer, 0.0
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        nnx.to_pure_dict(nnx.state(Transformer(std, rngs=nnx.Rngs(0)),
                                                   nnx.Param)))
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
  updates = []
  for m in (std, mup):
    tx, _ = make_optimizer(cfg, m)
    updates.append(_flat(tx.update(grads, tx.init(params), params)[0]))
  for k in updates[0]:
    rate = hidden_rate if k in hidden else 1.0
    np.testing.assert_allclose(updates[1][k], updates[0][k] * rate, rtol=1e-5, atol=1e-7,
                               err_msg=k)


def test_the_coordinate_check_is_flat_under_mup_and_grows_in_the_standard_one():
  """Widths 32 and 128 (base 32), two AdamW steps at a high rate on the shipped corpus: after
  them, every block's output and the logits are within 1.5x of width 32's under muP, while in the
  standard parametrisation the last block's have grown over 4x and the logits' over 2x."""
  from jaxlm.mup import coordinate_check
  cfg = tiny_config()
  cfg.model.max_seq_len, cfg.train.batch_size = 32, 8
  cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule = 1e-2, 0, 'constant'
  cfg.optim.clip_norm, cfg.optim.weight_decay = 0.0, 0.0
  grown = {}
  for parametrization in ('standard', 'mup'):
    cfg.model.parametrization, cfg.model.base_width = parametrization, 32
    sizes = coordinate_check(cfg, (32, 128), steps=2)
    grown[parametrization] = {k: sizes[128][k][-1] / sizes[32][k][-1] for k in sizes[32]}
  assert all(1 / 1.5 < r < 1.5 for k, r in grown['mup'].items() if k != 'embedding'), grown
  assert grown['standard']['block 2'] > 4 and grown['standard']['logits'] > 2, grown
