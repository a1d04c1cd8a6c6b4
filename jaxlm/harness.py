"""jaxlm as a model of EleutherAI's lm-evaluation-harness (`lm_eval`, the `eval` extra).

  lm_eval --model jaxlm --model_args workdir=runs/base,step=500 --tasks hellaswag
  python -m jaxlm.eval --workdir=runs/base --tasks=shakespeare_cloze,shakespeare_last_word

`JaxLM` answers lm-eval's three request types from a trained run (a checkpoint, or the live
parameters of a training run):

- loglikelihood(context, continuation): tokenized as lm-eval's own `hf` backend does (lm-eval's
  TemplateLM: the whole string encoded, the continuation the tokens after the context's; the
  window cut from the left to the model's context), so scores compare with published ones;
- loglikelihood_rolling(text): lm-eval's disjoint rolling windows of the model's context, every
  token scored once;
- generate_until(context, until, max_gen_toks, temperature): the KV-cache decoder (or an LSTM's
  carried state), cut at the first stop sequence.

Scoring packs the requests, longest first, several to a row with segment ids and positions that
restart (no request sees another; the packed path training uses), into batches of one fixed
shape [batch_size, max_seq_len], the last one padded: the scoring function compiles once. Every
host runs every call on the same requests (lm-eval's rank 0 of 1), so hosts agree; process 0
writes. Log-probabilities are over the model's whole vocabulary, as the hf backend computes
them (an imported model's ids past its tokenizer's included), and greedy generation picks from
all of them as hf's does (such an id decodes to nothing), so scores compare with published ones.
Only models that read left to right are scored: a masked-LM encoder or a
span-corruption prefix LM has no next-token distribution over a plain text (one sentence says so).
Shape letters: B rows, L length.
"""

import contextlib
import logging
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (handle_stop_sequences, normalize_gen_kwargs,
                                  postprocess_generated_text)

from jaxlm import evaluation, families, objectives, sampling, sharding
from jaxlm.errors import UserError


@contextlib.contextmanager
def _one_sentence():
  """Under lm-eval's command line: a UserError is its sentence on stderr and exit status 2."""
  try:
    yield
  except UserError as e:
    print(f'jaxlm: {e}', file=sys.stderr)
    raise SystemExit(2) from None


