"""jaxlm.prepare as an Apache Beam pipeline (the optional extra `beam`), so that an engine
(Dataflow, Flink, Spark, or the DirectRunner's processes) places, retries and scales the work.

  python -m jaxlm.prepare --source=... --output=/shared/prep --runner=DirectRunner \\
      -- --direct_num_workers=8 --direct_running_mode=multi_processing

The driver (this process) makes the plan, the tokenizer included, as `prepare` does; the pipeline
is one step, `prepare_chunk` on every chunk not yet complete, spread by a Reshuffle; the driver
then finalizes: it reads the chunk records the workers wrote and writes the manifest. The bytes
are those of `prepare` on one host: a chunk is a pure function of the plan, and an attempt that
an engine retries or runs twice writes to names of its own (see data/chunk.py).

The output is a directory every worker reaches (a shared file system) or a gs:// location: then
each worker copies the plan and the tokenizer to its local cache, prepares each chunk there and
uploads it, its record last (data/staging.py). Dataflow's workers need jaxlm installed (a
container image, or --setup_file).
"""

import contextlib
import dataclasses
import io
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners import create_runner

from jaxlm import paths
from jaxlm.data import staging
from jaxlm.data.chunk import Settings, complete, prepare_chunk
from jaxlm.data.sources import Chunk
from jaxlm.errors import UserError


class PrepareChunk(beam.DoFn):
  """Prepares the chunks it is given; the plan's tokenizer is opened once per worker, in setup."""

  def __init__(self, settings: Settings, output: str):
    super().__init__()
    self.settings, self.output, self.local, self.tokenizer = settings, output, None, None

  def setup(self):
    self.local, _, self.tokenizer = staging.planned(self.settings, self.output)

  def process(self, chunk: dict):
    chunk = Chunk.from_record(chunk)
    if not paths.is_url(self.output):
      prepare_chunk(self.settings, self.local, chunk, self.tokenizer)
    elif complete(self.output, chunk) is None:
      prepare_chunk(self.settings, self.local, chunk, self.tokenizer)
      staging.upload_chunk(self.local, self.output, chunk.index)
    yield chunk.index


def pipeline_options(runner: str, args: list[str]) -> PipelineOptions:
  """The runner's options from the arguments after `--`: one sentence for a value Beam cannot
  read, an option it does not know, or one the runner needs and was not given."""
  quiet = [] if any(a.startswith('--default_sdk_harness_log_level') for a in args) else [
      '--default_sdk_harness_log_level=WARNING']  # (the workers log every step at INFO)
  options = PipelineOptions([f'--runner={runner}', *quiet, *args])
  said = io.StringIO()
  try:
    with contextlib.redirect_stderr(said):  # argparse prints its usage and exits
      known = options.get_all_options()
  except SystemExit:
    reason = said.getvalue().strip().splitlines()[-1].split('error: ', 1)[-1]
    raise UserError(f'the Beam pipeline options after `--` are invalid ({reason}); fix '
                    'them.') from None
  unknown = [a for a in args if a.startswith('--') and
             a[2:].split('=', 1)[0].replace('-', '_') not in known]
  if unknown:
    raise UserError(f'{unknown[0]} is not a Beam pipeline option; give the options of the '
                    f'{runner} after `--` (see its documentation).')
  missing = PipelineOptionsValidator(options, create_runner(runner)).validate()
  if missing:
    raise UserError(f'the {runner} needs more pipeline options after `--` ('
                    f'{"; ".join(m.rstrip(".") for m in missing)}).')
  return options


def prepare_beam(s: Settings, output: str, runner: str, pipeline_args: list[str]) -> dict:
  """Prepares `s.source` into `output` (a shared directory or a gs:// location) with a Beam
  pipeline on `runner`; returns the manifest."""
  options = pipeline_options(runner, pipeline_args)
  if not paths.is_url(output):
    output = str(Path(output).resolve())  # (the workers' working directory may be another)
  chunks = staging.plan(s, output)
  print(f'Preparing {len(chunks)} chunk(s) with Beam ({runner})', flush=True)
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline
         | 'Chunks' >> beam.Create([dataclasses.asdict(c) for c in chunks])
         | 'Spread' >> beam.Reshuffle()
         | 'Prepare' >> beam.ParDo(PrepareChunk(s, output)))
  return staging.finalize(s, output)
