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
  short = _schedule_config(schedule='wsd', decay_shape=shape, decay_steps=50)  # of 100 steps
  got = np.asarray(jax.jit(make_schedule(short))(jnp.arange(100)), np.float64)
  np.testing.assert_allclose(got, [closed_form(s, 50) for s in range(100)], rtol=1e-5, atol=1e-12)


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


NS_COEFFS = (3.4445, -4.775, 2.0315)  # optax's quintic Newton-Schulz coefficients


def _newton_schulz(g: np.ndarray, steps: int = 5) -> np.ndarray:
  """The float64 reference: Frobenius-normalised, then steps of X <- aX + (bA + cA^2)X, A = XX^T,
  on the wide orientation."""
  x = g.astype(np.float64) / (np.linalg.norm(g) + 1e-8)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  a, b, c = NS_COEFFS
  for _ in range(steps):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x if wide else x.T


def _flat(tree) -> dict[str, np.ndarray]:
  return {'/'.join(str(k.key) for k in path): np.asarray(v) for path, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('variant', ['llama', 'lstm'])
def test_muon_orthogonalises_each_matrix_and_leaves_the_rest_to_adam(variant):
  """One Muon step from fresh state equals, matrix by matrix, a float64 Newton-Schulz of the
  gradient (Nesterov momentum's first step is a multiple of it, which the normalisation removes)
  scaled to an RMS of 0.2 x sqrt(max(fan-in, fan-out)), plus weight decay: per layer, per
  query/key/value slot (per LSTM gate), the output projection over all heads; embeddings, head,
  norms get Adam's first step g / (|g| + eps), decayed where AdamW decays. A second step
  orthogonalises Nesterov momentum."""
  from flax import nnx
  from jaxlm.config import resolve_model
  from jaxlm.optim import make_optimizer
  from jaxlm.state import abstract_model
  cfg = tiny_config()
  cfg.optim.name, cfg.optim.clip_norm, cfg.optim.weight_decay = 'muon', 0.0, 0.1
  m = resolve_model(_lstm_model() if variant == 'lstm' else tiny_config(variant).model, 61)
  tx, _ = make_optimizer(cfg, m)
  shapes = nnx.to_pure_dict(nnx.state(abstract_model(m), nnx.Param))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  grads = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  update = jax.jit(tx.update)
  direction, state = update(grads, tx.init(params), params)
  got, g, p = _flat(direction), _flat(grads), _flat(params)

  def muon(name, matrices):  # matrices: g -> [n, fan_in, fan_out] and back
    to, back = matrices
    want = back(np.stack([_newton_schulz(x) for x in to(g[name])]))
    fan_in, fan_out = to(g[name]).shape[1:]
    want = want * 0.2 * np.sqrt(max(fan_in, fan_out)) + 0.1 * p[name]
    np.testing.assert_allclose(got[name], want, rtol=2e-3, atol=2e-4, err_msg=name)

  L = m.num_layers
  if variant == 'llama':
    D, K, S, E = g['blocks/attn/qkv/kernel'].shape[1:]
    muon('blocks/attn/qkv/kernel', (  # [L, D, K, S, E] -> [L * S, D, K * E]
        lambda x: x.transpose(0, 3, 1, 2, 4).reshape(L * S, D, K * E),
        lambda y: y.reshape(L, S, D, K, E).transpose(0, 2, 3, 1, 4)))
    H = g['blocks/attn/o/kernel'].shape[1]
    muon('blocks/attn/o/kernel', (lambda x: x.reshape(L, H * E, D),
                                  lambda y: y.reshape(L, H, E, D)))
    for name in ('blocks/mlp/gate/kernel', 'blocks/mlp/up/kernel', 'blocks/mlp/down/kernel'):
      muon(name, (lambda x: x, lambda y: y))
    adam = {'embed/table': 0, 'head/kernel': 0.1, 'final_norm/scale': 0,
            'blocks/attn_norm/scale': 0}
  else:
    D = m.embed_dim
    for name in ('layers/w/kernel', 'layers/u'):  # [L, D, 4, D] -> [L * 4, D, D]
      muon(name, (lambda x: x.transpose(0, 2, 1, 3).reshape(L * 4, D, D),
                  lambda y: y.reshape(L, 4, D, D).transpose(0, 2, 1, 3)))
    adam = {'embed/table': 0, 'head/kernel': 0.1, 'layers/b': 0}
  for name, decay in adam.items():
    want = g[name] / (np.abs(g[name]) + cfg.optim.eps) + decay * p[name]
    np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
  assert set(got) == set(g)
  if variant == 'llama':  # a second step orthogonalises Nesterov momentum, bias-corrected as in
    g2 = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)  # optax
    got, g2, b = _flat(update(g2, state, params)[0]), _flat(g2), cfg.optim.muon_momentum
    name = 'blocks/mlp/up/kernel'
    momentum = b * (1 - b) * g[name] + (1 - b) * g2[name]
    g[name] = b * momentum / (1 - b**3) + (1 - b) * g2[name] / (1 - b**2)
    muon(name, (lambda x: x, lambda y: y))


