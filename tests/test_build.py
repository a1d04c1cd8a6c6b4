"""jaxlm.build: the one place that assembles a step. What jaxlm.compile and jaxlm.bench measure is
the step training runs."""

import re

import jax
import pytest

from conftest import tiny_config
from jaxlm import compile as aot
from jaxlm import families, objectives, sharding, trainer


MASKING = {'unit': 'word', 'token_weighting': 'frequency', 'position_profile': 'buckets',
           'position_weights': (1, 2)}


@pytest.mark.parametrize('objective', sorted(objectives.REGISTRY) + ['mlm-masking'])
def test_compile_lowers_the_train_and_eval_steps_training_runs(tmp_path, corpus_file, objective):
  """For each objective, the train and eval steps the trainer builds (from its prepared data and
  tokenizer) and those jaxlm.compile builds (from the config alone) lower to the same program.
  Before the builder, compile's masking took the model's rounded vocabulary less one as the
  tokenizer's (a different [MASK] id), and span corruption another end-of-sequence id. Masked LM
  by whole words with frequency weights reads two tables of the data (which ids begin a word,
  how frequent each is); compile, which reads no data, has stand-ins of the same shapes, so
  there the programs are the same but for those constants' values."""
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  objective, masking = objective.split('-')[0], objective.endswith('-masking')
  cfg.data.corpus, cfg.train.objective = str(corpus_file), objective
  cfg.model.causal = objective != 'mlm'
  for field, value in (MASKING if masking else {}).items():
    cfg.mlm[field] = value
  if objective == 'span':
    cfg.model.max_seq_len = 48
  t = trainer.Trainer(cfg)
  try:
    built = aot.built_for(cfg, jax.devices())
    B, L = cfg.train.batch_size, objectives.window_length(cfg)
    batch_sh = sharding.batch_sharding(t.mesh, t.rules)
    shape = lambda k, n: jax.ShapeDtypeStruct((B, n), 'float32' if k == 'mask' else 'int32',
                                              sharding=batch_sh)
    batch = {k: shape(k, L) for k in ('inputs', 'targets', 'mask')}
    eval_batch = dict(batch)
    if built.objective.eval_rows:
      eval_batch.update(segment_ids=shape('segment_ids', L), input_mask=shape('mask', L),
                        index=shape('index', 1))
    assert built.model_cfg.to_dict() == t.model_cfg.to_dict()
    # (the tables' values elided: dense<...> constants of the vocabulary's length)
    text = lambda lowered: re.sub(rf'dense<[^>]*> : tensor<{t.model_cfg.vocab_size}x', 'dense<>',
                                  lowered.as_text()) if masking else lowered.as_text()
    train = lambda step, state: text(step.lower(state, batch))
    assert train(built.train_step, built.setup.abstract) == train(t.train_step, t.setup.abstract)
    evaluate = lambda step, params: text(step.lower(params, eval_batch))
    assert evaluate(built.eval_step, built.abstract_params) == \
        evaluate(t.eval_step, t.setup.abstract.params)
  finally:
    t.close()


def test_no_family_or_objective_is_named_outside_their_registries():
  """model.kind and train.objective are looked up in families.FAMILIES and objectives.REGISTRY;
  no other module compares them by name (adding either is its module and one registry line)."""
  import re
  from pathlib import Path
  root = Path(objectives.__file__).resolve().parents[1]
  allowed = {root / 'families.py', *(root / 'objectives').glob('*.py')}
  kinds = '|'.join(repr(kind) for kind in families.FAMILIES)
  names = '|'.join(repr(name) for name in objectives.REGISTRY)
  compared = re.compile(rf"(==|!=|\bin)\s*\(?({kinds}|{names})|({kinds}|{names})\s*(==|!=)")
  found = [f'{path.relative_to(root)}:{n}: {line.strip()}'
           for path in sorted(root.rglob('*.py')) if path not in allowed
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if compared.search(line)]
  assert not found, found


def test_signal_handlers_are_installed_in_one_module_and_never_at_import():
  """errors.py alone installs signal handlers; importing a command installs none, writes no
  environment variable and runs no config file (a bad --config does not fail an import)."""
  import os
  import subprocess
  import sys
  from pathlib import Path
  root = Path(objectives.__file__).resolve().parents[1]
  installing = [str(p.relative_to(root)) for p in sorted(root.rglob('*.py'))
                if 'signal.signal(' in p.read_text() and p.name != 'errors.py']
  assert not installing, installing
  commands = ['train', 'bench', 'compile', 'eval', 'generate', 'convert', 'prepare', 'tokenizer',
              'plot']
  probe = ('import os, signal, sys\n'
           'handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]\n'
           'env = dict(os.environ)\n'
           f'import jaxlm.{{}}\n'
           'assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers\n'
           'assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n')
  for command in commands:
    result = subprocess.run([sys.executable, '-c', probe.format(command), '--config=nope.py'],
                            cwd=root.parent, capture_output=True, text=True, timeout=120,
                            env={**{k: v for k, v in os.environ.items() if k != 'EPATH_USE_TF'},
                                 'PYTHONPATH': str(root.parent)})
    assert result.returncode == 0, (command, result.stderr[-2000:])
