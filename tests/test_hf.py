"""Hugging Face import and export, checked against transformers itself: random tiny models of each
family are built here (CPU torch, nothing downloaded), and jaxlm's float32 logits must equal
transformers' on 2 x 150 random tokens (positions past 64 included)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxlm import hf, hf_files
from jaxlm.errors import UserError
from jaxlm.model.attention import rope_frequencies
from jaxlm.model.transformer import Transformer
from tiny import bpe_tokenizer

LENGTH = 150


def hf_config(family: str, **overrides):
  if family == 'gpt2':
    kw = dict(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=160)
    return transformers.GPT2Config(**{**kw, **overrides})
  kw = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
            rms_norm_eps=1e-5, tie_word_embeddings=False)
  cls = dict(llama=transformers.LlamaConfig, mistral=transformers.MistralConfig,
             qwen2=transformers.Qwen2Config)[family]
  return cls(**{**kw, **overrides})


def saved_model(tmp_path, family: str, seed: int = 0, **overrides):
  """A random transformers model saved in tmp_path/<family>, with weights large enough that
  attention is far from uniform (else a wrong head mapping barely shows), and norms and biases
  random too (their defaults, ones and zeros, would hide one mapped to the wrong place)."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(hf_config(family, **overrides))
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.15))  # sharp attention
  model.eval()
  path = tmp_path / f'{family}-{seed}'
  model.save_pretrained(path)
  return model, path


def tokens(vocab: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (2, LENGTH)).astype(np.int32)


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(ids).long()).logits.float().numpy()