def test_schedule_free_adamw_equals_its_closed_form():
  """Five steps of optim.name='schedule_free_adamw' (through the optimizer the step uses) against
  Defazio et al.'s schedule-free AdamW written out in float64: Adam's second moment without
  momentum, z <- z - lr_t (g / (sqrt(v_hat) + eps) + wd y) on decayed leaves, x the average of
  the z's weighted by max lr^2, gradients taken at y = b1 x + (1 - b1) z; eval_params gives x."""
  from flax import nnx
  from jaxlm.config import resolve_model
  from jaxlm.optim import decay_mask, eval_params, includes_rate, make_optimizer, make_schedule
  from jaxlm.state import abstract_model
  cfg = _schedule_config(schedule='constant', name='schedule_free_adamw', weight_decay=0.1,
                         clip_norm=0.0, warmup_steps=3)
  o = cfg.optim
  assert includes_rate(cfg)
  m = resolve_model(tiny_config().model, 61)
  tx, schedule = make_optimizer(cfg, m)
  shapes = nnx.to_pure_dict(nnx.state(abstract_model(m), nnx.Param))
  rng = np.random.default_rng(1)
  y = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  grads = [jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
           for _ in range(5)]
  state = tx.init(y)
  update = jax.jit(tx.update)
  ref = {k: dict(y=v.astype(np.float64), z=v.astype(np.float64), x=v.astype(np.float64),
                 v=np.zeros(v.shape)) for k, v in _flat(y).items()}
  decay = _flat(decay_mask(m, False))
  weights, peak = 0.0, 0.0
  for t, g in enumerate(grads):
    direction, state = update(g, state, y)
    y = jax.tree.map(lambda p, u: p + u, y, direction)
    lr = float(make_schedule(cfg)(t))
    assert lr == pytest.approx(o.lr * min(t + 1, 3) / 3) and float(schedule(t)) == lr
    peak = max(peak, lr)
    weights += peak**2
    c = peak**2 / weights
    for k, r in ref.items():
      gk = _flat(g)[k].astype(np.float64)
      r['v'] = o.b2 * r['v'] + (1 - o.b2) * gk**2
      step = gk / (np.sqrt(r['v'] / (1 - o.b2**(t + 1))) + o.eps)
      step = step + (0.1 * r['y'] if decay[k] else 0)
      r['z'] = r['z'] - lr * step
      r['x'] = (1 - c) * r['x'] + c * r['z']
      r['y'] = o.b1 * r['x'] + (1 - o.b1) * r['z']
  got_y, got_x = _flat(y), _flat(eval_params(state, y))
  for k, r in ref.items():
    np.testing.assert_allclose(got_y[k], r['y'], rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(got_x[k], r['x'], rtol=1e-4, atol=1e-5, err_msg=k)
  assert not np.allclose(got_x['head/kernel'], got_y['head/kernel'])
