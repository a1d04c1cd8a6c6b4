"""Convert between jaxlm runs and Hugging Face transformers checkpoints (see hf.py).

  python -m jaxlm.convert import-hf --hf_dir=hf/gpt2 --workdir=runs/gpt2 [--max_seq_len=1024]
  python -m jaxlm.convert export-hf --workdir=runs/base --out=hf/base [--step=N]
      [--dtype=bfloat16] [--max_shard_mb=2048]

import-hf makes a workdir holding the model as checkpoint 0 (its parameters) with its
tokenizer.json, for jaxlm.eval (with --text) and jaxlm.generate; to keep training it, start a new
run from that workdir (or from the Hugging Face directory) with --config.init_from.

export-hf writes config.json and safetensors (sharded with an index when larger than --max_shard_mb)
that transformers.AutoModelForCausalLM.from_pretrained loads: a GPT-2-style run as GPT2LMHeadModel,
a Llama-style one as LlamaForCausalLM (Qwen2ForCausalLM with model.qkv_bias), and the tokenizer that
AutoTokenizer loads: a SentencePiece model as tokenizer.model (LlamaTokenizer), a tokenizer.json as
it is; character and byte tokenizers have no transformers equivalent and are not written.
"""

from absl import flags

from jaxlm import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'export-hf: the training run\'s workdir; '
                               'import-hf: a new (or empty) workdir to write.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest readable).')
_OUT = flags.DEFINE_string('out', '', 'export-hf: a new (or empty) directory to write.')
_HF_DIR = flags.DEFINE_string('hf_dir', '', 'import-hf: a Hugging Face model directory '
                              '(config.json, weights, tokenizer.json).')
_MAX_LEN = flags.DEFINE_integer('max_seq_len', 0, "import-hf: the run's context (0: the model's).")
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Dtype of the tensors.')
_SHARD_MB = flags.DEFINE_float('max_shard_mb', 2048.0, 'Largest safetensors file (MiB).')


def _new_directory(flag: flags.FlagHolder):
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  cli.require(flag, bool(flag.value.strip()), 'a directory to write')
  cli.require_local(flag)
  cli.require_output(flag)
  path = Path(flag.value).expanduser()
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise UserError(f'--{flag.name}={path} already exists and is not an empty directory; give a '
                    'new directory (nothing is overwritten).')
  return path


def import_hf() -> None:
  """A workdir holding the Hugging Face model as checkpoint 0 (see the module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlm import hf  # pylint: disable=import-outside-toplevel
  from jaxlm.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from jaxlm.config import resolve_model, validate  # pylint: disable=import-outside-toplevel
  from jaxlm.configs import base  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from jaxlm.data.tokenizers import HuggingFaceTokenizer, build_tokenizer
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  cli.require(_HF_DIR, bool(_HF_DIR.value.strip()), 'a Hugging Face model directory')
  cli.require_local(_HF_DIR)
  cli.require(_MAX_LEN, _MAX_LEN.value >= 0, "0 (the model's context) or a positive length")
  ckpt = hf.Checkpoint(_HF_DIR.value)  # a directory without config.json fails before writing
  if not (ckpt.directory / 'tokenizer.json').is_file():
    raise UserError(f'{ckpt.directory} has no tokenizer.json; jaxlm needs the model\'s tokenizer '
                    'in that form (save it with a fast tokenizer\'s save_pretrained).')
  workdir = _new_directory(_WORKDIR)
  cfg = base.get_config()
  cfg.workdir, cfg.init_from = str(workdir), str(ckpt.directory)
  cfg.data.tokenizer, cfg.data.tokenizer_path = 'huggingface', str(workdir / 'tokenizer')
  cfg.model.max_seq_len = _MAX_LEN.value or hf.checkpoint_fields(ckpt)[1]['max_seq_len']
  family = hf.init_fields(cfg.init_from, cfg.model)
  validate(cfg)
  # Everything that can fail on the input (the tokenizer, the tensors) before anything is written.
  model_cfg = resolve_model(cfg.model, HuggingFaceTokenizer(ckpt.directory).vocab_size)
  params = hf.init_params(cfg.init_from, model_cfg)
  tokenizer = build_tokenizer(workdir / 'tokenizer', 'huggingface', [], 0, cfg.init_from)
  # The parameters alone (no optimizer state: nothing resumes from this checkpoint; a new run
  # starts from it with config.init_from). As JAX arrays (on a CPU, the same memory), which Orbax
  # writes with one host copy; numpy arrays it copies twice.
  params = jax.device_put(params, jax.local_devices(backend='cpu')[0])
  saver = Checkpointer(workdir / 'checkpoints', keep=None, async_save=False)
  try:
    saver.save(0, dict(params=params), {}, dict(
        config=cfg.to_dict(), model=model_cfg.to_dict(), tokenizer=tokenizer.fingerprint, data=[]))
  finally:
    saver.close()
  print(f'{ckpt.directory} -> {workdir} (checkpoint 0, {family}, '
        f'context {model_cfg.max_seq_len}, vocabulary {model_cfg.vocab_size})')


def export_hf() -> None:
  from jaxlm import hf, hf_files  # pylint: disable=import-outside-toplevel
  from jaxlm.restore import load_trained  # pylint: disable=import-outside-toplevel
  cli.require(_WORKDIR, bool(_WORKDIR.value.strip()), "a training run's workdir")
  cli.require_location(_WORKDIR)
  cli.require(_STEP, _STEP.value is None or _STEP.value >= 0, 'a checkpoint step >= 0')
  cli.require(_SHARD_MB, _SHARD_MB.value > 0, 'a positive number of MiB')
  out = _new_directory(_OUT)
  r = load_trained(_WORKDIR.value, _STEP.value)
  hf.family_of(r.model_cfg)  # a model transformers cannot represent fails before writing
  family, files = hf.export_model(r.model_cfg, r.params, out,
                                  int(_SHARD_MB.value * 2**20), _DTYPE.value)
  files += hf_files.export_tokenizer(r.tokenizer, out, r.model_cfg.max_seq_len) or [
      f'no tokenizer (a {type(r.tokenizer).__name__} has no transformers equivalent)']
  print(f'checkpoint {r.step} of {_WORKDIR.value} -> {out} as {hf.ARCHITECTURES[family]} '
        f'({_DTYPE.value}): {", ".join(files)}')


def main(argv: list[str]) -> None:
  if argv[1] == 'import-hf':
    import_hf()
  else:
    export_hf()


if __name__ == '__main__':
  cli.run(main, commands=('import-hf', 'export-hf'))
