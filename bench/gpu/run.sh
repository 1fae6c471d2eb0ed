#!/usr/bin/env bash
# The GPU kit: checks vit-prisma on a GPU and times it against the Python way on the same card, in
# one call, and prints ONE JSON summary on stdout (docs/benchmarks.md, "GPU"). The lent machine has
# Python, torch and transformers but no Node and no Rust, so the native half comes prebuilt
# (`node bench/gpu/build.mjs` here -> bench/gpu/kit/gpu_kit, carried) and loads that machine's own
# torch/lib. Progress goes to stderr.
#
#   bash bench/gpu/run.sh --device cuda            # on the GPU machine (~3-5 min)
#   bash bench/gpu/run.sh --device cpu --short     # here, in the test suite (test/bench/gpu-kit.test.ts)
#
# Env: PY (a Python with torch 2.11.0; default python3), KIT (default bench/gpu/kit/gpu_kit), WORK
# (scratch; default a new temp folder), OUT (when set, the summary and logs are copied there).
# Exit 0 when every check passes, 1 otherwise (the summary is printed either way).
set -uo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cuda
SHORT=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --short) SHORT=--short; shift ;;
    *) echo "usage: bench/gpu/run.sh [--device cuda|cpu] [--short]" >&2; exit 2 ;;
  esac
done
PY=${PY:-python3}
KIT=${KIT:-bench/gpu/kit/gpu_kit}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK/py"
log() { echo "[run.sh $(date +%T)] $*" >&2; }
# Everything ends inside 9 minutes (a device command gets 10; KIT_SECONDS changes it): each step's
# timeout is its own cap or what is left, whichever is less.
DEADLINE=$((SECONDS + ${KIT_SECONDS:-540}))
# In short mode (a test on a shared CPU) only the deadline applies: a loaded machine is slow, not stuck.
cap() {
  local c=$1 r=$((DEADLINE - SECONDS - 15))
  { [ -n "$SHORT" ] || [ "$r" -lt "$c" ]; } && c=$r
  [ "$c" -lt 1 ] && c=1
  echo "$c"
}
fail() {
  printf '{"pass":false,"error":%s}\n' "$(printf '%s' "$1" | "$PY" -c 'import json,sys;print(json.dumps(sys.stdin.read()))' 2>/dev/null || echo '"(unprintable)"')"
  exit 1
}
[ -x "$KIT" ] || fail "$KIT is missing: build it with node bench/gpu/build.mjs and carry bench/gpu/kit"

# libtorch is the machine's own (the binary carries no path to any libtorch); the core dlopens
# libtorch_cuda from PRISMA_LIBTORCH_LIB.
if [ -z "${PRISMA_LIBTORCH_LIB:-}" ]; then
  PRISMA_LIBTORCH_LIB=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
    fail "no Python with torch ($PY) to find libtorch: set PY or PRISMA_LIBTORCH_LIB"
fi
export PRISMA_LIBTORCH_LIB LD_LIBRARY_PATH="$PRISMA_LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# What travelled: tracked and untracked-not-ignored files plus the carried kit (limit 64 MiB).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  KIT_BYTES=$({ git ls-files -z --cached --others --exclude-standard; find bench/gpu/kit -type f -print0; } |
    sort -zu | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
else
  KIT_BYTES=$(du -sb --exclude=.git . | cut -f1)
fi

HAVE_TF=0
"$PY" -c 'import torch, transformers' 2>/dev/null && HAVE_TF=1
peers_status() { printf '{"ran":%s,"python":"%s","reason":"%s"}\n' "$1" "$PY" "$2" > "$WORK/py/status.json"; }

# The big model: a random-init ViT-B/16 made here by the committed script, with transformers'
# default init (0.02; the CPU bench's 0.2 is chaotic, so values would only compare to 1e-1 across
# kernels); in short mode the committed clevr-vit (4 layers, 64 wide).
if [ -n "$SHORT" ]; then
  BIG=models/clevr-vit
else
  [ "$HAVE_TF" = 1 ] || fail "$PY cannot import transformers, needed to make the ViT-B/16"
  BIG=$WORK/vit-b16
  log "making the random ViT-B/16 in $BIG"
  timeout "$(cap 120)" "$PY" bench/python/make_random_vit.py "$BIG" 0.02 >&2 || fail "make_random_vit.py failed"
fi

log "gpu_kit check --device $DEVICE $SHORT (log: $WORK/kit.log)"
timeout "$(cap 300)" "$KIT" check --device "$DEVICE" $SHORT --big "$BIG" --work "$WORK" 2> >(tee "$WORK/kit.log" >&2)
[ -f "$WORK/kit.json" ] || fail "gpu_kit check wrote no kit.json: $(tail -3 "$WORK/kit.log" | tr '\n' ' ')"

# The Python peers on the same card, pixels and metric (bench/python: the TransformerLens way and
# the best batched Python), and transformers' own forward.
if [ "$HAVE_TF" = 1 ]; then
  read -r TARGET BASELINE < <("$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]))["speed"]["metric"]; print(m["target"], m["baseline"])' "$WORK/kit.json")
  BATCH=64; [ -n "$SHORT" ] && BATCH=8
  for dtype in fp32 bf16; do
    for sweep in resid head; do
      for peer in tl_way best; do
        log "patch_$peer.py --sweep $sweep --dtype $dtype"
        timeout "$(cap 120)" "$PY" bench/python/patch_$peer.py --model "$BIG" --sweep $sweep --pixels "$WORK/pixels.safetensors" \
          --target "$TARGET" --baseline "$BASELINE" --device "$DEVICE" --dtype $dtype \
          --out "$WORK/py/$sweep-$peer-$dtype.json" >> "$WORK/py.log" 2>&1 || log "patch_$peer.py $sweep $dtype failed (see py.log)"
      done
    done
    log "transformers forward, batch $BATCH, $dtype"
    timeout "$(cap 90)" "$PY" bench/gpu/hf_forward.py forward --model "$BIG" --device "$DEVICE" --dtype $dtype --batch $BATCH \
      --out "$WORK/py/forward-$dtype.json" >> "$WORK/py.log" 2>&1 || log "hf_forward.py $dtype failed (see py.log)"
  done
  if [ "$DEVICE" != cpu ]; then
    timeout "$(cap 60)" "$PY" bench/gpu/hf_forward.py peak --out "$WORK/py/gemm-peak.json" >> "$WORK/py.log" 2>&1 || log "peak failed"
  fi
  peers_status true ""
else
  peers_status false "$PY cannot import transformers"
fi

"$KIT" summarise --work "$WORK" --kit-bytes "$KIT_BYTES" > "$WORK/summary.json"
rc=$?
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$WORK/summary.json" "$WORK/kit.log" "$OUT/" && { [ -f "$WORK/py.log" ] && cp "$WORK/py.log" "$OUT/" || true; }
fi
cat "$WORK/summary.json"
exit $rc
