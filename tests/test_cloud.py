"""gs:// locations against a local stand-in for the bucket (tests/bucket.py): a source read from a
bucket prepares the same bytes as from local files; a prepared dataset on a bucket is read through
a local copy that follows the bucket's manifest; a run whose workdir and data are on the bucket is
the same run, loss for loss, as the local one, resumed and evaluated from the bucket."""

import gzip
import json
import shutil
import subprocess
import sys

import pytest

import harness
from bucket import fake_gcs
from jaxlm import paths
from jaxlm.data import Prepared, parse_mixture
from jaxlm.data.prepare import Settings, prepare
from jaxlm.data.staging import dataset_files, local_copy, prepare_to
from jaxlm.errors import UserError
from tiny import TINY_TEXT

BUCKET = 'gs://jaxlm-test'
DOCS = [f'{i}: ' + TINY_TEXT[i * 37:i * 37 + 300] for i in range(12)]


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  cache = tmp_path_factory.mktemp('cache')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('JAXLM_CACHE', str(cache))
    with fake_gcs() as env:
      yield dict(env, JAXLM_CACHE=str(cache))


def _corpus(root) -> None:
  """The same corpus under `root` (a local Path or a bucket epath): text files and gzip JSONL."""
  for i, doc in enumerate(DOCS[:4]):
    (root / 'corpus' / f'doc-{i}.txt').parent.mkdir(parents=True, exist_ok=True)
    (root / 'corpus' / f'doc-{i}.txt').write_text(doc)
  lines = ''.join(json.dumps({'text': d}) + '\n' for d in DOCS[4:])
  (root / 'corpus' / 'more.jsonl.gz').write_bytes(gzip.compress(lines.encode(), mtime=0))


def _files(root) -> dict[str, bytes]:
  manifest = json.loads((root / 'manifest.json').read_bytes())
  return {name: (root / name).read_bytes() for name in dataset_files(manifest) + ['manifest.json']}


def test_prepare_from_and_to_a_bucket_equals_local(gcs, tmp_path):
  bucket = paths.path(f'{BUCKET}/prep-test')
  _corpus(bucket)
  _corpus(tmp_path)
  kw = dict(tokenizer='char', val_docs=3, chunk_mb=0.0005)
  local = prepare(Settings(source=str(tmp_path / 'corpus'), **kw), tmp_path / 'prepared',
                  progress=False)
  remote = prepare_to(Settings(source=f'{bucket}/corpus', **kw), f'{bucket}/prepared',
                      workers=2, progress=False)
  assert local['splits']['train']['documents'] == 9 and len(local['splits']['train']['shards']) > 2
  assert remote['splits'] == local['splits']
  assert _files(bucket / 'prepared') == {  # the manifest differs only by its source
      k: v.replace(str(tmp_path).encode(), str(bucket).encode())
      for k, v in _files(tmp_path / 'prepared').items()}
  # A glob on the bucket lists the same files as a directory; the documents read back whole.
  ds = Prepared(f'{bucket}/prepared')
  assert ds.location == f'{bucket}/prepared' and not paths.is_url(ds.directory)
  docs = ds.train.docs(range(len(ds.train.lengths)))
  assert sorted(ds.tokenizer.decode(d) for d in docs.values()) == sorted(DOCS[3:])
  globbed = prepare_to(Settings(source=f'{bucket}/corpus/*', **kw), f'{bucket}/glob',
                       progress=False)
  assert globbed['splits'] == remote['splits']
  with pytest.raises(UserError, match='other settings'):
    prepare_to(Settings(source=f'{bucket}/corpus', **dict(kw, val_docs=2)), f'{bucket}/prepared')
  with pytest.raises(UserError, match='wildcards before its last part'):
    prepare_to(Settings(source=f'{bucket}/*/doc-1.txt', **kw), f'{bucket}/x')


