"""Human evaluation: blind pairwise rating of generations in a local web page.

  python -m jaxlm.rate generate --runs=runs/base@100,runs/base@500 --prompts=prompts.txt \
      --out=studies/base [--max_new_tokens=64 --temperature=0.8 --top_k=0 --top_p=1 --seed=0 \
      --samples_per_prompt=1 --repeat_share=0.1]
  python -m jaxlm.rate serve --study=studies/base [--port=8080] [--host=127.0.0.1 --token=...]
  python -m jaxlm.rate report --study=studies/base [--out=studies/base/report]

generate samples every prompt from every run (a workdir, with @step for a checkpoint other than
the newest) with the same settings and seeds, and writes the study: systems with provenance,
prompts, generations and the items to rate (every pair of systems on every prompt and sample).
Prompts: one per line, or a .jsonl file of {"prompt": ..., "reference": ...} lines (the reference
is optional and shown to raters). serve never loads a model; report prints the statistics and
writes report.md, CSV files and report.png.
"""

import ipaddress
import json
from pathlib import Path

from absl import flags

from jaxlm import cli, paths
from jaxlm.errors import UserError

_RUNS = flags.DEFINE_list('runs', [], 'generate: workdir[@step],workdir[@step],...')
_PROMPTS = flags.DEFINE_string('prompts', '', 'generate: a text file (one prompt per line) or a '
                               '.jsonl file with "prompt" (and optional "reference").')
_OUT = flags.DEFINE_string('out', '', 'generate: the new study directory; report: where the '
                           'report goes (default <study>/report).')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'generate: tokens per continuation.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'generate: 0 is greedy decoding.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'generate: sample among the k most likely (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'generate: nucleus sampling mass.')
_SEED = flags.DEFINE_integer('seed', 0, 'generate: sampling seed of the first sample (sample k '
                             'uses seed + k, for every run) and the raters\' orders.')
_SAMPLES = flags.DEFINE_integer('samples_per_prompt', 1, 'generate: continuations per prompt '
                                'and run.')
_REPEATS = flags.DEFINE_float('repeat_share', 0.0, 'generate: the share of items each rater sees '
                              'a second time, for self-agreement.')
_STUDY = flags.DEFINE_string('study', '', 'serve, report: the study directory.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'serve: the address to bind; another than '
                            'loopback needs --token.')
_PORT = flags.DEFINE_integer('port', 8080, 'serve: the port (0: a free one, printed).')
_TOKEN = flags.DEFINE_string('token', None, 'serve: a secret every request must carry '
                             '(?token=...); required off loopback.')

COMMANDS = {'generate': (_RUNS, _PROMPTS, _OUT, _MAX_NEW, _TEMPERATURE, _TOP_K, _TOP_P, _SEED,
                         _SAMPLES, _REPEATS),
            'serve': (_STUDY, _HOST, _PORT, _TOKEN),
            'report': (_STUDY, _OUT)}


def _check_flags(command: str) -> None:
  own = {f.name for f in COMMANDS[command]}
  for holders in COMMANDS.values():
    for f in holders:
      if f.name not in own and flags.FLAGS[f.name].present:
        users = ' and '.join(c for c, fs in COMMANDS.items() if f.name in {g.name for g in fs})
        raise UserError(f'--{f.name} is a flag of `jaxlm.rate {users}`, not of `{command}`; '
                        'drop it.')


def read_prompts(value: str) -> list[dict]:
  """Prompts from a text file (one per non-empty line) or JSONL ({"prompt", "reference"})."""
  cli.require(_PROMPTS, bool(value.strip()), 'a prompts file (one per line, or .jsonl)')
  try:
    text = paths.path(value).read_text(encoding='utf-8')
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'cannot read --prompts={value} ({getattr(e, "strerror", None) or e}); give '
                    'a UTF-8 text file with one prompt per line, or a .jsonl file.') from None
  prompts = []
  if value.endswith('.jsonl'):
    for n, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise ValueError
      except ValueError:
        raise UserError(f'line {n} of --prompts={value} is not a JSON object; write one '
                        '{"prompt": ..., "reference": ...} per line.') from None
      prompt, reference = row.get('prompt'), row.get('reference')
      if not isinstance(prompt, str) or not prompt.strip() or not isinstance(
          reference, (str, type(None))):
        raise UserError(f'line {n} of --prompts={value} has no "prompt" text (and "reference", '
                        'if given, must be text); give each line a non-empty "prompt".')
      prompts.append(dict(prompt=prompt, reference=reference))
  else:
    prompts = [dict(prompt=line, reference=None) for line in text.splitlines() if line.strip()]
  if not prompts:
    raise UserError(f'--prompts={value} holds no prompt; write one per line (or a .jsonl line '
                    'with "prompt").')
  return prompts


