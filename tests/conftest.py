"""Shared test set-up: 8 simulated CPU devices, tiny configs and meshes."""

import jax

jax.config.update('jax_num_cpu_devices', 8)  # Before any JAX use: tests see 8 CPU devices...
from jaxlm.mesh import skip_absent_tpu  # noqa: E402  (and, as jaxlm's commands, no libtpu start
skip_absent_tpu()  # without a TPU: a process holding libtpu silences it in every other one)
if jax.default_backend() == 'cpu':  # ...(on a GPU host only the attention tests are meant to run)
  assert jax.device_count() == 8  # and starting the backend now keeps jaxlm's cpu_devices out.

import pytest  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from jaxlm import config as jaxlm_config  # noqa: E402
from tiny import TINY_TEXT, tiny_config  # noqa: E402,F401  (tests import them from here too)


def resolved_model(variant: str = 'llama', vocab: int = 61, **overrides) -> ConfigDict:
  c = tiny_config(variant).model
  for k, v in overrides.items():
    c[k] = v
  return jaxlm_config.resolve_model(c, vocab)


@pytest.fixture
def corpus_file(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text(TINY_TEXT)
  return path


def build_training(cfg: ConfigDict, num_devices: int | None = None, vocab: int = 61,
                   masking=None, spans=None):
  """(mesh, setup, jitted train_step, batch sharding) for `cfg` on the first num_devices devices
  (with the objective's `masking` or `spans`, see jaxlm.objectives)."""
  from jaxlm import sharding
  from jaxlm.mesh import make_mesh
  from jaxlm.optim import make_optimizer
  from jaxlm.state import setup_train_state
  from jaxlm.step import jit_train_step, make_train_step
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  mesh = make_mesh(cfg, devices)
  rules = sharding.rules_from_config(cfg.mesh)
  model_cfg = jaxlm_config.resolve_model(cfg.model, vocab)
  tx, schedule = make_optimizer(cfg, model_cfg)
  setup = setup_train_state(cfg, model_cfg, tx, mesh, rules)
  step = jit_train_step(make_train_step(cfg, setup.graphdef, tx, schedule, mesh, rules, masking,
                                        spans),
                        setup.shardings, mesh, rules)
  return mesh, setup, step, sharding.batch_sharding(mesh, rules)


def random_batch(batch_size: int, seq_len: int, vocab: int = 61, seed: int = 0):
  import numpy as np
  tokens = np.random.default_rng(seed).integers(0, vocab, (batch_size, seq_len + 1), np.int32)
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
              mask=np.ones((batch_size, seq_len), np.float32))
