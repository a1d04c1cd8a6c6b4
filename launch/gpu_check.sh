#!/usr/bin/env bash
# What one GPU says about jaxlm, in under 8 minutes: versions, a cuDNN flash-attention smoke test
# (forward and backward against the XLA reference), and a table of the GPT-2 124M and Llama 1B
# train steps over the variants a code review expects to matter:
#   the GPT-2 preset (layers unrolled) against scan_unroll=1 (stacked per-layer buffers);
#   the blockwise loss with its own gradient against train.loss_grad=autodiff;
#   Llama's remat 'dots' against 'dots_attention' (the attention kernel's residuals kept);
#   XLA's Triton GEMMs off (the presets' flag) against on.
# Needs Python with JAX (CUDA) and the packages ../shared/device/fetch-wheels.sh gathers; no
# network. From the repository root:
#
#   launch/gpu_check.sh [output_dir]        # each benchmark's JSON and log land there ($OUT)
#   GPU_CHECK_TINY=1 launch/gpu_check.sh    # the same script with tiny models, on a CPU (CI)
#
# Each benchmark writes <output_dir>/<name>.json as soon as each figure is measured, so a run cut
# short keeps what it measured; the table at the end reads them all.
set -uo pipefail
out=${1:-${OUT:-gpu_check_out}}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
limit=${GPU_CHECK_LIMIT:-75}  # seconds per benchmark, compilation included

tiny=()
if [[ -n "${GPU_CHECK_TINY:-}" ]]; then  # a CPU rehearsal: the same code paths, tiny shapes
  tiny=(--config.model.num_layers=2 --config.model.embed_dim=64 --config.model.num_heads=4
        --config.model.num_kv_heads=0 --config.model.mlp_dim=0 --config.model.head_dim=0
        --config.model.max_seq_len=128 --config.model.vocab_size=512
        --config.model.dtype=float32 --config.train.loss_chunk=64 --config.mesh.fsdp=1
        --config.mesh.data=-1 --config.train.batch_size=4 --steps=2 --warmup=1)
  limit=${GPU_CHECK_LIMIT:-120}
fi

echo "=== versions"
"$py" - <<'PY' 2>&1 | tee "$out/versions.txt"
import importlib, platform
import jax
print('python', platform.python_version(), '| jax', jax.__version__, '| devices',
      jax.device_count(), 'x', jax.devices()[0].device_kind)
for name in ('jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'grain'):
  try:
    print(name, getattr(importlib.import_module(name), '__version__', '?'))
  except ImportError as e:
    print(name, 'missing:', e)
try:
  print('cudnn', jax._src.lib.cuda_versions.cudnn_get_version())  # pylint: disable=protected-access
except Exception:  # pylint: disable=broad-except  # not a CUDA build
  print('cudnn: none (not a CUDA build of jaxlib)')
PY

echo "=== cuDNN attention (forward and backward against the XLA reference)"
"$py" - <<'PY' 2>&1 | tee "$out/cudnn_attention.txt"
import jax, jax.numpy as jnp
from jaxlm.model.attention_kernels import attend
if jax.devices()[0].platform != 'gpu':
  print('skipped: no GPU here (the rehearsal runs everything else)')
else:
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, s, jnp.bfloat16) for key, s in
             zip(keys, [(4, 1024, 16, 64), (4, 1024, 4, 64), (4, 1024, 4, 64)]))
  seg = jnp.repeat(jnp.arange(4)[None], 4, 0).repeat(256, 1)
  for name, kw in (('causal', {}), ('packed', dict(segment_ids=seg))):
    f = lambda impl: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(
        attend(q, k, v, implementation=impl, **kw).astype(jnp.float32) ** 2), argnums=(0, 1, 2)))
    (a, ga), (b, gb) = f('cudnn')(q, k, v), f('xla')(q, k, v)
    err = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))) /
                    (float(jnp.max(jnp.abs(y.astype(jnp.float32)))) + 1e-6))
              for x, y in zip(ga, gb))
    print(f'{name}: loss cudnn {float(a):.4f} xla {float(b):.4f} | worst relative gradient '
          f'error {err:.2e} | {"ok" if err < 5e-2 else "MISMATCH"}')
PY

bench() {  # name, then jaxlm.bench flags
  local name=$1; shift
  echo "=== $name"
  timeout "$limit" "$py" -m jaxlm.bench "$@" "${tiny[@]}" --what=train --json="$out/$name.json" \
    > "$out/$name.log" 2>&1 || echo "$name stopped (exit $?; see $out/$name.log)"
  grep -E '^(train|[0-9]+ x )' "$out/$name.log" || true
}

gpt2=(--config=configs/gpt2_124m.py --config.train.batch_size=16 --config.train.grad_accum=1
      --steps=20 --warmup=3)
llama=(--config=configs/llama_1b.py --config.train.batch_size=8 --config.mesh.fsdp=1
       --config.mesh.data=-1 --steps=10 --warmup=2)
triton_on=--config.xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true
bench gpt2 "${gpt2[@]}"
bench gpt2_scan1 "${gpt2[@]}" --config.model.scan_unroll=1
bench gpt2_autodiff_loss "${gpt2[@]}" --config.train.loss_grad=autodiff
bench gpt2_triton_on "${gpt2[@]}" "$triton_on"
bench llama_dots "${llama[@]}"
bench llama_dots_attention "${llama[@]}" --config.model.remat=dots_attention
bench llama_autodiff_loss "${llama[@]}" --config.train.loss_grad=autodiff
bench llama_triton_on "${llama[@]}" "$triton_on"

"$py" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
names = ['gpt2', 'gpt2_scan1', 'gpt2_autodiff_loss', 'gpt2_triton_on', 'llama_dots',
         'llama_dots_attention', 'llama_autodiff_loss', 'llama_triton_on']
print(f"\n{'variant':<24}{'train ms':>10}{'tokens/s':>14}{'MFU':>8}{'peak GiB':>10}")
for name in names:
  path = out / f'{name}.json'
  r = json.loads(path.read_text()) if path.exists() else {}
  if 'train' not in r:
    print(f'{name:<24}{"not measured (see its log)":>42}')
    continue
  m, mem = r['train'], r.get('peak_memory_gib')
  mfu = 'n/a' if m['mfu'] is None else f"{100 * m['mfu']:.1f}%"
  print(f"{name:<24}{m['step_ms_median']:>10.1f}{m['tokens_per_s']:>14,.0f}{mfu:>8}"
        f"{'n/a' if mem is None else f'{mem:.1f}':>10}")
PY