def parse_runs(entries: list[str]) -> list[tuple[str, int | None]]:
  """workdir[@step] entries: two or more, no entry twice."""
  runs = []
  for entry in entries:
    run, at, step = entry.strip().rpartition('@')
    if not at or not step.isdigit():
      run, step = entry.strip(), None
    if not run:
      raise UserError(f'--runs entry {entry!r} names no workdir; give workdir[@step].')
    runs.append((run, None if step is None else int(step)))
  if len(runs) < 2:
    raise UserError(f'--runs={",".join(entries)} names {len(runs)} system(s); a pairwise study '
                    'compares two or more: give workdir[@step],workdir[@step].')
  if len(set(runs)) < len(runs):
    raise UserError(f'--runs={",".join(entries)} names a system twice; give each workdir[@step] '
                    'once.')
  return runs


def generate() -> None:
  from jaxlm import objectives  # pylint: disable=import-outside-toplevel
  from jaxlm.checkpoint import peek_config  # pylint: disable=import-outside-toplevel
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
  runs = parse_runs(_RUNS.value)
  prompts = read_prompts(_PROMPTS.value)
  cli.require(_OUT, bool(_OUT.value.strip()), 'the directory of the new study')
  cli.require_local(_OUT)
  cli.require_output(_OUT)
  out = Path(_OUT.value).expanduser()
  if out.exists():
    raise UserError(f'--out={_OUT.value} already exists; give a new directory (a study is never '
                    'overwritten).')
  cli.require_sampling(_MAX_NEW, _TEMPERATURE, _TOP_K, _TOP_P, _SEED)
  cli.require(_SAMPLES, _SAMPLES.value >= 1, 'at least 1')
  cli.require(_REPEATS, 0 <= _REPEATS.value <= 1, 'a share in [0, 1]')
  for run, _ in runs:  # every run checked before any model is loaded
    directory = paths.path(run) / 'checkpoints'
    if not directory.is_dir():
      raise UserError(f'{run} has no checkpoints directory; give workdirs of training runs in '
                      '--runs.')
    saved = peek_config(directory)
    if saved is not None and not objectives.of(ConfigDict(saved)).generates:
      raise UserError(f'{run} holds a model trained with train.objective='
                      f'{saved["train"]["objective"]!r}, which does not continue a prompt; rate '
                      f'runs trained with {objectives.generating()}.')
  settings = dict(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                  top_k=_TOP_K.value, top_p=_TOP_P.value)
  systems, outputs = [], {}
  for s, (run, step) in enumerate(runs):
    system, texts = _sample(run, step, [p['prompt'] for p in prompts], settings)
    systems.append(system)
    for (p, k), (seed, text) in texts.items():
      outputs[p, k, s] = (seed, text)
  from jaxlm.rate import study  # pylint: disable=import-outside-toplevel
  study.create(out, systems=systems, prompts=prompts, outputs=outputs, meta=dict(
      settings=settings, seed=_SEED.value, samples_per_prompt=_SAMPLES.value,
      repeat_share=_REPEATS.value, version=1))
  items = len(prompts) * _SAMPLES.value * len(runs) * (len(runs) - 1) // 2
  print(f'wrote {out}: {len(runs)} systems, {len(prompts)} prompts x {_SAMPLES.value} '
        f'sample(s), {items} items to rate; serve it with `python -m jaxlm.rate serve '
        f'--study={out}`')


