"""config.init_from: a new run that starts from trained weights, at step 0 with a fresh optimizer,
on its own mesh.

The weights come from a Hugging Face model directory (config.json and safetensors, see hf.py) or
from a jaxlm workdir: a run trained by jaxlm.train, or a model imported by jaxlm.convert import-hf
(the newest readable checkpoint; only its parameters are read, and for a schedule-free run the
optimizer state that gives its average, the parameters it was evaluated with). The run's model
fields become the trained model's, except those that say how the run computes
(config.RUN_MODEL_FIELDS), and the run's tokenizer must be the one the weights were trained
with, else every embedding row would stand for another token.
"""

from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxlm import hf, sharding
from jaxlm.checkpoint import Checkpointer, short_reason
from jaxlm.config import adopt_architecture, check_model, check_objective, resolve_model
from jaxlm.data.tokenizers import TOKENIZER_FILES, HuggingFaceTokenizer, Tokenizer
from jaxlm.errors import UserError
from jaxlm.state import abstract_params


def resolved(cfg: ConfigDict) -> tuple[ConfigDict, 'Source | None']:
  """A validated run config -> (the config the run trains: a new one, with config.init_from's
  architecture adopted and checked again, the caller's left as it was; the Source of init_from,
  or None). Every field the run reads is final from here on."""
  if not cfg.init_from:
    return cfg, None
  source = Source(cfg.init_from)
  out = cfg.copy_and_resolve_references()
  source.set_model_fields(out.model)
  check_model(out.model)
  try:
    check_objective(out)
  except UserError as e:
    raise UserError(f'config field init_from={cfg.init_from!r} gives a model that '
                    f'train.objective={out.train.objective!r} cannot train: {e}') from None
  out.lock()
  return out, source