def test_local_copy_follows_the_bucket(gcs, tmp_path, capsys):
  bucket = paths.path(f'{BUCKET}/copy-test')
  _corpus(bucket)
  url = f'{bucket}/prepared'
  prepare_to(Settings(source=f'{bucket}/corpus', tokenizer='char', val_docs=3), url,
             progress=False)
  first = local_copy(url)  # prepared here: the local copy is where it was prepared
  shutil.rmtree(first)  # another host, say
  assert local_copy(url) == first
  assert local_copy(url) == first  # the same manifest: used as it is, nothing copied again
  assert capsys.readouterr().out.count('Copying') == 1
  assert _files(first) == _files(bucket / 'prepared')
  # The bucket's dataset replaced by another preparation: the copy follows it.
  paths.path(url).rmtree()
  prepare_to(Settings(source=f'{bucket}/corpus/doc-*', tokenizer='byte', val_docs=1), url,
             progress=False)
  assert local_copy(url) == first and _files(first) == _files(bucket / 'prepared')
  assert Prepared(url).manifest['tokenizer']['kind'] == 'byte'
  assert parse_mixture(f'{url}:0.7') == [(url, 0.7)]
  with pytest.raises(UserError, match='not a prepared dataset'):
    Prepared(f'{bucket}/nothing-here')
  (paths.path(url) / 'train-00000.arrayrecord').unlink()
  (paths.path(url) / 'manifest.json').write_text(  # a changed manifest, a shard gone
      (paths.path(url) / 'manifest.json').read_text().replace('"seed"', '"seed" ', 1))
  with pytest.raises(UserError, match='train-00000.arrayrecord is missing'):
    local_copy(url)


