#!/usr/bin/env bash
# SmolLM2 on held-out chat prompts (examples/prompts/chat24.txt: no training sequence of the
# draft or the heads uses them), 64 new tokens, exact acceptance, every row against greedy in the
# same process: the shipped heads, n-gram lookup, the feature-level draft (assets/drafts/smollm2)
# as chains of k = 4, 6, 8 and as dynamic trees of two node budgets, in f32 and bf16. Prints a
# markdown table; the draft's own time per iteration is shown as a share of a greedy step.
#
#   make smollm2 build && bash scripts/eagle_table.sh [N_PROMPTS] [DTYPES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-12}
dtypes=${2:-"f32 bf16"}
prompts=$(mktemp)
grep -v '^\s*$' examples/prompts/chat24.txt | head -n "$n" > "$prompts"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o 'avx512_bf16\|avx2' /proc/cpuinfo | sort -u | xargs)), $(nproc) cores"
echo
echo "| dtype | proposer | k | tree | prompts | mean accepted | model calls / greedy | ms per token (blockwise / greedy) | speedup | identical | proposer ms / iteration (share of a greedy step) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
run() {
  local dtype=$1 proposer=$2 k=$3 tree=$4 extra=${5:-}
  local flags=()
  [ "$tree" != "-" ] && flags+=(--tree "$tree")
  # shellcheck disable=SC2206
  [ -n "$extra" ] && flags+=($extra)
  target/release/examples/decode --model models/smollm2 --chat --proposer "$proposer" --k "$k" \
    --dtype "$dtype" "${flags[@]}" --prompt-file "$prompts" --max-new-tokens 64 --compare-greedy --json |
    .venv/bin/python -c '
import json, sys
dtype, proposer, k, tree, extra = sys.argv[1:6]
rows = [json.loads(l) for l in sys.stdin]
tokens = sum(len(r["tokens"]) for r in rows)
gtokens = sum(len(r["greedy"]["tokens"]) for r in rows)
iters = sum(r["stats"]["iterations"] for r in rows)
calls = sum(r["stats"]["model_calls"] for r in rows)
gcalls = sum(r["greedy"]["model_calls"] for r in rows)
bw = sum(r["stats"]["wall_s"] for r in rows)
gw = sum(r["greedy"]["wall_s"] for r in rows)
prop = sum(r["stats"]["proposer_s"] for r in rows)
same = sum(r["identical"] for r in rows)
step = gw / gtokens
name = proposer + (f" {extra}" if extra else "")
print(f"| {dtype} | {name} | {k} | {tree} | {len(rows)} | {tokens / iters:.2f} | {calls} / {gcalls} | "
      f"{1e3 * bw / tokens:.1f} / {1e3 * step:.1f} | {gw / bw:.2f}x | {same}/{len(rows)} | "
      f"{1e3 * prop / iters:.1f} ({100 * prop / iters / step:.0f}%) |")
' "$dtype" "$proposer" "$k" "$tree" "$extra"
}
# A warm-up run whose output is dropped.
target/release/examples/decode --model models/smollm2 --k 1 --proposer none --max-new-tokens 8 >/dev/null

for dtype in $dtypes; do
  guard=""
  [ "$dtype" != "f32" ] && guard="--tie-guard 0.5"
  run "$dtype" heads 5 - "$guard"
  run "$dtype" ngram 5 - "$guard"
  for k in 4 6 8; do
    run "$dtype" eagle "$k" - "$guard"
  done
  run "$dtype" eagle 6 - "$guard --adaptive"
  run "$dtype" eagle 6 dynamic:8
  run "$dtype" eagle 6 dynamic:24
done
rm -f "$prompts"