class Source:
  """What config.init_from names: its kind, and for a jaxlm workdir the checkpoint's metadata."""

  def __init__(self, init_from: str):
    self.name = init_from
    self.path = Path(init_from).expanduser()
    self.where = f'config field init_from={init_from!r}'
    if (self.path / 'config.json').is_file():
      self.kind = 'huggingface'
    elif (self.path / 'checkpoints').is_dir():
      self.kind = 'jaxlm'
      self._open_checkpoint()
    else:
      raise UserError(f'{self.where} is neither a Hugging Face model directory (no config.json) '
                      'nor a jaxlm workdir (no checkpoints/); give one of those.')

  def _open_checkpoint(self) -> None:
    """The newest checkpoint whose metadata reads back: its step, model and tokenizer."""
    ckpt = Checkpointer(self.path / 'checkpoints', keep=None, async_save=False, create=False)
    try:
      steps = ckpt.all_steps()
      if not steps:
        raise UserError(f'{self.where} has no checkpoint yet; train it first, or give another '
                        'workdir.')
      reasons = []
      for step in reversed(steps):
        try:
          self.meta, self.step = ckpt.restore_meta(step), step
          return
        except Exception as e:  # pylint: disable=broad-except  # a torn checkpoint: the one before
          reasons.append(f'{step} ({short_reason(e)})')
      raise UserError(f'no checkpoint of {self.where} can be read: {", ".join(reasons)}; restore '
                      'one, or give another workdir.')
    finally:
      ckpt.close()

  def set_model_fields(self, model: ConfigDict) -> None:
    """The run's model config takes the trained model's architecture."""
    if self.kind == 'huggingface':
      hf.init_fields(str(self.path), model)
    else:
      adopt_architecture(model, self.meta['model'], self.name)

  def check_tokenizer(self, tokenizer: Tokenizer, model: ConfigDict) -> None:
    """The run's tokenizer is the one the weights were trained with, and the vocabulary holds it."""
    if self.kind == 'huggingface':
      if not (self.path / 'tokenizer.json').is_file():
        raise UserError(f'{self.where} has no tokenizer.json, so the run\'s tokenizer cannot be '
                        'checked against the model\'s; add it there.')
      trained_with = HuggingFaceTokenizer(self.path).fingerprint
      advice = (f"set data.tokenizer='huggingface' and data.tokenizer_path={self.name!r} (and "
                'prepare the data with it)')
    else:
      trained_with, advice = self.meta['tokenizer'], self._tokenizer_advice()
    if tokenizer.fingerprint != trained_with:
      raise UserError(f"the run's tokenizer ({tokenizer.fingerprint}) is not the one the weights "
                      f'of {self.where} were trained with ({trained_with}); {advice}.')
    if model.vocab_size < tokenizer.vocab_size:
      raise UserError(f'the model in {self.where} has a vocabulary of {model.vocab_size}, smaller '
                      f'than its tokenizer\'s {tokenizer.vocab_size}; the two do not belong '
                      'together.')

  def _tokenizer_advice(self) -> str:
    """The data settings that give the tokenizer of the checkpoint in a jaxlm workdir."""
    fingerprint = self.meta['tokenizer']
    kind = {'spm': 'sentencepiece', 'hf': 'huggingface', 'char': 'char'}.get(
        fingerprint.partition('-')[0], 'byte')
    if kind == 'byte':
      return "set data.tokenizer='byte'"
    if self.meta['data']:  # a trained run: its (first) prepared dataset holds the tokenizer
      data = Path(self.meta['data'][0]['path'])
      directory = (data if data.is_absolute() else self.path / data) / 'tokenizer'
    else:  # a model imported by jaxlm.convert import-hf
      directory = self.path / 'tokenizer'
    if kind == 'char':  # a character vocabulary is its corpus's own
      return f'train on the data it was trained on, data.corpus={str(directory.parent)!r}'
    return (f'set data.tokenizer={kind!r} and data.tokenizer_path='
            f'{str(directory / TOKENIZER_FILES[kind])!r} (and prepare the data with it)')

  def params(self, model_cfg: ConfigDict, mesh: Mesh, rules: sharding.Rules,
             shardings: dict[str, Any]) -> dict[str, Any]:
    """The trained parameters for the run's resolved model, placed with `shardings` (learned
    positions cropped to its context)."""
    if self.kind == 'huggingface':
      return jax.device_put(hf.init_params(str(self.path), model_cfg), shardings)
    trained = resolve_model(ConfigDict(self.meta['model']), 0)
    ckpt = Checkpointer(self.path / 'checkpoints', keep=None, async_save=False, create=False)
    try:
      if self.meta['config'].get('optim', {}).get('name') == 'schedule_free_adamw':
        params = self._averaged(ckpt, trained, mesh, rules)
      else:
        params = ckpt.restore_params(abstract_params(trained, mesh, rules), self.step)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # a torn or corrupt checkpoint
      raise UserError(f'checkpoint {self.step} of {self.where} cannot be read '
                      f'({short_reason(e)}); restore it, or give another workdir.') from None
    finally:
      ckpt.close()
    if 'pos_embed' in params:
      params['pos_embed'] = params['pos_embed'][:model_cfg.max_seq_len]
    return jax.device_put(params, shardings)

  def _averaged(self, ckpt: Checkpointer, trained: ConfigDict, mesh: Mesh,
                rules: sharding.Rules) -> dict[str, Any]:
    """A schedule-free run's average x (what its evaluation used), from its parameters and the
    optimizer state they are restored with."""
    # pylint: disable=import-outside-toplevel  (restore builds on what imports this module)
    from jaxlm.optim import eval_params, make_optimizer
    from jaxlm.restore import reader_config
    from jaxlm.state import setup_train_state
    run_cfg = reader_config(self.meta['config'], self.path, 0)
    setup = setup_train_state(run_cfg, trained, make_optimizer(run_cfg, trained)[0], mesh, rules)
    params, opt_state = ckpt.restore_params(setup.abstract.params, self.step,
                                            setup.abstract.opt_state)
    return eval_params(opt_state, params)
