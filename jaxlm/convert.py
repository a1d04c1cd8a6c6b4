"""Convert a jaxlm run to a Hugging Face transformers checkpoint (see hf.py).

  python -m jaxlm.convert export-hf --workdir=runs/base --out=hf/base [--step=N]
      [--dtype=bfloat16] [--max_shard_mb=2048]

writes config.json and safetensors (sharded with an index when larger than --max_shard_mb) that
transformers.AutoModelForCausalLM.from_pretrained loads: a GPT-2-style run as GPT2LMHeadModel, a
Llama-style one as LlamaForCausalLM (Qwen2ForCausalLM with model.qkv_bias). The tokenizer is not
exported yet: a SentencePiece model loaded by transformers does not yet encode exactly as jaxlm's.
"""

from absl import flags

from jaxlm import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest readable).')
_OUT = flags.DEFINE_string('out', None, 'A new (or empty) directory to write.', required=True)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Dtype of the tensors.')
_SHARD_MB = flags.DEFINE_float('max_shard_mb', 2048.0, 'Largest safetensors file (MiB).')


def main(argv: list[str]) -> None:
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  from jaxlm import hf  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  from jaxlm.restore import load_trained  # pylint: disable=import-outside-toplevel
  del argv
  cli.require(_WORKDIR, bool(_WORKDIR.value.strip()), "a training run's workdir")
  cli.require(_OUT, bool(_OUT.value.strip()), 'a directory to write')
  cli.require_location(_WORKDIR)
  cli.require_local(_OUT)
  cli.require(_STEP, _STEP.value is None or _STEP.value >= 0, 'a checkpoint step >= 0')
  cli.require(_SHARD_MB, _SHARD_MB.value > 0, 'a positive number of MiB')
  out = Path(_OUT.value).expanduser()
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f'--out={out} already exists and is not an empty directory; give a new '
                    'directory (nothing is overwritten).')
  r = load_trained(_WORKDIR.value, _STEP.value)
  hf.family_of(r.model_cfg)  # a model transformers cannot represent fails before writing
  family, files = hf.export_model(r.model_cfg, r.params, out,
                                  int(_SHARD_MB.value * 2**20), _DTYPE.value)
  print(f'checkpoint {r.step} of {_WORKDIR.value} -> {out} as {hf.ARCHITECTURES[family]} '
        f'({_DTYPE.value}): {", ".join(files)}')


if __name__ == '__main__':
  cli.run(main, commands=('export-hf',))
