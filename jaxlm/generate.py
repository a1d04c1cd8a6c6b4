"""Generate text from a checkpoint, with a KV cache under jit.

  python -m jaxlm.generate --workdir=runs/base --prompt='ROMEO:' --max_new_tokens=200
  python -m jaxlm.generate --workdir=runs/base --prompts_file=prompts.txt --temperature=0 \
      --top_k=40 --top_p=0.9 --seed=1

One prompt per line of --prompts_file; all prompts are decoded together in one batch. Decoding
stops at the end-of-sequence token (if the tokenizer has one) or after --max_new_tokens, which
with the prompt must fit the model's context. Prints each continuation and the decode speed.
"""

import time

from absl import flags

from jaxlm import cli, objectives, paths
from jaxlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PROMPT = flags.DEFINE_string('prompt', '', 'The prompt.')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', '', 'A file with one prompt per line.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 100, 'Tokens to generate per prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, '0 is greedy decoding.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling: the smallest set with this mass.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed: the same seed gives the same text.')


def main(argv: list[str]) -> None:
  from jaxlm.evaluation import continuations
  from jaxlm.restore import load_trained
  cli.require(_WORKDIR, bool(_WORKDIR.value.strip()), "a training run's workdir")
  cli.require_location(_WORKDIR, _PROMPTS_FILE)
  cli.require(_STEP, _STEP.value is None or _STEP.value >= 0, 'a checkpoint step >= 0')
  cli.require_sampling(_MAX_NEW, _TEMPERATURE, _TOP_K, _TOP_P, _SEED)
  cli.require(_PROMPTS_FILE, not (_PROMPTS_FILE.value and _PROMPT.value),
              'either --prompt or --prompts_file, not both')
  prompts = [_PROMPT.value]
  if _PROMPTS_FILE.value:
    try:
      prompts = paths.path(_PROMPTS_FILE.value).read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f'cannot read --prompts_file={_PROMPTS_FILE.value} '
                      f'({getattr(e, "strerror", None) or e}); give a UTF-8 text file.') from None
    if not prompts:
      raise UserError(f'--prompts_file={_PROMPTS_FILE.value} holds no prompt; write one per '
                      'line.')
  r = load_trained(_WORKDIR.value, _STEP.value, batch_size=len(prompts))
  cli.require(_TOP_K, _TOP_K.value <= r.tokenizer.vocab_size,
              f"0 (all tokens) or at most the vocabulary's {r.tokenizer.vocab_size} tokens")
  if not r.objective.generates:
    raise UserError(f'{_WORKDIR.value} holds a model trained with train.objective='
                    f'{r.objective.name!r}, which does not continue a prompt; generate from one '
                    f'trained with {objectives.generating()}.')
  kw = dict(max_new_tokens=_MAX_NEW.value, batch_size=r.cfg.train.batch_size,
            temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
            seed=_SEED.value, prefix_lm=r.objective.prefix_lm)
  continuations(r.graphdef, r.params, r.model_cfg, r.tokenizer, prompts, **kw)  # compile
  start = time.perf_counter()
  texts = continuations(r.graphdef, r.params, r.model_cfg, r.tokenizer, prompts, **kw)
  seconds = time.perf_counter() - start
  for prompt, text in zip(prompts, texts):
    print(f'{prompt}{text}\n' + '-' * 40)
  tokens = sum(len(r.tokenizer.encode(t)) for t in texts)
  from jaxlm.metrics import devices_text
  print(f'step {r.step} | {devices_text()} | '
        f'{len(prompts)} prompt(s) | {tokens} new tokens in {seconds:.2f}s | '
        f'{tokens / seconds:,.0f} tokens/s')


if __name__ == '__main__':
  cli.run(main)
