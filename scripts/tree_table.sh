#!/usr/bin/env bash
# Chain vs tree verification with SmolLM2's shipped heads: mean accepted block size and speed
# for each tree shape, through `decode --tree SHAPE`.
#
#   bash scripts/tree_table.sh [DTYPE] [PROMPTS] [SHAPES]
#
# DTYPE defaults to f32, PROMPTS to 12 (the first of examples/prompts/chat24.txt, chat template,
# 64 new tokens each), SHAPES to "1,1,1,1 2,1,1,1 3,1,1,1 2,2,1,1 3,2,2,1 4,3,2,1 5,4,3,2". Each shape decodes the
# prompts one at a time (batch 1), side by side with greedy decoding in the same process.
set -euo pipefail
cd "$(dirname "$0")/.."
dtype=${1:-f32}
n=${2:-12}
shapes=${3:-1,1,1,1 2,1,1,1 3,1,1,1 2,2,1,1 3,2,2,1 4,3,2,1 5,4,3,2}
bin=target/release/examples/decode
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n "$n" examples/prompts/chat24.txt > "$work/prompts.txt"
for s in $shapes; do
  "$bin" --model models/smollm2 --dtype "$dtype" --chat --prompt-file "$work/prompts.txt" \
    --max-new-tokens 64 --k 5 --tree "$s" --compare-greedy --json > "$work/$s.jsonl"
done
"$py" - "$work" "$dtype" "$shapes" <<'PY'
import json, sys
work, dtype, shapes = sys.argv[1], sys.argv[2], sys.argv[3].split()
print(f"SmolLM2 + shipped heads, {dtype}, chat prompts x 64 new tokens, k = 5, batch 1")
print()
print("| tree | nodes per block | prompts | mean accepted | model calls / greedy | ms per token (tree / greedy) | speedup | identical |")
print("|---|---|---|---|---|---|---|---|")
for s in shapes:
    with open(f"{work}/{s}.jsonl") as f:
        rs = [json.loads(l) for l in f]
    widths = [int(w) for w in s.split(",")]
    nodes, level = 0, 1
    for w in widths:
        level *= w
        nodes += level
    tokens = sum(len(r["tokens"]) for r in rs)
    iters = sum(r["stats"]["iterations"] for r in rs)
    calls = sum(r["stats"]["model_calls"] for r in rs)
    gcalls = sum(r["greedy"]["model_calls"] for r in rs)
    wall = sum(r["stats"]["wall_s"] for r in rs)
    gwall = sum(r["greedy"]["wall_s"] for r in rs)
    gtok = sum(len(r["greedy"]["tokens"]) for r in rs)
    same = sum(r["identical"] for r in rs)
    label = f"{s} (chain)" if all(w == 1 for w in widths) else s
    print(f"| {label} | {nodes + 1} | {len(rs)} | {tokens / iters:.2f} | {calls} / {gcalls} | "
          f"{1e3 * wall / tokens:.1f} / {1e3 * gwall / gtok:.1f} | {gwall / wall * tokens / gtok:.2f}x | {same}/{len(rs)} |")
PY