def test_cloud_scheme_and_client_errors(tmp_path):
  """No gcsfs (an import that fails), or a scheme jaxlm does not read: one sentence, nothing
  written (the old failure mode made a local directory named 'gs:')."""
  fake = tmp_path / 'site'
  (fake / 'gcsfs').mkdir(parents=True)
  (fake / 'gcsfs' / '__init__.py').write_text('raise ImportError("simulated: not installed")\n')
  env = harness.env()
  env['PYTHONPATH'] = f'{fake}:{env["PYTHONPATH"]}'
  cases = [(['--config.workdir=gs://b/run'], "needs the gcsfs package", env),
           (['--config.data.corpus=s3://b/x.txt'], 'uses the s3:// scheme', harness.env()),
           ([f'--config.workdir={tmp_path}/w', '--config.data.tfds_data_dir=gs://b/tfds'],
            'must be a local or mounted path', harness.env())]
  for args, message, run_env in cases:
    result = subprocess.run([sys.executable, '-m', 'jaxlm.train',
                             f'--config={harness.ROOT}/configs/base.py', *args], cwd=tmp_path,
                            env=run_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['site']


@pytest.mark.slow
def test_a_run_on_the_bucket_is_the_local_run(gcs, tmp_path):
  """Workdir and source on the bucket: prepared into the bucket's workdir, checkpointed there by
  Orbax, killed-free resume from it, metrics and eval results written to it; every logged loss
  equals the same run's on local files, and the evaluation too."""
  bucket = paths.path(f'{BUCKET}/run-test')
  _corpus(bucket)
  _corpus(tmp_path)
  config = harness.write_config(tmp_path / 'config.py')

  def run(*args, module='jaxlm.train'):
    result = harness.run_forked(harness.command(*args, module=module), extra_env=gcs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  def train(workdir, steps):
    return run(f'--config={config}', f'--config.workdir={workdir}', f'--config.train.steps={steps}',
               f'--config.data.corpus={workdir.parent / "corpus"}')

  for workdir in (tmp_path / 'run', bucket / 'run'):
    train(workdir, 6)
    # The resumed run is another fork: what it restores cannot lean on the first one's memory.
    assert 'Resuming from step 6' in train(workdir, 9).stdout
  (tmp_path / 'remote').mkdir()
  (tmp_path / 'remote' / 'metrics.jsonl').write_bytes(
      (bucket / 'run' / 'metrics.jsonl').read_bytes())
  remote = harness.logged_losses(tmp_path / 'remote')
  assert sorted(remote) == list(range(1, 10)) and remote == harness.logged_losses(tmp_path / 'run')
  assert [p.name for p in (bucket / 'run' / 'checkpoints').iterdir()] == ['3', '6', '9']
  assert any((p / 'manifest.json').exists() for p in (bucket / 'run' / 'data').iterdir())
  assert list((bucket / 'run' / 'tb').iterdir())  # TensorBoard's events, uploaded
  for workdir in (tmp_path / 'run', bucket / 'run'):
    run(f'--workdir={workdir}', module='jaxlm.eval')
  results = [json.loads((w / 'eval' / '9.json').read_text())
             for w in (tmp_path / 'run', bucket / 'run')]
  assert results[0] == results[1] and results[0]['validation']['loss'] > 0
  assert not (harness.ROOT / 'gs:').exists() and not (tmp_path / 'gs:').exists()


def _objects(root) -> dict[str, str]:
  """{name: sha256} of every object under a bucket location."""
  import hashlib
  scheme = str(root).split('://', 1)[0]
  return {str(p)[len(str(root)) + 1:]: hashlib.sha256(p.read_bytes()).hexdigest()
          for top, _, names in root.walk() for name in names
          for p in [paths.path(f'{scheme}://{top}') / name]}


def test_a_job_array_and_beam_into_a_bucket_give_one_hosts_bytes(gcs, tmp_path):
  """Into a bucket: one host's preparation, a job array (the plan made on one host, the tasks and
  the finalize step on another with nothing local) and a Beam pipeline on the DirectRunner with 2
  worker processes leave the same objects, byte for byte."""
  from jaxlm.data import staging
  bucket = paths.path(f'{BUCKET}/array-test')
  _corpus(bucket)
  args = dict(source=f'{bucket}/corpus', tokenizer='char', val_docs=3, chunk_mb=0.0005)
  s = Settings(**args)
  prepare_to(s, f'{bucket}/one', workers=1, progress=False)
  expected = _objects(bucket / 'one')
  assert 'plan.json' in expected and 'chunks/00003.json' in expected
  url = f'{bucket}/array'
  chunks = staging.plan(s, url)
  assert len(chunks) >= 4
  shutil.rmtree(paths.local_mirror('prepared', url))  # the tasks run on another host
  for i in (1, 0):
    staging.task(s, url, i, 2, workers=1, progress=False)
  assert not list(paths.local_mirror('prepared', url).glob('*.arrayrecord'))  # uploaded, deleted
  staging.finalize(s, url)
  assert _objects(bucket / 'array') == expected
  flags = [f'--{k}={v}' for k, v in args.items()]
  beam = subprocess.run(
      [sys.executable, '-m', 'jaxlm.prepare', *flags, f'--output={bucket}/beam',
       '--runner=DirectRunner', '--', '--direct_num_workers=2',
       '--direct_running_mode=multi_processing'],
      cwd=harness.ROOT, env=harness.env(**gcs), capture_output=True, text=True, timeout=300)
  assert beam.returncode == 0, beam.stderr[-3000:]
  assert _objects(bucket / 'beam') == expected


def test_a_hugging_face_tokenizer_keeps_its_config_through_the_bucket(gcs, tmp_path):
  """A tokenizer.json whose tokenizer_config.json names the end-of-sequence token: prepared into
  a bucket and read back through the local copy, the tokenizer is the one prepared with (the
  config used to stay behind, and the copy fell back to another end-of-sequence id)."""
  from tiny import bpe_tokenizer
  hf = bpe_tokenizer(tmp_path / 'hf')
  (hf.parent / 'tokenizer_config.json').write_text(json.dumps({'eos_token': 'A'}))
  bucket = paths.path(f'{BUCKET}/hf-test')
  _corpus(bucket)
  url = f'{bucket}/prepared'
  manifest = prepare_to(Settings(source=f'{bucket}/corpus', tokenizer='huggingface',
                                 tokenizer_path=str(hf), val_docs=3), url, progress=False)
  shutil.rmtree(paths.local_mirror('prepared', url))  # read on another host
  ds = Prepared(url)
  assert (ds.directory / 'tokenizer' / 'tokenizer_config.json').is_file()
  assert ds.tokenizer.eos_id == manifest['tokenizer']['eos_id'] != 0
  assert ds.tokenizer.decode([ds.tokenizer.eos_id]) == 'A'
