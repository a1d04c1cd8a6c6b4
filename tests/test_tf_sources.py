"""SeqIO tasks and TFDS datasets as sources (prepared, then trained), and the core path staying
free of TensorFlow."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import harness
from conftest import TINY_TEXT, tiny_config
from jaxlm import data, trainer
from jaxlm.errors import UserError

LINES = [line for line in TINY_TEXT.split('\n\n')[:8]] + ['Speak, speak.', 'You are all resolved.']


def test_core_path_never_imports_tensorflow(tmp_path, corpus_file):
  code = f'''
import sys
from conftest import tiny_config
from jaxlm import data, trainer
cfg = tiny_config(workdir={str(tmp_path / "run")!r})
cfg.data.corpus = {str(corpus_file)!r}
run = data.open_run_data(cfg, {str(tmp_path / "run")!r})
next(data.train_batches(run, cfg, 16, range(8)))
heavy = [m for m in ('tensorflow', 'seqio', 'tensorflow_datasets') if m in sys.modules]
assert not heavy, heavy
'''
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope='module')
def task_name():
  seqio = pytest.importorskip('seqio')
  import tensorflow as tf

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    texts = LINES[:-4] if split == 'train' else LINES[-4:]
    return tf.data.Dataset.from_tensor_slices({'text': texts, 'id': list(range(len(texts))),
                                               'tokens': [[37, 423, 5]] * len(texts)})

  name = 'jaxlm_test_tiny_text'
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
        dataset_fn, splits=['train', 'validation']), preprocessors=[], output_features={})
  return name


def _documents(split, tokenizer):
  return [tokenizer.decode(split.doc(i).tolist()) for i in range(len(split.lengths))]


def test_a_seqio_task_is_prepared_with_its_own_splits(tmp_path, task_name):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = f'seqio:{task_name}'
  run = data.open_run_data(cfg, tmp_path / 'run')
  ds = run.datasets[0]
  assert _documents(ds.train, run.tokenizer) == LINES[:-4]  # each example one document
  assert _documents(ds.validation, run.tokenizer) == LINES[-4:]  # the task's validation split


def test_seqio_errors(tmp_path, task_name):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = 'seqio:no_such_task'
  with pytest.raises(UserError, match="no SeqIO task or mixture is registered as 'no_such_task'"):
    data.open_run_data(cfg, tmp_path / 'run')
  cfg.data.corpus = f'seqio:{task_name}'
  cfg.data.text_field = 'targets'
  with pytest.raises(UserError, match="has no feature 'targets'"):
    data.open_run_data(cfg, tmp_path / 'run')
  # A feature that is not text (a tokenized one, a number) was prepared as its str(): '[37 423 5]'.
  for feature, what in (('tokens', r'int32 values of shape \(3,\)'),
                        ('id', r'a number \(int32\)')):
    cfg.data.text_field = feature
    with pytest.raises(UserError, match=f"feature '{feature}' is not text but {what} .*set the "
                                        "text field .* to an untokenized feature: 'text'"):
      data.open_run_data(cfg, tmp_path / 'run')
  cfg.data.seqio_module = 'no_such_module_xyz'
  with pytest.raises(UserError, match='cannot import the SeqIO module'):
    data.open_run_data(cfg, tmp_path / 'run')


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A tiny TFDS dataset, built offline here: train and validation splits of short texts."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class JaxlmTinyText(tfds.core.GeneratorBasedBuilder):  # registers 'jaxlm_tiny_text'
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text(), 'id': tfds.features.Scalar(np.int32)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(LINES[:-4]),
              'validation': self._generate_examples(LINES[-4:])}

    def _generate_examples(self, texts):
      for i, text in enumerate(texts):
        yield i, {'text': text, 'id': i}

  directory = tmp_path_factory.mktemp('tfds')
  JaxlmTinyText(data_dir=str(directory)).download_and_prepare(  # 3 shards a split
      download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3))
  return directory


def test_a_tfds_split_is_a_chunk_a_shard_and_a_job_array_gives_one_hosts_bytes(tmp_path,
                                                                               tfds_dir):
  """Each shard of a split is a chunk (so that workers, tasks and Beam share a split); prepared in
  one process, or by 2 tasks, the same bytes; the documents in the dataset's order."""
  from jaxlm.data.prepare import Settings, finalize, make_plan, prepare, run_chunks, task_chunks
  from jaxlm.data.sources import plan_chunks
  s = Settings(source='tfds:jaxlm_tiny_text', data_dir=str(tfds_dir), tokenizer='byte')
  chunks = plan_chunks(s.source, s.chunk_mb, **s.tf_options())
  assert [(c.split, c.shard, c.shards) for c in chunks] == [
      (split, k, 3) for split in ('train', 'validation') for k in range(3)]
  prepare(s, tmp_path / 'one', workers=1, progress=False)
  one = data.Prepared(tmp_path / 'one')
  import tensorflow_datasets as tfds
  builder = tfds.builder('jaxlm_tiny_text', data_dir=str(tfds_dir))
  for split in ('train', 'validation'):
    texts = [x['text'].decode() for x in builder.as_dataset(split=split).as_numpy_iterator()]
    assert _documents(getattr(one, split), one.tokenizer) == texts
  make_plan(s, tmp_path / 'array')
  for i in (1, 0):
    run_chunks(s, tmp_path / 'array', task_chunks(chunks, i, 2), workers=1, progress=False)
  finalize(s, tmp_path / 'array', chunks)
  assert harness.digest(tmp_path / 'array') == harness.digest(tmp_path / 'one')
  # A SeqIO task over the same files: read in the same shards, the same token ids.
  import seqio
  name = 'jaxlm_test_tfds_shards'
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, source=seqio.TfdsDataSource(
        'jaxlm_tiny_text:1.0.0', tfds_data_dir=str(tfds_dir)), preprocessors=[],
        output_features={})
  s = Settings(source=f'seqio:{name}', tokenizer='byte')
  assert [(c.split, c.shard, c.shards) for c in plan_chunks(s.source, s.chunk_mb)] == [
      (split, k, 3) for split in ('train', 'validation') for k in range(3)]
  prepare(s, tmp_path / 'seqio', workers=2, progress=False)

  def shards(out):
    return {k: v for k, v in harness.digest(out).items() if k.endswith(('.arrayrecord', '.npy'))}
  assert len(shards(tmp_path / 'seqio')) == 6 * 5 + 1 and (
      shards(tmp_path / 'seqio') == shards(tmp_path / 'one'))