def _sample(run: str, step: int | None, prompts: list[str], settings: dict):
  """One run's continuations of every prompt, sample k with seed + k."""
  import gc  # pylint: disable=import-outside-toplevel
  from jaxlm.evaluation import continuations  # pylint: disable=import-outside-toplevel
  from jaxlm.restore import load_trained  # pylint: disable=import-outside-toplevel
  batch = min(len(prompts), 64)
  r = load_trained(run, step, batch_size=batch)
  cli.require(_TOP_K, _TOP_K.value <= r.tokenizer.vocab_size,
              f"0 (all tokens) or at most the vocabulary's {r.tokenizer.vocab_size} tokens of "
              f'{run}')
  texts = {}
  for k in range(_SAMPLES.value):
    seed = _SEED.value + k
    for p, text in enumerate(continuations(
        r.graphdef, r.params, r.model_cfg, r.tokenizer, prompts, batch_size=batch, seed=seed,
        prefix_lm=r.objective.prefix_lm, **settings)):
      texts[p, k] = (seed, text)
  provenance = dict(workdir=str(Path(run).resolve()) if not paths.is_url(run) else run,
                    step=r.step, config=json.loads(r.cfg.to_json_best_effort()),
                    sampling=settings)
  print(f'{run}@{r.step}: {len(prompts) * _SAMPLES.value} continuation(s)', flush=True)
  del r
  gc.collect()
  return dict(run=run, step=provenance['step'], provenance=provenance), texts


def _loopback(host: str) -> bool:
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def serve() -> None:
  import errno  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  from jaxlm.rate.study import Study  # pylint: disable=import-outside-toplevel
  cli.require(_STUDY, bool(_STUDY.value.strip()), 'the study directory')
  study = Study(_STUDY.value)
  cli.require(_PORT, 0 <= _PORT.value <= 65535, 'a port in 0-65535 (0: a free one)')
  if _TOKEN.value is not None and len(_TOKEN.value) < 8:
    raise UserError('--token is shorter than 8 characters; give a longer secret (for example '
                    '`python -c "import secrets; print(secrets.token_urlsafe())"`).')
  if not _loopback(_HOST.value) and _TOKEN.value is None:
    raise UserError(f'--host={_HOST.value} is not a loopback address, so anyone who reaches it '
                    'could vote: give --token=<secret> too and send raters the link with '
                    '?token=<secret>.')
  from werkzeug.serving import make_server  # pylint: disable=import-outside-toplevel
  from jaxlm.rate.server import create_app  # pylint: disable=import-outside-toplevel
  try:  # bound here, not by werkzeug, which exits with its own message when the port is taken
    listener = socket.create_server((_HOST.value, _PORT.value), backlog=128,
                                    family=socket.AF_INET6 if ':' in _HOST.value else
                                    socket.AF_INET)
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise UserError(f'--port={_PORT.value} is in use on {_HOST.value}; give another --port (or '
                      '0 for a free one).') from None
    raise UserError(f'cannot listen on --host={_HOST.value} --port={_PORT.value} '
                    f'({e.strerror or e}); give an address of this machine.') from None
  server = make_server(_HOST.value, listener.getsockname()[1], create_app(study, _TOKEN.value),
                       threaded=True, fd=listener.fileno())
  host = f'[{_HOST.value}]' if ':' in _HOST.value else _HOST.value
  link = f"http://{host}:{server.port}/"
  if _TOKEN.value is not None:
    link += '?token=' + _TOKEN.value
  print(f'serving {study.directory} at {link} (each vote is saved as it is made; Ctrl-C '
        'stops)', flush=True)
  server.serve_forever()


def report() -> None:
  from jaxlm.rate import report as stats  # pylint: disable=import-outside-toplevel
  from jaxlm.rate.study import Study  # pylint: disable=import-outside-toplevel
  cli.require(_STUDY, bool(_STUDY.value.strip()), 'the study directory')
  study = Study(_STUDY.value)
  votes = study.votes()
  if not votes:
    raise UserError(f'--study={_STUDY.value} has no votes yet; serve it and rate first.')
  out = Path(_OUT.value).expanduser() if _OUT.value.strip() else study.directory / 'report'
  if _OUT.value.strip():
    cli.require_output(_OUT)
  r = stats.analyse(study.systems(), votes, seed=study.seed)
  written = stats.write(r, out)
  print(stats.table(r))
  print(f'wrote {", ".join(str(p) for p in written)}')


def main(argv: list[str]) -> None:
  command = argv[1]
  _check_flags(command)
  {'generate': generate, 'serve': serve, 'report': report}[command]()


if __name__ == '__main__':
  cli.run(main, commands=tuple(COMMANDS))
