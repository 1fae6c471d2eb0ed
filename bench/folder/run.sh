#!/usr/bin/env bash
# bench/folder, run by hand in one sitting (numbers into docs/benchmarks.md): 500 JPEG photos of mixed
# sizes (make_photos.py) through a random ViT-B/16 (bench/python/make_random_vit.py):
#   1. ours: prisma run MODEL PHOTOS --jsonl (decode + preprocess read ahead while batches of 64 run)
#   2. the Python peer (peer.py): transformers' ViTImageProcessor in a 2-worker DataLoader, same model
#   3. the floor: only the forwards of the already-preprocessed photos (forward.mjs)
#   4. cold start: prisma inspect MODEL vs importing torch + transformers and loading the folder
#   5. memory over a 20,000-input logit-lens --jsonl run (rss.mjs; RSS_MODEL, default vit-tiny-cls)
# Each line of results goes to stdout with the load average before it.
# Env: PY (a Python with bench/folder/requirements.txt), MODEL, PHOTOS, ONLY=1..5.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
MODEL="${MODEL:-$HOME/.cache/vit-prisma/bench/vit-b16}"
PHOTOS="${PHOTOS:-/tmp/prisma-bench/photos}"
RSS_MODEL="${RSS_MODEL:-fixtures/models/vit-tiny-cls}"
load() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
[ -d "$MODEL" ] || "$PY" bench/python/make_random_vit.py "$MODEL" 0.02
[ -d "$PHOTOS" ] || "$PY" bench/folder/make_photos.py "$PHOTOS" 500
if want 1; then
  l=$(load); t=$(now)
  node bin/prisma.js run "$MODEL" "$PHOTOS" --jsonl > /tmp/prisma-bench-ours.jsonl
  s=$(echo "$(now) - $t" | bc)
  echo "{\"bench\":\"ours\",\"load\":\"$l\",\"photos\":$(wc -l < /tmp/prisma-bench-ours.jsonl),\"seconds\":$s}"
fi
if want 2; then
  l=$(load); echo "{\"bench\":\"peer\",\"load\":\"$l\",\"result\":$("$PY" bench/folder/peer.py "$MODEL" "$PHOTOS" 2 2>/dev/null)}"
fi
if want 3; then
  l=$(load); echo "{\"bench\":\"forward-only\",\"load\":\"$l\",\"result\":$(node bench/folder/forward.mjs "$MODEL" "$PHOTOS")}"
fi
if want 4; then
  for i in 1 2 3; do
    l=$(load); t=$(now); node bin/prisma.js inspect "$MODEL" > /dev/null; a=$(echo "$(now) - $t" | bc)
    t=$(now)
    "$PY" -c "import sys, torch, transformers, os; m = transformers.ViTForImageClassification.from_pretrained(sys.argv[1]); os.listdir(sys.argv[2])" "$MODEL" "$PHOTOS" 2>/dev/null
    b=$(echo "$(now) - $t" | bc)
    echo "{\"bench\":\"cold-start\",\"load\":\"$l\",\"prismaInspectSeconds\":$a,\"pythonImportLoadSeconds\":$b}"
  done
fi
if want 5; then
  l=$(load); echo "{\"bench\":\"rss-20000\",\"model\":\"$RSS_MODEL\",\"load\":\"$l\",\"result\":$(node bench/folder/rss.mjs "$RSS_MODEL" "$PHOTOS" 20000)}"
fi
