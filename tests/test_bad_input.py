"""Every bad input a user can give stops the command with one sentence that says what to change:
exit status 2, no Python traceback, and the checkpoints already written untouched."""

import json
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
  (tmp / 'short.txt').write_text('First Citizen:\n')  # 14 tokens train, 1 validates
  (tmp / 'bad_lines.jsonl').write_text('{"text": "First"}\n{"text": "Citi\n')
  (tmp / 'latin1.txt').write_bytes('caf\xe9 au lait'.encode('latin-1') * 10)
  (tmp / 'junk.model').write_bytes(b'this is not a sentencepiece model')
  (tmp / 'no_get_config.py').write_text('CONFIG = None\n')
  (tmp / 'a_file').write_text('not a directory')
  (tmp / 'syntax.py').write_text('def get_config(:\n')
  (tmp / 'imports.py').write_text('import no_such_module_anywhere\n')
  (tmp / 'raises.py').write_text('def get_config():\n  raise ValueError("no such preset")\n')
  (tmp / 'a_dict.py').write_text('def get_config():\n  return {"model": {}}\n')
  (tmp / 'empty.jsonl').write_text('')
  (tmp / 'bad.jsonl').write_text('{"prompt": "First"}\n')
  (tmp / 'prompts.txt').write_text('First\n')
  (tmp / 'out.model').write_bytes(b'an existing file')
  (tmp / 'no_metrics').mkdir()
  (tmp / 'a_sweep').mkdir()  # a sweep of one point, never run
  (tmp / 'untrained' / 'checkpoints').mkdir(parents=True)
  (tmp / 'no_loss').mkdir()
  (tmp / 'no_loss' / 'metrics.jsonl').write_text('{"step": 1, "split": "samples", "texts": []}\n')
  _prepared_datasets(tmp)
  _damaged_files(tmp)
  cfg = harness.write_config(tmp / 'cfg.py', **{
      'data.corpus': str(tmp / 'corpus.txt'), 'cpu_devices': 2, 'train.sample_tokens': 0})
  (tmp / 'a_sweep' / 'sweep.json').write_text(json.dumps(dict(config=str(cfg), kind='grid', points=[
      dict(name='lr=1e-3', overrides=[['optim.lr', '1e-3']])])))
  result = harness.run(harness.command(f'--config={cfg}', f'--config.workdir={tmp / "run"}'))
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp, cfg


