"""The optimizer: the schedule's values, the weight-decay mask and the z-loss, through the step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import build_training, random_batch, tiny_config
from jaxlm.loss import cross_entropy
from jaxlm.optim import make_schedule


def _schedule_config(**optim):
  cfg = tiny_config()
  cfg.train.steps = 100
  cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps = 1e-3, 1e-4, 10
  for k, v in optim.items():
    cfg.optim[k] = v
  return cfg


def test_cosine_schedule_equals_its_closed_form():
  cfg = _schedule_config()
  schedule = make_schedule(cfg)
  lr, floor, warm, total = 1e-3, 1e-4, 10, 100

  def closed_form(step):  # step t uses the curve at t + 1
    t = step + 1
    if t < warm:
      return lr * t / warm
    progress = (t - warm) / (total - warm)
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

  for step in (0, 4, 9, 30, 54, 99):
    assert float(schedule(step)) == pytest.approx(closed_form(step), rel=1e-5), step
  assert float(schedule(0)) == pytest.approx(lr / warm)  # the first step already moves
  assert float(schedule(9)) == pytest.approx(lr)  # the peak at the end of warm-up
  assert float(schedule(99)) == pytest.approx(floor)  # the last step uses min_lr


def test_constant_schedule_and_explicit_decay_length():
  constant = make_schedule(_schedule_config(schedule='constant'))
  assert [float(constant(s)) for s in (0, 9, 50, 99)] == pytest.approx([1e-4, 1e-3, 1e-3, 1e-3])
  short = make_schedule(_schedule_config(decay_steps=50))
  assert float(short(49)) == pytest.approx(1e-4) and float(short(80)) == pytest.approx(1e-4)


@pytest.mark.parametrize('shape', ['linear', 'cosine', '1-sqrt'])
def test_wsd_schedule_equals_its_closed_form_at_every_step(shape):
  """Warm-up over 10 steps, stable at lr, then the shape down to min_lr over the last 20% of 100
  steps (the last step at min_lr, and after it too); continued with 150 steps instead, a run's
  first 80 steps (its stable phase) get the same rates, and its decay starts at step 120."""
  lr, floor, warm = 1e-3, 1e-4, 10
  left = {'linear': lambda p: 1 - p, 'cosine': lambda p: 0.5 * (1 + math.cos(math.pi * p)),
          '1-sqrt': lambda p: 1 - math.sqrt(p)}[shape]

  def closed_form(step, total):
    t, start = step + 1, total - round(0.2 * total)
    if t < warm:
      return lr * t / warm
    if t <= start:
      return lr
    return floor + (lr - floor) * left(min((t - start) / (total - start), 1.0))

  for total in (100, 150):
    cfg = _schedule_config(schedule='wsd', decay_shape=shape, decay_fraction=0.2)
    cfg.train.steps = total
    got = np.asarray(jax.jit(make_schedule(cfg))(jnp.arange(total + 20)), np.float64)
    want = [closed_form(step, total) for step in range(total + 20)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    assert got[total - 1] == pytest.approx(floor) and got[-1] == pytest.approx(floor)
    if total == 100:
      stable = got[:80]
  np.testing.assert_array_equal(got[:80], stable)
  assert got[119] == pytest.approx(lr) and got[120] < lr


def _one_step(cfg, batch):
  _, setup, step, batch_sh = build_training(cfg, 1)
  state = setup.init()
  before = jax.tree.map(np.asarray, state.params)
  new, metrics = step(state, jax.device_put(batch, batch_sh))
  return before, jax.tree.map(np.asarray, new.params), metrics


@pytest.mark.parametrize('decay_embeddings', [False, True])
def test_weight_decay_reaches_only_the_masked_parameters(decay_embeddings):
  """With no counted token the gradients are zero, so a step is decay alone: kernels (and the
  embeddings when asked) shrink by exactly 1 - lr * weight_decay; norms never change."""
  cfg = tiny_config()
  cfg.mesh.data = 1
  cfg.optim.weight_decay, cfg.optim.decay_embeddings = 0.5, decay_embeddings
  batch = random_batch(8, cfg.model.max_seq_len)
  batch['mask'][:] = 0
  before, after, metrics = _one_step(cfg, batch)
  assert float(metrics['grad_norm']) == 0
  factor = 1 - float(metrics['lr']) * 0.5
  kernel = ('blocks', 'attn', 'qkv', 'kernel')
  get = lambda tree, path: tree[path[0]][path[1]][path[2]][path[3]] if len(path) == 4 else \
      tree[path[0]][path[1]]
  np.testing.assert_allclose(get(after, kernel), get(before, kernel) * factor, rtol=1e-6)
  np.testing.assert_allclose(after['head']['kernel'], before['head']['kernel'] * factor, rtol=1e-6)
  np.testing.assert_array_equal(after['final_norm']['scale'], before['final_norm']['scale'])
  np.testing.assert_array_equal(after['blocks']['attn_norm']['scale'],
                                before['blocks']['attn_norm']['scale'])
  table = (after['embed']['table'], before['embed']['table'] * (factor if decay_embeddings else 1))
  np.testing.assert_allclose(*table, rtol=1e-6)


def test_z_loss_enters_the_gradients_but_not_the_reported_loss():
  cfg = tiny_config()
  cfg.mesh.data = 1
  cfg.optim.clip_norm = 0.0
  batch = random_batch(8, cfg.model.max_seq_len)
  _, _, plain = _one_step(cfg, batch)
  cfg.train.z_loss = 0.5
  _, setup, step, batch_sh = build_training(cfg, 1)
  state = setup.init()

  def objective(params):  # the mean of ce + z * logsumexp^2, written out independently
    logits = nnx.merge(setup.graphdef, params)(jnp.asarray(batch['inputs']))
    _, ce, n = cross_entropy(logits, jnp.asarray(batch['targets']), jnp.asarray(batch['mask']))
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), -1)
    return (ce + 0.5 * jnp.sum(lse**2 * batch['mask'])) / n

  grads = jax.jit(jax.grad(objective))(state.params)  # (compiled whole: eager costs seconds)
  norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
  _, with_z = step(state, jax.device_put(batch, batch_sh))  # (donates state)
  assert float(with_z['loss']) == pytest.approx(float(plain['loss']), rel=1e-6)
  assert float(with_z['grad_norm']) == pytest.approx(norm, rel=1e-4)
  assert abs(float(with_z['grad_norm']) - float(plain['grad_norm'])) > 1e-3 * norm


def _lstm_model():
  from jaxlm.families import TRANSFORMER_FIELDS
  from jaxlm.configs import base
  m = tiny_config().model
  for field in TRANSFORMER_FIELDS:
    m[field] = base.get_config().model[field]
  m.kind = 'lstm'
  return m


def test_the_decay_mask_of_every_family_follows_the_role_of_each_parameter():
  """Every matmul weight is decayed, the LSTM's recurrent matrix included (named `u`, it was
  not: the old mask decayed only leaves named `kernel`); embeddings only when asked; norm
  scales and biases (the query/key/value bias included) never."""
  from jaxlm.config import resolve_model
  from jaxlm.optim import decay_mask
  gpt2 = tiny_config('gpt2').model
  qwen = tiny_config('llama').model
  qwen.qkv_bias = True
  matmuls = {
      'gpt2': {'blocks/attn/qkv/kernel', 'blocks/attn/o/kernel', 'blocks/mlp/up/kernel',
               'blocks/mlp/down/kernel'},
      'qwen': {'blocks/attn/qkv/kernel', 'blocks/attn/o/kernel', 'blocks/mlp/gate/kernel',
               'blocks/mlp/up/kernel', 'blocks/mlp/down/kernel', 'head/kernel'},
      'lstm': {'layers/w/kernel', 'layers/u', 'head/kernel'}}
  lookups = {'gpt2': {'embed/table', 'pos_embed'}, 'qwen': {'embed/table'},
             'lstm': {'embed/table'}}
  for name, model in (('gpt2', gpt2), ('qwen', qwen), ('lstm', _lstm_model())):
    m = resolve_model(model, 61)
    for embeddings in (False, True):
      flat = {'/'.join(str(k.key) for k in path): v for path, v in
              jax.tree_util.tree_flatten_with_path(decay_mask(m, embeddings))[0]}
      decayed = {k for k, v in flat.items() if v}
      assert decayed == matmuls[name] | (lookups[name] if embeddings else set()), (name, decayed)
      assert len(flat) > len(decayed)  # norms and biases are in the mask, undecayed
