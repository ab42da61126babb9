#!/usr/bin/env bash
# The trained pair in assets/pair (make train-pair): the draft model proposing for the target at
# several block sizes, fixed and --adaptive, next to greedy, on held-out verse openings. Prints a
# markdown table.
#
#   make build && bash scripts/pair_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "| proposer | k | policy | mean accepted | model calls (target) / greedy | speedup | identical |"
echo "|---|---|---|---|---|---|---|"
run() {
  local proposer=$1 k=$2 policy=$3
  target/release/examples/decode --model assets/pair/target --proposer "$proposer" --k "$k" \
    $policy --prompt-file examples/prompts/kjv.txt --max-new-tokens 96 --compare-greedy --json |
    .venv/bin/python -c '
import json, sys
proposer, k, policy = sys.argv[1:4]
rows = [json.loads(l) for l in sys.stdin]
tokens = sum(len(r["tokens"]) for r in rows)
iters = sum(r["stats"]["iterations"] for r in rows)
calls = sum(r["stats"]["model_calls"] for r in rows)
greedy_calls = sum(r["greedy"]["model_calls"] for r in rows)
speed = sum(r["greedy"]["wall_s"] for r in rows) / sum(r["stats"]["wall_s"] for r in rows)
same = sum(r["identical"] for r in rows)
policy = policy or "fixed"
print(f"| {proposer} | {k} | {policy} | {tokens / iters:.2f} | {calls} / {greedy_calls} | {speed:.2f}x | {same}/{len(rows)} |")
' "$proposer" "$k" "$policy"
}
# A warm-up run whose output is dropped.
target/release/examples/decode --model assets/pair/target --k 1 --proposer none --max-new-tokens 16 >/dev/null
for k in 2 3 4 6; do run draft:assets/pair/draft "$k" ""; done
run draft:assets/pair/draft 6 --adaptive
run ngram 4 ""
run ngram 6 --adaptive
run chain:ngram,draft:assets/pair/draft 4 ""
