"""End to end: a tiny run trains, evaluates, checkpoints and samples; stop + resume = one run."""

import json
import re
import shutil

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import tiny_config
from jaxlm import trainer
from jaxlm.errors import UserError


def _config(tmp_path, corpus_file, name='run', **train):
  cfg = tiny_config(workdir=str(tmp_path / name))
  cfg.data.corpus = str(corpus_file)
  for k, v in train.items():
    cfg.train[k] = v
  return cfg


def _train_losses(workdir):
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {l['step']: l['loss'] for l in lines if l['split'] == 'train'}


def test_tiny_run_end_to_end(tmp_path, corpus_file):
  cfg = _config(tmp_path, corpus_file)
  # Six steps at a high constant rate learn the letter frequencies, at least.
  cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule = 1e-2, 1, 'constant'
  result = trainer.run(cfg)
  workdir = tmp_path / 'run'
  losses = _train_losses(workdir)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  assert np.isfinite(result['val']['loss']) and result['val']['perplexity'] > 1
  vocab = trainer.data.open_run_data(cfg, workdir).tokenizer.vocab_size
  assert result['val']['loss'] < np.log(vocab) - 0.3  # learnt beyond uniform over the vocabulary
  assert losses[6] < losses[1] - 0.5  # and training lowered its loss
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == \
      ['3', '6']
  assert list((workdir / 'tb').glob('events.out.tfevents.*'))
  assert isinstance(result['sample'], str) and result['sample']
  assert 'tokens_per_s' in result['train'] and result['train']['mfu'] is None  # CPU: no peak
  # Running the finished command again does nothing and keeps the checkpoints.
  again = trainer.run(cfg)
  assert 'sample' not in again
  assert _train_losses(workdir) == losses


def _stopped_and_resumed(cfg, tmp_path) -> dict:
  """Runs cfg (workdir <tmp>/straight, 6 steps) through, then again in <tmp>/resumed stopped
  after step 3 and resumed to 6; asserts every loss of the two is the same, bit for bit (steps
  4-6 included), and returns the uninterrupted run's result."""
  result = trainer.run(cfg)
  expected = _train_losses(tmp_path / 'straight')
  cfg.workdir = str(tmp_path / 'resumed')
  cfg.train.steps = 3
  trainer.run(cfg)
  cfg.train.steps = 6
  trainer.run(cfg)
  assert _train_losses(tmp_path / 'resumed') == expected
  return result


def test_stop_and_resume_equals_uninterrupted(tmp_path, corpus_file):
  cfg = _config(tmp_path, corpus_file, 'straight')
  cfg.model.dropout = 0.1  # resumed randomness must match too
  cfg.optim.decay_steps = 6  # the schedule must not depend on where the first run stops
  _stopped_and_resumed(cfg, tmp_path)


def test_resume_with_another_tokenizer_is_refused(tmp_path, corpus_file):
  cfg = _config(tmp_path, corpus_file, steps=3)
  trainer.run(cfg)
  cfg.data.tokenizer = 'byte'
  cfg.train.steps = 6
  with pytest.raises(UserError, match='different tokenizer'):
    trainer.run(cfg)


def test_unwritable_workdir(tmp_path, corpus_file):
  (tmp_path / 'file').write_text('x')
  cfg = _config(tmp_path, corpus_file)
  cfg.workdir = str(tmp_path / 'file' / 'run')
  with pytest.raises(UserError, match='is not writable'):
    trainer.run(cfg)


def test_resume_with_another_model_names_what_differs(tmp_path, corpus_file):
  cfg = _config(tmp_path, corpus_file, steps=3)
  trainer.run(cfg)
  cfg.model.embed_dim = 48
  cfg.train.steps = 6
  with pytest.raises(UserError, match=r'trained with model.embed_dim=32 \(now 48\), '
                                      r'model.head_dim=8 \(now 12\); a resumed run must keep'):
    trainer.run(cfg)


@pytest.mark.parametrize('field,value,message', [
    ('model.norm', 'layernorm', "model.norm='rmsnorm' (now 'layernorm')"),  # same shapes
    ('model.max_seq_len', 32, 'model.max_seq_len=16 (now 32)'),
    ('data.stride', 4, 'data.stride=0 (now 4)'),
    ('train.batch_size', 16, 'train.batch_size=8 (now 16)'),
])
def test_resume_compares_the_whole_architecture_and_data(tmp_path, corpus_file, field, value,
                                                          message):
  cfg = _config(tmp_path, corpus_file, steps=3, sample_tokens=0)
  trainer.run(cfg)
  section, name = field.split('.')
  cfg[section][name] = value
  cfg.train.steps = 6
  with pytest.raises(UserError, match=re.escape(message)):
    trainer.run(cfg)
  cfg[section][name] = tiny_config()[section][name]
  cfg.model.dtype, cfg.model.remat = 'bfloat16', 'full'  # how it computes may change
  assert trainer.run(cfg)['train']['loss'] > 0