def jaxlm_logits(m, params, ids: np.ndarray) -> np.ndarray:
  model = nnx.eval_shape(lambda: Transformer(m, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  shapes = jax.tree.map(lambda x: x.shape, state.to_pure_dict())
  assert jax.tree.map(lambda x: x.shape, params) == shapes  # every parameter, no more, no less
  state.replace_by_pure_dict(params)
  nnx.update(model, state)
  return np.asarray(model(ids))


CASES = [
    ('gpt2', {}),
    ('llama', dict(num_key_value_heads=1)),
    ('llama', dict(num_key_value_heads=2, head_dim=16, rope_theta=500000.0)),
    ('llama', dict(num_key_value_heads=4, tie_word_embeddings=True, rope_scaling=dict(
        rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32), rope_theta=500000.0)),
    ('mistral', dict(sliding_window=None)),
    ('qwen2', dict(tie_word_embeddings=True)),
]


@pytest.mark.parametrize('family,overrides', CASES, ids=[
    'gpt2', 'llama-kv1', 'llama-kv2-headdim16-theta5e5', 'llama-kv4-tied-llama3', 'mistral',
    'qwen2-tied'])
def test_imported_logits_equal_transformers(tmp_path, family, overrides):
  model, path = saved_model(tmp_path, family, **overrides)
  got_family, m, params = hf.import_model(str(path))
  assert got_family == family
  ids = tokens(m.vocab_size)
  np.testing.assert_allclose(jaxlm_logits(m, params, ids), hf_logits(model, ids), atol=1e-4,
                             rtol=1e-4)


@pytest.mark.parametrize('family,overrides', [CASES[0], CASES[1], CASES[5]],
                         ids=['gpt2-tied', 'llama-untied', 'qwen2-tied'])
def test_a_perturbed_embedding_moves_both_models_alike(tmp_path, family, overrides):
  """The same change to the input embedding, made in transformers and in jaxlm after import,
  leaves the logits equal: a tied model's output head moves with it, an untied one's does not
  (an import that gave a tied model a head of its own, or tied an untied one, fails here)."""
  model, path = saved_model(tmp_path, family, **overrides)
  _, m, params = hf.import_model(str(path))
  delta = np.random.default_rng(5).normal(size=params['embed']['table'].shape).astype(np.float32)
  params['embed']['table'] = params['embed']['table'] + 0.5 * delta
  with torch.no_grad():
    model.get_input_embeddings().weight.add_(torch.from_numpy(0.5 * delta))
  ids = tokens(m.vocab_size)
  np.testing.assert_allclose(jaxlm_logits(m, params, ids), hf_logits(model, ids), atol=1e-4,
                             rtol=1e-4)


def test_a_wrong_head_mapping_is_seen(tmp_path, monkeypatch):
  """Negative control: the comparison above fails when key/value heads are mapped wrongly (query
  head h paired with key/value head h % K instead of h // G), or when the rotation pairs channels
  (2i, 2i+1) instead of (i, i + E/2)."""
  model, path = saved_model(tmp_path, 'llama', num_key_value_heads=2)
  _, m, params = hf.import_model(str(path))
  ids = tokens(m.vocab_size)
  want = hf_logits(model, ids)
  qkv = params['blocks']['attn']['qkv']['kernel']  # [N, D, K, G + 2, E]
  G = m.num_heads // m.num_kv_heads
  q = qkv[..., :G, :].reshape(*qkv.shape[:2], m.num_heads, m.head_dim)
  interleaved = q.reshape(*qkv.shape[:2], G, m.num_kv_heads, m.head_dim).swapaxes(2, 3)
  wrong = dict(params, blocks=dict(params['blocks'], attn=dict(params['blocks']['attn'], qkv=dict(
      kernel=np.concatenate([interleaved, qkv[..., G:, :]], axis=-2)))))
  assert np.abs(jaxlm_logits(m, wrong, ids) - want).max() > 0.1  # 1000x the tolerance
  E = m.head_dim
  pairs = np.arange(E).reshape(2, E // 2).T.reshape(-1)  # channel order 0, E/2, 1, E/2 + 1, ...
  rotated = np.concatenate([qkv[..., :G + 1, :][..., pairs], qkv[..., G + 1:, :]], axis=-2)
  permuted = dict(params, blocks=dict(params['blocks'], attn=dict(params['blocks']['attn'],
                                                                  qkv=dict(kernel=rotated))))
  assert np.abs(jaxlm_logits(m, permuted, ids) - want).max() > 0.1


def test_llama3_frequencies_equal_transformers(tmp_path):
  scaling = dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=64)
  model, _ = saved_model(tmp_path, 'llama', head_dim=64, rope_theta=500000.0,
                         rope_scaling=scaling)
  ours = rope_frequencies(64, 500000.0, (8.0, 1.0, 4.0, 64))
  np.testing.assert_allclose(ours, model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
  assert not np.allclose(ours, rope_frequencies(64, 500000.0))  # the scaling does something


def test_import_errors(tmp_path):
  _, path = saved_model(tmp_path, 'llama')
  config = json.loads((path / 'config.json').read_text())
  for change, message in [(dict(model_type='falcon'), "model_type 'falcon'"),
                          (dict(hidden_act='gelu'), "activation 'gelu'"),
                          (dict(num_key_value_heads=1), 'has shape'),
                          (dict(num_hidden_layers=3), 'has no tensor model.layers.2.')]:
    (path / 'config.json').write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
      hf.import_model(str(path))
  with pytest.raises(UserError, match='has no config.json'):
    hf.import_model(str(tmp_path))


def _tensors(path) -> dict[str, np.ndarray]:
  ckpt = hf.Checkpoint(str(path))
  return {name: ckpt.get(name) for name in ckpt.files}


@pytest.mark.parametrize('family,overrides', [CASES[0], CASES[3], CASES[5]],
                         ids=['gpt2', 'llama-kv4-tied-llama3', 'qwen2-tied'])
def test_export_round_trip_and_reload(tmp_path, family, overrides):
  """HF -> jaxlm -> HF gives every tensor back bit for bit, in at least 3 shards whose index maps
  each tensor once; transformers loads the export (config.json's classic keys included) and its
  logits equal jaxlm's within 1e-5, with the same rotary frequencies."""
  model, path = saved_model(tmp_path, family, **overrides)
  _, m, params = hf.import_model(str(path))
  out = tmp_path / 'export'
  got_family, files = hf.export_model(m, params, out, max_shard_bytes=20_000)
  assert got_family == family
  index = json.loads((out / 'model.safetensors.index.json').read_text())['weight_map']
  shards = sorted(f for f in files if f.endswith('.safetensors'))
  assert len(shards) >= 3 and sorted(set(index.values())) == shards
  from safetensors import safe_open
  assert sum(len(safe_open(str(out / s), 'numpy').keys()) for s in shards) == len(index)
  original, exported = _tensors(path), _tensors(out)
  assert sorted(original) == sorted(exported)
  for name, value in original.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = tokens(m.vocab_size, seed=1)
  np.testing.assert_allclose(hf_logits(reloaded, ids), jaxlm_logits(m, params, ids), atol=1e-5,
                             rtol=1e-5)
  if family != 'gpt2':
    llama3 = (m.rope_scaling_factor, m.rope_low_freq_factor, m.rope_high_freq_factor,
              m.rope_original_max_len) if m.rope_scaling else None
    np.testing.assert_allclose(reloaded.model.rotary_emb.inv_freq.numpy(),
                               rope_frequencies(m.head_dim, m.rope_theta, llama3), rtol=1e-6)
  # Files not in the index are never read: a stray shard with other values changes nothing.
  from safetensors.numpy import save_file
  save_file({k: v + 1 for k, v in exported.items()}, str(out / 'model-99999-of-99999.safetensors'),
            metadata={'format': 'pt'})
  again = hf.import_model(str(out))[2]
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_export_refuses_what_transformers_cannot_represent():
  from jaxlm.config import resolve_model
  from jaxlm.configs import base
  m = base.get_config().model
  m.norm = 'layernorm'  # with RoPE and SwiGLU: no transformers family has it
  with pytest.raises(UserError, match='has no transformers equivalent'):
    hf.family_of(resolve_model(m, 100))
  for kind, title in (('lstm', 'an LSTM'), ('bilstm', 'a bidirectional LSTM'),
                      ('lstm_seq2seq', 'an LSTM encoder-decoder')):
    m = base.get_config().model
    m.kind = kind
    with pytest.raises(UserError, match=f"^{title} \\(model.kind='{kind}'\\) has no "
                                        'transformers equivalent; only Transformers export.$'):
      hf.family_of(resolve_model(m, 100))


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['gpt2', 'llama'])
def test_export_hf_command_on_a_trained_run(tmp_path, variant):
  """`jaxlm.convert export-hf` on a run trained here: transformers loads what it wrote, and its
  logits equal those of the restored jaxlm parameters within 1e-5."""
  import harness
  from jaxlm import trainer
  from jaxlm.restore import load_trained
  from tiny import TINY_TEXT, tiny_config
  (tmp_path / 'corpus.txt').write_text(TINY_TEXT)
  cfg = tiny_config(variant, workdir=str(tmp_path / 'run'))
  cfg.data.corpus, cfg.data.tokenizer = str(tmp_path / 'corpus.txt'), 'byte'
  cfg.train.steps, cfg.train.eval_samples = 4, 0
  trainer.run(cfg)
  result = harness.run_forked(harness.command('export-hf', f'--workdir={tmp_path / "run"}',
                                              f'--out={tmp_path / "hf"}', module='jaxlm.convert'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'as {hf.ARCHITECTURES["gpt2" if variant == "gpt2" else "llama"]}' in result.stdout
  assert 'no tokenizer (a ByteTokenizer has no transformers equivalent)' in result.stdout
  r = load_trained(str(tmp_path / 'run'))
  params = jax.tree.map(np.asarray, r.params)
  ids = tokens(256, seed=2)[:, :r.model_cfg.max_seq_len]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
  np.testing.assert_allclose(hf_logits(reloaded, ids), jaxlm_logits(r.model_cfg, params, ids),
                             atol=1e-5, rtol=1e-5)


def test_huggingface_tokenizer_encodes_as_transformers(tmp_path):
  from jaxlm.data.tokenizers import HuggingFaceTokenizer
  path = bpe_tokenizer(tmp_path / 'tok')
  ours = HuggingFaceTokenizer(path.parent)  # a model directory works too
  theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
  text = 'First Citizen: café – naïve 日本 \n\n  spaces'
  assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
  assert ours.decode(ours.encode(text)) == text
  assert ours.eos_id == theirs.convert_tokens_to_ids('<|endoftext|>') and ours.vocab_size == 300
  assert sum(ours.token_bytes(text)) == len(text.encode()) and \
      len(ours.token_bytes(text)) == len(ours.encode(text))
  # A tokenizer that drops whitespace: the bytes it skips still count, on the token after them
  # (or the last one), so bits per byte stays per byte of the text.
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  words = Tokenizer(models.WordLevel(unk_token='[UNK]'))
  words.pre_tokenizer = pre_tokenizers.Whitespace()
  words.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=['[UNK]']))
  words.save(str(tmp_path / 'words.json'))
  spaced = HuggingFaceTokenizer(tmp_path / 'words.json')
  assert sum(spaced.token_bytes(text + ' \n ')) == len((text + ' \n ').encode())
  (path.parent / 'tokenizer_config.json').write_text(json.dumps({'eos_token': 'Ġthe'}))
  assert HuggingFaceTokenizer(path).eos_id == theirs.convert_tokens_to_ids('Ġthe')
  with pytest.raises(UserError, match='is not a Hugging Face tokenizer.json'):
    HuggingFaceTokenizer(tmp_path / 'tok' / 'tokenizer_config.json')


def test_prepare_with_a_huggingface_tokenizer(tmp_path):
  from jaxlm.data import Prepared
  from jaxlm.data.prepare import Settings, prepare
  from jaxlm.data.tokenizers import HuggingFaceTokenizer
  from tiny import TINY_TEXT
  path = bpe_tokenizer(tmp_path / 'tok')
  docs = [TINY_TEXT[i * 50:i * 50 + 200] + ' ünïcode' for i in range(10)]
  (tmp_path / 'docs').mkdir()
  for i, doc in enumerate(docs):
    (tmp_path / 'docs' / f'{i}.txt').write_text(doc)
  prepare(Settings(source=str(tmp_path / 'docs'), tokenizer='huggingface',
                   tokenizer_path=str(path), val_docs=2), tmp_path / 'prep', progress=False)
  ds = Prepared(str(tmp_path / 'prep'))
  tok = HuggingFaceTokenizer(path)
  assert ds.tokenizer.fingerprint == tok.fingerprint
  got = [d.tolist() for split in (ds.train, ds.validation)
         for d in split.docs(range(len(split.lengths))).values()]
  assert sorted(got) == sorted(tok.encode(d) for d in docs)


@pytest.mark.slow
def test_continued_pretraining_from_an_imported_gpt2(tmp_path):
  """config.init_from (a model whose vocabulary is padded past its tokenizer's): the run's first
  state holds the imported weights exactly, whether init_from names the Hugging Face directory or
  the workdir jaxlm.convert import-hf made of it; training on the shipped corpus's first 100 KB
  lowers the loss; a run killed after a checkpoint resumes to the same per-step losses as one
  that was not (the weights are not imported again over the checkpoint). Another tokenizer, or a
  model whose vocabulary is smaller than its tokenizer's, is one sentence."""
  import signal
  import harness
  from jaxlm import trainer
  from tiny import tiny_config
  hf_dir = tmp_path / 'gpt2'
  torch.manual_seed(0)
  # A vocabulary padded past the tokenizer's 300 ids, as real checkpoints often have.
  model = transformers.GPT2LMHeadModel(hf_config('gpt2', vocab_size=320, n_positions=64))
  model.save_pretrained(hf_dir)
  bpe_tokenizer(hf_dir)
  corpus = tmp_path / 'shakespeare.txt'  # the shipped corpus's first 100 KB: quicker to prepare
  corpus.write_text(harness.SHIPPED.read_text()[:100_000])
  fields = {'init_from': str(hf_dir), 'data.tokenizer': 'huggingface',
            'data.tokenizer_path': str(hf_dir), 'data.corpus': str(corpus), 'model.max_seq_len': 32,
            'train.steps': 12, 'checkpoint.every': 4, 'train.eval_every': 100,
            'train.sample_tokens': 0}
  cfg = tiny_config(workdir=str(tmp_path / 'inproc'))
  for key, value in fields.items():
    section, _, name = key.rpartition('.')
    (cfg[section] if section else cfg)[name] = value
  other = cfg.copy_and_resolve_references()
  other.data.tokenizer, other.data.tokenizer_path = 'byte', ''
  with pytest.raises(UserError, match="the run's tokenizer .* is not the one the weights"):
    trainer.Trainer(other)
  small = tmp_path / 'small'  # a model whose vocabulary cannot hold its tokenizer's ids
  transformers.GPT2LMHeadModel(hf_config('gpt2', vocab_size=200, n_positions=64)).save_pretrained(
      small)
  bpe_tokenizer(small)
  other = cfg.copy_and_resolve_references()
  other.init_from, other.data.tokenizer_path = str(small), str(small)
  with pytest.raises(UserError, match="has a vocabulary of 200, smaller than its tokenizer"):
    trainer.Trainer(other)
  _, _, params = hf.import_model(str(hf_dir))
  params['pos_embed'] = params['pos_embed'][:32]
  t = trainer.Trainer(cfg)
  try:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(t.restore_or_init().params), params)
  finally:
    t.close()
  # The workdir jaxlm.convert import-hf makes starts a run with the same weights; the tokenizer
  # it holds is the one the message names.
  imported = tmp_path / 'imported'
  result = harness.run_forked(harness.command('import-hf', f'--hf_dir={hf_dir}',
                                              f'--workdir={imported}', module='jaxlm.convert'))
  assert result.returncode == 0, result.stderr[-3000:]
  other = cfg.copy_and_resolve_references()
  other.init_from, other.workdir = str(imported), str(tmp_path / 'from-imported')
  other.data.tokenizer, other.data.tokenizer_path = 'byte', ''
  with pytest.raises(UserError, match="set data.tokenizer='huggingface' and data.tokenizer_path="
                     f"'{imported}/tokenizer/tokenizer.json'"):
    trainer.Trainer(other)
  other.data.tokenizer, other.data.tokenizer_path = 'huggingface', f'{imported}/tokenizer'
  t = trainer.Trainer(other)
  try:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(t.restore_or_init().params), params)
  finally:
    t.close()

  config = harness.write_config(tmp_path / 'cfg.py', **fields, cpu_devices=2)
  command = lambda name: harness.command(f'--config={config}',
                                         f'--config.workdir={tmp_path / name}')
  result = harness.run_forked(command('ref'))  # the killed and resumed runs: processes of their own
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Starting from the weights of' in result.stdout
  ref = harness.logged_losses(tmp_path / 'ref')
  assert ref[12][-1] < ref[1][-1] - 0.3, ref
  log = tmp_path / 'killed.log'
  p = harness.start(command('killed'), log)
  saved = lambda: [d for d in (tmp_path / 'killed' / 'checkpoints').glob('*') if d.name.isdigit()]
  harness.wait_until(lambda: harness.last_step(tmp_path / 'killed') >= 6 and saved(), p, log=log)
  p.send_signal(signal.SIGKILL)
  p.wait()
  result = harness.run_forked(command('killed'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step' in result.stdout and 'Starting from' not in result.stdout
  killed = harness.logged_losses(tmp_path / 'killed')
  assert {s: v[-1] for s, v in killed.items()} == {s: v[-1] for s, v in ref.items()}


@pytest.mark.parametrize('family,overrides', [CASES[0], CASES[2], CASES[5]],
                         ids=['gpt2', 'llama-kv2-headdim16-theta5e5', 'qwen2-tied'])
def test_greedy_generation_equals_transformers(tmp_path, family, overrides):
  """jaxlm's KV-cache decoding of imported weights (two prompts of different lengths, left-padded
  in one batch) picks the same tokens as transformers' greedy generate, token for token."""
  from jaxlm import sampling
  from jaxlm.state import abstract_model
  model, path = saved_model(tmp_path, family, **overrides)
  _, m, params = hf.import_model(str(path))
  graphdef, _ = nnx.split(abstract_model(m), nnx.Param)
  prompts = [tokens(m.vocab_size, seed=3)[0, :n].tolist() for n in (5, 11)]
  ours = sampling.generate(graphdef, params, m, prompts, max_new_tokens=24, temperature=0.0)
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      theirs = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                              eos_token_id=None, pad_token_id=0, min_new_tokens=24)
    assert got == theirs[0, len(prompt):].tolist()


@pytest.mark.slow
def test_import_hf_command_makes_a_workdir_to_generate_and_evaluate_with(tmp_path):
  """`jaxlm.convert import-hf`: jaxlm.generate on the workdir continues a prompt as transformers'
  greedy generate does; jaxlm.eval scores a text (and, without --text, says there is no
  validation split); training in that workdir is refused with the way to do it."""
  import sqlite3
  import harness
  from jaxlm.data.tokenizers import HuggingFaceTokenizer
  from tiny import TINY_TEXT
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(hf_config('gpt2', vocab_size=300, n_positions=64)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(tmp_path / 'gpt2')
  tok = HuggingFaceTokenizer(bpe_tokenizer(tmp_path / 'gpt2'))
  work = tmp_path / 'imported'
  run = lambda module, *args: harness.run_forked(harness.command(*args, module=module))
  result = run('jaxlm.convert', 'import-hf', f'--hf_dir={tmp_path / "gpt2"}', f'--workdir={work}')
  assert result.returncode == 0, result.stderr[-3000:]
  prompt = 'First Citizen:'
  result = run('jaxlm.generate', f'--workdir={work}', f'--prompt={prompt}', '--temperature=0',
               '--max_new_tokens=12')
  assert result.returncode == 0, result.stderr[-3000:]
  ids = tok.encode(prompt)
  with torch.no_grad():
    new = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                         eos_token_id=None, pad_token_id=0, min_new_tokens=12)[0, len(ids):]
  new = new.tolist()
  new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
  assert prompt + tok.decode(new) in result.stdout
  # a human-evaluation study of the imported model against a second import of it (greedy: both
  # continuations are transformers')
  result = run('jaxlm.convert', 'import-hf', f'--hf_dir={tmp_path / "gpt2"}',
               f'--workdir={tmp_path / "again"}')
  (tmp_path / 'prompts.txt').write_text(prompt + '\n')
  result = run('jaxlm.rate', 'generate', f'--runs={work},{tmp_path / "again"}',
               f'--prompts={tmp_path / "prompts.txt"}', f'--out={tmp_path / "study"}',
               '--temperature=0', '--max_new_tokens=12')
  assert result.returncode == 0, result.stderr[-3000:]
  with sqlite3.connect(tmp_path / 'study' / 'study.db') as db:
    assert [t for (t,) in db.execute('SELECT text FROM outputs')] == [tok.decode(new)] * 2
  (tmp_path / 'text.txt').write_text(TINY_TEXT)
  result = run('jaxlm.eval', f'--workdir={work}', f'--text={tmp_path / "text.txt"}')
  assert result.returncode == 0 and 'perplexity' in result.stdout, result.stderr[-3000:]
  result = run('jaxlm.eval', f'--workdir={work}')
  assert result.returncode == 2 and 'holds an imported model' in result.stderr
  result = run('jaxlm.train', f'--config={harness.ROOT}/configs/base.py',
               f'--config.workdir={work}', '--config.data.tokenizer=huggingface',
               f'--config.data.tokenizer_path={work}/tokenizer')
  assert result.returncode == 2 and 'is a model imported by jaxlm.convert' in result.stderr
  assert f"config.init_from='{work}'" in result.stderr


TEXTS = ['ROMEO: Hello there, my lord!', 'First Citizen:\nBefore we proceed any further.',
         '  double  spaces\n\nand newlines ', 'café – naïve 日本 1234 ☃', '\n', ' ', 'x']


@pytest.mark.parametrize('kind', ['sentencepiece', 'sentencepiece-dummy-prefix', 'huggingface',
                                  'sentencepiece-nfkc'])
def test_exported_tokenizer_encodes_as_jaxlm(tmp_path, kind):
  """What export-hf writes for the run's tokenizer loads with AutoTokenizer and encodes (and
  decodes) every test text exactly as jaxlm's tokenizer does: spaces, newlines, byte fallback. A
  SentencePiece model that transformers encodes differently (a dummy prefix; SentencePiece's
  default NFKC and whitespace folding) is not exported at all."""
  import sentencepiece as spm
  from jaxlm.data.tokenizers import (HuggingFaceTokenizer, SentencePieceTokenizer,
                                     train_sentencepiece)
  from tiny import TINY_TEXT
  (tmp_path / 'corpus.txt').write_text(TINY_TEXT)
  if kind == 'sentencepiece':
    ours = train_sentencepiece([tmp_path / 'corpus.txt'], tmp_path / 'spm.model', vocab_size=300)
  elif kind.startswith('sentencepiece-'):
    identity = dict(normalization_rule_name='identity', remove_extra_whitespaces=False)
    spm.SentencePieceTrainer.train(input=str(tmp_path / 'corpus.txt'), vocab_size=300,
                                   model_prefix=str(tmp_path / 'sp'), byte_fallback=True,
                                   minloglevel=2, **(identity if 'prefix' in kind else {}))
    ours = SentencePieceTokenizer(tmp_path / 'sp.model')
  else:
    ours = HuggingFaceTokenizer(bpe_tokenizer(tmp_path / 'tok'))
  files = hf_files.export_tokenizer(ours, tmp_path, 64)
  if kind in ('sentencepiece-nfkc', 'sentencepiece-dummy-prefix'):
    assert files == [] and not (tmp_path / 'tokenizer_config.json').exists()
    return
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS:
    ids = ours.encode(text)
    assert theirs.encode(text, add_special_tokens=False) == ids, text
    assert theirs.decode(ids) == ours.decode(ids), text
  if ours.eos_id is not None:
    assert theirs.eos_token_id == ours.eos_id


def llama_tokenizer(directory, vocab: int = 300):
  """bpe_tokenizer with Llama's specials: a post-processor that puts <s> before every text (as
  Llama 2 and 3's tokenizer.json do), and </s> as end-of-sequence in tokenizer_config.json."""
  from tokenizers import Tokenizer, processors
  path = bpe_tokenizer(directory, vocab)
  tok = Tokenizer.from_file(str(path))
  tok.add_special_tokens(['<s>', '</s>'])
  tok.post_processor = processors.TemplateProcessing(
      single='<s> $A', special_tokens=[('<s>', tok.token_to_id('<s>'))])
  tok.save(str(path))
  (directory / 'tokenizer_config.json').write_text(json.dumps({'bos_token': '<s>',
                                                               'eos_token': '</s>'}))
  return path


def test_an_imported_llama_starts_documents_with_its_bos_and_scores_as_transformers(tmp_path):
  """A tokenizer that adds a beginning-of-sequence token (Llama's <s>) starts every document with
  it in jaxlm's streams, not with end-of-sequence: the perplexity jaxlm.eval computes on a text
  (its stream, scored by the imported model) equals transformers' on the tokens its tokenizer
  gives (<s> + the text). A GPT-2 tokenizer, which adds nothing, keeps end-of-sequence."""
  from jaxlm import data
  from jaxlm.data.tokenizers import HuggingFaceTokenizer, document_start
  from tiny import TINY_TEXT
  model, path = saved_model(tmp_path, 'llama', vocab_size=320)
  llama_tokenizer(path)
  tok = HuggingFaceTokenizer(path)
  assert tok.bos_id == tok.backend.token_to_id('<s>')
  assert tok.eos_id == tok.backend.token_to_id('</s>') != tok.bos_id
  text = TINY_TEXT[:260]
  ids = tok.backend.encode(text, add_special_tokens=True).ids  # transformers' tokenizer(text)
  assert ids[0] == tok.bos_id and len(ids) <= LENGTH
  with torch.no_grad():
    want = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
  _, m, params = hf.import_model(str(path))
  stream = data.text_stream([text], tok, 'concat', m.max_seq_len)
  np.testing.assert_array_equal(stream.tokens, ids)
  logits = jaxlm_logits(m, params, stream.tokens[None, :-1])[0]
  logp = jax.nn.log_softmax(logits.astype(np.float32), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), stream.tokens[1:, None], axis=-1)[:, 0]
  got = float((nll * stream.weights[1:]).sum() / stream.weights[1:].sum())
  np.testing.assert_allclose(got, want, rtol=1e-5)
  gpt2 = HuggingFaceTokenizer(bpe_tokenizer(tmp_path / 'gpt2'))
  assert gpt2.bos_id is None and document_start(gpt2) == gpt2.eos_id
