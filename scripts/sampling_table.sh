#!/usr/bin/env bash
# Blockwise decoding under sampling, next to greedy: mean accepted block size and wall-clock
# speedup over the matching one-token-per-call reference (greedy decoding, or plain sampling at
# the same temperature), both measured side by side in each run, seed 1 for every prompt.
# Prints a markdown table.
#
#   bash scripts/sampling_table.sh smollm2 [N_PROMPTS]   # models/smollm2 (make smollm2), its
#       shipped heads and n-gram lookup, k = 5, 24 held-out chat prompts, 64 new tokens
#   bash scripts/sampling_table.sh embedded [N_PROMPTS]  # the embedded model and its heads,
#       k = 8, the verse openings of examples/prompts.txt, 64 new tokens
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-smollm2}
n=${2:-24}
bin=${BIN:-target/release/examples/decode}
prompts=$(mktemp)
case "$which" in
  smollm2)
    model=(--model models/smollm2 --backend torchscript --chat); k=5; proposers=(heads ngram)
    grep -v '^\s*$' examples/prompts/chat24.txt | head -n "$n" > "$prompts" ;;
  embedded)
    model=(--model embedded); k=8; proposers=(heads)
    grep -v '^\s*$' examples/prompts.txt | head -n "$n" > "$prompts" ;;
  *) echo "usage: $0 smollm2|embedded [N_PROMPTS]" >&2; exit 2 ;;
esac
echo "| temperature | proposer | acceptance | policy | prompts | mean accepted | model calls / reference | ms per token (blockwise / reference) | speedup |"
echo "|---|---|---|---|---|---|---|---|---|"
run() {
  local temp=$1 proposer=$2 accept=$3 policy=${4:-}
  local sampling=()
  if [ "$temp" != 0 ]; then sampling=(--temperature "$temp" --seed 1); fi
  "$bin" "${model[@]}" --proposer "$proposer" --k "$k" --accept "$accept" $policy \
    "${sampling[@]}" --prompt-file "$prompts" --max-new-tokens 64 --compare-greedy --json |
    .venv/bin/python -c '
import json, sys
temp, proposer, accept, policy = sys.argv[1:5]
rows = [json.loads(l) for l in sys.stdin]
tokens = sum(len(r["tokens"]) for r in rows)
rtokens = sum(len(r["greedy"]["tokens"]) for r in rows)
iters = sum(r["stats"]["iterations"] for r in rows)
calls = sum(r["stats"]["model_calls"] for r in rows)
rcalls = sum(r["greedy"]["model_calls"] for r in rows)
bw = sum(r["stats"]["wall_s"] for r in rows)
rw = sum(r["greedy"]["wall_s"] for r in rows)
label = "0 (greedy)" if temp == "0" else temp
# Per-token cost ratio: sampled runs may stop at EOS after different lengths.
speed = (rw / rtokens) / (bw / tokens)
pol = policy.lstrip("-")
print(f"| {label} | {proposer} | {accept} | {pol} | {len(rows)} | {tokens / iters:.2f} | {calls} / {rcalls} | "
      f"{1e3 * bw / tokens:.1f} / {1e3 * rw / rtokens:.1f} | {speed:.2f}x |")
' "$temp" "$proposer" "$accept" "${policy:-fixed}"
}
# A warm-up run whose output is dropped.
"$bin" "${model[@]}" --k 1 --proposer none --max-new-tokens 8 >/dev/null

for temp in 0 0.7 1.0; do
  for proposer in "${proposers[@]}"; do
    run "$temp" "$proposer" exact
    if [ "$proposer" = heads ]; then
      # The cost-aware policy: proposes only where proposals have paid for their verify cost.
      run "$temp" heads exact --adaptive
      if [ "$temp" != 0 ]; then run "$temp" heads typical; fi
    fi
  done
done
rm -f "$prompts"