class _QuietCustomDatasets(logging.Filter):
  """lm-eval warns, for every task with a custom_dataset function (all of jaxlm's examples),
  that --metadata could pass it arguments: noise in a training log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'Custom kwargs can be passed' not in record.getMessage()


logging.getLogger('lm_eval.api.task').addFilter(_QuietCustomDatasets())


def pack(lengths: Sequence[int], row: int) -> list[list[tuple[int, int]]]:
  """First-fit decreasing: rows of (item, offset) holding items of `lengths` (each <= row),
  the longest first."""
  rows: list[list[tuple[int, int]]] = []
  free: list[int] = []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    n = lengths[i]
    for r, room in enumerate(free):
      if room >= n:
        rows[r].append((i, row - room))
        free[r] -= n
        break
    else:
      rows.append([(i, 0)])
      free.append(row - n)
  return rows


class Scorer:
  """Per-token log-probabilities of packed rows, one jitted function of one shape.

  With `shared` (a model that takes attention masks, families.Family.takes_masks), windows with
  the same context (a multiple-choice question's answers) read it once: the context but its
  last token is laid out once, then each answer as a branch (the context's last token and the
  answer's tokens, at the positions they would have alone) that sees the shared tokens and its
  own, not another branch. The scores are those of each window alone; the tokens computed fall
  from n (c + a) to c + n a for n answers of a context of c tokens."""

  def __init__(self, graphdef: nnx.GraphDef, params: Any, mesh, rules, length: int, rows: int,
               packed: bool = True, shared: bool = False):
    self.graphdef, self.params, self.mesh, self.rules = graphdef, params, mesh, rules
    self.L, self.B, self.packed, self.shared = length, rows, packed, shared
    self.batch_sharding = sharding.batch_sharding(mesh, rules)
    self.compilations = 0

    def score(params, batch):
      """-> (log p(target) [B, L], target is the argmax [B, L])."""
      self.compilations += 1  # (runs when traced: once per shape)
      with sharding.use_mesh(mesh, rules):
        model = nnx.merge(graphdef, params)
        mask = None
        if shared:  # same segment, causal, and the shared tokens (branch 0) or one's own branch
          seg, branch = batch['segment_ids'], batch['branch']
          L = seg.shape[1]
          mask = ((seg[:, :, None] == seg[:, None, :])
                  & (jnp.arange(L)[None, :, None] >= jnp.arange(L)[None, None, :])
                  & ((branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])))
          mask = mask[:, None]
        h, _ = model.features(batch['inputs'], batch['positions'],
                              segment_ids=batch['segment_ids'], mask=mask)
        logits = model.logits(h).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        target = batch['targets'][..., None]
        return (jnp.take_along_axis(logp, target, -1)[..., 0],
                jnp.argmax(logits, -1) == batch['targets'])

    self._score = jax.jit(score, out_shardings=sharding.replicated(mesh))

  def _groups(self, windows):
    """[(shared input tokens, [(window, branch inputs, branch targets, scored), ...])]: a
    window's tokens t (its last n scored) as inputs t[:-1] and targets t[1:], alone; or, shared,
    windows of one context grouped, as many to a group as fit a row."""
    if not self.shared:
      return [([], [(i, t[:-1], t[1:], n)]) for i, (t, n) in enumerate(windows)]
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, n) in enumerate(windows):
      by_context.setdefault(tuple(tokens[:-n]), []).append(i)
    groups = []
    for context, members in by_context.items():
      shared, size, branches = list(context[:-1]), len(context) - 1, []
      for i in members:
        tokens, n = windows[i]
        branch = (i, [context[-1]] + list(tokens[-n:-1]), list(tokens[-n:]), n)
        if branches and size + n > self.L:  # a new group, with the context again
          groups.append((shared, branches))
          size, branches = len(shared), []
        branches.append(branch)
        size += n
      groups.append((shared, branches))
    return groups

  def score(self, windows: Sequence[tuple[list[int], int]]) -> list[tuple[float, bool]]:
    """windows: (tokens, n) pairs, 2 <= len(tokens) <= L + 1 and 1 <= n < len(tokens): the last n
    tokens are scored given the ones before them -> (summed log-probability, every scored token
    the argmax) each."""
    out: list[tuple[float, bool]] = [(0.0, True)] * len(windows)
    groups = self._groups([(list(t), n) for t, n in windows])
    lengths = [len(shared) + sum(len(b[1]) for b in branches) for shared, branches in groups]
    rows = pack(lengths, self.L) if self.packed else [[(g, 0)] for g in range(len(groups))]
    here = sharding.host_rows(self.batch_sharding, self.B)
    for first in range(0, len(rows), self.B):
      batch = {k: np.zeros((self.B, self.L), np.int32)
               for k in ('inputs', 'targets', 'positions', 'segment_ids', 'branch')}
      chunk, scored = rows[first:first + self.B], []
      for r, row in enumerate(chunk):
        for segment, (g, at) in enumerate(row, 1):
          shared, branches = groups[g]
          m = len(shared)
          batch['inputs'][r, at:at + m] = shared
          batch['positions'][r, at:at + m] = np.arange(m)
          batch['segment_ids'][r, at:at + m] = segment
          at += m
          for b, (i, inputs, targets, n) in enumerate(branches, 1):
            k = len(inputs)
            batch['inputs'][r, at:at + k] = inputs
            batch['targets'][r, at:at + k] = targets
            batch['positions'][r, at:at + k] = np.arange(m, m + k)
            batch['segment_ids'][r, at:at + k] = segment
            batch['branch'][r, at:at + k] = b
            scored.append((i, r, at + k - n, at + k))
            at += k
      if not self.shared:
        del batch['branch']
      logp, greedy = jax.device_get(self._score(
          self.params, evaluation.to_global({k: v[here] for k, v in batch.items()},
                                            self.batch_sharding, self.B)))
      for i, r, start, end in scored:
        out[i] = (float(logp[r, start:end].sum()), bool(greedy[r, start:end].all()))
    return out


@register_model('jaxlm')
class JaxLM(TemplateLM):
  """A trained jaxlm run as an lm-eval model: `workdir` (and `step`, default the newest), or a
  `run` (restore.TrainedRun-like) given in-process, e.g. by training with the live parameters."""

  def __init__(self, workdir: str = '', step: int | None = None, batch_size: int | str = 16,
               max_gen_toks: int = 256, run: Any = None, device: Any = None,
               max_batch_size: Any = None, **unknown):
    del device, max_batch_size  # (lm-eval's, for torch: jaxlm uses every JAX device)
    super().__init__()
    # lm-eval's bootstrap forks worker processes, which a process running JAX must not do.
    os.environ.setdefault('DISABLE_MULTIPROC', '1')
    if unknown:
      raise UserError(f'--model_args {", ".join(sorted(unknown))} is not an argument of the '
                      'jaxlm model; give workdir=<run>, and optionally step=N, batch_size=N, '
                      'max_gen_toks=N.')
    if run is None:
      if not workdir:
        raise UserError('the jaxlm model needs --model_args workdir=<a training run\'s workdir>.')
      from jaxlm.restore import load_trained  # pylint: disable=import-outside-toplevel
      run = load_trained(workdir, None if step in (None, '') else int(step))
    objective = objectives.of(run.cfg)
    if objective.reads != objectives.Objective.reads:  # (left to right: next-token prediction)
      raise UserError(f'the run in {run.workdir} was trained with train.objective='
                      f'{objective.name!r}, whose model has no next-token distribution over a '
                      'plain text to score lm-eval requests with; evaluate a causal LM.')
    self.run, self.tokenizer_ = run, run.tokenizer
    self._max_gen_toks = int(max_gen_toks)
    rows = 16 if batch_size in ('auto', None) else int(str(batch_size).split(':')[0])
    from jaxlm.restore import eval_batch_size  # pylint: disable=import-outside-toplevel
    self.scorer = Scorer(run.graphdef, run.params, run.mesh, run.rules,
                         run.model_cfg.max_seq_len, eval_batch_size(rows),
                         shared=families.of(run.model_cfg).takes_masks)

  @classmethod
  def create_from_arg_string(cls, arg_string, additional_config=None):
    """As lm-eval's command line builds it: a bad argument is one sentence, not a traceback."""
    with _one_sentence():
      return super().create_from_arg_string(arg_string, additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict, additional_config=None):
    with _one_sentence():
      return super().create_from_arg_obj(arg_dict, additional_config)

  # What lm-eval asks of a model.
  @property
  def eot_token_id(self) -> int:
    return self.tokenizer_.eos_id

  @property
  def prefix_token_id(self) -> int:
    """What a document starts with in jaxlm's streams (beginning-of-sequence, else end)."""
    bos = self.tokenizer_.bos_id
    return bos if bos is not None else self.tokenizer_.eos_id

  @property
  def max_length(self) -> int:
    return self.run.model_cfg.max_seq_len

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    """The text's ids; with a tokenizer that starts texts with a beginning-of-sequence token
    (Llama's), that token first unless add_special_tokens=False, as the hf backend encodes."""
    del kwargs
    ids = self.tokenizer_.encode(string)
    bos = self.tokenizer_.bos_id
    if bos is not None and add_special_tokens is not False and (not ids or ids[0] != bos):
      ids = [bos] + ids
    return ids

  def tok_decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer_.decode(ids)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """((context, continuation), context ids, continuation ids) -> (log p, greedy) each: the
    continuation scored after the context, the window cut from the left to L + 1 tokens."""
    del disable_tqdm, kwargs
    windows = []
    for _, context, continuation in requests:
      tokens = (list(context) + list(continuation))[-(self.max_length + 1):]
      windows.append((tokens, min(len(continuation), len(tokens) - 1)))
    out = self.scorer.score(windows)
    for (key, _, _), result in zip(requests, out):
      if key is not None:
        self.cache_hook.add_partial('loglikelihood', key, result)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text in lm-eval's disjoint windows of the context (every token scored once, the
    first after the prefix token), the windows of all texts scored together."""
    windows, owner = [], []
    for i, (text,) in enumerate(req.args for req in requests):
      for context, continuation in map(lm_utils.make_disjoint_window,
                                       lm_utils.get_rolling_token_windows(
                                           token_list=self.tok_encode(text),
                                           prefix_token=self.prefix_token_id,
                                           max_seq_len=self.max_length, context_len=1)):
        windows.append((None, context, continuation))
        owner.append(i)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial('loglikelihood_rolling', (req.args[0],), total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy (temperature 0) or sampled continuations, batched by their generation settings,
    each prompt cut from the left to leave room for max_gen_toks, cut at the first stop."""
    del disable_tqdm
    eos = self.tok_decode([self.eot_token_id]) if self.eot_token_id is not None else None
    groups: dict[str, list[int]] = {}
    settings = []
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
      until = handle_stop_sequences(kwargs.pop('until', None), eos=eos)
      settings.append((context, until, kwargs))
      key = repr((kwargs['max_gen_toks'], kwargs.get('temperature', 0.0),
                  kwargs.get('top_p', 1.0), kwargs.get('top_k', 0)))
      groups.setdefault(key, []).append(i)
    out = [''] * len(requests)
    for members in groups.values():
      kwargs = settings[members[0]][2]
      new = int(kwargs['max_gen_toks'])
      if not 0 < new < self.max_length:
        raise UserError(f'a task asks for max_gen_toks={new}, which leaves no room for a prompt '
                        f'in the model\'s context of {self.max_length}; lower it.')
      B = self.scorer.B
      for first in range(0, len(members), B):
        chunk = members[first:first + B]
        prompts = [self.tok_encode(settings[i][0]) for i in chunk]
        prompts += [prompts[-1]] * (B - len(prompts))  # one shape: pad the last batch
        rows = sampling.generate(
            self.run.graphdef, self.run.params, self.run.model_cfg, prompts, max_new_tokens=new,
            temperature=float(kwargs.get('temperature', 0.0)), top_k=int(kwargs.get('top_k', 0)),
            top_p=float(kwargs.get('top_p', 1.0)), eos_id=self.eot_token_id,
            vocab_limit=self.run.model_cfg.vocab_size, prompt_length=self.max_length - new)
        for i, row in zip(chunk, rows):
          text = postprocess_generated_text(generation=self.tok_decode(row),
                                            stop=settings[i][1], think_end_token=None)
          out[i] = text
          self.cache_hook.add_partial('generate_until', (settings[i][0], requests[i].args[1]),
                                      text)
    return out