def test_sentencepiece_run_resumes_after_its_prepared_data_is_deleted(tmp_path, corpus_file):
  """The workdir's prepared data is a cache: deleted, it is prepared again (the same vocabulary,
  the same shards) and the run resumes; another vocabulary size is refused, not used silently."""
  cfg = _config(tmp_path, corpus_file, steps=3, sample_tokens=0)
  cfg.data.tokenizer, cfg.data.tokenizer_vocab_size = 'sentencepiece', 300
  trainer.run(cfg)
  shutil.rmtree(tmp_path / 'run' / 'data')
  cfg.train.steps = 6
  assert trainer.run(cfg)['train']['loss'] > 0  # resumed from 3: the same data again
  assert sorted(_train_losses(tmp_path / 'run')) == [1, 2, 3, 4, 5, 6]
  cfg.data.tokenizer_vocab_size, cfg.train.steps = 320, 9
  with pytest.raises(UserError, match='was trained with a different tokenizer'):
    trainer.run(cfg)


def test_resume_on_another_corpus_is_refused(tmp_path, corpus_file):
  cfg = _config(tmp_path, corpus_file, steps=3, sample_tokens=0)
  trainer.run(cfg)
  corpus_file.write_text(corpus_file.read_text()[::-1])  # the same characters, other text
  cfg.train.steps = 6
  with pytest.raises(UserError, match='was trained on other prepared data'):
    trainer.run(cfg)


def test_profile_of_chosen_steps(tmp_path, corpus_file):
  cfg = _config(tmp_path, corpus_file)
  cfg.train.profile_start, cfg.train.profile_steps = 2, 2
  cfg.train.sample_tokens = 0
  trainer.run(cfg)
  traces = list((tmp_path / 'run' / 'profile').rglob('*.xplane.pb'))
  assert traces and traces[0].stat().st_size > 0


def test_a_mixture_trains_logs_its_proportions_and_evaluates_each_dataset(tmp_path):
  from jaxlm import eval as eval_cli
  from jaxlm.data.prepare import Settings, prepare
  from jaxlm.data.sources import SHIPPED_CORPUS
  speeches = SHIPPED_CORPUS.read_text().split('\n\n')[:400]
  for name, texts in [('verse', speeches[::2]), ('prose', speeches[1::2])]:
    (tmp_path / f'{name}.txt').write_text('\n\n'.join(texts))
    prepare(Settings(source=str(tmp_path / f'{name}.txt'), tokenizer='byte', val_tail=True,
                     val_fraction=0.1), tmp_path / name, workers=1, progress=False)
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.mixture = f'{tmp_path / "verse"}:3,{tmp_path / "prose"}:1'
  cfg.train.steps, cfg.train.sample_tokens, cfg.train.log_every = 10, 0, 10
  result = trainer.run(cfg)
  assert result['train']['mix/verse'] == pytest.approx(0.75, abs=0.02)  # 80 rows, 3:1
  assert result['train']['mix/prose'] == pytest.approx(0.25, abs=0.02)
  out = eval_cli.run(str(tmp_path / 'run'), None, '', '', 8, 0)['results']
  assert set(out) == {'validation', 'validation:verse', 'validation:prose'}
  parts = out['validation:verse']['tokens'] + out['validation:prose']['tokens']
  assert out['validation']['tokens'] == parts


def test_validation_scores_the_same_tokens_a_micro_batch_at_a_time(tmp_path, corpus_file):
  """Validation runs a micro-batch at a time (what the train step runs at once, so it fits where
  training does), and train.eval_batches counts whole batches: with 2 micro-batches the same
  tokens are scored, with the same loss, as with one batch of the same size."""
  vals = [trainer.run(_config(tmp_path, corpus_file, f'accum{accum}', steps=1, batch_size=16,
                              grad_accum=accum, eval_batches=1))['val'] for accum in (1, 2)]
  assert vals[0]['tokens'] == vals[1]['tokens'] == 16 * 16  # eval_batches x batch x context
  np.testing.assert_allclose(vals[0]['loss'], vals[1]['loss'], rtol=1e-5)


