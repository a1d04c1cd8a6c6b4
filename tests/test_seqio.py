"""SeqIO tasks as a text source, and the core path staying free of TensorFlow."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TEXT, tiny_config
from jaxlm import data
from jaxlm.errors import UserError


def test_core_path_never_imports_tensorflow(tmp_path, corpus_file):
  code = f'''
import sys
from conftest import tiny_config
from jaxlm import data, trainer
cfg = tiny_config(workdir={str(tmp_path / "run")!r})
cfg.data.corpus = {str(corpus_file)!r}
data.load_corpus(cfg, {str(tmp_path / "run")!r})
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
  lines = TINY_TEXT.split('\n\n')

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    texts = lines[:-4] if split == 'train' else lines[-4:]
    return tf.data.Dataset.from_tensor_slices({'text': texts, 'id': list(range(len(texts)))})

  name = 'jaxlm_test_tiny_text'
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
        dataset_fn, splits=['train', 'validation']), preprocessors=[], output_features={})
  return name


def test_seqio_task_gives_train_and_validation_text(tmp_path, task_name):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = f'seqio:{task_name}'
  corpus = data.load_corpus(cfg, tmp_path / 'run')
  lines = TINY_TEXT.split('\n\n')
  # The char tokenizer has no end-of-sequence id: each example's characters, concatenated.
  assert corpus.tokenizer.decode(corpus.train.tolist()) == ''.join(lines[:-4])
  assert corpus.tokenizer.decode(corpus.val.tolist()) == ''.join(lines[-4:])


def test_seqio_errors(tmp_path, task_name):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = 'seqio:no_such_task'
  with pytest.raises(UserError, match="no SeqIO task or mixture is registered as 'no_such_task'"):
    data.load_corpus(cfg, tmp_path / 'run')
  cfg.data.corpus = f'seqio:{task_name}'
  cfg.data.seqio_feature = 'targets'
  with pytest.raises(UserError, match="has no feature 'targets'"):
    data.load_corpus(cfg, tmp_path / 'run')
  cfg.data.seqio_module = 'no_such_module_xyz'
  with pytest.raises(UserError, match='cannot import data.seqio_module'):
    data.load_corpus(cfg, tmp_path / 'run')