def test_a_tfds_dataset_is_prepared_offline_and_trained(tmp_path, tfds_dir):
  """Prepared by the command in a process where the builder is not even defined (TFDS reads the
  built files), then trained on."""
  out = tmp_path / 'prepared'
  result = harness.run(harness.command(
      '--source=tfds:jaxlm_tiny_text', f'--tfds_data_dir={tfds_dir}', f'--output={out}',
      '--tokenizer=byte', module='jaxlm.prepare'))
  assert result.returncode == 0, result.stderr[-3000:]
  prepared = data.Prepared(out)
  assert sorted(_documents(prepared.train, prepared.tokenizer)) == sorted(LINES[:-4])
  assert sorted(_documents(prepared.validation, prepared.tokenizer)) == sorted(LINES[-4:])
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus, cfg.train.steps, cfg.train.sample_tokens = str(out), 3, 0
  assert trainer.run(cfg)['train']['loss'] > 0  # smoke test: it trains
  missing = harness.run(harness.command('--source=tfds:jaxlm_no_such_dataset',
                                        f'--tfds_data_dir={tfds_dir}', f'--output={tmp_path}/x',
                                        module='jaxlm.prepare'))
  assert missing.returncode == 2 and 'Traceback' not in missing.stderr
  assert "the TFDS dataset 'jaxlm_no_such_dataset' is not available offline" in missing.stderr