def test_mixture_validation_scores_each_dataset_on_its_weighted_share(tmp_path, capsys):
  """Each dataset of a mixture is validated on its own share of train.eval_batches (3:1 over 2
  batches: 2 micro-batches and 1), logged as val/<name>/loss; val/loss is the weighted mean.
  Before, the first dataset took the whole budget and the next one a single document. Weights
  that do not sum to one are normalised, and the log says so."""
  from jaxlm.data.prepare import Settings, prepare
  from tiny import TINY_TEXT
  sets = {}
  for name, text in (('upper', TINY_TEXT.upper()), ('lower', TINY_TEXT.lower())):
    src = tmp_path / f'{name}.jsonl'
    src.write_text(''.join(json.dumps({'text': text[i:] + text}) + '\n' for i in range(6)))
    prepare(Settings(source=str(src), tokenizer='byte', val_docs=3), tmp_path / name, workers=1,
            progress=False)
    sets[name] = tmp_path / name
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.tokenizer = 'byte'
  cfg.data.mixture = f'{sets["upper"]}:3,{sets["lower"]}:1'
  cfg.train.steps, cfg.train.eval_every, cfg.train.eval_batches = 1, 1, 2
  cfg.train.sample_tokens = 0
  val = trainer.run(cfg)['val']
  rows = cfg.train.batch_size * cfg.model.max_seq_len
  assert (val['upper/tokens'], val['lower/tokens']) == (2 * rows, rows)
  assert val['loss'] == pytest.approx(0.75 * val['upper/loss'] + 0.25 * val['lower/loss'])
  assert val['upper/loss'] != val['lower/loss']
  logged = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert any('upper/loss' in l for l in logged if l['split'] == 'val')
  assert 'data.mixture weights add up to 4; mixing them as upper 0.75, lower 0.25' in \
      capsys.readouterr().out


def _set(cfg, fields):
  for field, value in fields.items():
    section, name = field.split('.')
    cfg[section][name] = value


MLM = {'train.objective': 'mlm', 'model.causal': False}


@pytest.mark.parametrize('first,changed,message', [
    ({}, {'train.objective': 'span'}, "train.objective='causal' (now 'span')"),
    ({**MLM, 'mlm.ratio_schedule': 'linear', 'mlm.ratio_end': 0.3},
     {'mlm.ratio_schedule': 'cosine'}, "mlm.ratio_schedule='linear' (now 'cosine')"),
    ({**MLM}, {'mlm.mask_fraction': 1.0, 'mlm.random_fraction': 0.0},
     'mlm.mask_fraction=0.8 (now 1.0), mlm.random_fraction=0.1 (now 0.0)'),
    ({'train.objective': 'span'}, {'span.noise_density': 0.3},
     'span.noise_density=0.15 (now 0.3)'),
])
def test_resume_refuses_a_changed_objective(tmp_path, corpus_file, first, changed, message):
  """The objective and the settings of its masking change what is trained: a resumed run that
  changes them is refused, naming each with both values (they were accepted silently)."""
  cfg = _config(tmp_path, corpus_file, steps=2, sample_tokens=0, eval_every=100)
  _set(cfg, first)
  trainer.run(cfg)
  _set(cfg, changed)
  cfg.train.steps = 4
  with pytest.raises(UserError, match=re.escape(message)):
    trainer.run(cfg)


def test_float16_turned_on_or_off_on_resume_restores_the_rest(tmp_path, corpus_file):
  """model.dtype is free on resume, float16 (and its loss scale) included: turned off, every
  other array comes back as saved and the state has no loss scale; turned on, the loss scale
  starts at optim.loss_scale_init. With it change the other settings documented as free
  (grad_accum, the optimizer's, the loss chunk, the mesh, steps): the run goes on."""
  cfg = _config(tmp_path, corpus_file, steps=3, sample_tokens=0, eval_every=100)

  def restored(dtype):
    c = ConfigDict(cfg.to_dict())
    c.model.dtype, c.train.steps = dtype, 6
    t = trainer.Trainer(c)
    try:
      return jax.device_get(t.restore_or_init())
    finally:
      t.close()

  cfg.model.dtype = 'float16'
  trainer.run(cfg)
  as16, as32 = restored('float16'), restored('float32')
  assert int(as32.step) == 3 and as32.loss_scale is None and as16.loss_scale is not None
  for a, b in zip(jax.tree.leaves((as16.params, as16.opt_state, as16.rng)),
                  jax.tree.leaves((as32.params, as32.opt_state, as32.rng))):
    np.testing.assert_array_equal(a, b)
  cfg.workdir, cfg.model.dtype = str(tmp_path / 'from32'), 'float32'
  trainer.run(cfg)
  on = restored('float16')
  assert int(on.step) == 3 and float(on.loss_scale.scale) == cfg.optim.loss_scale_init
  cfg.model.dtype, cfg.train.steps, cfg.train.grad_accum = 'float16', 5, 2
  cfg.optim.lr, cfg.train.loss_chunk = 1e-3, 8
  cfg.mesh.data, cfg.mesh.tensor = 4, 2  # (micro-batches of 4 rows over 4 data shards)
  assert np.isfinite(trainer.run(cfg)['train']['loss'])
  assert sorted(_train_losses(tmp_path / 'from32')) == [1, 2, 3, 4, 5]


