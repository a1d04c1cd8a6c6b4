"""A tiny config and corpus, free of JAX side effects, for tests and their subprocesses.

Config files written by tests for `python -m jaxlm.train` subprocesses import this module (with
PYTHONPATH=tests), so a subprocess sees the same model as the in-process tests.
"""

from ml_collections import ConfigDict

from jaxlm.configs import base

TINY_TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n'
             'First Citizen:\nYou are all resolved rather to die than to famish?\n\n') * 20


def tiny_config(variant: str = 'llama', workdir: str = '/tmp/jaxlm-test') -> ConfigDict:
  """A model small enough to compile and train in seconds, in either architecture family."""
  c = base.get_config()
  c.workdir = workdir
  m = c.model
  m.num_layers, m.embed_dim, m.num_heads, m.max_seq_len = 2, 32, 4, 16
  m.vocab_multiple = 8
  if variant == 'gpt2':
    m.num_kv_heads = 0
    m.norm, m.position, m.mlp, m.use_bias, m.tie_embeddings = (
        'layernorm', 'learned', 'gelu', True, True)
  else:
    m.num_kv_heads = 2
  c.data.tokenizer = 'char'
  c.train.steps, c.train.batch_size = 6, 8
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 1, 3, 2
  c.train.sample_tokens = 8
  c.optim.warmup_steps = 2
  c.checkpoint.every = 3
  return c


def bpe_tokenizer(directory, vocab: int = 300):
  """A byte-level BPE tokenizer.json trained here on the tiny corpus, GPT-2 style."""
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=['<|endoftext|>'],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([TINY_TEXT], trainer)
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / 'tokenizer.json'))
  return directory / 'tokenizer.json'
