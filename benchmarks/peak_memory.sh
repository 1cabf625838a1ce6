#!/usr/bin/env bash
# Peak resident memory (max RSS, /usr/bin/time) of `memplan calibrate` and `memaudit` on SmolLM2-135M,
# and, where vLLM imports, of `memaudit --backend vllm` (lora and merged modes) summed over its
# process tree (benchmarks/tree_memory.py: vLLM's engine runs in child processes).
#
#   bash benchmarks/peak_memory.sh            # uses .venv/bin; writes under runs/peak-memory/
#   ONLY=vllm BIN=/path/to/venv/bin bash benchmarks/peak_memory.sh    # the vLLM lines only
#   (it measures the memlaw of the checkout it lies in: `python -m` puts that folder first on sys.path;
#   for a before/after comparison copy this script and tree_memory.py into the other checkout)
#
# calibrate: 6 points of the reference grid (ranks 1,2,8 x lengths 64,256; memory peaks at the
# longest length and largest rank, so the full 4 x 3 grid peaks the same); audit: the demo adapter
# (make demo) or, without it, an adapter trained here first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=runs/peak-memory
rm -rf "$OUT" && mkdir -p "$OUT"
peak() {  # peak LABEL CMD...: run CMD, print its wall time and max RSS
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/$label.time" "$@" > "$OUT/$label.log" 2>&1
  read -r secs kb < "$OUT/$label.time"
  printf '%-10s %8.1f s  peak RSS %7.0f MiB   (%s)\n' "$label" "$secs" "$((kb / 1024))" "$*"
}
ADAPTER=${ADAPTER:-runs/demo/pb-small-r8}  # ADAPTER=DIR [CORPUS=FILE]: another adapter (and its corpus)
if [ ! -f "$ADAPTER/adapter_model.safetensors" ]; then
  ADAPTER=$OUT/adapter
  peak train "$BIN/memft" train examples/phonebook_small.jsonl --model smollm2-135m --rank 8 --method sft \
    --lr 1e-2 --target-modules q_proj,v_proj --layers 28,29 --batch-size 40 --max-steps 30 --out "$ADAPTER" --quiet
fi
if [ "${ONLY:-}" != vllm ]; then
  peak calibrate "$BIN/memplan" calibrate --model smollm2-135m --ranks 1,2,8 --lengths 64,256 --out "$OUT/cal" --quiet
  peak audit "$BIN/memaudit" "$ADAPTER" --quiet ${CORPUS:+--corpus "$CORPUS"}
fi
if "$BIN/python" -c "import vllm" 2>/dev/null; then
  for mode in lora merged; do  # --no-effect-check: the same single scoring pass before and after
    extra=$("$BIN/python" -m memlaw.cli.memaudit -h | grep -q -- --no-effect-check && echo --no-effect-check || true)
    printf '%-14s' "vllm-$mode"
    "$BIN/python" benchmarks/tree_memory.py -- "$BIN/python" -m memlaw.cli.memaudit "$ADAPTER" --backend vllm \
      --vllm-mode "$mode" --quiet $extra ${CORPUS:+--corpus "$CORPUS"}
  done
else
  echo "vLLM does not import with $BIN/python: --backend vllm not measured"
fi