def test_init_from_a_masked_lm_into_a_causal_run_is_refused(tmp_path, corpus_file):
  """init_from takes the trained model's architecture, model.causal included: a masked-LM encoder
  is refused for a causal run (it trained one silently), while a causal model may start a span
  corruption run (a prefix LM is causal after its prefix)."""
  mlm = _config(tmp_path, corpus_file, 'mlm', steps=1, sample_tokens=0)
  _set(mlm, MLM)
  trainer.run(mlm)
  causal = _config(tmp_path, corpus_file, 'causal', steps=1, sample_tokens=0)
  causal.init_from = str(tmp_path / 'mlm')
  with pytest.raises(UserError, match=r"init_from=.* train.objective='causal' cannot train: "
                                      r".* which model.kind='transformer' with "
                                      r"model.causal=False cannot; use "):
    trainer.run(causal)
  assert not (tmp_path / 'causal' / 'checkpoints').exists() or not any(
      (tmp_path / 'causal' / 'checkpoints').iterdir())
  trainer.run(_config(tmp_path, corpus_file, 'lm', steps=1, sample_tokens=0))
  span = _config(tmp_path, corpus_file, 'span', steps=1, sample_tokens=0)
  span.init_from, span.train.objective = str(tmp_path / 'lm'), 'span'
  assert np.isfinite(trainer.run(span)['train']['loss'])


def test_schedule_free_resumes_exactly_and_evaluates_its_average(tmp_path, corpus_file):
  """optim.name='schedule_free_adamw': stopped at step 3 and resumed, every loss equals an
  uninterrupted run's; what jaxlm.eval, generation and export load is the average
  x = (y - (1 - b1) z) / b1, not the parameters y the gradients were taken at, and training's
  last validation (on x) equals jaxlm.eval's of the same checkpoint."""
  from jaxlm import eval as jaxlm_eval
  from jaxlm.checkpoint import Checkpointer
  from jaxlm.restore import load_trained
  cfg = _config(tmp_path, corpus_file, 'straight')
  cfg.optim.name, cfg.optim.schedule = 'schedule_free_adamw', 'constant'
  cfg.train.eval_batches = 0  # the whole split, as jaxlm.eval scores it
  result = _stopped_and_resumed(cfg, tmp_path)
  loaded = load_trained(str(tmp_path / 'straight'), None)
  ckpt = Checkpointer(tmp_path / 'straight' / 'checkpoints', keep=None, async_save=False,
                      create=False)
  from jaxlm.build import build
  from jaxlm.objectives import Vocab
  built = build(loaded.cfg, Vocab.of(loaded.tokenizer, loaded.data.token_frequencies()),
                model_cfg=loaded.model_cfg)
  y, opt_state = ckpt.restore_params(built.abstract_params, 6, built.setup.abstract.opt_state)
  ckpt.close()
  z = opt_state[1].z
  for got, yi, zi in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(y), jax.tree.leaves(z)):
    np.testing.assert_allclose(np.asarray(got), (np.asarray(yi) - 0.1 * np.asarray(zi)) / 0.9,
                               rtol=1e-5, atol=1e-6)
  assert not np.allclose(loaded.params['head']['kernel'], y['head']['kernel'])
  from jaxlm.warmstart import Source  # init_from such a run starts from x too
  started = Source(str(tmp_path / 'straight')).params(
      loaded.model_cfg, loaded.mesh, loaded.rules,
      jax.tree.map(lambda a: a.sharding, built.abstract_params))
  for got, want in zip(jax.tree.leaves(started), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  scored = jaxlm_eval.run(str(tmp_path / 'straight'), None, '', '', 0, 0)['results']['validation']
  assert scored['tokens'] == result['val']['tokens']
  assert scored['loss'] == pytest.approx(result['val']['loss'], rel=1e-5)