LLAMA_CONFIG = dict(model_type='llama', vocab_size=64, hidden_size=16, intermediate_size=32,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _damaged_files(tmp):
  """A truncated gzip corpus, a directory named like a PNG, and Hugging Face model directories
  with a config.json that is not JSON and with a model.safetensors that is not safetensors."""
  import gzip
  import json
  data = gzip.compress(''.join(json.dumps({'text': TINY_TEXT[i:]}) + '\n'
                               for i in range(20)).encode())
  (tmp / 'trunc.jsonl.gz').write_bytes(data[:len(data) // 2])
  (tmp / 'dir.png').mkdir()
  for name in ('hf_notjson', 'hf_garbage'):
    (tmp / name).mkdir()
    (tmp / name / 'config.json').write_text(json.dumps(LLAMA_CONFIG))
    (tmp / name / 'model.safetensors').write_bytes(b'garbage, not safetensors' * 10)
  (tmp / 'hf_notjson' / 'config.json').write_text('{"model_type": "llama",')


def _prepared_datasets(tmp):
  """Prepared datasets to point runs at: byte and char tokenized, and two damaged copies; a
  SentencePiece model none of them was made with."""
  from jaxlm.data.prepare import Settings, prepare
  from jaxlm.data.tokenizers import train_sentencepiece
  import json
  for name, tokenizer in [('prep_byte', 'byte'), ('prep_char', 'char'), ('prep_missing', 'byte'),
                          ('prep_truncated', 'byte'), ('prep_uncounted', 'byte')]:
    prepare(Settings(source=str(tmp / 'corpus.txt'), tokenizer=tokenizer, val_fraction=0.1,
                     val_tail=True), tmp / name, workers=1, progress=False)
  manifest = json.loads((tmp / 'prep_uncounted' / 'manifest.json').read_text())
  (tmp / 'prep_uncounted' / manifest.pop('token_counts')).unlink()  # as prepared before counts
  (tmp / 'prep_uncounted' / 'manifest.json').write_text(json.dumps(manifest))
  (tmp / 'prep_missing' / 'train-00000.arrayrecord').unlink()
  shard = tmp / 'prep_truncated' / 'validation-00000.arrayrecord'
  shard.write_bytes(shard.read_bytes()[:-10])
  train_sentencepiece([tmp / 'corpus.txt'], tmp / 'spm.model', vocab_size=320)


CASES = [
    # (name, command-line arguments, a fragment of the expected error)
    ('corpus truncated gzip', ['--config.data.corpus={tmp}/trunc.jsonl.gz'],
     'trunc.jsonl.gz is not a whole gzip file'),
    ('init_from config not JSON', ['--config.init_from={tmp}/hf_notjson'],
     'hf_notjson/config.json is not readable JSON'),
    ('init_from garbage safetensors', ['--config.init_from={tmp}/hf_garbage'],
     'hf_garbage/model.safetensors is not a readable safetensors file'),
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
    ('config file with a syntax error', ['--config={tmp}/syntax.py'],
     'has a syntax error at line 1'),
    ('config file whose import fails', ['--config={tmp}/imports.py'],
     "fails while it is imported (ModuleNotFoundError: No module named 'no_such_module_anywhere')"),
    ('get_config that raises', ['--config={tmp}/raises.py'],
     'raised ValueError: no such preset'),
    ('get_config that returns a dict', ['--config={tmp}/a_dict.py'],
     'returned a dict, not an ml_collections ConfigDict'),
    ('get_config given an argument it does not take', ['--config=configs/base.py:llama'],
     "passes 'llama' to get_config(), but get_config() in configs/base.py takes no argument"),
    ('empty workdir', ['--config.workdir='], "config field workdir='' is invalid"),
    ('no skips allowed', ['--config.train.max_skips=0'], 'train.max_skips=0 is invalid'),
    ('norm differs from the checkpoint', ['--config.model.norm=layernorm'],
     "model.norm='rmsnorm' (now 'layernorm')"),
    ('context differs from the checkpoint', ['--config.model.max_seq_len=32'],
     'model.max_seq_len=16 (now 32)'),
    ('seed differs from the checkpoint', ['--config.seed=1'], 'seed=0 (now 1)'),
    ('batch differs from the checkpoint', ['--config.train.batch_size=16'],
     'train.batch_size=8 (now 16)'),
    ('window stride differs from the checkpoint', ['--config.data.stride=4'],
     'data.stride=0 (now 4)'),
    ('s3 workdir', ['--config.workdir=s3://bucket/run'],
     "workdir='s3://bucket/run' uses the s3:// scheme, which jaxlm does not read"),
    ('hdfs corpus', ['--config.data.corpus=hdfs://host/*.txt'], 'uses the hdfs:// scheme'),
    ('ftp mixture item', ['--config.data.mixture=a:0.5,ftp://b/c:0.5'], 'uses the ftp:// scheme'),
    ('huggingface tokenizer without a path', ['--config.data.tokenizer=huggingface'],
     "data.tokenizer_path='' is invalid"),
    ('transformer field on an lstm', ['--config.model.kind=lstm'],
     "config field model.num_heads=4 is a Transformer's; an LSTM (model.kind='lstm') has none"),
    ('span corruption of packed documents',
     ['--config.train.objective=span', '--config.data.packing=pack'],
     "train.objective='span' corrupts windows of the token stream; set data.packing='concat'"),
    ('span corruption on an encoder', ['--config.train.objective=span', '--config.model.causal=False'],
     "config field train.objective='span' reads an input whole and predicts its continuation, "
     "which model.kind='transformer' with model.causal=False cannot; use "
     "model.kind='transformer' (model.causal=True) or model.kind='lstm_seq2seq'"),
    ('muP on an lstm', ['--config=configs/lstm_char.py', '--config.model.parametrization=mup',
                        '--config.model.base_width=64'],
     "config field model.parametrization='mup' is a Transformer's; an LSTM (model.kind='lstm') "
     'has none'),
    ('muP without a base width', ['--config.model.parametrization=mup'],
     "model.base_width=0 is invalid: expected the width muP's hyperparameters were tuned at"),
    ('muP with schedule-free AdamW',
     ['--config.model.parametrization=mup', '--config.model.base_width=16',
      '--config.optim.name=schedule_free_adamw', '--config.optim.schedule=constant'],
     "which optim.name='schedule_free_adamw' does not take"),
    ('schedule-free AdamW with a decay', ['--config.optim.name=schedule_free_adamw'],
     "optim.schedule='cosine' decays the rate, which optim.name='schedule_free_adamw' replaces"),
    ('span corruption on an lstm', ['--config=configs/lstm_char.py', '--config.train.objective=span'],
     "train.objective='span' reads an input whole and predicts its continuation, which "
     "model.kind='lstm' cannot"),
    ('masked LM on an lstm', ['--config=configs/lstm_char.py', '--config.train.objective=mlm'],
     "train.objective='mlm' predicts tokens from both sides of them, which model.kind='lstm' "
     "cannot; use model.kind='transformer' with model.causal=False or model.kind='bilstm'"),
    ('causal LM on the bidirectional lstm',
     ['--config=configs/bilstm_char.py', '--config.train.objective=causal'],
     "train.objective='causal' predicts each token from those before it, which "
     "model.kind='bilstm' cannot; use model.kind='transformer' (model.causal=True) or "
     "model.kind='lstm'"),
    ('masked LM on the encoder-decoder',
     ['--config=configs/lstm_seq2seq_char.py', '--config.train.objective=mlm'],
     "train.objective='mlm' predicts tokens from both sides of them, which "
     "model.kind='lstm_seq2seq' cannot"),
    ('causal LM on the encoder-decoder',
     ['--config=configs/lstm_seq2seq_char.py', '--config.train.objective=causal'],
     "which model.kind='lstm_seq2seq' cannot"),
    ('decoder attention without the encoder-decoder',
     ['--config=configs/lstm_char.py', '--config.model.decoder_attention=luong'],
     "config field model.decoder_attention='luong' is an LSTM encoder-decoder's; an LSTM "
     "(model.kind='lstm') has none, so leave it at ''."),
    ('unknown decoder attention',
     ['--config=configs/lstm_seq2seq_char.py', '--config.model.decoder_attention=bahdanau'],
     "config field model.decoder_attention='bahdanau' is invalid"),
    ('frequency-weighted masking without token counts',
     ['--config.data.corpus={tmp}/prep_uncounted', '--config.model.causal=False',
      '--config.train.objective=mlm', '--config.mlm.token_weighting=frequency'],
     "config field mlm.token_weighting='frequency' needs the training data's token counts"),
    ('masking profile past probability one',
     ['--config.model.causal=False', '--config.train.objective=mlm',
      '--config.mlm.position_profile=linear', '--config.mlm.position_slope=1.5',
      '--config.mlm.ratio_start=0.6'],
     'config field mlm.ratio_start=0.6 with mlm.position_profile=\'linear\' asks for a selection '
     'probability of 1.05 at the end, above 1'),
    ('masking weights negative',
     ['--config.model.causal=False', '--config.train.objective=mlm',
      '--config.mlm.position_profile=buckets', '--config.mlm.position_weights=(1,-1)'],
     'config field mlm.position_weights=(1, -1) is invalid: expected a tuple of weights >= 0'),
    ('downstream tasks on an encoder',
     ['--config.model.causal=False', '--config.train.objective=mlm',
      '--config.train.eval_tasks=shakespeare_cloze'],
     "config field train.eval_tasks='shakespeare_cloze' scores next-token predictions, which a "
     "model trained with train.objective='mlm' does not make"),
    ('downstream task settings without tasks', ['--config.train.eval_tasks_limit=5'],
     'config field train.eval_tasks_limit=5.0 is invalid: expected its default with '
     'train.eval_tasks empty'),
    ('unknown downstream task', ['--config.train.eval_tasks=shakespear_cloze'],
     'config field train.eval_tasks names shakespear_cloze, which lm-eval does not know'),
    ('prefix LM of packed documents',
     ['--config.train.objective=prefix', '--config.data.packing=pack'],
     "train.objective='prefix' cuts windows of the token stream; set data.packing='concat'"),
    ('span corruption without room for sentinels',
     ['--config.train.objective=span', '--config.model.vocab_size=8'],
     "config field model.vocab_size=8 has no room for the"),
    ('span corruption in a context too short', ['--config.train.objective=span',
                                                '--config.model.max_seq_len=3'],
     'is too short for span corruption'),
    ('span density outside (0, 1)', ['--config.train.objective=span',
                                     '--config.span.noise_density=1.0'],
     'config field span.noise_density=1.0 is invalid'),
    ('mlm with a causal model', ['--config.train.objective=mlm'],
     "train.objective='mlm' predicts tokens from both sides of them, which "
     "model.kind='transformer' with model.causal=True cannot; use model.kind='transformer' with "
     "model.causal=False"),
    ('causal objective on a bidirectional model', ['--config.model.causal=False'],
     "train.objective='causal' predicts each token from those before it, which "
     "model.kind='transformer' with model.causal=False cannot"),
    ('mlm ratio outside (0, 1)', ['--config.train.objective=mlm', '--config.model.causal=False',
                                  '--config.mlm.ratio_end=0'],
     'config field mlm.ratio_end=0.0 is invalid: expected a number in (0, 1)'),
    ('mlm replacement fractions above one',
     ['--config.train.objective=mlm', '--config.model.causal=False',
      '--config.mlm.mask_fraction=0.9', '--config.mlm.random_fraction=0.2'],
     'add up to more than 1'),
    ('unknown mlm ratio schedule', ['--config.mlm.ratio_schedule=step'],
     "mlm.ratio_schedule='step' is invalid"),
    ('init_from not a model', ['--config.init_from={tmp}/no_metrics'],
     'is neither a Hugging Face model directory (no config.json) nor a jaxlm workdir'),
    ('init_from a workdir not trained yet', ['--config.init_from={tmp}/untrained'],
     'has no checkpoint yet'),
    ('init_from trained with another tokenizer',
     ['--config.init_from={tmp}/run', '--config.data.tokenizer=byte'],
     "is not the one the weights of config field init_from='{tmp}/run' were trained with"),
    ('prepared with another tokenizer',
     ['--config.data.corpus={tmp}/prep_byte', '--config.data.tokenizer=sentencepiece',
      '--config.data.tokenizer_path={tmp}/spm.model'],
     'was made with another tokenizer than data.tokenizer_path'),
    ('mixture of two tokenizers',
     ['--config.data.corpus=', '--config.data.mixture={tmp}/prep_byte:1,{tmp}/prep_char:1'],
     'were made with different tokenizers'),
    ('mixture of an unknown dataset', ['--config.data.corpus=',
                                       '--config.data.mixture={tmp}/prep_byte:1,{tmp}/web:1'],
     'which is not a prepared dataset'),
    ('mixture weight not positive', ['--config.data.corpus=',
                                     '--config.data.mixture={tmp}/prep_byte:0'],
     "is invalid at '{tmp}/prep_byte:0'"),
    ('mixture weight not a number', ['--config.data.corpus=',
                                     '--config.data.mixture={tmp}/prep_byte'],
     'expected comma-separated <prepared dataset directory>:<positive weight>'),
    ('mixture and corpus', ['--config.data.mixture={tmp}/prep_byte:1'], 'are both set'),
    ('mixture stages out of order',
     ['--config.data.corpus=', '--config.data.mixture={tmp}/prep_byte:1@0; {tmp}/prep_byte:2@0'],
     'has stages starting at steps [0, 0]; the first must start at 0 and each later one after'),
    ('mixture stage weights adding up to 0',
     ['--config.data.corpus=', '--config.data.mixture={tmp}/prep_byte:1@0;{tmp}/prep_byte:0@9'],
     "data.mixture='{tmp}/prep_byte:0' has weights that add up to 0"),
    ('mixture stage without a step',
     ['--config.data.corpus=', '--config.data.mixture={tmp}/prep_byte:1;{tmp}/prep_byte:2@9'],
     'each stage is <dataset>:<weight>,...@<first step>'),
    ('unknown optimizer', ['--config.optim.name=lion'], "optim.name='lion' is invalid"),
    ('decay fraction outside (0, 1]', ['--config.optim.schedule=wsd',
                                       '--config.optim.decay_fraction=0.0'],
     'optim.decay_fraction=0.0 is invalid: expected a number in (0, 1]'),
    ('optimizer differs from the checkpoint', ['--config.optim.name=muon'],
     "optim.name='adamw' (now 'muon')"),
    ('missing shard', ['--config.data.corpus={tmp}/prep_missing'],
     'train-00000.arrayrecord is missing from the prepared dataset'),
    ('truncated shard', ['--config.data.corpus={tmp}/prep_truncated'],
     'validation-00000.arrayrecord is truncated or changed'),
    ('JSONL line that is not JSON', ['--config.data.corpus={tmp}/bad_lines.jsonl'],
     'line 2 of {tmp}/bad_lines.jsonl is not JSON'),
    ('JSONL without the text field', ['--config.data.corpus={tmp}/bad_lines.jsonl',
                                      '--config.data.text_field=content'],
     "line 1 of {tmp}/bad_lines.jsonl has no text field 'content'"),
    ('TFDS dataset not available offline',
     ['--config.data.corpus=tfds:jaxlm_no_such_dataset', '--config.data.tfds_data_dir={tmp}'],
     "the TFDS dataset 'jaxlm_no_such_dataset' is not available offline"),
    ('stride with packing', ['--config.data.packing=pack', '--config.data.stride=4'],
     'data.stride=4 is invalid'),
    ('packing differs from the checkpoint', ['--config.data.packing=pack'],
     "data.packing='concat' (now 'pack')"),
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
  result = _run(name, harness.command(*args))
  harness.assert_one_sentence(result, message.format(tmp=tmp))
  assert harness.digest(work / 'checkpoints') == before, name
  assert not (harness.ROOT / 'gs:').exists()  # a cloud URL never becomes a local directory


# Every other command: (name, module or script, arguments, a fragment of the expected error).
# '{run}' is the trained run's workdir, '{tmp}' the fixture's directory.
OTHER_CASES = [
    ('eval step', 'jaxlm.eval', ['--workdir={run}', '--step=5'], 'no checkpoint for step 5'),
    ('eval negative step', 'jaxlm.eval', ['--workdir={run}', '--step=-1'], '--step=-1 is invalid'),
    ('eval text', 'jaxlm.eval', ['--workdir={run}', '--text=/no/such/*.txt'], 'matches no file'),
    ('eval empty text', 'jaxlm.eval', ['--workdir={run}', '--text={tmp}/empty.txt'],
     'has no token to predict'),
    ('eval references', 'jaxlm.eval', ['--workdir={run}', '--references=/no/such.jsonl'],
     'cannot read --references'),
    ('eval empty references', 'jaxlm.eval', ['--workdir={run}', '--references={tmp}/empty.jsonl'],
     'holds no {"prompt", "reference"} line'),
    ('eval references line', 'jaxlm.eval', ['--workdir={run}', '--references={tmp}/bad.jsonl'],
     'line 1 of'),
    ('eval negative batch', 'jaxlm.eval', ['--workdir={run}', '--batch_size=-4'],
     '--batch_size=-4 is invalid'),
    ('eval no new tokens', 'jaxlm.eval', ['--workdir={run}', '--max_new_tokens=0'],
     '--max_new_tokens=0 is invalid'),
    ('eval empty workdir', 'jaxlm.eval', ['--workdir='], "--workdir='' is invalid"),
    ('eval s3 workdir', 'jaxlm.eval', ['--workdir=s3://bucket/run'], 'uses the s3:// scheme'),
    ('eval not a run', 'jaxlm.eval', ['--workdir={tmp}/no_metrics'],
     'has no checkpoints directory'),
    ('eval stray argument', 'jaxlm.eval', ['--workdir={run}', 'x'], "unexpected arguments ['x']"),
    ('generate length', 'jaxlm.generate', ['--workdir={run}', '--max_new_tokens=100'],
     'max_new_tokens=100'),
    ('generate no tokens', 'jaxlm.generate', ['--workdir={run}', '--max_new_tokens=0'],
     '--max_new_tokens=0 is invalid'),
    ('generate prompt', 'jaxlm.generate', ['--workdir={run}', '--prompt=Zebra'],
     "'Z' is not in the character vocabulary"),
    ('generate temperature', 'jaxlm.generate', ['--workdir={run}', '--temperature=-1'],
     '--temperature=-1.0 is invalid'),
    ('generate top_k', 'jaxlm.generate', ['--workdir={run}', '--top_k=-3'],
     '--top_k=-3 is invalid'),
    ('generate top_p zero', 'jaxlm.generate', ['--workdir={run}', '--top_p=0'],
     '--top_p=0.0 is invalid'),
    ('generate top_p above one', 'jaxlm.generate', ['--workdir={run}', '--top_p=1.5'],
     '--top_p=1.5 is invalid'),
    ('generate missing prompts file', 'jaxlm.generate',
     ['--workdir={run}', '--prompts_file=/no/such.txt'], 'cannot read --prompts_file'),
    ('generate empty prompts file', 'jaxlm.generate',
     ['--workdir={run}', '--prompts_file={tmp}/empty.txt'], 'holds no prompt'),
    ('generate prompt and prompts file', 'jaxlm.generate',
     ['--workdir={run}', '--prompt=First', '--prompts_file={tmp}/prompts.txt'], 'not both'),
    ('generate step', 'jaxlm.generate', ['--workdir={run}', '--step=7'],
     'no checkpoint for step 7'),
    ('tokenizer vocabulary', 'jaxlm.tokenizer', ['train', '--vocab_size=3'],
     '--vocab_size=3 is invalid'),
    ('tokenizer output name', 'jaxlm.tokenizer', ['train', '--output={tmp}/spm.txt'],
     'a path ending in .model'),
    ('tokenizer output exists', 'jaxlm.tokenizer', ['train', '--output={tmp}/out.model'],
     'already exists'),
    ('tokenizer input', 'jaxlm.tokenizer', ['train', '--input=/no/such/*.txt',
                                            '--output={tmp}/new.model'], 'matches no file'),
    ('tokenizer not UTF-8', 'jaxlm.tokenizer', ['train', '--input={tmp}/latin1.txt',
                                                '--output={tmp}/new.model'], 'is not UTF-8 text'),
    ('tokenizer encode without model', 'jaxlm.tokenizer', ['encode', '--text=hi'],
     'the .model file to encode with'),
    ('tokenizer encode junk model', 'jaxlm.tokenizer', ['encode', '--model={tmp}/junk.model'],
     'is not a SentencePiece model'),
    ('tokenizer without command', 'jaxlm.tokenizer', [], 'give one command: train or encode'),
    ('tokenizer unknown command', 'jaxlm.tokenizer', ['decode'], 'give one command'),
    ('plot no metrics', 'jaxlm.plot', ['--workdir={tmp}/no_metrics'],
     'metrics.jsonl does not exist'),
    ('plot no loss', 'jaxlm.plot', ['--workdir={tmp}/no_loss'], 'holds no loss yet'),
    ('plot output', 'jaxlm.plot', ['--workdir={run}', '--output={tmp}/curves.jpg'],
     'a path ending in .png'),
    ('bench steps', 'jaxlm.bench', ['--config={cfg}', '--steps=0'], '--steps=0 is invalid'),
    ('compile slices', 'jaxlm.compile', ['--config={cfg}', '--num_slices=0'],
     '--num_slices=0 is invalid: expected a number of slices >= 1'),
    ('compile slices without topology', 'jaxlm.compile', ['--config={cfg}', '--num_slices=2'],
     'expected with a --topology'),
    ('compile slices against mesh.dcn', 'jaxlm.compile',
     ['--config={cfg}', '--num_slices=2', '--topology=v5p-8', '--config.mesh.dcn=3'],
     'equal to config field mesh.dcn=3'),
    ('mesh dcn', 'jaxlm.compile', ['--config={cfg}', '--config.mesh.dcn=0'], 'mesh.dcn'),
    ('mesh dcn on one slice', 'jaxlm.compile',
     ['--config={cfg}', '--topology=v5p-8', '--config.mesh.dcn=2'],
     'asks for 2 slices but the devices form 1; set mesh.dcn=1'),
    ('bench warmup', 'jaxlm.bench', ['--config={cfg}', '--warmup=-1'], '--warmup=-1 is invalid'),
    ('bench what', 'jaxlm.bench', ['--config={cfg}', '--what=train,speed'],
     '--what=train,speed is invalid'),
    ('bench json', 'jaxlm.bench', ['--config={cfg}', '--json=/no/such/dir/out.json'],
     '--json=\'/no/such/dir/out.json\' is invalid'),
    ('bench config field', 'jaxlm.bench', ['--config={cfg}', '--config.model.depth=2'],
     "unknown field 'depth'"),
    ('sweep grid axis', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr', '--dry_run'],
     "--grid axis 'optim.lr' is not field=v1,v2"),
    ('sweep repeated field', 'launch/sweep.py',
     ['--config={cfg}', '--grid=optim.lr=1,2 optim.lr=3', '--dry_run'], 'names optim.lr twice'),
    ('sweep config file', 'launch/sweep.py', ['--config={tmp}/syntax.py', '--dry_run'],
     'has a syntax error at line 1'),
    ('sweep unknown field', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lrr=1,2',
                                                '--dry_run'], 'optim.lrr, which is not a field'),
    ('sweep value type', 'launch/sweep.py', ['--config={cfg}', '--grid=train.steps=ten',
                                             '--dry_run'],
     "'ten' of train.steps is not an integer"),
    ('sweep value range', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr=-1,1e-3',
                                              '--dry_run'], 'point lr=-1: config field optim.lr'),
    ('sweep parallel', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr=1e-3',
                                           '--parallel=0', '--root={tmp}/sw'],
     '--parallel=0 is invalid'),
    ('sweep root is a file', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr=1e-3',
                                                 '--root={tmp}/a_file'], 'is a file; give a'),
    ('sweep report of an empty root', 'launch/sweep.py', ['report', '--root={tmp}/no_metrics'],
     'holds no sweep (no sweep.json)'),
    ('sweep points file', 'launch/sweep.py', ['--config={cfg}', '--points={tmp}/none.txt'],
     'is not a file; give a file with one point a line'),
    ('sweep points line', 'launch/sweep.py', ['--config={cfg}', '--points={tmp}/corpus.txt'],
     "line 1 of"),
    ('sweep set twice', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr=1,2',
                                            '--set=optim.lr=3', '--dry_run'],
     '--set and point lr=1 both set optim.lr'),
    ('sweep grid and points', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr=1',
                                                  '--points={tmp}/corpus.txt'], 'not both'),
    ('sweep point index', 'launch/sweep.py', ['point', '--root={tmp}/a_sweep', '--index=5'],
     '--index=5 is not a point of the sweep'),
    ('sweep baseline', 'launch/sweep.py', ['report', '--root={tmp}/a_sweep', '--baseline=x'],
     '--baseline=x is not a point of the sweep'),
    ('sweep k8s image', 'launch/sweep.py', ['--config={cfg}', '--grid=optim.lr=1e-3',
                                            '--emit=k8s', '--root={tmp}/sw'], 'needs --image'),
    ('sweep command', 'launch/sweep.py', ['status'], 'give one of run, report, point, search'),
    ('search space bounds', 'launch/sweep.py', ['search', '--config={cfg}', '--root={tmp}/s',
                                                '--space=optim.lr=log:0:1'],
     'needs low < high and low > 0'),
    ('search space syntax', 'launch/sweep.py', ['search', '--config={cfg}', '--root={tmp}/s',
                                                '--space=optim.lr=1e-3'], 'is not field=kind:args'),
    ('search unknown field', 'launch/sweep.py', ['search', '--config={cfg}', '--root={tmp}/s',
                                                 '--space=optim.lrr=log:1e-4:1e-2'],
     'optim.lrr, which is not a field'),
    ('tpu_vm training flags', 'launch/tpu_vm.py', ['--name=x', '--zone=z'],
     'give the training flags after `--`'),
    ('tpu_vm slices', 'launch/tpu_vm.py', ['--name=x', '--zone=z', '--num_slices=0', '--',
                                           '--config={cfg}'], '--num_slices=0 is invalid'),
    ('tpu_vm dry run without a type', 'launch/tpu_vm.py',
     ['--name=x', '--zone=z', '--dry_run', '--', '--config={cfg}'], '--dry_run needs --tpu_type'),
    ('tpu_vm type', 'launch/tpu_vm.py', ['--name=x', '--zone=z', '--tpu_type=v9-8', '--dry_run',
                                         '--', '--config={cfg}'],
     "--tpu_type='v9-8' is not a TPU slice jaxlm knows"),
    ('tpu_vm gcsfuse path', 'launch/tpu_vm.py', ['--name=x', '--zone=z', '--gcsfuse=gs://b/data',
                                                 '--', '--config={cfg}'],
     "--gcsfuse takes bucket names (e.g. --gcsfuse=my-data), not 'b/data'"),
    ('tpu_vm create without a type', 'launch/tpu_vm.py',
     ['--name=x', '--zone=z', '--create', '--', '--config={cfg}'], '--create needs --tpu_type'),
    ('k8s workdir', 'launch/k8s.py', ['--image=i', '--workdir={tmp}/run', '--', '--config={cfg}'],
     'is not a bucket'),
    ('k8s name', 'launch/k8s.py', ['--image=i', '--name=My_Run', '--workdir=gs://b/r', '--',
                                   '--config={cfg}'], 'is not a Kubernetes JobSet name'),
    ('k8s image', 'launch/k8s.py', ['--workdir=gs://b/r', '--', '--config={cfg}'],
     '--image is empty'),
    ('k8s config file', 'launch/k8s.py', ['--image=i', '--workdir=gs://b/r', '--',
                                          '--config={tmp}/none.py'], 'cannot load the config file'),
    ('k8s workdir after --', 'launch/k8s.py', ['--image=i', '--workdir=gs://b/r', '--',
                                               '--config={cfg}', '--config.workdir=gs://b/x'],
     'give the workdir as --workdir'),
    ('k8s gpu nodes', 'launch/k8s.py', ['--image=i', '--workdir=gs://b/r', '--accelerator=gpu',
                                        '--nodes=0', '--', '--config={cfg}'],
     '--nodes and --gpus_per_node must be 1 or more'),
    ('k8s output', 'launch/k8s.py', ['--image=i', '--workdir=gs://b/r', '--output={tmp}',
                                     '--', '--config={cfg}'], 'is an existing directory'),
    ('prepare empty output', 'jaxlm.prepare', ['--output='], "--output='' is invalid"),
    ('prepare s3 source', 'jaxlm.prepare', ['--output={tmp}/p', '--source=s3://b/*.jsonl'],
     "--source='s3://b/*.jsonl' uses the s3:// scheme"),
    ('prepare gs tfds dir', 'jaxlm.prepare', ['--output={tmp}/p', '--source=tfds:x',
                                              '--tfds_data_dir=gs://b/tfds'],
     'must be a local or mounted path'),
    ('prepare validation fraction', 'jaxlm.prepare', ['--output={tmp}/p', '--val_fraction=1.5'],
     '--val_fraction=1.5 is invalid'),
    ('prepare workers', 'jaxlm.prepare', ['--output={tmp}/p', '--workers=-1'],
     '--workers=-1 is invalid'),
    ('prepare tokenizer path with bytes', 'jaxlm.prepare',
     ['--output={tmp}/p', '--tokenizer=byte', '--tokenizer_path={tmp}/junk.model'],
     'empty unless --tokenizer=sentencepiece'),
    ('prepare over another preparation', 'jaxlm.prepare',
     ['--source={tmp}/corpus.txt', '--output={tmp}/prep_byte', '--tokenizer=char'],
     'already holds a preparation with other settings'),
    ('prepare empty text field', 'jaxlm.prepare',
     ['--source={tmp}/bad_lines.jsonl', '--output={tmp}/p', '--text_field='],
     "--text_field='' is invalid"),
    ('prepare tail and first documents', 'jaxlm.prepare',
     ['--output={tmp}/p', '--val_tail', '--val_docs=2'], '--val_tail=True is invalid'),
    ('prepare TFDS dataset not available offline', 'jaxlm.prepare',
     ['--source=tfds:jaxlm_no_such_dataset', '--tfds_data_dir={tmp}', '--output={tmp}/p'],
     "the TFDS dataset 'jaxlm_no_such_dataset' is not available offline"),
    ('prepare task out of range', 'jaxlm.prepare', ['--output={tmp}/p', '--task=3/2'],
     "--task='3/2' is invalid: expected i/N with 0 <= i < N"),
    ('prepare two steps at once', 'jaxlm.prepare', ['--output={tmp}/p', '--plan', '--finalize'],
     '--plan and --finalize cannot be given together'),
    ('prepare task without a plan', 'jaxlm.prepare', ['--output={tmp}/p', '--task=0/2'],
     'has no chunk plan (plan.json); run the same command with --plan first'),
    ('prepare task with other settings than the plan', 'jaxlm.prepare',
     ['--source={tmp}/corpus.txt', '--output={tmp}/prep_byte', '--tokenizer=byte',
      '--val_fraction=0.1', '--task=0/2'], "val_tail: False here, True in the plan"),
    ('prepare pipeline options without a runner', 'jaxlm.prepare',
     ['--output={tmp}/p', '--', '--direct_num_workers=2'],
     'only a Beam --runner takes pipeline options'),
    ('prepare beam option value', 'jaxlm.prepare',
     ['--output={tmp}/p', '--runner=DirectRunner', '--', '--direct_num_workers=x'],
     "the Beam pipeline options after `--` are invalid (argument --direct_num_workers: invalid"),
    ('prepare beam unknown option', 'jaxlm.prepare',
     ['--output={tmp}/p', '--runner=DirectRunner', '--', '--direct_num_wrkers=2'],
     '--direct_num_wrkers=2 is not a Beam pipeline option'),
    ('prepare beam runner without its options', 'jaxlm.prepare',
     ['--output={tmp}/p', '--runner=DataflowRunner'],
     'the DataflowRunner needs more pipeline options after `--` (Missing GCS path option'),
    ('prepare_k8s without a volume', 'launch/prepare_k8s.py',
     ['--image=i', '--', '--output=/data/p'], 'give the shared volume the output is on'),
    ('prepare_k8s output off the volume', 'launch/prepare_k8s.py',
     ['--image=i', '--claim=c', '--', '--output=/elsewhere/p'],
     'give jaxlm.prepare an --output below the mount point /data'),
    ('prepare_k8s step flags', 'launch/prepare_k8s.py',
     ['--image=i', '--claim=c', '--', '--output=/data/p', '--task=0/2'],
     'leave --plan, --task, --finalize, --runner and --workers out'),
    ('prepare_k8s no flags', 'launch/prepare_k8s.py', ['--image=i', '--claim=c'],
     "give jaxlm.prepare's flags after `--`"),
    ('bench data of a missing shard', 'jaxlm.bench',
     ['--config={cfg}', '--what=data', '--config.data.corpus={tmp}/prep_missing'],
     'is missing from the prepared dataset'),
    ('convert no command', 'jaxlm.convert', ['--workdir={run}', '--out={tmp}/hf'],
     'give one command: import-hf or export-hf'),
    ('convert import without a model', 'jaxlm.convert', ['import-hf', '--workdir={tmp}/imp'],
     "--hf_dir='' is invalid"),
    ('convert import of a directory that is not a model', 'jaxlm.convert',
     ['import-hf', '--hf_dir={tmp}/no_metrics', '--workdir={tmp}/imp'], 'has no config.json'),
    ('convert empty out', 'jaxlm.convert', ['export-hf', '--workdir={run}', '--out='],
     "--out='' is invalid"),
    ('convert over a directory', 'jaxlm.convert',
     ['export-hf', '--workdir={run}', '--out={tmp}/no_loss'], 'is not an empty directory'),
    ('convert step', 'jaxlm.convert', ['export-hf', '--workdir={run}', '--out={tmp}/hf',
                                       '--step=5'], 'no checkpoint for step 5'),
    ('convert shard size', 'jaxlm.convert',
     ['export-hf', '--workdir={run}', '--out={tmp}/hf', '--max_shard_mb=0'],
     '--max_shard_mb=0.0 is invalid'),
    ('prepare output below a file', 'jaxlm.prepare',
     ['--source={tmp}/corpus.txt', '--output={tmp}/a_file/p'], 'a_file, which is a file'),
    ('tokenizer output below a file', 'jaxlm.tokenizer',
     ['train', '--input={tmp}/corpus.txt', '--output={tmp}/a_file/x.model'],
     'a_file, which is a file'),
    ('plot output is a directory', 'jaxlm.plot', ['--workdir={run}', '--output={tmp}/dir.png'],
     'dir.png is an existing directory'),
    ('convert export over a file', 'jaxlm.convert',
     ['export-hf', '--workdir={run}', '--out={tmp}/a_file'], 'a_file is an existing file'),
    ('convert import of a config that is not JSON', 'jaxlm.convert',
     ['import-hf', '--hf_dir={tmp}/hf_notjson', '--workdir={tmp}/imp'], 'is not readable JSON'),
    ('convert import of garbage safetensors', 'jaxlm.convert',
     ['import-hf', '--hf_dir={tmp}/hf_garbage', '--workdir={tmp}/imp'],
     'is not a readable safetensors file'),
    ('generate top_k above the vocabulary', 'jaxlm.generate', ['--workdir={run}', '--top_k=1000'],
     "--top_k=1000 is invalid: expected 0 (all tokens) or at most the vocabulary's"),
    ('generate negative seed', 'jaxlm.generate', ['--workdir={run}', '--seed=-1'],
     '--seed=-1 is invalid'),
    ('local processes', 'launch/local.py', ['--processes=0', '--', '--config={cfg}'],
     '--processes=0 is invalid'),
    ('local devices', 'launch/local.py', ['--devices_per_process=0', '--', '--config={cfg}'],
     '--devices_per_process=0 is invalid'),
]


