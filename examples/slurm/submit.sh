#!/usr/bin/env bash
# Submit a vit-prisma folder job to Slurm as an array of SHARDS tasks (one shard each) and a merge
# job that starts when every task has succeeded. Run it from the folder holding these scripts:
#
#   MODEL=models/vit-b16 IMAGES=/data/photos OUT=/scratch/lens SHARDS=16 ./submit.sh
#
# MODEL, IMAGES and OUT must be paths every node sees (a shared filesystem). PRISMA_ARGS adds
# options to the command (e.g. PRISMA_ARGS='--site resid_pre,resid_post --target 3'); COMMAND picks
# it (default logit-lens; heads, dla and ablate work the same way). SBATCH_ARGS is passed to both
# sbatch calls (partition, account, time limit). docs/scale-out.md explains each step.
set -euo pipefail
: "${MODEL:?set MODEL to the model folder}" "${IMAGES:?set IMAGES to the input folder}" "${OUT:?set OUT to an output folder}"
SHARDS="${SHARDS:-8}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT/logs"
# shellcheck disable=SC2086 # SBATCH_ARGS is a list of options
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array="0-$((SHARDS - 1))" --output="$OUT/logs/shard-%a.log" \
  --export=ALL,MODEL="$MODEL",IMAGES="$IMAGES",OUT="$OUT",SHARDS="$SHARDS" "$here/shard.sbatch")
array="${array%%;*}"
# afterok on an array job waits for every task to end with exit 0 (shard.sbatch maps "some inputs failed" to 0).
# shellcheck disable=SC2086
merge=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:$array" --output="$OUT/logs/merge.log" \
  --export=ALL,OUT="$OUT",SHARDS="$SHARDS" "$here/merge.sbatch")
echo "shards: job $array (tasks 0-$((SHARDS - 1))); merge: job ${merge%%;*}; merged output: $OUT/merged"
