"""Every bad input a user can give stops the command with one sentence that says what to change:
exit status 2, no Python traceback, and the checkpoints already written untouched."""

import shutil

import pytest

import harness
from tiny import TINY_TEXT


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A config file and a finished tiny run (checkpoints at steps 3 and 6) to copy."""
  tmp = tmp_path_factory.mktemp('bad')
  (tmp / 'corpus.txt').write_text(TINY_TEXT)
  (tmp / 'empty.txt').write_text('')
  (tmp / 'short.txt').write_text('First Cit')  # characters of the run's vocabulary
  (tmp / 'latin1.txt').write_bytes('caf\xe9 au lait'.encode('latin-1') * 10)
  (tmp / 'junk.model').write_bytes(b'this is not a sentencepiece model')
  (tmp / 'no_get_config.py').write_text('CONFIG = None\n')
  (tmp / 'a_file').write_text('not a directory')
  cfg = harness.write_config(tmp / 'cfg.py', **{
      'data.corpus': str(tmp / 'corpus.txt'), 'cpu_devices': 2, 'train.sample_tokens': 0})
  result = harness.run(harness.command(f'--config={cfg}', f'--config.workdir={tmp / "run"}'))
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp, cfg


CASES = [
    # (name, command-line arguments, a fragment of the expected error)
    ('unknown field', ['--config.model.num_layerz=2'], "unknown field 'num_layerz'"),
    ('wrong type', ['--config.model.num_layers=two'], "num_layers=two"),
    ('negative learning rate', ['--config.optim.lr=-0.001'], 'optim.lr=-0.001 is invalid'),
    ('dropout out of range', ['--config.model.dropout=1.5'], 'model.dropout=1.5 is invalid'),
    ('unknown choice', ['--config.model.norm=batchnorm'], "model.norm='batchnorm' is invalid"),
    ('heads do not divide width', ['--config.model.num_heads=5'], 'must divide model.embed_dim'),
    ('batch does not divide over data axes', ['--config.train.batch_size=7'],
     'train.batch_size=7'),
    ('heads do not divide over tensor',
     ['--config.cpu_devices=8', '--config.mesh.data=1', '--config.mesh.tensor=8'],
     'not divisible by mesh.tensor=8'),
    ('micro-batches do not divide batch', ['--config.train.grad_accum=3'],
     'divisible by train.grad_accum=3'),
    ('floor above peak learning rate', ['--config.optim.min_lr=1.0'], 'optim.min_lr=1.0'),
    ('unknown mesh axis in rules', ['--config.mesh.rules.embed=model'], 'mesh.rules.embed'),
    ('two free mesh axes', ['--config.mesh.fsdp=-1'], 'at most one of'),
    ('mesh larger than the machine', ['--config.mesh.data=3'], 'needs 3 devices but 2'),
    ('missing corpus', ['--config.data.corpus=/no/such/corpus.txt'], 'matches no file'),
    ('empty corpus', ['--config.data.corpus={tmp}/empty.txt'], 'holds no text'),
    ('corpus shorter than a sequence', ['--config.data.corpus={tmp}/short.txt'],
     'fewer than one sequence'),
    ('bytes that are not UTF-8', ['--config.data.corpus={tmp}/latin1.txt'], 'is not UTF-8 text'),
    ('tokenizer differs from the checkpoint', ['--config.data.tokenizer=byte'],
     'different tokenizer'),
    ('model differs from the checkpoint', ['--config.model.embed_dim=48'],
     'model.embed_dim=32 (now 48)'),
    ('vocabulary smaller than the tokenizer', ['--config.model.vocab_size=8'],
     'smaller than the tokenizer'),
    ('unwritable workdir', ['--config.workdir={tmp}/a_file/run'], 'is not writable'),
    ('missing config file', ['--config={tmp}/no_such_config.py'], 'cannot load the config file'),
    ('config file without get_config', ['--config={tmp}/no_get_config.py'],
     'does not define get_config()'),
    ('missing tokenizer model',
     ['--config.data.tokenizer=sentencepiece', '--config.data.tokenizer_path=/no/such.model'],
     'does not exist'),
    ('tokenizer model that is not one',
     ['--config.data.tokenizer=sentencepiece', '--config.data.tokenizer_path={tmp}/junk.model'],
     'is not a SentencePiece model'),
    ('sample prompt outside the vocabulary', ['--config.train.sample_prompt=Zebra'],
     "'Z' is not in the character vocabulary"),
    ('unknown SeqIO task', ['--config.data.corpus=seqio:no_such_task'],
     "no SeqIO task or mixture is registered as 'no_such_task'"),
    ('stray argument', ['oops'], "unexpected arguments ['oops']"),
]


@pytest.mark.parametrize('name,args,message', CASES, ids=[c[0] for c in CASES])
def test_bad_training_input(trained, tmp_path, name, args, message):
  tmp, cfg = trained
  work = tmp_path / 'run'
  shutil.copytree(tmp / 'run', work)
  before = harness.digest(work / 'checkpoints')
  args = [a.format(tmp=tmp) for a in args]
  if not any(a.startswith('--config=') for a in args):
    args = [f'--config={cfg}'] + args
  if not any(a.startswith('--config.workdir=') for a in args):
    args.append(f'--config.workdir={work}')
  result = harness.run(harness.command(*args))
  _assert_one_sentence(result, message)
  assert harness.digest(work / 'checkpoints') == before, name


@pytest.mark.parametrize('module,args,message', [
    ('jaxlm.eval', ['--step=5'], 'no checkpoint for step 5'),
    ('jaxlm.eval', ['--text=/no/such/*.txt'], 'matches no file'),
    ('jaxlm.eval', ['--references=/no/such.jsonl'], 'cannot read --references'),
    ('jaxlm.generate', ['--max_new_tokens=100'], 'max_new_tokens=100'),
    ('jaxlm.generate', ['--prompt=Zebra'], "'Z' is not in the character vocabulary"),
], ids=['eval step', 'eval text', 'eval references', 'generate length', 'generate prompt'])
def test_bad_eval_and_generate_input(trained, module, args, message):
  tmp, _ = trained
  before = harness.digest(tmp / 'run' / 'checkpoints')
  result = harness.run(harness.command(f'--workdir={tmp / "run"}', *args, module=module))
  _assert_one_sentence(result, message)
  assert harness.digest(tmp / 'run' / 'checkpoints') == before


def _assert_one_sentence(result, message):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert 'Traceback' not in result.stderr + result.stdout, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert message in errors[0], errors[0]
  assert errors[0].endswith(('.', '?', ')')), errors[0]
