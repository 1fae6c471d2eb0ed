#!/usr/bin/env bash
# Run every patching benchmark of README.md and the cross-checks; results in ${OUT:-/tmp/patch-bench}.
# PY defaults to the pinned venv; VITB to the random ViT-B/16 (made with make_random_vit.py if missing).
# ONLY=tiny|vitb-head|vitb-resid|checks runs one group.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$HOME/.cache/vit-prisma/torch-2.11.0/bin/python}
VITB=${VITB:-$HOME/.cache/vit-prisma/bench/vit-b16}
OUT=${OUT:-/tmp/patch-bench}
ONLY=${ONLY:-all}
mkdir -p "$OUT"
[ -f "$VITB/model.safetensors" ] || "$PY" bench/python/make_random_vit.py "$VITB"
TINY=fixtures/models/vit-tiny-cls
TINYPX=fixtures/reference/vit-tiny-cls.safetensors
# idle % of all CPUs over 2 s (from /proc/stat)
idle_pct() {
  local a b; a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local tot=0 i; for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
  echo $(( 100 * (b[4] - a[4] + b[5] - a[5]) / (tot > 0 ? tot : 1) ))
}
# wait (up to QUIET_WAIT s, default 900) until the machine is >= 90% idle, so timings are not others' noise
wait_quiet() {
  local t0=$SECONDS p
  while p=$(idle_pct); [ "$p" -lt 90 ] && [ $((SECONDS - t0)) -lt ${QUIET_WAIT:-900} ]; do sleep 5; done
  echo "   (idle ${p}% before start, waited $((SECONDS - t0)) s)"
}
run() { wait_quiet; echo "== $* | $(uptime)"; "$PY" "$@" 2>&1 | grep -v -i warning; }
cmp() { "$PY" bench/python/compare_patch.py "$@"; }

if [[ $ONLY == all || $ONLY == tiny ]]; then
  for s in resid head; do
    run bench/python/patch_tl_way.py --model $TINY --sweep $s --pixels $TINYPX --repeat 5 --out $OUT/tiny-$s-tl_way.json
    run bench/python/patch_best.py --model $TINY --sweep $s --pixels $TINYPX --repeat 5 --out $OUT/tiny-$s-best.json
    cmp $OUT/tiny-$s-tl_way.json $OUT/tiny-$s-best.json
  done
fi
if [[ $ONLY == all || $ONLY == vitb-head ]]; then
  run bench/python/patch_tl_way.py --model $VITB --sweep head --random-224 0 --save-pixels $OUT/vitb-pixels.safetensors --out $OUT/vitb-head-tl_way.json
  run bench/python/patch_best.py --model $VITB --sweep head --random-224 0 --repeat 3 --out $OUT/vitb-head-best.json
  cmp $OUT/vitb-head-tl_way.json $OUT/vitb-head-best.json
fi
if [[ $ONLY == all || $ONLY == vitb-resid ]]; then
  run bench/python/patch_tl_way.py --model $VITB --sweep resid --random-224 0 --sample 48 --out $OUT/vitb-resid-tl_way-sample48.json
  run bench/python/patch_best.py --model $VITB --sweep resid --random-224 0 --out $OUT/vitb-resid-best.json
  cmp $OUT/vitb-resid-tl_way-sample48.json $OUT/vitb-resid-best.json
fi
if [[ $ONLY == all || $ONLY == checks ]]; then
  # clean -> clean: every patch must give the clean metric (fixed target/baseline so it is not 0)
  for s in resid head; do
    for impl in tl_way best; do
      "$PY" bench/python/patch_$impl.py --model $TINY --sweep $s --pixels $TINYPX --corrupt-index 0 \
        --target 4 --baseline 3 --out $OUT/cc-tiny-$s-$impl.json 2>&1 | grep -v -i warning > /dev/null
    done
  done
  [ -f $OUT/vitb-pixels.safetensors ] || "$PY" bench/python/patch_best.py --model $VITB --sweep head --random-224 0 \
    --max-layers 1 --save-pixels $OUT/vitb-pixels.safetensors --out /dev/null > /dev/null 2>&1
  for s in resid head; do
    for impl in tl_way best; do
      "$PY" bench/python/patch_$impl.py --model $VITB --sweep $s --pixels $OUT/vitb-pixels.safetensors \
        --clean-index 0 --corrupt-index 0 --target 874 --baseline 421 --sample 6 \
        --out $OUT/cc-vitb-$s-$impl.json 2>&1 | grep -v -i warning > /dev/null
    done
  done
  "$PY" - "$OUT" <<'EOF'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/cc-*.json")):
    r = json.load(open(f))
    d = max(abs(v - r["clean_metric"]) for v in r["values"] if v is not None)
    print(f"clean->clean {f.split('/')[-1]}: clean_metric {r['clean_metric']:.6f}, max |patched - clean| = {d:.2e}",
          "OK" if d <= 1e-4 else "FAIL")
EOF
fi
