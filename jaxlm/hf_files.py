"""Hugging Face files on disk: a model directory read one tensor at a time, safetensors shards
written with their index, and the tokenizer files transformers' AutoTokenizer loads. The mapping
between those tensors and jaxlm's parameters is hf.py's."""

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import SafetensorError, safe_open

from jaxlm.errors import UserError


class Checkpoint:
  """A local Hugging Face model directory: config.json and its weights (model.safetensors, shards
  listed in model.safetensors.index.json, or pytorch_model.bin), read one tensor at a time."""

  def __init__(self, directory: str):
    self.directory = Path(directory).expanduser()
    config = self.directory / 'config.json'
    if not config.is_file():
      raise UserError(f'{self.directory} has no config.json; give a Hugging Face model directory '
                      '(save_pretrained output).')
    self.config = _json_object(config)
    index = self.directory / 'model.safetensors.index.json'
    if index.is_file():  # files not in the index (an old copy, say) are never opened
      weight_map = _json_object(index).get('weight_map')
      if not isinstance(weight_map, dict):
        raise UserError(f'{index} has no "weight_map" of tensor names to files; save the model '
                        'again (save_pretrained).')
      self.files = {name: self.directory / f for name, f in weight_map.items()}
    elif (self.directory / 'model.safetensors').is_file():
      with _opened(self.directory / 'model.safetensors') as f:
        self.files = {name: self.directory / 'model.safetensors' for name in f.keys()}
    elif (self.directory / 'pytorch_model.bin').is_file():
      import torch  # pylint: disable=import-outside-toplevel  # the hf extra
      path = self.directory / 'pytorch_model.bin'
      try:
        self._torch = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
      except Exception as e:  # pylint: disable=broad-except  # torch's errors for a bad file vary
        raise UserError(f'{path} cannot be read ({" ".join(str(e).split())[:200]}); download or '
                        'save the model again.') from None
      self.files = {name: None for name in self._torch}
    else:
      raise UserError(f'{self.directory} holds no model.safetensors, safetensors index or '
                      'pytorch_model.bin.')

  def shapes(self) -> dict[str, tuple]:
    out = {}
    for path in set(self.files.values()):
      if path is None:
        out.update((name, tuple(t.shape)) for name, t in self._torch.items())
        continue
      with _opened(path) as f:  # reads the header only
        out.update((name, tuple(f.get_slice(name).get_shape())) for name in f.keys()
                   if self.files.get(name) == path)
    return out

  def get(self, name: str) -> np.ndarray:
    """One tensor as float32. The file is mapped for this read only: a mapping kept open would
    keep every page read so far resident, a second copy of the model."""
    path = self.files[name]
    if path is None:
      return self._torch[name].float().numpy()
    with _opened(path) as f:
      return np.asarray(f.get_tensor(name), np.float32)


def _json_object(path: Path) -> dict:
  """A JSON file holding an object; anything else is one sentence naming the file."""
  try:
    value = json.loads(path.read_text(encoding='utf-8'))
  except (ValueError, OSError) as e:
    raise UserError(f'{path} is not readable JSON ({" ".join(str(e).split())[:120]}); save the '
                    'model again (save_pretrained) or fix the file.') from None
  if not isinstance(value, dict):
    raise UserError(f'{path} holds a JSON {type(value).__name__}, not an object; save the model '
                    'again (save_pretrained) or fix the file.')
  return value


@contextlib.contextmanager
def _opened(path: Path) -> Iterator:
  """safe_open for numpy; a truncated or damaged file is one sentence naming it."""
  try:
    with safe_open(str(path), 'numpy') as f:
      yield f
  except (SafetensorError, OSError) as e:
    raise UserError(f'{path} is not a readable safetensors file ({" ".join(str(e).split())[:160]})'
                    '; download or save the model again.') from None


