"""The train step: gradient accumulation, non-finite updates, float16 loss scaling, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import build_training, random_batch, tiny_config
from jaxlm.optim import LossScale, make_schedule


def _one_step(cfg, batch, num_devices=1, state=None):
  _, setup, step, batch_sh = build_training(cfg, num_devices)
  state = setup.init() if state is None else state
  return step(state, jax.device_put(batch, batch_sh))


def _assert_same_update(got, want, *, param_atol: float) -> None:
  """Two (state, metrics) results of one step: same loss and gradient norm (float32 rounding),
  and parameters within param_atol."""
  (state, m), (want_state, want_m) = got, want
  np.testing.assert_allclose(m['loss'], want_m['loss'], rtol=1e-6)
  np.testing.assert_allclose(m['grad_norm'], want_m['grad_norm'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(a, b, atol=param_atol)


def test_gradient_accumulation_equals_one_large_batch():
  cfg = tiny_config()
  cfg.mesh.data = 1
  batch = random_batch(8, cfg.model.max_seq_len)
  batch['mask'][:, :5] = 0  # uneven token counts per micro-batch still give the exact mean
  batch['mask'][3, :] = 0
  big, m_big = _one_step(cfg, batch)
  cfg.train.grad_accum = 4
  acc, m_acc = _one_step(cfg, batch)
  _assert_same_update((acc, m_acc), (big, m_big), param_atol=1e-6)


def test_gradient_accumulation_on_a_mesh():
  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp = 4, 2
  batch = random_batch(16, cfg.model.max_seq_len)
  cfg.train.batch_size = 16
  big, m_big = _one_step(cfg, batch, 8)
  cfg.train.grad_accum = 2
  acc = _one_step(cfg, batch, 8)
  # The gradient norm sees a wrong scale of the gradients, which Adam's update would hide.
  _assert_same_update(acc, (big, m_big), param_atol=1e-5)


def test_non_finite_update_is_not_applied():
  cfg = tiny_config()
  cfg.mesh.data = 1
  _, setup, step, batch_sh = build_training(cfg, 1)
  state = setup.init()
  bad = jax.tree.map(lambda x: x, state.params)
  bad['final_norm']['scale'] = bad['final_norm']['scale'].at[0].set(jnp.nan)
  state = state.replace(params=bad)
  before = jax.tree.map(np.asarray, state)
  new, metrics = step(state, jax.device_put(random_batch(8, 16), batch_sh))
  assert not bool(metrics['finite'])
  assert int(new.step) == 1  # the step counts, the update does not happen
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_loss_scale_dynamics():
  s = LossScale(jnp.float32(1024), jnp.int32(0), period=2)
  s = s.update(jnp.bool_(True))
  assert (float(s.scale), int(s.good_steps)) == (1024, 1)
  s = s.update(jnp.bool_(True))
  assert (float(s.scale), int(s.good_steps)) == (2048, 0)
  s = s.update(jnp.bool_(False))
  assert (float(s.scale), int(s.good_steps)) == (1024, 0)


def _float16_config(**optim):
  cfg = tiny_config()
  cfg.mesh.data = 1
  cfg.model.dtype = 'float16'
  for k, v in optim.items():
    cfg.optim[k] = v
  return cfg


def test_float16_default_scale_does_not_overflow():
  """The scale multiplies the batch's mean loss: the default 2^15 leaves float16 room to spare
  on 16 x 128 tokens (a scale on the summed loss would be 2048 times larger and overflow)."""
  cfg = _float16_config()
  cfg.model.max_seq_len, cfg.train.batch_size = 128, 16
  _, setup, step, batch_sh = build_training(cfg, 1)
  state = setup.init()
  assert float(state.loss_scale.scale) == cfg.optim.loss_scale_init
  batch = jax.device_put(random_batch(16, 128), batch_sh)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch)
    assert bool(metrics['finite']) and float(metrics['loss_scale']) == 2.0**15
    losses.append(float(metrics['loss']))
  assert int(state.skipped.count) == 0 and losses[-1] < losses[0]
  assert state.params['embed']['table'].dtype == jnp.float32  # master weights stay float32


def test_float16_overflow_skips_halves_the_scale_and_keeps_the_schedule():
  """A scale too large overflows the float16 gradients: the update is skipped and the scale
  halved until it fits; skipped steps still count, and the first applied update uses the
  learning rate of its own step (the one logged), not that of the number of applied updates."""
  cfg = _float16_config(loss_scale_init=2.0**30, clip_norm=0.0, weight_decay=0.0,
                        warmup_steps=50)
  cfg.train.steps = 100
  _, setup, step, batch_sh = build_training(cfg, 1)
  state = setup.init()
  batch = jax.device_put(random_batch(8, 16), batch_sh)
  scales, finite = [], []
  while not finite or not finite[-1]:
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    scales.append(float(metrics['loss_scale']))
    finite.append(bool(metrics['finite']))
    assert len(finite) < 40
  skips = len(finite) - 1
  assert skips >= 3 and not any(finite[:-1])
  assert scales == [2.0**30 / 2**i for i in range(skips + 1)]  # halved at each skip
  assert int(state.step) == skips + 1
  assert (int(state.skipped.count), int(state.skipped.last)) == (skips, skips)
  assert int(state.skipped.longest) == skips and int(state.skipped.run) == 0
  assert float(state.loss_scale.scale) == scales[-1]  # a finite step keeps the scale
  schedule = make_schedule(cfg)
  assert float(metrics['lr']) == pytest.approx(float(schedule(skips)))
  assert float(schedule(skips)) > 2 * float(schedule(0))  # still warming up: they differ
  # Adam's first applied update moves every parameter with a gradient by lr (no decay here).
  moved = np.abs(np.asarray(state.params['final_norm']['scale']) - before['final_norm']['scale'])
  np.testing.assert_allclose(np.median(moved), float(metrics['lr']), rtol=1e-3)


@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_step_is_deterministic(dropout):
  cfg = tiny_config()
  cfg.mesh.data = 1
  cfg.model.dropout = dropout
  batch = random_batch(8, 16)
  a, ma = _one_step(cfg, batch)
  b, mb = _one_step(cfg, batch)
  assert float(ma['loss']) == float(mb['loss'])
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)


def _gradients(cfg, batch, with_start=False):
  """The gradient the train step forms, exactly: the optimizer is swapped for one that keeps the
  gradient as its state (and returns it as the update). with_start: also the step's metrics and
  the parameters it started from."""
  import optax
  from jaxlm import sharding
  from jaxlm.config import resolve_model
  from jaxlm.mesh import make_mesh
  from jaxlm.state import setup_train_state
  from jaxlm.objectives import Vocab, make
  from jaxlm.step import jit_train_step, make_train_step
  keep = optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                      lambda g, state, params=None: (g, g))
  mesh = make_mesh(cfg, jax.devices()[:1])
  rules = sharding.rules_from_config(cfg.mesh)
  setup = setup_train_state(cfg, resolve_model(cfg.model, 61), keep, mesh, rules)
  step = jit_train_step(make_train_step(cfg, setup.graphdef, keep, lambda _: jnp.float32(1),
                                        mesh, rules, make(cfg, Vocab(61), 61)),
                        setup.shardings, mesh, rules)
  start = setup.init()
  params = jax.device_get(start.params)
  state, metrics = step(start, jax.device_put(batch, sharding.batch_sharding(mesh, rules)))
  if with_start:
    return jax.device_get(state.opt_state), jax.device_get(metrics), params
  return jax.device_get(state.opt_state)


@pytest.mark.parametrize('chunk', [0, 4])
def test_blockwise_loss_gradient_equals_autodiff(chunk):
  """The loss's own gradient (the default) equals jax.grad of the rematerialised loss, compared
  as gradients (one Adam step, about lr * sign(g), would hide a wrong scale), tied head (gpt2)
  and untied (llama), with z-loss and accumulation."""
  for variant, tied in (('gpt2', True), ('llama', False)):
    cfg = tiny_config(variant)
    cfg.model.tie_embeddings = tied
    cfg.mesh.data = 1
    cfg.train.loss_chunk, cfg.train.z_loss, cfg.train.grad_accum = chunk, 1e-3, 2
    batch = random_batch(8, 16)
    blockwise = _gradients(cfg, batch)
    cfg.train.loss_grad = 'autodiff'
    autodiff = _gradients(cfg, batch)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(blockwise),
                            jax.tree.leaves(autodiff)):
      scale = np.abs(b).max()
      assert scale > 0, path
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))


def test_a_familys_auxiliary_loss_joins_the_objective_once_per_step(monkeypatch):
  """The step adds the model family's auxiliary loss (the hook a Mixture-of-Experts balancing
  loss will use) to the objective. With a family whose term is c * sum(embedding^2), the gradient
  is the plain one plus 2c * embedding on the embedding and nothing elsewhere, once per step
  though the step runs 2 micro-batches, and aux_loss is logged as the term itself."""
  from jaxlm import families
  c = 0.01

  class Squares(families.TransformerFamily):
    name, has_aux_loss = 'squares', True

    @classmethod
    def aux_loss(cls, model):
      return c * jnp.sum(jnp.square(model.embed.table[...].astype(jnp.float32)))

  monkeypatch.setitem(families.FAMILIES, 'squares', Squares)
  cfg = tiny_config()
  cfg.mesh.data, cfg.train.grad_accum = 1, 2
  batch = random_batch(8, 16)
  plain, plain_metrics, start = _gradients(cfg, batch, with_start=True)
  cfg.model.kind = 'squares'
  grads, metrics, same_start = _gradients(cfg, batch, with_start=True)
  table = start['embed']['table']
  np.testing.assert_array_equal(same_start['embed']['table'], table)
  assert 'aux_loss' not in plain_metrics
  np.testing.assert_allclose(metrics['aux_loss'], c * np.sum(np.square(table)), rtol=1e-5)
  assert metrics['loss'] == plain_metrics['loss']  # the objective's own loss, as logged
  for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain)):
    expected = p + 2 * c * table if 'embed' in jax.tree_util.keystr(path) else p
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7, err_msg=str(path))


def test_chunked_loss_gives_the_same_step():
  cfg = tiny_config()
  cfg.mesh.data = 1
  batch = random_batch(8, 16)
  whole, m_whole = _one_step(cfg, batch)
  cfg.train.loss_chunk = 4
  chunked, m_chunked = _one_step(cfg, batch)
  # Adam's first step moves each weight by about lr = 1.5e-3 whatever its gradient's size, so a
  # rounding-level gradient difference shows as at most a few 1e-6 on a near-zero gradient.
  _assert_same_update((chunked, m_chunked), (whole, m_whole), param_atol=1e-5)
