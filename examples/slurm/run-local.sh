#!/usr/bin/env bash
# Run lading-job.sbatch on this machine, without Slurm: a sample corpus, the embedded SQLite queue and a
# local store, and the stand-in `srun` from ./local starting 2 "nodes" (worker processes).
#
#   bash examples/slurm/run-local.sh [--out DIR] [--tasks N] [--records N]
#
# Needs the built CLI (pnpm install builds it; or pnpm build).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/../.work/slurm"
tasks=2
records=5000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --records) records="$2"; shift 2 ;;
    *) echo "usage: run-local.sh [--out DIR] [--tasks N] [--records N]" >&2; exit 64 ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# The sample corpus of the ml-preprocess example, and a job spec pointing at it.
input="$(node "$here/../ml-preprocess/pipeline.mjs" --generate-only --out "$out" --records "$records")"
cat > "$out/job.yaml" <<YAML
name: tokenize-local
handler: $here/../ml-preprocess/tokenize.mjs
inputs: ["$input"]
sharding: { by: bytes, size: 64KiB, align: newline }
output: file:$out/tokens/
params: { checkpointEvery: 500 }
retries: { maxAttempts: 3, backoff: { initialMs: 200 } }
YAML

# What sbatch would set up: an allocation of $tasks nodes, one task each.
export SLURM_JOB_ID="${SLURM_JOB_ID:-$$}" SLURM_NTASKS="$tasks" SLURM_NNODES="$tasks" SLURM_JOB_NUM_NODES="$tasks"
export SLURM_JOB_NODELIST="node[0-$((tasks - 1))]" SLURM_CPUS_PER_TASK=1 SLURM_SUBMIT_DIR="$out"
# Single node, so the embedded queue will do; a cluster uses Kafka.
export LADING_QUEUE="sqlite:$out/queue.db" LADING_STORE="file:$out/store"
export PATH="$here/local:$PATH"

rc=0
bash "$here/lading-job.sbatch" "$out/job.yaml" || rc=$?
echo
echo "outputs: $(ls "$out/tokens" | grep -c '\.jsonl$') token files in $out/tokens"
echo "explore: PATH=\"$here/local:\$PATH\" LADING_QUEUE=$LADING_QUEUE LADING_STORE=$LADING_STORE lading status"
exit $rc