def write_checkpoint(tensors: Iterator[tuple[str, np.ndarray]], config: dict, out: Path,
                     max_shard_bytes: int = 2 * 2**30, dtype: str = 'float32') -> list[str]:
  """Writes `tensors` as safetensors shards of at most max_shard_bytes (model.safetensors when one
  is enough, else model-0000i-of-0000n.safetensors and model.safetensors.index.json) and
  config.json into the directory `out`; holds one shard in memory at a time. Returns the files."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  cast = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}[dtype]
  out.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  written, weight_map, size, total = [], {}, 0, 0

  def flush():
    path = out / f'.shard-{len(written):05d}.tmp'
    save_file(shards[-1], str(path), metadata={'format': 'pt'})
    written.append(path)
    shards[-1] = {}

  for name, value in tensors:
    value = np.ascontiguousarray(value.astype(cast, copy=False))
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      flush()
      size = 0
    shards[-1][name] = value
    weight_map[name] = len(written)
    size += value.nbytes
    total += value.nbytes
  flush()
  n = len(written)
  names = ['model.safetensors'] if n == 1 else [
      f'model-{i + 1:05d}-of-{n:05d}.safetensors' for i in range(n)]
  for path, name in zip(written, names):
    path.replace(out / name)
  files = list(names)
  if n > 1:
    index = dict(metadata=dict(total_size=total),
                 weight_map={k: names[i] for k, i in sorted(weight_map.items())})
    (out / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2))
    files.append('model.safetensors.index.json')
  (out / 'config.json').write_text(json.dumps(dict(config, torch_dtype=dtype), indent=2))
  return files + ['config.json']


def export_tokenizer(tokenizer, out: Path, max_len: int) -> list[str]:
  """Writes the run's tokenizer in a form transformers' AutoTokenizer loads and encodes exactly as
  jaxlm does (tested): a SentencePiece model as jaxlm trains them (no normalization, no dummy
  prefix) as tokenizer.model for LlamaTokenizer, with no added BOS/EOS; a tokenizer.json as it is.
  Character and byte tokenizers have no transformers equivalent, and a SentencePiece model that
  normalizes text (NFKC, whitespace folding) or adds a dummy prefix was seen to encode differently
  in transformers 5: for those nothing is written (returns [])."""
  # pylint: disable-next=import-outside-toplevel
  from jaxlm.data.tokenizers import HuggingFaceTokenizer, SentencePieceTokenizer
  if isinstance(tokenizer, HuggingFaceTokenizer):
    (out / 'tokenizer.json').write_bytes(tokenizer.path.read_bytes())
    eos = tokenizer.backend.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    config = dict(tokenizer.config or {'tokenizer_class': 'PreTrainedTokenizerFast'},
                  eos_token=eos, model_max_length=max_len)
    (out / 'tokenizer_config.json').write_text(json.dumps(config, indent=2))
    return ['tokenizer.json', 'tokenizer_config.json']
  if not isinstance(tokenizer, SentencePieceTokenizer):
    return []
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  model = tokenizer.path.read_bytes()
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  norm = proto.normalizer_spec
  if norm.precompiled_charsmap or norm.remove_extra_whitespaces or norm.add_dummy_prefix:
    return []  # LlamaTokenizer was seen to split such text differently (tests/test_hf.py)
  sp = tokenizer.sp
  piece = lambda i: sp.id_to_piece(i) if i >= 0 else None
  (out / 'tokenizer.model').write_bytes(model)
  config = dict(tokenizer_class='LlamaTokenizer', add_bos_token=False, add_eos_token=False,
                add_prefix_space=False, legacy=False,
                bos_token=piece(sp.bos_id()), eos_token=piece(sp.eos_id()),
                unk_token=piece(sp.unk_id()), pad_token=piece(sp.pad_id()),
                model_max_length=max_len)
  (out / 'tokenizer_config.json').write_text(json.dumps(config, indent=2))
  return ['tokenizer.model', 'tokenizer_config.json']
