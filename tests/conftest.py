"""Shared test set-up: 8 simulated CPU devices, tiny configs and meshes."""

import os

# The tests' CPU programs compile with XLA's LLVM backend at optimization level 0: the same
# operations with fewer LLVM passes (floating-point results may differ from the default build's
# in the last bits), in about half the compile time, which is most of what the tests spend.
# Every comparison a test makes is between programs compiled alike (the commands the tests start
# inherit the flag); training, evaluation and the benchmarks keep XLA's default level.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402

from jaxlm import paths  # noqa: E402
paths.without_tensorflow()  # as every command's start: etils.epath decides once per process
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


def pytest_configure(config):
  """A persistent compilation cache for the tests and the commands they start (harness.env), one
  per test session: made by the first process (the controller, before pytest-xdist starts its workers,
  which inherit it) and removed at its end, so no entry outlives the session."""
  import os
  import tempfile
  if 'JAXLM_TEST_XLA_CACHE' not in os.environ:
    os.environ['JAXLM_TEST_XLA_CACHE'] = tempfile.mkdtemp(prefix='jaxlm-test-xla-cache-')
    os.environ['JAXLM_CACHE'] = os.path.join(os.environ['JAXLM_TEST_XLA_CACHE'], 'jaxlm')
    config.jaxlm_cache_owner = True  # (and jaxlm's own cache: bucket copies, packing plans)
  # The tests' own steps share it too: many compile the same tiny programs (a hit loads XLA's
  # executable for the same program, options and devices; what runs is the same).
  jax.config.update('jax_compilation_cache_dir', os.environ['JAXLM_TEST_XLA_CACHE'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


# The test files by their share of the suite's time (`make test --durations`, 2026-12-05), the
# longest first. `make test` hands whole files to its two workers in this order
# (--dist loadfile --no-loadscope-reorder): the long files start at once and the short ones fill
# in at the end, so neither worker idles while the other finishes a long file. A file missing
# here runs after these, in its own order; a stale order costs balance, never a test.
LONGEST_FIRST = ('fault_tolerance', 'plan', 'compile', 'lstm', 'objectives', 'harness', 'trainer',
                 'sweep', 'launch', 'clean', 'hf', 'step', 'bad_input', 'eval', 'masking', 'cloud',
                 'sharding', 'fim', 'rate', 'attention', 'sampling', 'model', 'tf_sources', 'loss',
                 'warmstart', 'pipeline', 'mup', 'optim', 'build', 'prepare', 'config', 'data',
                 'cluster', 'metrics', 'checkpoint')


def pytest_collection_modifyitems(config, items):
  del config
  rank = {f'test_{name}.py': i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept


def pytest_unconfigure(config):
  import os
  import shutil
  if getattr(config, 'jaxlm_cache_owner', False):
    shutil.rmtree(os.environ.pop('JAXLM_TEST_XLA_CACHE'), ignore_errors=True)


@pytest.fixture
def corpus_file(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text(TINY_TEXT)
  return path


def build_training(cfg: ConfigDict, num_devices: int | None = None, vocab: int = 61,
                   eos: int | None = None):
  """(mesh, setup, jitted train_step, batch sharding) for `cfg` on the first num_devices devices,
  built as every command builds it (jaxlm.build), for a tokenizer of `vocab` ids."""
  from jaxlm import sharding
  from jaxlm.build import build
  from jaxlm.objectives import Vocab
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  built = build(cfg, Vocab(vocab, eos, eos), devices)
  return built.mesh, built.setup, built.train_step, sharding.batch_sharding(built.mesh,
                                                                            built.rules)


def random_batch(batch_size: int, seq_len: int, vocab: int = 61, seed: int = 0):
  import numpy as np
  tokens = np.random.default_rng(seed).integers(0, vocab, (batch_size, seq_len + 1), np.int32)
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
              mask=np.ones((batch_size, seq_len), np.float32))
