"""jaxlm.build: the one place that assembles a step. What jaxlm.compile and jaxlm.bench measure is
the step training runs."""

import jax
import pytest

from conftest import tiny_config
from jaxlm import compile as aot
from jaxlm import objectives, sharding, trainer


@pytest.mark.parametrize('objective', sorted(objectives.REGISTRY))
def test_compile_lowers_the_train_and_eval_steps_training_runs(tmp_path, corpus_file, objective):
  """For each objective, the train and eval steps the trainer builds (from its prepared data and
  tokenizer) and those jaxlm.compile builds (from the config alone) lower to the same program.
  Before the builder, compile's masking took the model's rounded vocabulary less one as the
  tokenizer's (a different [MASK] id), and span corruption another end-of-sequence id."""
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus, cfg.train.objective = str(corpus_file), objective
  cfg.model.causal = objective != 'mlm'
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
    train = lambda step, state: step.lower(state, batch).as_text()
    assert train(built.train_step, built.setup.abstract) == train(t.train_step, t.setup.abstract)
    evaluate = lambda step, params: step.lower(params, eval_batch).as_text()
    assert evaluate(built.eval_step, built.abstract_params) == \
        evaluate(t.eval_step, t.setup.abstract.params)
  finally:
    t.close()
