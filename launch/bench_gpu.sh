#!/usr/bin/env bash
# The GPU benchmark table, on one GPU: GPT-2 124M in bf16 at batch 16 and 32 x 1024 tokens, and
# a Llama-style 1B model at context 2048. Needs only Python with JAX (CUDA) and the packages that
# ../shared/device/fetch-wheels.sh gathers; no network. Run from the repository root:
#
#   launch/bench_gpu.sh [output_dir]          # about 5 minutes on an H200
#   BENCH_TINY=1 launch/bench_gpu.sh          # the same script with tiny models, on a CPU
#
# Each benchmark writes <output_dir>/<name>.json and .log; a table of all of them ends the output.
set -uo pipefail
out=${1:-${OUT:-bench_out}}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

tiny=()
if [[ -n "${BENCH_TINY:-}" ]]; then  # a CPU rehearsal: same code paths, tiny shapes
  tiny=(--config.model.num_layers=2 --config.model.embed_dim=64 --config.model.num_heads=4
        --config.model.num_kv_heads=0 --config.model.mlp_dim=0 --config.model.head_dim=0
        --config.model.max_seq_len=128 --config.model.vocab_size=512
        --config.model.dtype=float32 --config.model.attention=xla --config.train.loss_chunk=64
        --steps=3 --warmup=1)
fi

bench() {  # name, then jaxlm.bench flags
  local name=$1; shift
  echo "=== $name"
  timeout 300 "$py" -m jaxlm.bench "$@" "${tiny[@]}" --json="$out/$name.json" 2>&1 \
    | tee "$out/$name.log" | grep -v '^W[0-9]' || echo "$name failed (see $out/$name.log)"
}

if [[ -z "${BENCH_TINY:-}" ]]; then  # the fused attention kernel against the reference, first
  timeout 300 "$py" -m pytest -q tests/test_attention.py 2>&1 | tee "$out/attention_tests.log" | tail -3
fi
bench gpt2_124m_b16 --config=configs/gpt2_124m.py --config.train.batch_size=16 \
  --config.train.grad_accum=1 --steps=50
bench gpt2_124m_b32 --config=configs/gpt2_124m.py --config.train.batch_size=32 \
  --config.train.grad_accum=1 --steps=50
bench llama_1b --config=configs/llama_1b.py --config.train.batch_size=16 --config.mesh.fsdp=1 \
  --config.mesh.data=-1 --steps=20 --what=train,eval

"$py" - "$out" <<'PY'
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob('*.json')):
  r = json.loads(path.read_text())
  for what in ('train', 'eval', 'decode'):
    if what in r:
      m = r[what]
      mfu = '' if m['mfu'] is None else f"{100 * m['mfu']:.1f}%"
      rows.append((path.stem, what, f"{m['step_ms_median']:.1f}", f"{m['tokens_per_s']:,.0f}", mfu))
mem = {p.stem: json.loads(p.read_text()).get('peak_memory_gib') for p in
       pathlib.Path(sys.argv[1]).glob('*.json')}
print(f"\n{'benchmark':<16}{'step':<8}{'ms':>10}{'tokens/s':>14}{'MFU':>8}")
for name, what, ms, tps, mfu in rows:
  print(f'{name:<16}{what:<8}{ms:>10}{tps:>14}{mfu:>8}')
print('peak memory GiB:', {k: (None if v is None else round(v, 1)) for k, v in mem.items()})
PY