@pytest.mark.parametrize('name,module,args,message', OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_bad_input_to_every_other_command(trained, name, module, args, message):
  tmp, cfg = trained
  before = harness.digest(tmp)
  args = [a.format(tmp=tmp, run=tmp / 'run', cfg=cfg) for a in args]
  script = harness.ROOT / module if module.endswith('.py') else None
  result = _run(name, harness.command(*args, module=module, script=script))
  harness.assert_one_sentence(result, message)
  assert harness.digest(tmp) == before, name  # nothing written, nothing changed


# Each command's first case (and two of training's, one refused by the config check and one by
# the checkpoint) runs as a process of its own, as a user runs it; the others in a fork of a
# process that has already imported JAX and jaxlm (harness.run_forked: the same exit status and
# output, four seconds sooner).
REAL = {'unknown field', 'packing differs from the checkpoint',
        *{next(c[0] for c in OTHER_CASES if c[1] == module) for _, module, _, _ in OTHER_CASES}}


def _run(name, cmd):
  return (harness.run if name in REAL else harness.run_forked)(cmd)


def test_there_are_at_least_sixty_distinct_bad_inputs():
  names = [c[0] for c in CASES] + [c[0] for c in OTHER_CASES]
  assert len(set(names)) == len(names) >= 60


# The same classes of damage, in-process (each a UserError, which every command prints as one
# sentence with exit status 2, as the cases above show), over more variants.

def _documents_of(path):
  from jaxlm.data import sources
  return [d for chunk in sources.plan_chunks(str(path), 64) for d in sources.documents(chunk)]


def test_damaged_and_odd_text_sources(tmp_path):
  """A truncated gzip file, a .gz that is not gzip, a gzip member with a wrong checksum, a JSONL
  line that is not UTF-8 and one that holds a lone surrogate ("\\ud800") are each refused,
  naming the file; the same data undamaged reads whole."""
  import gzip
  import json
  from jaxlm.errors import UserError
  lines = ''.join(json.dumps({'text': f'document {i} ' * 40}) + '\n' for i in range(50)).encode()
  packed = gzip.compress(lines)
  (tmp_path / 'good.jsonl.gz').write_bytes(packed)
  assert len(_documents_of(tmp_path / 'good.jsonl.gz')) == 50
  checksum = bytearray(packed)
  checksum[-8] ^= 0xFF  # the CRC32 in the gzip trailer
  bad_utf8 = b'{"text": "caf\xe9"}\n'
  surrogate = json.dumps({'text': 'lone \ud800 half'}).encode() + b'\n'
  for name, data, message in [
      ('truncated.jsonl.gz', packed[:len(packed) // 2], 'is not a whole gzip file'),
      ('plain.jsonl.gz', lines, r'is not a whole gzip file \(Not a gzipped file'),
      ('checksum.jsonl.gz', bytes(checksum), r'is not a whole gzip file \(CRC check failed'),
      ('latin1.jsonl', lines.split(b'\n')[0] + b'\n' + bad_utf8, 'is not UTF-8'),
      ('surrogate.jsonl', surrogate, r"holds a lone surrogate \('\\ud800'")]:
    (tmp_path / name).write_bytes(data)
    where = '' if name.endswith('.gz') else f'line {1 + (name == "latin1.jsonl")} of '
    with pytest.raises(UserError, match=f'{where}{tmp_path / name} {message}'):
      _documents_of(tmp_path / name)


def test_output_locations_that_cannot_be_written(tmp_path):
  """An output that is an existing file (or a directory where a file goes), lies below a file,
  or is in a place that cannot be written is one sentence naming the flag, before anything is
  created; a new directory in a writable place passes and is not created by the check."""
  from types import SimpleNamespace
  from jaxlm import cli
  from jaxlm.errors import UserError
  (tmp_path / 'a_file').write_text('x')
  (tmp_path / 'a_dir').mkdir()
  flag = lambda value: SimpleNamespace(name='output', value=value)
  for value, is_file, message in [
      (tmp_path / 'a_file', False, 'is an existing file'),
      (tmp_path / 'a_dir', True, 'is an existing directory'),
      (tmp_path / 'a_file' / 'x' / 'y', False, 'a_file, which is a file'),
      (tmp_path / 'a_file' / 'spm.model', True, 'a_file, which is a file'),
      ('/proc/jaxlm-test/out', False, 'cannot be written')]:
    with pytest.raises(UserError, match=f'--output={value} .*{message}'):
      cli.require_output(flag(str(value)), is_file=is_file)
  before = sorted(p.name for p in tmp_path.iterdir())
  cli.require_output(flag(str(tmp_path / 'new' / 'deeper')))
  cli.require_output(flag(str(tmp_path / 'new' / 'x.png')), is_file=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_damaged_hugging_face_directories(tmp_path):
  """For convert import-hf (hf.import_model) and train's config.init_from (warmstart), a
  safetensors file truncated or of garbage, a config.json that is not JSON, not an object, or
  lacks a field the architecture needs, and an index without its weight map, are one sentence
  naming the file (and the field)."""
  import json
  import numpy as np
  from safetensors.numpy import save_file
  from jaxlm import hf, warmstart
  from jaxlm.errors import UserError
  from tiny import tiny_config

  def model_dir(name, config=LLAMA_CONFIG, weights=None):
    d = tmp_path / name
    d.mkdir()
    (d / 'config.json').write_text(config if isinstance(config, str) else json.dumps(config))
    save_file({'model.embed_tokens.weight': np.zeros((64, 16), np.float32),
               'lm_head.weight': np.zeros((64, 16), np.float32)}, str(d / 'model.safetensors'))
    if weights is not None:
      (d / 'model.safetensors').write_bytes(weights(d / 'model.safetensors'))
    return d

  cut = lambda path: path.read_bytes()[:-100]
  without_layers = {k: v for k, v in LLAMA_CONFIG.items() if k != 'num_hidden_layers'}
  for d, message in [
      (model_dir('truncated', weights=cut), 'truncated/model.safetensors is not a readable '
                                            'safetensors file'),
      (model_dir('garbage', weights=lambda _: b'\x01'), 'is not a readable safetensors file'),
      (model_dir('notjson', config='{"model_type": '), 'notjson/config.json is not readable JSON'),
      (model_dir('alist', config='[1, 2]'), 'holds a JSON list, not an object'),
      (model_dir('nofield', config=without_layers),
       "nofield/config.json lacks the field 'num_hidden_layers'")]:
    with pytest.raises(UserError, match=message):
      hf.import_model(str(d))
    with pytest.raises(UserError, match=message):  # what train --config.init_from=<d> runs
      source = warmstart.Source(str(d))
      source.set_model_fields(tiny_config().model)
      hf.init_params(str(d), None)
  d = model_dir('index')
  (d / 'model.safetensors.index.json').write_text('{"metadata": {}}')
  with pytest.raises(UserError, match='has no "weight_map"'):
    hf.import_model(str(d))
