#!/usr/bin/env bash
# SAE training throughput, vit-prisma vs sae-lens, alternated in one sitting (see docs/benchmarks.md).
# Needs: data/acts.f32 (make_activations.py), the venv of fixtures/requirements-sae.txt (PY), and
# the build env from `node scripts/setup.mjs`. Usage: bench/sae/run.sh [STEPS] [ROUNDS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-3}; ROUNDS=${2:-2}; BATCH=${3:-4096}
PY=${PY:-/work/venvs/sae-core/bin/python}
export THREADS=${THREADS:-2}
eval "$(node -e 'const e=require("./native/.build-env.json");for(const[k,v] of Object.entries(e))console.log(`export ${k}=${JSON.stringify(v)}`)')"
export LD_LIBRARY_PATH="$PRISMA_LIBTORCH_LIB:${LD_LIBRARY_PATH:-}"
host=$(rustc -vV | sed -n 's/host: //p')
cargo build --release -q -p prisma-core --target "$host" --example sae_train_bench
BIN="${CARGO_TARGET_DIR:-target}/$host/release/examples/sae_train_bench"
OUT=${OUT:-bench/results/sae-latest.jsonl}
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "topk 16 64" "topk 32 64" "standard 16 0" "standard 32 0"; do
    set -- $cfg
    echo "# round $round: $cfg (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$PY" bench/sae/bench_saelens.py "$1" "$2" "$3" "$BATCH" "$STEPS" 2>/dev/null | tail -1 | tee -a "$OUT"
    "$BIN" "$1" "$2" "$3" "$BATCH" "$STEPS" | tee -a "$OUT"
  done
done
