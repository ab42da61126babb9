#!/usr/bin/env bash
# SmolLM2 with its shipped proposal heads (assets/heads/smollm2, make smollm2-heads) on the
# held-out chat prompts (examples/prompts/chat24.txt; the heads were trained on other prompts),
# next to greedy, in f32 and bf16. Prints a markdown table.
#
#   make smollm2 build && bash scripts/heads_table.sh [N_PROMPTS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-24}
prompts=$(mktemp)
grep -v '^\s*$' examples/prompts/chat24.txt | head -n "$n" > "$prompts"
echo "| dtype | k | policy | prompts | mean accepted | model calls / greedy | ms per token (blockwise / greedy) | speedup | identical |"
echo "|---|---|---|---|---|---|---|---|---|"
run() {
  local dtype=$1 k=$2 policy=$3
  target/release/examples/decode --model models/smollm2 --backend torchscript --chat --proposer heads --k "$k" \
    --dtype "$dtype" $policy --prompt-file "$prompts" --max-new-tokens 64 --compare-greedy --json |
    .venv/bin/python -c '
import json, sys
dtype, k, policy = sys.argv[1:4]
rows = [json.loads(l) for l in sys.stdin]
tokens = sum(len(r["tokens"]) for r in rows)
gtokens = sum(len(r["greedy"]["tokens"]) for r in rows)
iters = sum(r["stats"]["iterations"] for r in rows)
calls = sum(r["stats"]["model_calls"] for r in rows)
gcalls = sum(r["greedy"]["model_calls"] for r in rows)
bw = sum(r["stats"]["wall_s"] for r in rows)
gw = sum(r["greedy"]["wall_s"] for r in rows)
same = sum(r["identical"] for r in rows)
policy = policy or "fixed"
print(f"| {dtype} | {k} | {policy} | {len(rows)} | {tokens / iters:.2f} | {calls} / {gcalls} | "
      f"{1e3 * bw / tokens:.1f} / {1e3 * gw / gtokens:.1f} | {gw / bw:.2f}x | {same}/{len(rows)} |")
' "$dtype" "$k" "$policy"
}
# A warm-up run whose output is dropped.
target/release/examples/decode --model models/smollm2 --k 1 --proposer none --max-new-tokens 8 >/dev/null

run f32 5 ""
run f32 5 "--adaptive"
run bf16 5 "--tie-guard 0.5"
run bf16 5 "--tie-guard 0.5 --adaptive"
rm -f "$prompts"
