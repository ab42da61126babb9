#!/usr/bin/env bash
# Prints the markdown table of docs/benchmarks.md: blockwise vs greedy on the embedded model over
# examples/prompts.txt, for k = 1, 2, 4, 8, 10, measured side by side in one process per k.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples/decode
echo "| k | prompts | identical | new tokens | model calls (blockwise / greedy) | mean accepted block | wall ms (blockwise / greedy) | speedup |"
echo "|---|---|---|---|---|---|---|---|"
for k in 1 2 4 8 10; do
  "$bin" --prompt-file examples/prompts.txt --k "$k" --max-new-tokens 64 --compare-greedy --json \
  | .venv/bin/python -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
k = sys.argv[1]
tok = sum(len(r["tokens"]) for r in rows)
calls = sum(r["stats"]["model_calls"] for r in rows)
gcalls = sum(r["greedy"]["model_calls"] for r in rows)
it = sum(r["stats"]["iterations"] for r in rows)
bw = sum(r["stats"]["wall_s"] for r in rows) * 1e3
gw = sum(r["greedy"]["wall_s"] for r in rows) * 1e3
same = sum(r["identical"] for r in rows)
print(f"| {k} | {len(rows)} | {same}/{len(rows)} | {tok} | {calls} / {gcalls} | {tok/it:.2f} | {bw:.1f} / {gw:.1f} | {gw/bw:.2f}x |")
' "$k"
done
